"""The study writes itself up (issue 26): ``reports/study/methods.md``, ``dataset_card.md``,
``model_cards/<model>.md`` and ``claim_checklist.md`` (:mod:`train.report.claim`), every number
read from the pipeline's own records.

Records read (each optional: a missing or unreadable record makes its sentence say
"not recorded", it never fails the report):

- ``<anon>/report.json`` (anonymize: counts, the action table, the options in force) and the
  anonymized headers it lists (modality, manufacturer, model: read without pixels);
- ``<png>/report.json`` (export's options) and ``<png>/provenance/*.json`` (per image: patient
  pseudonym, size, bits stored, photometric interpretation, pixel spacing);
- ``<processed>/report.json`` (convert: annotation formats, problems by kind), ``images.csv``
  (implants, overlaps) and ``coco.json`` (classes, points per polygon);
- ``<splits>/splits.json`` and ``summary.json`` (test set, folds, strata, seed);
- ``<models>/<model>/fold<k>/``: the leaf ``config.py`` (read as data: only its literal
  assignments are evaluated, never executed), ``metrics.json`` (the metric that picked the
  checkpoint, the parameter count, the software versions), ``train.log`` (duration, hardware), ``best.pth`` (its SHA-256);
- the evaluations and the report's own tables (Table 1, subgroups, the measures' agreement).

- ``<phantom_truth>`` (``data/raw/truth.json``): when it lists the phantom's cases, the texts say
  the data is synthetic (an empty one, written with the phantom off, says nothing).

Records are hostile input: each part of a record that is not as its stage writes it leaves its
facts "not recorded" (never a traceback, never "None" in a sentence); files are read through
:func:`converters.core.records.open_input` (never a FIFO) with a size bound; headers are read
only below the de-identified tree and never through a link out of it (the private folder lies
beside it); every record value is Markdown-escaped, and the page's renderer has links, images
and raw HTML switched off.

Nothing identifying is read: only the de-identified tree, its public report and the records
after it (the private folder is never opened). The texts are drafts a researcher edits: every
sentence that no record can answer (ethics approval, clinical setting, readers' qualifications)
says "to be completed by the authors" instead of inventing an answer.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pandas as pd

from train.report.claim import claim_checklist_md
from train.report.study_facts import (NOT_RECORDED, ONE_READER, TO_COMPLETE, Facts, Sources,
                                      _counts, _dict, _int, _kinds, _md, _pct, _range,
                                      _threshold, gather)
from train.report.study_runs import Run, read_config, read_run

__all__ = ["NOT_RECORDED", "TO_COMPLETE", "Facts", "Run", "Sources", "dataset_card_md",
           "gather", "methods_md", "model_card_md", "read_config", "read_run", "render_html",
           "write_study"]


# --------------------------------------------------------------------------------------------
# the texts


def _or(value, fmt: str = "{}") -> str:
    return NOT_RECORDED if value is None else fmt.format(value)


def _counts_said(counts) -> str:
    """anonymize's counts (``99 anonymized, 11 quarantined``), or not recorded."""
    if not isinstance(counts, dict) or not counts:
        return f"counts {NOT_RECORDED}"
    return ", ".join(f"{_md(v)} {_md(k)}" for k, v in counts.items())


def _options_said(opts: dict) -> str:
    """The de-identification options in force: those switched on, and the lists given."""
    on = [_md(str(k).replace("_", " ")) for k, v in opts.items() if v is True]
    lists = [f"{_md(str(k).replace('_', ' '))}: {len(v)}" for k, v in opts.items()
             if isinstance(v, list) and v]
    return "; ".join([", ".join(on) or "none switched on", *lists])


