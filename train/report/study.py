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

from collections import Counter
from pathlib import Path

import pandas as pd

from converters.spine.plausible import SECOND_CONFIDENCE
from train.report.claim import claim_checklist_md
from train.report.study_cards import dataset_card_md, model_card_md
from train.report.study_facts import (NOT_RECORDED, ONE_READER, TO_COMPLETE, Facts, Sources,
                                      _counts, _counts_said, _dict, _int, _kinds, _md, _or,
                                      _pct, _range, _scalar, _threshold, gather)
from train.report.study_runs import Run, read_config, read_run

__all__ = ["NOT_RECORDED", "TO_COMPLETE", "Facts", "Run", "Sources", "dataset_card_md",
           "gather", "methods_md", "model_card_md", "read_config", "read_run", "render_html",
           "write_study"]


# --------------------------------------------------------------------------------------------
# the texts


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
            _md(v) for v in
            (r.architecture, r.backbone, r.input_scale, r.schedule, r.optimizer,
             r.augmentation, r.picked_by)),
            _or(r.training_minutes, "{:.1f} min"), _md(r.hardware)]
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
    counted = "; ".join(f"{_md(r.name or r.model)} fold {r.fold}: {r.size}" for r in runs)
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
        most = f" of at most {f.consensus_points} points" if f.consensus_points else ""
        out.append("")
        out.append(f"{len(f.readers)} reader(s) annotated; {f.multi_read} image(s) were read "
                   f"by two or more. Ground truth: the readers' consensus on "
                   f"{truths.get('consensus', 0)} image(s) (per vertebra, STAPLE with three or "
                   f"more readers, majority vote with two; one polygon{most}), "
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


def _postprocess_said(post: dict | None) -> str:
    """How the instance models' outputs were kept before scoring (the evaluations' params)."""
    post = _dict(post)
    if not post:
        return f" Post-processing of the instance models' outputs: {NOT_RECORDED}."
    score, area = _scalar(post.get("score_thr")), _int(post.get("min_area"))
    nms, inside, cross = (_threshold(post.get(k)) for k in
                          ("nms_iou", "containment_max", "cross_class_iou"))
    said = [f"instances scored below {_md(score)} or smaller than {_md(area)} pixels dropped"]
    if post.get("largest_component") is True:
        said.append("each mask kept as its largest connected region")
    said.append(f"same-class mask NMS at IoU {_md(nms)}")
    said.append(f"an instance covered for more than {_md(inside)} of its area by a "
                "better-scored one of its class dropped as a fragment")
    said.append(f"one overlapping a better-scored instance of the other class with IoU above "
                f"{_md(cross)} dropped as the same object labelled twice")
    return (" Before scoring, the instance models' outputs were post-processed: "
            + "; ".join(said) + ". The semantic models' instances are the connected components "
            "of their class masks.")


def _measures_said(m: dict | None) -> str:
    """How the clinical measures' endplates were found and what was withheld (the
    evaluations' ``params.measures``, :class:`converters.spine.refine.MeasuresConfig`)."""
    m = _dict(m)
    if not m:
        return f" Endplate refinement and plausibility limits of the measures: {NOT_RECORDED}."
    num = {k: _scalar(m.get(k)) for k in ("band_mm", "min_confidence", "max_segment_deg",
                                          "min_disc_ratio")}
    pct = {k: (_md(f"{100 * v:g}") if isinstance(v, (int, float)) else NOT_RECORDED)
           for k, v in num.items()}
    refined = m.get("refine_predictions") is True
    if refined:
        said = (f" Each endplate of a model's outline was refined on the full-resolution image: "
                f"the bone's edge searched within {_md(num['band_mm'])} mm either side of the "
                "outline's and fitted by RANSAC and least squares; an endplate whose edge was "
                f"seen along less than {pct['min_confidence']} % of its length was withheld "
                "with its vertebra" + (", the ground truth's polygons refined the same way."
                                       if m.get("refine") is True else "."))
    elif m.get("refine_predictions") is False:
        said = " Endplates were read from the outlines (not refined on the image)."
    else:
        said = f" Endplate refinement: {NOT_RECORDED}."
    angle, ratio = num["max_segment_deg"], num["min_disc_ratio"]
    if isinstance(angle, (int, float)) and angle >= 180:
        said += " No limit on the segmental angles was applied."
    else:
        said += (" A vertebra was withheld where the segmental angle to its neighbour exceeded "
                 f"{_md(angle)} degrees either way (that many times the segments spanned where "
                 "a vertebra between them was missing)")
        said += "." if refined or m.get("refine") is True else \
            " (an outline that no lumbar segment shows)."
    if refined or m.get("refine") is True:
        if isinstance(ratio, (int, float)) and ratio <= 0:
            said += " No check of the discs' heights was applied."
        else:
            said += (" Both vertebrae of a disc whose two endplates, found on the image, lay "
                     f"within {pct['min_disc_ratio']} % of a vertebral body's height of each "
                     "other along their length were withheld (one edge taken for both)")
            said += (f", unless the lower one's edge, searched again a disc's height lower, was "
                     f"seen along {100 * SECOND_CONFIDENCE:g} % of its length.")
    if m.get("split_fused") is True:
        said += (" Where a semantic model's connected region covered two or more vertebral "
                 "bodies (taller than 1.6 bodies, heights measured along the spine's axis), it "
                 "was cut across the spine into its bodies, at its waist near where each disc "
                 "would lie (where it had none, there), before the levels were assigned, for "
                 "the measures only (recognition counted it as one region).")
    elif m.get("split_fused") is False:
        said += (" A semantic model's region covering two or more vertebrae was not measured, "
                 "nor any level above it.")
    return said + " A measure withheld was counted as not measurable, never imputed."


def methods_md(f: Facts, runs: list[Run], table1_md: str, notes: list[str],
               alpha: float, match_iou: float | None = None,
               postprocess: dict | None = None, measures: dict | None = None) -> str:
    """``methods.md`` (module docstring); ``match_iou``: the evaluations' matching
    threshold, ``postprocess``: their post-processing, ``measures``: how their clinical
    measures were made (all from their summaries' ``params``)."""
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
            "ground truth's by Bland-Altman analysis." + _measures_said(measures)
            + _postprocess_said(postprocess),
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
                match_iou: float | None = None, postprocess: dict | None = None,
                measures: dict | None = None) -> str:
    """Write ``methods.md``, ``dataset_card.md`` and ``model_cards/<model>.md`` under
    ``output``; return ``methods.md``'s text."""
    from converters.core.files import write_text
    facts = gather(src)
    runs = [read_run(src.models, m, k) for m in models for k in folds.get(m, [])]
    methods = methods_md(facts, runs, table1_md, [notes.get("sample"), notes.get("finding")],
                         alpha, match_iou, postprocess, measures)
    write_text(output / "methods.md", methods)
    write_text(output / "dataset_card.md", dataset_card_md(facts))
    write_text(output / "claim_checklist.md", claim_checklist_md(facts, runs, alpha, match_iou))
    for model in models:
        mine = [r for r in runs if r.model == model] or [Run(model, 0)]
        write_text(output / "model_cards" / f"{model}.md",
                   model_card_md(mine, facts, t1, sub, agreement.get(model), per_image,
                                 notes.get("sample")))
    return methods
