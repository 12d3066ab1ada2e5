"""``reports/study/claim_checklist.md``: every item of the Checklist for Artificial Intelligence in
Medical Imaging (CLAIM; Mongan, Moy and Kahn, Radiology: Artificial Intelligence 2020) with its
answer from the pipeline's records and the ``methods.md`` section that gives it, or "to be
completed by the authors" where no record can answer (the title, ethics, registration, funding):
never an invented answer.

Which CLAIM: the 2020 checklist's 42 items, numbered as published, each named here by its topic
in a few words (the full item texts are the journal's). The 2024 update (Tejani et al.) renumbers
and extends the list; its text was not available where this was written, so a submission under
CLAIM 2024 maps these answers onto its numbering.

Answers are the same facts as ``methods.md``'s (:mod:`train.report.study_facts`,
:mod:`train.report.study_runs`), Markdown-escaped; a fact whose record is missing says "not
recorded".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from train.report.study_facts import (NOT_RECORDED, ONE_READER, TO_COMPLETE, Facts, _counts,
                                      _dict, _int, _kinds, _md, _threshold)
from train.report.study_runs import Run

@dataclass(frozen=True)
class Context:
    """What a checklist answer is drawn from."""

    facts: Facts
    runs: list[Run]
    alpha: float
    match_iou: float | None


Answer = Callable[[Context], str] | None


def _images(c: Context) -> str:
    f = c.facts
    if f.images is None:
        return f"images: {NOT_RECORDED}"
    return (f"{f.images} radiographs of {f.patients if f.patients is not None else NOT_RECORDED}"
            f" patients; modality {_counts(f.modalities)}; manufacturer "
            f"{_counts(f.manufacturers)}" + ("; **synthetic phantom, not patient data**"
                                             if f.synthetic else ""))


def _deid(c: Context) -> str:
    a = _dict(c.facts.anonymize)
    if not a:
        return f"de-identification: {NOT_RECORDED}"
    counts = _dict(a.get("counts"))
    said = ", ".join(f"{_md(v)} {_md(k)}" for k, v in counts.items()) or NOT_RECORDED
    return (f"allowlist after DICOM PS3.15 Annex E (action table "
            f"`{_md(a.get('action_table', NOT_RECORDED))}`); keyed pseudonyms, the ledger kept "
            f"privately; {said}")


def _export(c: Context) -> str:
    e = _dict(_dict(c.facts.export).get("options"))
    if not (e.get("bits") and e.get("equalization")):
        return f"export: {NOT_RECORDED}"
    return (f"{_md(e['bits'])}-bit PNG after the Modality LUT, {_md(e['equalization'])} "
            "histogram equalization")


def _subsets(c: Context) -> str:
    conv = _dict(c.facts.convert)
    if not conv:
        return f"{NOT_RECORDED}"
    return (f"{_md(conv.get('images', NOT_RECORDED))} annotated images converted; problems "
            f"found and handled by kind: {_kinds(conv.get('counts'))}")


def _elements(c: Context) -> str:
    classes = ", ".join(_md(x) for x in c.facts.classes or []) or NOT_RECORDED
    return (f"classes {classes}; vertebral levels L1-L5 and S1 assigned bottom-up from the "
            "sacrum; the clinical measures as defined in Metrics")


def _missing(c: Context) -> str:
    return (f"problems by kind (an image without annotation, a region dropped): "
            f"{_kinds(_dict(c.facts.convert).get('counts'))}; a clinical measure that cannot "
            "be read from an outline is withheld with its reason, never imputed")


def _truth(c: Context) -> str:
    f = c.facts
    if f.readers is None:
        return f"readers and ground truth: {NOT_RECORDED}"
    if not f.readers:
        return "one reader's polygons (a single reading per image)"
    t = f.truths or {}
    return (f"{len(f.readers)} reader(s); ground truth: consensus on {t.get('consensus', 0)} "
            f"image(s), adjudicated on {t.get('adjudicated', 0)}, one reader's polygons on "
            f"{t.get(ONE_READER, 0)}")


def _readers(c: Context) -> str:
    n = len(c.facts.readers or [])
    return (f"{n} reader(s) recorded; qualifications and training: {TO_COMPLETE}" if n
            else f"readers: {NOT_RECORDED}; qualifications and training: {TO_COMPLETE}")


def _tools(c: Context) -> str:
    return f"VGG Image Annotator (files by format: {_counts(c.facts.via_versions)})"


def _variability(c: Context) -> str:
    f = c.facts
    if f.multi_read is None:
        return f"readers: {NOT_RECORDED}"
    if not f.multi_read:
        return "not measured: no image was read by two readers"
    t = f.truths or {}
    resolved = [f"consensus on {t['consensus']}"] if t.get("consensus") else []
    resolved += [f"adjudication on {t['adjudicated']}"] if t.get("adjudicated") else []
    return (f"{f.multi_read} image(s) read by two or more readers: IoU, boundary distances, "
            "ICC(2,1) and Bland-Altman limits of the measures (reports/agreement/); "
            "discrepancies resolved by " + (", ".join(resolved) + " image(s)" if resolved
                                           else "one reader's polygons (convert.reference)"))


def _test_images(c: Context) -> int | None:
    """The test set's size, when the split's records say it and k (None otherwise)."""
    sp, ss = _dict(c.facts.splits), _dict(c.facts.split_summary)
    test = _int(_dict(ss.get("test")).get("images"))
    return test if _int(sp.get("k")) is not None else None


def _partition(c: Context) -> str:
    sp, test = _dict(c.facts.splits), _test_images(c)
    if test is None:
        return f"partition: {NOT_RECORDED}"
    return (f"fixed test set of {test} images, the rest in {sp['k']} folds stratified by "
            f"{_md(sp.get('strata') or 'nothing')} (seed {_md(sp.get('seed'))})")


def _runs(c: Context, what: Callable[[Run], str | None]) -> str:
    said = [f"{_md(r.name or r.model)} fold {r.fold}: {_md(v)}"
            for r in c.runs for v in [what(r)]]
    return "; ".join(said) or f"{NOT_RECORDED} (no trained run)"


def _model(c: Context) -> str:
    return _runs(c, lambda r: None if r.architecture is None else
                 f"{r.architecture}, backbone {r.backbone or NOT_RECORDED}, input "
                 f"{r.input_scale or NOT_RECORDED}, "
                 + r.size)


def _software(c: Context) -> str:
    return ("MMDetection (instance models) and MMSegmentation (semantic models) on MMEngine; "
            + _runs(c, lambda r: r.software))


def _init(c: Context) -> str:
    return _runs(c, lambda r: r.initialized_from or (
        "random initialization (from scratch)" if r.config_read else None))


def _training(c: Context) -> str:
    return _runs(c, lambda r: None if r.schedule is None else
                 f"{r.schedule}, {r.optimizer or NOT_RECORDED}, augmentation "
                 f"{r.augmentation or NOT_RECORDED}")


def _selection(c: Context) -> str:
    return _runs(c, lambda r: r.picked_by)


def _metrics(c: Context) -> str:
    rule = f"mask IoU >= {_threshold(c.match_iou):g}" if _threshold(c.match_iou) else \
        f"matching threshold {NOT_RECORDED}"
    return ("pixel accuracy, mean accuracy, mean IoU, frequency-weighted IoU; recognition rates "
            f"judged automatically ({rule}); clinical measures against the ground truth's "
            "(Bland-Altman)")


def _stats(c: Context) -> str:
    return (f"Kruskal-Wallis, pairwise tests with Holm correction, Dunn's test, Cliff's delta; "
            f"95 % Wilson intervals for rates; significance level {c.alpha}")


#: (number, section, topic, answer, methods.md section); answer None: to be completed
ITEMS: tuple[tuple[str, str, str, Answer, str], ...] = (
    ("1", "Title / abstract", "AI methodology and its category named in the title", None, ""),
    ("2", "Title / abstract", "structured summary", None, ""),
    ("3", "Introduction", "scientific and clinical background, intended use", None, ""),
    ("4", "Introduction", "objectives and hypotheses", None, ""),
    ("5", "Study design", "prospective or retrospective", None, ""),
    ("6", "Study design", "study goal", None, ""),
    ("7", "Data", "data sources", _images, "Material"),
    ("8", "Data", "eligibility criteria, setting, dates", None, "Material"),
    ("9", "Data", "pre-processing", _export, "Image export"),
    ("10", "Data", "selection of data subsets", _subsets, "Annotation"),
    ("11", "Data", "definitions of data elements", _elements, "Annotation"),
    ("12", "Data", "de-identification", _deid, "De-identification"),
    ("13", "Data", "missing data", _missing, "Annotation"),
    ("14", "Ground truth", "definition of the reference standard", _truth, "Annotation"),
    ("15", "Ground truth", "rationale for the reference standard", None, ""),
    ("16", "Ground truth", "source of annotations; annotators' qualifications", _readers,
     "Annotation"),
    ("17", "Ground truth", "annotation tools", _tools, "Annotation"),
    ("18", "Ground truth", "inter- and intra-rater variability", _variability, "Annotation"),
    ("19", "Data partitions", "intended sample size and how it was determined", None, ""),
    ("20", "Data partitions", "assignment to partitions, proportions", _partition,
     "Data partition"),
    ("21", "Data partitions", "level at which partitions are disjoint",
     lambda c: "patient (grouped split: no patient in two partitions)"
     if _test_images(c) is not None else f"partition: {NOT_RECORDED}", "Data partition"),
    ("22", "Model", "model description (inputs, outputs, layers)", _model,
     "Models and training"),
    ("23", "Model", "software libraries and frameworks", _software, "Models and training"),
    ("24", "Model", "initialization of parameters", _init, "Models and training"),
    ("25", "Training", "training approach (augmentation, hyperparameters)", _training,
     "Models and training"),
    ("26", "Training", "selection of the final model", _selection, "Models and training"),
    ("27", "Training", "ensembling",
     lambda c: "none: each model and fold is evaluated on its own", "Models and training"),
    ("28", "Evaluation", "metrics of model performance", _metrics, "Metrics"),
    ("29", "Evaluation", "significance and uncertainty", _stats, "Statistics"),
    ("30", "Evaluation", "robustness or sensitivity analysis",
     lambda c: "subgroups with / without implants and overlapping vertebrae (model cards); "
     f"further analyses: {TO_COMPLETE}", "Results"),
    ("31", "Evaluation", "explainability or interpretability",
     lambda c: "no saliency method; overlays of the best and worst test images in the report",
     "Results"),
    ("32", "Evaluation", "validation on external data", None, ""),
    ("33", "Results: data", "flow of cases (diagram)",
     lambda c: f"{_images(c)}; annotation: {_subsets(c)}; the diagram: {TO_COMPLETE}",
     "Material"),
    ("34", "Results: data", "demographic and clinical characteristics per partition", None, ""),
    ("35", "Results: performance", "performance on all partitions",
     lambda c: "the test set: Table 1 (Results); validation: "
     + _runs(c, lambda r: r.picked_by), "Results"),
    ("36", "Results: performance", "estimates and their precision",
     lambda c: "means with SD per model, 95 % Wilson intervals for the recognition rates",
     "Results"),
    ("37", "Results: performance", "failure analysis",
     lambda c: "levels missed and shifted per model (model cards, Failure modes seen); worst "
     "overlays in the report", "Results"),
    ("38", "Discussion", "limitations (bias, uncertainty, generalizability)", None, ""),
    ("39", "Discussion", "implications for practice", None, ""),
    ("40", "Other", "registration number and registry", None, ""),
    ("41", "Other", "where the protocol can be accessed", None, ""),
    ("42", "Other", "funding and role of funders", None, ""),
)


def claim_checklist_md(f: Facts, runs: list[Run], alpha: float,
                       match_iou: float | None = None) -> str:
    """``claim_checklist.md`` (module docstring)."""
    c = Context(f, runs, alpha, match_iou)
    out = ["# CLAIM checklist (draft)", "",
           "*Written by `spinepipe report` from the pipeline's records: the Checklist for "
           "Artificial Intelligence in Medical Imaging (CLAIM 2020, 42 items; its topics in "
           "short). Where no record can answer, the authors complete it. Check every answer "
           "against the manuscript before submission.*", "",
           "| # | section | item | answer | methods.md |", "| --- | --- | --- | --- | --- |"]
    for number, section, topic, answer, where in ITEMS:
        said = TO_COMPLETE if answer is None else answer(c)
        out.append(f"| {number} | {section} | {topic} | {said} | {where or '-'} |")
    return "\n".join(out) + "\n"
