"""Evaluation of one model x fold on the fixed test set: predictions, per-image pixel metrics
(:mod:`train.evaluation.metrics`), recognition rates (:mod:`train.evaluation.recognition`), pooled
metrics.

Ground truth: the split's ``test/coco.json`` (instances, levels) and the convert stage's class
masks (``masks/<stem>.png``). Layout of an evaluation folder (``reports/eval/<model>/fold<k>``):

- ``predictions/<stem>.png``: the merged class mask of the prediction (uint8, 0 background,
  1 lumbar, 2 sacrum; instance models: where classes overlap the larger value wins, as in the
  ground truth);
- ``instances.json``: the predicted instances in COCO results format (``image_id``,
  ``category_id``, ``segmentation`` as RLE, ``score``) plus ``file_name`` and ``level``; COCO
  tools (``COCO.loadRes``) read it. Semantic models: the connected components, score 1.0;
- ``per_image.csv``: per test image: ``predicted`` (0 when the image had no prediction), the
  four pixel metrics, ``recognized``, ``composite``, counts, missed / shifted levels, lost /
  false overlaps, ``gt_overlaps`` (overlapping ground-truth vertebra pairs, by the composite
  rule), ``overlaps_apart`` (those kept apart: both vertebrae matched) and ``implants`` (the
  image's implant regions from the test set; empty when the test set does not say): the
  report's subgroups;
- ``measures.csv`` / ``measures_truth.csv``: the clinical measures
  (:mod:`converters.spine.measures`, the columns of convert's ``measures.csv``) of the
  prediction and of the ground truth, per test image, in millimetres too where export's
  provenance gives the pixel spacing; a semantic model's fused lumbar blobs cut into their
  bodies first and the levels assigned again, none to a fragment (:mod:`converters.spine.fused`,
  ``measures.split_fused``; recognition keeps the blobs whole and the fragments' levels, so the
  two can differ) and the prediction's endplates refined on the test image
  (:mod:`converters.spine.refine`, params.yaml section ``measures``), the ground truth's only
  with ``measures.refine``;
- ``endplates.json``: per test image, ``prediction`` and ``truth``, per level and side the
  endplate measured (``[posterior, anterior]`` corners, x y pixels) and, where refined, its
  ``prior`` (from the outline), ``confidence``, ``shift_px``, ``tilt_deg``, ``rising``
  (false: the edge found falls into the body, metal on the endplate) and why it was
  ``withheld``;
- beside the folder, ``<folder>.json`` (``reports/eval/<model>/fold<k>.json``): the headline
  numbers, flat (:data:`train.models.HEADLINE`), DVC's metrics of the evaluate stage;
- ``summary.json``: model, fold, family, means of the four metrics, ``recognition_rate``,
  ``composite_recognition_rate``, per-level recognition, pooled metrics, missing predictions,
  ``lordosis_mae_deg`` (and ``lordosis_measurable_rate``: of the images whose ground truth
  gives it), ``segmental_mae_deg``, ``disc_height_mae_mm``, ``measurable_rate`` (images where
  the prediction gives every measure the ground truth gives), ``measures_refined`` and
  ``measures`` (agreement with the ground truth's measures, Bland-Altman:
  :mod:`train.evaluation.agreement`).

Scoring reads only the predictions folder, so predictions made elsewhere (the same layout:
class-mask PNGs named like the test images, ``instances.json`` optional) are scored the same
way. A test image without a prediction PNG counts as a miss: it is scored as an all-background
prediction (recognized 0), flagged ``predicted = 0`` and listed; it is never dropped.
"""
from __future__ import annotations

import csv
import io
import secrets
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ContextManager

import cv2
import numpy as np

from converters.annotations.coco import PNG_LABEL_PARAMS
from converters.core.errors import (MissingInputError, ShapeMismatchError,
                                    SpinepipeError)
from converters.core.files import TEMP_MARK, prepare_output, write_bytes, write_json, write_text
from converters.spine.levels import LEVELS
from train.evaluation.metrics import METRICS, confusion, metrics_from_confusion, pooled_metrics
from train.models import HEADLINE, eval_metrics_file, family, run_dir
from converters.spine.measures import image_measures, measures_csv
from converters.spine.refine import MeasuresConfig
from converters.spine.fused import levelled, split_fused
from converters.core.paths import UnsafePathError
from converters.core.provenance import pixel_spacing, read_record
from converters.core.records import open_input, read_json
from train.evaluation.agreement import summarize as summarize_measures
from train.evaluation.test_set import TestSet, read_mask
from train.evaluation.recognition import (VERTEBRA_CLASSES, Instances, PostprocessConfig,
                                          RecognitionConfig, components, merged_class_mask,
                                          postprocess_instances, recognize)