def _runs_said(runs: list[Run]) -> list[str]:
    """The models table and how the weights started."""
    out = ["| model | architecture | backbone | input (w x h) | schedule | optimizer | "
           "augmentation | checkpoint picked by | training | hardware |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        cells = [f"{_md(r.name or r.model)} (fold {r.fold})", *(
            _or(None if v is None else _md(v)) for v in
            (r.architecture, r.backbone, r.input_scale, r.schedule, r.optimizer,
             r.augmentation, r.picked_by)),
            _or(r.training_minutes, "{:.1f} min"), _or(None if r.hardware is None
                                                       else _md(r.hardware))]
        out.append("| " + " | ".join(cells) + " |")
    started = [r for r in runs if r.initialized_from]
    scratch = [r for r in runs if r.config_read and not r.initialized_from]
    unknown = [r for r in runs if not r.config_read]
    out.append("")
    if scratch:
        out.append("Trained from scratch (no checkpoint loaded, no pre-trained backbone): "
                   + ", ".join(f"{_md(r.name or r.model)} fold {r.fold}" for r in scratch)
                   + ".")
    for r in started:
        out.append(f"{_md(r.name or r.model)} fold {r.fold} started from "
                   f"{_md(r.initialized_from)}.")
    if unknown:
        out.append("Where the weights started (no leaf config read): "
                   + ", ".join(f"{_md(r.name or r.model)} fold {r.fold}" for r in unknown)
                   + f": {NOT_RECORDED}.")
    counted = "; ".join(f"{_md(r.name or r.model)} fold {r.fold}: " + (
        f"{r.parameters:,} parameters" if r.parameters is not None else NOT_RECORDED)
        for r in runs)
    software = "; ".join(_md(v) for v in sorted({r.software for r in runs if r.software})) \
        or f"versions {NOT_RECORDED}"
    out.append(f"Models were built with MMDetection (instance models) or MMSegmentation "
               f"(semantic models) on MMEngine ({software}). Size: {counted}.")
    return out


def _material_said(f: Facts) -> list[str]:
    """Material: the images, what they show; eligibility and ethics left to the authors."""
    out: list[str] = []
    if f.images is not None:
        out.append(f"The dataset comprised {f.images} radiographs of {_or(f.patients)} "
                   f"patients (modality: {_counts(f.modalities)}; bits stored: "
                   f"{_counts(f.bits)}), {_range(f.rows)} x {_range(f.columns)} pixels (rows x "
                   f"columns), pixel spacing {_range(f.spacing_mm, '{:.3g}')} mm (as the "
                   f"headers give it). Manufacturer (from the de-identified headers): "
                   f"{_counts(f.manufacturers)}.")
    else:
        out.append(f"Images: {NOT_RECORDED} (no export provenance records).")
    if f.synthetic:
        out.append("")
        out.append("**These images are spinepipe's synthetic phantom, not patient data**: "
                   "every number below describes the demonstration, not a clinical cohort.")
    if f.annotated is not None:
        out.append("")
        if f.implants is not None and f.overlaps is not None:
            out.append(f"Of the {f.annotated} annotated images, {f.implants} "
                       f"({_pct(f.implants, f.annotated)}) show implants and {f.overlaps} "
                       f"({_pct(f.overlaps, f.annotated)}) overlapping vertebrae in projection.")
        else:
            out.append(f"{f.annotated} images were annotated; implants and overlaps: "
                       f"{NOT_RECORDED}.")
    out.append("")
    out.append(f"Eligibility criteria, clinical setting and collection period: {TO_COMPLETE}. "
               f"Ethics approval and informed consent (or its waiver): {TO_COMPLETE}.")
    return out


def _deidentification_said(f: Facts) -> list[str]:
    """De-identification: anonymize's action table, options and counts."""
    out: list[str] = []
    a = f.anonymize
    if a:
        opts = _dict(a.get("options"))
        out.append(f"Images were de-identified by spinepipe (action table "
                   f"`{_md(a.get('action_table', NOT_RECORDED))}`, an allowlist after DICOM "
                   f"PS3.15 Annex E's Basic Application Level Confidentiality Profile; options: "
                   f"{_options_said(opts)}; burned-in text: "
                   f"{_md(opts.get('burned_in', NOT_RECORDED))}): "
                   f"{_counts_said(a.get('counts'))}. Identifiers were replaced by keyed "
                   "pseudonyms; the key and the re-identification ledger are kept in a private "
                   "folder outside the shared data.")
    else:
        out.append(f"De-identification: {NOT_RECORDED} (no anonymize report).")
    return out


