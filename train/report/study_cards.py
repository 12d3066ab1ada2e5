"""The cards of the study's write-up (:mod:`train.report.study`): ``model_cards/<model>.md``
(Mitchell et al. 2019's sections: details, intended use, training data, test metrics with their
intervals, subgroups, the clinical measures, failure modes, limitations) and ``dataset_card.md``
(Gebru et al. 2021's datasheet questions), every number read from a record (:mod:`train.report.
study_facts`, :mod:`train.report.study_runs`), "not recorded" where it is missing.
"""
from __future__ import annotations

import math
from collections import Counter

import pandas as pd

from train.report.study_facts import (NOT_RECORDED, TO_COMPLETE, Facts, _counts, _counts_said,
                                      _dict, _int, _kinds, _md, _or, _pct)
from train.report.study_runs import Run


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
    for run in runs:
        out.append(f"- fold {run.fold}: architecture {_md(run.architecture)}, backbone "
                   f"{_md(run.backbone)}, input {_md(run.input_scale)}, trained "
                   f"{_md(run.schedule)} with {_md(run.optimizer)}"
                   + (f" from {_md(run.initialized_from)}" if run.initialized_from else
                      " from scratch" if run.config_read else
                      f" (where its weights started: {NOT_RECORDED})")
                   + f", augmentation: {_md(run.augmentation)}; "
                   + run.size
                   + f"; checkpoint: "
                   f"{_md(run.picked_by)}, SHA-256 `{_or(run.checkpoint_sha256)}`; training "
                   f"{_or(run.training_minutes, '{:.1f} min')} on {_md(run.hardware)}.")
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