PER_IMAGE_FIELDS = ("file_name", "predicted", *METRICS, "recognized", "composite", "n_gt",
                    "n_pred", "n_matched", "missed", "shifted", "lost_overlaps",
                    "false_overlaps", "gt_overlaps", "overlaps_apart", "implants")


@dataclass(frozen=True)
class EvaluateConfig:
    """params.yaml section ``evaluate`` (post-processing: section ``postprocess``)."""

    match_iou: float = 0.5    # a ground-truth instance is recognized at this mask IoU
    device: str = "auto"      # auto (GPU if there is one) | cpu | cuda:N
    batch_size: int = 4


# --------------------------------------------------------------------------------------------
# predictions


def write_predictions(run_dir: str | Path, test: TestSet, images: str | Path, out: str | Path,
                      cfg: EvaluateConfig, post: PostprocessConfig,
                      progress: Callable[[int, int], None] | None = None) -> None:
    """Run the trained model on the test images; write ``predictions/`` and
    ``instances.json`` under ``out``."""
    from train.infer.inference import predict

    out, images = Path(out), Path(images)
    prepare_output(out)
    paths = [images / im["file_name"] for im in test.images]
    for p in paths:
        if not p.is_file():
            raise MissingInputError("test image not found", produced_by="export", file=p)
    by_name = {im["file_name"]: im for im in test.images}
    results: list[dict] = []
    for done, (path, raw) in enumerate(predict(run_dir, paths, device=cfg.device,
                                               batch_size=cfg.batch_size), 1):
        im = by_name[path.name]
        if raw.class_mask is not None:
            inst = components(raw.class_mask, test.class_values, post.min_area)
            mask = raw.class_mask
        else:
            inst = postprocess_instances(raw.classes, raw.masks, raw.scores, post)
            mask = merged_class_mask(inst, (im["height"], im["width"]), test.class_values)
        ok, png = cv2.imencode(".png", mask, PNG_LABEL_PARAMS)
        write_bytes(out / "predictions" / path.name, png.tobytes())
        for cls, rle, score, level in zip(inst.classes, inst.rles, inst.scores, inst.levels):
            results.append({"image_id": im["id"], "file_name": im["file_name"],
                            "category_id": test.class_values[cls], "segmentation": rle,
                            "score": score, "level": level})
        if progress:
            progress(done, len(paths))
    write_json(out / "instances.json", results, indent=None)


# --------------------------------------------------------------------------------------------
# scoring


def _predicted_instances(pred_dir: Path, test: TestSet) -> dict[str, Instances] | None:
    path = pred_dir / "instances.json"
    if not path.is_file():
        return None
    results = read_json(path, what="predicted instances", made_by="evaluate", shape=list)
    ids = {im["id"]: im["file_name"] for im in test.images}
    names = {v: k for k, v in test.class_values.items()}
    out: dict[str, Instances] = {}
    for k, r in enumerate(results):
        name = r.get("file_name") or ids.get(r.get("image_id"))
        if name is None or r.get("category_id") not in names:
            raise SpinepipeError(f"result {k}: unknown image or category", file=path)
        inst = out.setdefault(name, Instances())
        inst.classes.append(names[r["category_id"]])
        inst.rles.append(r["segmentation"])
        inst.scores.append(float(r.get("score", 1.0)))
        inst.levels.append(r.get("level"))
    return {k: v.with_levels() if any(lv is None for lv in v.levels) else v
            for k, v in out.items()}


def predicted_outlines(inst: Instances, *, split: bool = False
                       ) -> list[tuple[str | None, np.ndarray]]:
    """(level, outline) of each predicted vertebra: its mask traced along the pixel edges; with
    ``split``, fused lumbar blobs cut into their bodies and the levels assigned again
    (:mod:`converters.spine.fused`)."""
    out = []
    for k, (cls, level) in enumerate(zip(inst.classes, inst.levels)):
        if cls not in VERTEBRA_CLASSES or (level is None and not split):
            continue
        outline = inst.outline(k)
        if outline is not None and len(outline) >= 3:
            out.append((cls if split else level, outline))
    return levelled(split_fused(out)) if split else out