def _export_said(f: Facts) -> list[str]:
    """Image export: bits and equalization."""
    out: list[str] = []
    e = _dict(_dict(f.export).get("options"))
    if e.get("bits") and e.get("equalization"):
        out.append(f"Each radiograph was exported as {_md(e['bits'])}-bit grayscale PNG after "
                   f"the Modality LUT, with {_md(e['equalization'])} histogram equalization"
                   + (" over the VOI window" if e.get("use_voi_window") is True else "")
                   + f" ({_md(_dict(f.export).get('exported', NOT_RECORDED))} exported).")
    else:
        out.append(f"Export: {NOT_RECORDED}.")
    return out


def _annotation_said(f: Facts) -> list[str]:
    """Annotation: the VIA polygons, the problems found, the readers and the ground truth."""
    out: list[str] = []
    c = f.convert
    if c:
        pts = (f"{f.points[0]:.1f} points per polygon on average (range {f.points[1]}-"
               f"{f.points[2]})" if f.points else f"points per polygon {NOT_RECORDED}")
        out.append(f"Vertebrae were outlined as polygons in the VGG Image Annotator (VIA; "
                   f"files read, by format: {_counts(f.via_versions)}), one polygon per "
                   f"vertebra, classes {', '.join(_md(x) for x in f.classes or []) or NOT_RECORDED}"
                   f": {_md(c.get('annotations', NOT_RECORDED))} instances on "
                   f"{_md(c.get('images', NOT_RECORDED))} images, {pts}. Problems found by "
                   f"spinepipe's checks: {_kinds(c.get('counts'))}.")
    else:
        out.append(f"Annotation: {NOT_RECORDED} (no convert report).")
    if f.readers:
        truths = f.truths or Counter()
        out.append("")
        out.append(f"{len(f.readers)} reader(s) annotated; {f.multi_read} image(s) were read "
                   f"by two or more. Ground truth: the readers' consensus on "
                   f"{truths.get('consensus', 0)} image(s) (per vertebra, STAPLE with three or "
                   f"more readers, majority vote with two; one polygon of at most 15 points), "
                   f"an expert's adjudication on {truths.get('adjudicated', 0)}, one reader's "
                   f"polygons on {truths.get(ONE_READER, 0)}. Inter-reader agreement "
                   "(IoU, boundary distances, the clinical measures' ICC(2,1) and Bland-Altman "
                   "limits) is reported beside the models (reports/agreement/).")
    out.append("")
    out.append(f"Readers, their qualifications and training: {TO_COMPLETE}.")
    return out


def _partition_said(f: Facts, runs: list[Run]) -> list[str]:
    """Data partition: the test set, the folds, the folds trained in this run."""
    out: list[str] = []
    sp, ss = _dict(f.splits), _dict(f.split_summary)
    test = _dict(ss.get("test"))
    if _int(test.get("images")) is not None and _int(sp.get("k")) is not None:
        out.append(f"A fixed test set of {test['images']} images ({_or(_int(test.get('patients')))}"
                   f" patients) was held out; the remaining images were split into {sp['k']} "
                   f"folds, grouped by patient (no patient in two partitions) and stratified by "
                   f"{_md(sp.get('strata') or 'nothing')} (seed {_md(sp.get('seed'))}).")
        tr = [_int(_dict(v.get("train")).get("images")) for k, v in ss.items()
              if str(k).startswith("fold") and isinstance(v, dict)]
        va = [_int(_dict(v.get("val")).get("images")) for k, v in ss.items()
              if str(k).startswith("fold") and isinstance(v, dict)]
        if tr and va and None not in tr + va:
            out.append(f"Each fold trained on {_range((min(tr), max(tr)))} images and "
                       f"validated on {_range((min(va), max(va)))}.")
        folds = sorted({r.fold for r in runs})
        if folds:
            out.append(f"Folds trained and evaluated in this run: "
                       f"{', '.join(str(k) for k in folds)} of {sp['k']}"
                       + ("" if len(folds) == sp["k"] else
                          " (not a full cross-validation: the results below are of these "
                          "folds only)") + ".")
    else:
        out.append(f"Data partition: {NOT_RECORDED}.")
    return out