def score(pred_dir: str | Path, test: TestSet, cfg: RecognitionConfig, *, model: str = "",
          fold: int | None = None, family: str = "",
          spacing: dict[str, tuple[float, float]] | None = None,
          measures: MeasuresConfig | None = None, images: str | Path | None = None,
          progress: Callable[[int, int], None] | None = None
          ) -> tuple[list[dict], dict, list[dict], list[dict], dict]:
    """Per-image rows, the summary, the clinical measures of the predictions and of the
    ground truth (one row per test image each) of the predictions in ``pred_dir``, and the
    refined endplates (module docstring); ``spacing`` gives the pixel spacing of the images
    that have one; with ``measures`` and ``images``, endplates are refined on the images
    (predictions: ``refine_predictions``; the ground truth's polygons: ``refine``)."""
    pred_dir = Path(pred_dir)
    spacing = spacing or {}
    refining = measures is not None and (measures.refine_predictions or measures.refine)
    if refining and images is not None and not Path(images).is_dir():
        # every measure would be withheld, and the model blamed for it
        raise MissingInputError("images folder not found (the measures' endplates are "
                                "refined on the test images)", produced_by="export",
                                file=images)
    instances = _predicted_instances(pred_dir, test)
    # a semantic model's component across a disc: cut into its bodies for the measures
    split = family == "semantic" and (measures or MeasuresConfig()).split_fused
    rows, cms, missing = [], [], []
    pred_measures, true_measures, endplates = [], [], {}
    level_hits = {lv: [0, 0] for lv in LEVELS}          # matched, present
    for done, im in enumerate(test.images, 1):
        name = im["file_name"]
        gt_mask = read_mask(test.masks / name, what="ground-truth mask")
        pred_mask, predicted = _prediction_mask(pred_dir, name, gt_mask)
        if not predicted:
            missing.append(name)
        cm = confusion(pred_mask, gt_mask, image=name)
        cms.append(cm)
        if not predicted:
            pred = Instances()
        elif instances is not None:
            pred = instances.get(name, Instances())
        else:
            pred = components(pred_mask, test.class_values, cfg.min_area)
        rec = recognize(test.instances[im["id"]], pred, cfg)
        image = _measured_image(images, name) if refining and images is not None else None
        p_row, t_row, endplates[name] = _both_measures(
            pred, test.outlines.get(im["id"], []), spacing.get(name), image, name, measures,
            split=split)
        pred_measures.append({"file_name": name, **p_row})
        true_measures.append({"file_name": name, **t_row})
        for lv, r in rec["levels"].items():
            if lv in level_hits:
                level_hits[lv][0] += int(r["matched"])
                level_hits[lv][1] += 1
        rows.append(_row(im, predicted, cm, rec))
        if progress:
            progress(done, len(test.images))
    summary = _summary(rows, cms, test, level_hits, missing, cfg, model, fold, family)
    _add_measures(summary, summarize_measures(pred_measures, true_measures), measures)
    return rows, summary, pred_measures, true_measures, endplates


def _both_measures(pred: Instances, truth: list, mm, image, name: str,
                   measures: MeasuresConfig | None, *, split: bool = False
                   ) -> tuple[dict, dict, dict]:
    """The clinical measures of the prediction's outlines and of the ground truth's polygons
    on one image (each refined on the image where ``measures`` says), and both endplates."""
    p_row, p_spine = image_measures(
        predicted_outlines(pred, split=split), mm, image=image, image_name=name,
        refine=measures if measures and measures.refine_predictions else None, checks=measures)
    t_row, t_spine = image_measures(
        truth, mm, image=image, image_name=name,
        refine=measures if measures and measures.refine else None, checks=measures)
    return p_row, t_row, {"prediction": endplates_record(p_spine),
                          "truth": endplates_record(t_spine)}


def _summary(rows: list[dict], cms: list, test: TestSet, level_hits: dict, missing: list,
             cfg: RecognitionConfig, model: str, fold: int | None, family: str) -> dict:
    """The run's summary before its clinical measures: the metrics' means, the recognition
    rates (per image and per level), the pooled confusion's metrics."""
    names = {v: k for k, v in test.class_values.items()}
    names[0] = "background"
    return {
        "model": model, "fold": fold, "family": family, "images": len(rows),
        **{m: float(np.mean([r[m] for r in rows])) for m in METRICS},
        "recognition_rate": float(np.mean([r["recognized"] for r in rows])),
        "composite_recognition_rate": float(np.mean([r["composite"] for r in rows])),
        "level_recognition": {lv: (hit / n if n else None) for lv, (hit, n) in level_hits.items()},
        "missing_predictions": missing,
        "pooled": pooled_metrics(cms, names),
        "params": asdict(cfg),
    }


def _add_measures(summary: dict, clinical: dict, measures: MeasuresConfig | None) -> None:
    """The clinical measures' agreement with the ground truth into the summary: the headline
    errors and rates, and the whole of it under ``measures``."""
    groups = clinical["groups"]
    summary["lordosis_mae_deg"] = groups["lordosis_deg"]["mae"]
    summary["lordosis_measurable_rate"] = groups["lordosis_deg"]["measurable_rate"]
    summary["segmental_mae_deg"] = groups["segmental_deg"]["mae"]
    summary["disc_height_mae_mm"] = groups["disc_height_mm"]["mae"]
    summary["measurable_rate"] = clinical["measurable_rate"]
    summary["measures_refined"] = bool(measures and measures.refine_predictions)
    summary["params"]["measures"] = asdict(measures) if measures else None
    summary["measures"] = clinical


def _measured_image(images: str | Path, name: str) -> np.ndarray | None:
    """The test image the endplates are refined on (None when it is missing or unreadable:
    the measures are then withheld, with the reason)."""
    path = Path(images) / name
    if not path.is_file():
        return None
    return cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)  # (any
    # channels: the refinement reads colour as grey)


def endplates_record(spine) -> dict:
    """``endplates.json``'s entry of one outline set: per level and side the endplate measured
    (its refined line where refined) and, where refined, the prior, the confidence and why it
    was withheld; the levels withheld as implausible (:mod:`converters.spine.plausible`) with
    their endplates as found and ``withheld``, the reason."""
    out: dict = {}
    for lv, vt in [*spine.vertebrae.items(), *spine.withheld.items()]:
        for side in ("superior", "inferior"):
            plate = getattr(vt, side)
            if plate is not None:
                out.setdefault(lv, {})[side] = {"endplate": [list(plate.posterior),
                                                              list(plate.anterior)]}
                if lv in spine.withheld:
                    out[lv][side]["withheld"] = spine.unusable.get(lv, "implausible")
    for lv, sides in spine.fits.items():
        for side, fit in sides.items():
            entry = out.setdefault(lv, {}).setdefault(side, {})
            entry.update(prior=[list(fit.prior.posterior), list(fit.prior.anterior)],
                         confidence=round(fit.confidence, 4), shift_px=round(fit.shift_px, 3),
                         tilt_deg=round(fit.tilt_deg, 3), rising=fit.rising)
            if fit.refined is None:
                entry["withheld"] = fit.reason
            else:    # (its level may still be withheld, for its other endplate)
                entry["endplate"] = [list(fit.refined.posterior), list(fit.refined.anterior)]
    return out