def methods_md(f: Facts, runs: list[Run], table1_md: str, notes: list[str],
               alpha: float, match_iou: float | None = None) -> str:
    """``methods.md`` (module docstring); ``match_iou``: the evaluations' matching
    threshold (their summaries' ``params``)."""
    out = ["# Methods (draft)", "",
           "*Written by `spinepipe report` from the pipeline's records; every number below is "
           "read from a record. Edit before submission.*", ""]
    out += ["## Material", "", *_material_said(f)]
    out += ["", "## De-identification", "", *_deidentification_said(f)]
    out += ["", "## Image export", "", *_export_said(f)]
    out += ["", "## Annotation", "", *_annotation_said(f)]
    out += ["", "## Data partition", "", *_partition_said(f, runs)]
    out += ["", "## Models and training", ""]
    out += _runs_said(runs) if runs else [f"Models: {NOT_RECORDED} (no trained run)."]
    rule = (f"a predicted instance overlapping it with a mask IoU of at least {match_iou:g}"
            if _threshold(match_iou) is not None else
            f"a predicted instance matching it (threshold {NOT_RECORDED})")
    out += ["", "## Metrics", "",
            "Pixel accuracy, mean accuracy, mean intersection over union (IoU) and frequency-"
            "weighted IoU per test image over the classes background, lumbar vertebra and "
            f"sacrum (Long et al., CVPR 2015). A vertebra counts as recognized when {rule} "
            "(one prediction per vertebra, judged automatically), an image when every vertebra "
            "is; the composite rate also requires overlapping vertebrae to be kept apart. "
            "Clinical measures (lumbar lordosis L1-S1, segmental angles, disc and body heights, "
            "slip) are computed from the endplates of the outlines and compared with the "
            "ground truth's by Bland-Altman analysis.",
            "", "## Statistics", "",
            f"Per-image values were pooled over the folds evaluated. Models were compared by the "
            f"Kruskal-Wallis test (epsilon-squared effect size), pairwise t-tests with "
            f"Holm-Bonferroni correction, Dunn's test (Holm) and Cliff's delta; normality by "
            f"Shapiro-Wilk, Tukey HSD where it applies; 95 % Wilson intervals for rates; "
            f"significance level {alpha}. These tests treat the models' values as independent "
            "samples although every model is scored on the same test images.",
            "", "## Results", "", table1_md.strip(), ""]
    out += [n for n in notes if n]
    return "\n".join(out).rstrip() + "\n"


def _card_measures(model: str, agreement: dict | None, per_image: pd.DataFrame) -> list[str]:
    """A model card's clinical measures and the failure modes seen."""
    out: list[str] = []
    if agreement:
        g = _dict(_dict(agreement.get("groups")).get("lordosis_deg"))
        rate = g.get("measurable_rate")
        if g.get("mae") is None:
            out += ["", "## Clinical measures", "",
                    "Lordosis L1-S1: not measurable on any test image (the model's outlines "
                    "gave no usable L1 and S1 endplates together)."]
        else:
            out += ["", "## Clinical measures", "",
                    f"Lordosis L1-S1 against the ground truth: MAE {g['mae']:.2f} deg, bias "
                    f"{_or(g.get('bias'), '{:.2f}')} deg, measurable on "
                    f"{_or(None if rate is None else 100 * rate, '{:.0f} %')} of the images."]
    mine = per_image[per_image["model"] == model] if "model" in per_image else per_image
    if len(mine):
        missed = Counter(lv for cell in mine.get("missed", pd.Series(dtype=str)).fillna("")
                         for lv in str(cell).split(";") if lv)
        out += ["", "## Failure modes seen", ""]
        out.append(f"Levels missed on the test images: {_counts(missed) if missed else 'none'}; "
                   f"images with a level shifted: "
                   f"{int((mine.get('shifted', pd.Series(dtype=str)).fillna('') != '').sum())} "
                   "(the report's overlays and endplate figures show examples).")
    return out


def model_card_md(runs: list[Run] | Run, f: Facts, t1: pd.DataFrame, sub: pd.DataFrame,
                  agreement: dict | None, per_image: pd.DataFrame, sample_note: str | None
                  ) -> str:
    """``model_cards/<model>.md`` (Mitchell et al. 2019's sections); ``runs``: the model's
    runs, one per fold evaluated (its test metrics pool them)."""
    runs = [runs] if isinstance(runs, Run) else runs
    name = _md(runs[0].name or runs[0].model)
    out = [f"# Model card: {name}", "", "## Model details", ""]
    said = _md                  # a run's fact, or "not recorded"
    for run in runs:
        out.append(f"- fold {run.fold}: architecture {said(run.architecture)}, backbone "
                   f"{said(run.backbone)}, input {said(run.input_scale)}, trained "
                   f"{said(run.schedule)} with {said(run.optimizer)}"
                   + (f" from {_md(run.initialized_from)}" if run.initialized_from else
                      " from scratch" if run.config_read else
                      f" (where its weights started: {NOT_RECORDED})")
                   + f", augmentation: {said(run.augmentation)}; "
                   + (f"{run.parameters:,} parameters" if run.parameters is not None else
                      f"parameters {NOT_RECORDED}")
                   + f"; checkpoint: "
                   f"{said(run.picked_by)}, SHA-256 `{_or(run.checkpoint_sha256)}`; training "
                   f"{_or(run.training_minutes, '{:.1f} min')} on {said(run.hardware)}.")
    out += ["", "## Intended use", "",
            "Research on segmenting lumbar vertebrae and the sacrum in lateral radiographs. "
            "**Not for clinical decision-making**: no regulatory clearance, no prospective "
            "validation.", "", "## Training data", ""]
    for run in runs:
        fold = _dict(_dict(f.split_summary).get(f"fold{run.fold}"))
        trained, val = (_int(_dict(fold.get(k)).get("images")) for k in ("train", "val"))
        out.append(f"Fold {run.fold}: {_or(trained)} training and {_or(val)} validation "
                   "images." if fold else f"Fold {run.fold}: {NOT_RECORDED}.")
    if f.synthetic:
        out.append("The images are spinepipe's synthetic phantom: the numbers below say "
                   "nothing about real radiographs.")
    model = runs[0].model
    out += ["", "## Metrics on the test set", ""]
    if model in t1.index:
        r = t1.loc[model]
        out.append(f"- mean IoU {100 * r['mean_iou_mean']:.1f} % (SD "
                   f"{100 * r['mean_iou_sd']:.1f}) over {int(r['images'])} test images "
                   f"(folds {', '.join(str(x.fold) for x in runs)} pooled);")
        for rate in ("recognition_rate", "composite_recognition_rate"):
            lo, hi = r.get(f"{rate}_ci_low"), r.get(f"{rate}_ci_high")
            ci = (f" (95 % CI {100 * lo:.0f}-{100 * hi:.0f} %)"
                  if lo is not None and not math.isnan(lo) else "")
            out.append(f"- {rate.replace('_', ' ')} {100 * r[rate]:.0f} %{ci};")
    else:
        out.append(f"Metrics: {NOT_RECORDED}.")
    rows = sub[sub["model"] == model] if "model" in sub else sub.iloc[0:0]
    if len(rows):
        out += ["", "## Subgroups (composite recognition)", ""]
        for _, r in rows.iterrows():
            out.append(f"- {r['subgroup']}: {int(r['composite'])} of {int(r['images'])} "
                       f"test images")
    out += _card_measures(model, agreement, per_image)
    out += ["", "## Limitations", ""]
    if sample_note:
        out.append(sample_note)
    out.append(f"External validation and the clinical population: {TO_COMPLETE}.")
    return "\n".join(out).rstrip() + "\n"