def _prediction_mask(pred_dir: Path, name: str, gt_mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """The predicted label map of one test image, and whether there is one (a missing
    prediction scores as all background)."""
    pred_path = pred_dir / "predictions" / name
    if not pred_path.is_file():
        return np.zeros_like(gt_mask), False
    pred_mask = read_mask(pred_path, what="prediction")
    if pred_mask.shape != gt_mask.shape:
        raise ShapeMismatchError(f"prediction {pred_mask.shape} and ground truth "
                                 f"{gt_mask.shape} differ in shape", file=pred_path, image=name)
    return pred_mask, True


def _row(im: dict, predicted: bool, cm: np.ndarray, rec: dict) -> dict:
    """One row of ``per_image.csv`` (:data:`PER_IMAGE_FIELDS`)."""
    return {"file_name": im["file_name"], "predicted": int(predicted),
            **metrics_from_confusion(cm),
            **{k: rec[k] for k in ("recognized", "composite", "n_gt", "n_pred", "n_matched")},
            **{k: ";".join(rec[k]) for k in ("missed", "shifted", "lost_overlaps",
                                             "false_overlaps")},
            "gt_overlaps": rec["gt_overlaps"], "overlaps_apart": rec["overlaps_apart"],
            "implants": im.get("n_implants", "")}


def write_scores(out: str | Path, rows: list[dict], summary: dict,
                 measures: tuple[list[dict], list[dict]] | None = None,
                 endplates: dict | None = None) -> None:
    prepare_output(out)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PER_IMAGE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text(Path(out) / "per_image.csv", buf.getvalue())
    write_json(Path(out) / "summary.json", summary)
    if measures is not None:
        write_text(Path(out) / "measures.csv", measures_csv(measures[0]))
        write_text(Path(out) / "measures_truth.csv", measures_csv(measures[1]))
    if endplates is not None:
        write_json(Path(out) / "endplates.json", endplates, indent=None)


def evaluate_run(model: str, fold: int, cfg: EvaluateConfig, *, test: str | Path,
                 post: PostprocessConfig = PostprocessConfig(),
                 measures: MeasuresConfig = MeasuresConfig(),
                 masks: str | Path, images: str | Path, out: str | Path,
                 run: str | Path | None = None, predictions: str | Path | None = None,
                 bar: Callable[[str], ContextManager[Callable[[int, int], None]]] | None = None,
                 capture: Callable[[Path], ContextManager] | None = None) -> dict:
    """Evaluate one model x fold into ``out`` (built under a temporary name beside it and
    renamed when complete, replacing an earlier evaluation); returns the summary.

    Predictions come from the trained ``run`` (default ``models/<model>/fold<k>``) or, with
    ``predictions``, from a folder made elsewhere. ``bar(description)`` gives a progress
    callback per phase (predict, score); ``capture(log)`` redirects the libraries' console
    output (mmengine's) to ``log``, the evaluation's ``evaluate.log``, while it runs."""
    bar = bar or (lambda _: nullcontext(lambda done, total: None))
    fam = family(model)
    out = Path(out)
    gt = TestSet.load(test, masks)
    if predictions is not None and not Path(predictions).is_dir():
        raise MissingInputError("predictions folder not found", file=predictions)
    prepare_output(out.parent)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UnsafePathError(f"refused to replace {out}: a symbolic link or a file, not an "
                              "evaluation folder spinepipe wrote")
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}{TEMP_MARK}"
    tmp.mkdir()  # the user's umask (mkdtemp's would be 700)
    try:
        with (capture or (lambda _: nullcontext()))(tmp / "evaluate.log"):
            summary = _evaluate_into(tmp, model, fold, fam, cfg, post, measures, gt, images,
                                     run, predictions, bar)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    write_json(eval_metrics_file(out), {"model": model, "fold": fold,
                                        **{k: summary.get(k) for k in HEADLINE}})
    return summary


def _evaluate_into(tmp: Path, model: str, fold: int, fam: str, cfg: EvaluateConfig,
                   post: PostprocessConfig, measures: MeasuresConfig, gt: TestSet,
                   images: str | Path, run: str | Path | None,
                   predictions: str | Path | None, bar) -> dict:
    """Predict (unless ``predictions`` are given) and score into the folder ``tmp``."""
    src = Path(predictions) if predictions is not None else tmp
    if predictions is None:
        with bar(f"evaluate {model} fold {fold}: predict") as update:
            write_predictions(run or run_dir(model, fold), gt, images, tmp, cfg, post,
                              progress=update)
    spacing = {im["file_name"]: pixel_spacing(read_record(images, im["file_name"]))
               for im in gt.images}
    with bar(f"evaluate {model} fold {fold}: score") as update:
        rows, summary, pred_m, true_m, plates = score(
            src, gt, RecognitionConfig(**asdict(post), match_iou=cfg.match_iou), model=model,
            fold=fold, family=fam, spacing={k: v for k, v in spacing.items() if v},
            measures=measures, images=images, progress=update)
    write_scores(tmp, rows, summary, (pred_m, true_m), plates)
    if predictions is not None:
        _keep_copy(Path(predictions), gt, tmp)
    return summary


def _keep_copy(src: Path, test: TestSet, out: Path) -> None:
    """Predictions made elsewhere, copied into the evaluation (the test images' label maps and
    ``instances.json``): the folder then reads like a model's evaluation (to-seg, the
    report's examples) and keeps what was scored, whatever happens to ``src`` later."""
    names = [im["file_name"] for im in test.images]
    for path in [src / "predictions" / n for n in names] + [src / "instances.json"]:
        try:
            with open_input(path) as fh:
                data = fh.read()
        except FileNotFoundError:
            continue  # a missing prediction is scored as a miss (module docstring)
        write_bytes(out / path.relative_to(src), data)