def dataset_card_md(f: Facts) -> str:
    """``dataset_card.md``: the datasheet questions (Gebru et al. 2021) answered from the
    records."""
    out = ["# Dataset card (draft)", "", "## Motivation", "",
           f"Segmenting lumbar vertebrae and the sacrum on lateral radiographs. Funding and "
           f"creators: {TO_COMPLETE}.", "", "## Composition", ""]
    if f.synthetic:
        out.append("**Synthetic**: spinepipe's phantom, generated; no patient data.")
    out.append(f"- {_or(f.images)} radiographs of {_or(f.patients)} patients; "
               f"{_or(f.annotated)} annotated with {_or(f.instances)} polygons "
               f"(classes: {', '.join(_md(x) for x in f.classes or []) or NOT_RECORDED});")
    if f.annotated and f.implants is not None and f.overlaps is not None:
        out.append(f"- implants on {f.implants} images ({_pct(f.implants, f.annotated)}), "
                   f"overlapping vertebrae on {f.overlaps} ({_pct(f.overlaps, f.annotated)}).")
    out += ["", "## Collection and pre-processing", ""]
    out.append(f"- de-identified on site: {_counts_said(_dict(f.anonymize).get('counts'))};")
    opts = _dict(_dict(f.export).get("options"))
    out.append(f"- exported as {_md(opts.get('bits', NOT_RECORDED))}-bit PNG, "
               f"{_md(opts.get('equalization', NOT_RECORDED))} histogram equalization;")
    out.append(f"- collection period, devices and selection: {TO_COMPLETE}; ethics approval "
               f"and consent: {TO_COMPLETE}.")
    out += ["", "## Labelling", "",
            f"VIA polygons (files by format: {_counts(f.via_versions)}); spinepipe's checks "
            f"found: {_kinds(_dict(f.convert).get('counts'))}.",
            "", "## Uses", "",
            "Training and comparing segmentation models; clinical measures research. Not for "
            "clinical decisions.", "", "## Distribution", "",
            "Identifiable data (original DICOM, the pseudonym ledger and its key) is kept in a "
            "private folder that is never part of a DVC output or this repository; sharing the "
            f"de-identified images: {TO_COMPLETE}."]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# writing


def render_html(markdown_text: str) -> str:
    """A study text as HTML for the report page (raw HTML in the text is escaped, never
    passed through: record values reach these texts)."""
    from markdown_it import MarkdownIt
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.disable(["image", "link", "autolink"])      # the page fetches nothing, links nowhere
    return md.render(markdown_text)


def write_study(output: Path, src: Sources, *, models: list[str], folds: dict[str, list[int]],
                table1_md: str, t1: pd.DataFrame, sub: pd.DataFrame, agreement: dict,
                per_image: pd.DataFrame, notes: dict[str, str | None], alpha: float,
                match_iou: float | None = None) -> str:
    """Write ``methods.md``, ``dataset_card.md`` and ``model_cards/<model>.md`` under
    ``output``; return ``methods.md``'s text."""
    from converters.core.files import write_text
    facts = gather(src)
    runs = [read_run(src.models, m, k) for m in models for k in folds.get(m, [])]
    methods = methods_md(facts, runs, table1_md, [notes.get("sample"), notes.get("finding")],
                         alpha, match_iou)
    write_text(output / "methods.md", methods)
    write_text(output / "dataset_card.md", dataset_card_md(facts))
    write_text(output / "claim_checklist.md", claim_checklist_md(facts, runs, alpha, match_iou))
    for model in models:
        mine = [r for r in runs if r.model == model] or [Run(model, 0)]
        write_text(output / "model_cards" / f"{model}.md",
                   model_card_md(mine, facts, t1, sub, agreement.get(model), per_image,
                                 notes.get("sample")))
    return methods
