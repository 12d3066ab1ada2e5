"""Proposals from trained runs (``spinepipe propose``): inference on PNGs, each predicted
vertebra as a VIA polygon, the images in review order, and a worklist.

Instance models give one polygon per kept instance (the evaluation's post-processing:
:func:`train.evaluation.recognition.postprocess_instances`); semantic models one per connected
component of a class (:func:`train.evaluation.recognition.components`); such a fused lumbar
blob is proposed as its bodies, cut at its waists (``measures.split_fused``:
:mod:`converters.spine.fused`), flagged for review; one not cut stays one polygon, flagged.
The first run proposes; further runs (other folds or models) only measure disagreement.
Polygons, attributes, review score and the round trip: :mod:`converters.annotations.proposals`.

Outputs (``output`` is the VIA project; beside it):

- ``<output>``: a VIA 2.0.x project of the proposed images, highest review score first
  (``_via_image_id_list``), ``default_filepath`` as ``propose.via_image_path``;
- ``worklist.csv``: rank, image, review score, number of regions, reasons;
- ``proposals_summary.json``: counts, the polygons' mean IoU with the masks they came from
  (before their endplate corners were refined), ``endplate_corners_refined`` (vertices moved
  onto endplate corners refined on the image, ``measures.refine_predictions``) and, with ``truth``, the mean IoU of the proposed polygons with the true ones (per image:
  each true vertebra, lumbar or sacrum, matched to a proposed region of its class,
  maximum-IoU assignment; an unmatched true vertebra counts 0; implants are not proposed).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from converters.annotations.coco import DEFAULT_CLASSES
from converters.core.errors import InvalidConfigError, MissingInputError
from converters.core.files import prepare_output, write_json, write_text
from converters.annotations.proposals import (Proposal, ProposedRegion, cut_region, mark_fused,
                                              mask_polygon, polygon_iou, proposal_attributes,
                                              review, snap_endplates, via_images)
from converters.core.provenance import pixel_spacing, read_record
from converters.spine.fused import fused_pieces, levelled
from converters.spine.refine import MeasuresConfig
from converters.annotations.readers import reader_files
from converters.annotations.via import AnnotatedImage, read_via
from converters.annotations.via_project import via2_project
from train.evaluation.recognition import (VERTEBRA_CLASSES, Instances, PostprocessConfig,
                                          components, iou_matrix, overlap_matrix,
                                          postprocess_instances)


@dataclass(frozen=True)
class ProposeConfig:
    """params.yaml section ``propose`` (which instances are kept: section ``postprocess``, as
    for evaluate)."""

    enabled: bool = False
    model: str = "mask_rcnn"             # the run models/<model>/fold<fold> proposes
    fold: int = field(default=0, metadata={"min": 0})
    max_points: int = field(default=15, metadata={"min": 3})   # vertices per polygon (study: 15)
    class_attribute: str = "class"
    via_image_path: str = ""             # where the annotators' VIA finds the PNGs
    device: str = "auto"
    batch_size: int = 4


def unannotated(paths: Sequence[Path], via_inputs: Sequence[str | Path]) -> list[Path]:
    """The images not yet annotated in any of the VIA files, by any reader (folders as convert
    reads them: :func:`converters.annotations.readers.reader_files`; an image listed with no
    region, as in export's project, is not annotated)."""
    done: set[str] = set()
    for f in reader_files(via_inputs):
        done |= {im.filename for im in read_via(f.path)[1] if im.regions}
    return [p for p in paths if p.name not in done]


def _instances(raw, post: PostprocessConfig) -> tuple[Instances, bool]:
    if raw.class_mask is not None:
        return components(raw.class_mask, DEFAULT_CLASSES, post.min_area), False
    return postprocess_instances(raw.classes, raw.masks, raw.scores, post), True


def _disagreement(main: Instances, others: list[Instances]) -> float | None:
    if not others:
        return None
    values = []
    for other in others:
        if not len(main) or not len(other):
            values.append(0.0 if len(main) == len(other) else 1.0)
            continue
        iou = iou_matrix(main, other)
        same = np.array([[a == b for b in other.classes] for a in main.classes])
        values.append(1.0 - float(np.where(same, iou, 0).max(axis=1).mean()))
    return float(np.mean(values))


def _regions(inst: Instances, max_points: int, *, split: bool
             ) -> tuple[list[ProposedRegion], list[float]]:
    """The proposed polygons of one image's instances and their areas (pixels); with
    ``split``, a fused lumbar blob proposed as its bodies (:func:`cut_region`), the levels
    assigned again."""
    crops = [inst.mask(k) for k in range(len(inst))]        # the crops post-processing kept
    pieces = fused_pieces([(cls, inst.outline(k)) for k, cls in enumerate(inst.classes)]
                          ) if split else {}
    regions, areas = [], []
    for k, (x0, y0, mask) in enumerate(crops):
        if k in pieces:
            cut = [r for r in (cut_region(inst.classes[k], p, inst.scores[k], max_points)
                               for p in pieces[k]) if r is not None]
            regions += cut
            areas += [float(cv2.contourArea(np.c_[r.xs, r.ys].astype(np.float32))) for r in cut]
            continue
        poly = mask_polygon(mask, max_points)
        if poly is None:
            continue
        xs, ys, fit = poly
        regions.append(ProposedRegion(inst.classes[k], [x + x0 for x in xs],
                                      [y + y0 for y in ys], inst.scores[k], inst.levels[k],
                                      mask_iou=fit))
        areas.append(float(mask_utils.area(inst.rles[k])))
    if pieces:
        for r, (level, _) in zip(regions, levelled([(r.cls, np.c_[r.xs, r.ys])
                                                    for r in regions])):
            r.level = level
    return regions, areas


def propose_images(runs: Sequence[Path], paths: Sequence[Path], cfg: ProposeConfig,
                   post: PostprocessConfig = PostprocessConfig(),
                   progress: Callable[[int, int], None] | None = None,
                   measures: MeasuresConfig | None = None) -> list[Proposal]:
    """Proposals for ``paths`` from ``runs[0]``, reviewed against ``runs[1:]``; instances kept
    as ``post`` says (evaluate's post-processing); with ``measures.refine_predictions``, the
    polygons' endplate corners refined on the image (:func:`snap_endplates`)."""
    from train.infer.inference import predict

    found: list[dict[str, tuple[Instances, bool, tuple[int, int]]]] = []
    total, done = len(runs) * len(paths), 0
    for run in runs:
        per_image = {}
        for path, raw in predict(run, paths, device=cfg.device, batch_size=cfg.batch_size):
            inst, is_instance = _instances(raw, post)
            shape = raw.class_mask.shape if raw.class_mask is not None else raw.masks.shape[1:]
            per_image[path.name] = (inst, is_instance, tuple(shape))
            done += 1
            if progress:
                progress(done, total)
        found.append(per_image)
    out = []
    for path in paths:
        inst, is_instance, (h, w) = found[0][path.name]
        prop = Proposal(path.name, path.stat().st_size, w, h)
        prop.regions, areas = _regions(inst, cfg.max_points, split=not is_instance and (
            measures or MeasuresConfig()).split_fused)
        if not is_instance:
            mark_fused(prop.regions, areas)
        if measures is not None and measures.refine_predictions:
            prop.endplate_corners = snap_endplates(
                prop.regions, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH),
                measures, pixel_spacing(read_record(path.parent, path.name)),
                implausible=prop.implausible, segments=prop.segments)
        ov = overlap_matrix(inst, post.overlap_min_fraction)
        name = [inst.levels[k] or f"{inst.classes[k]} #{k + 1}" for k in range(len(inst))]
        pairs = [f"{name[i]}/{name[j]}"
                 for i, j in zip(*np.nonzero(np.triu(ov, 1)))] if is_instance else []
        review(prop, overlapping=pairs,
               disagreement=_disagreement(inst, [f[path.name][0] for f in found[1:]]),
               instance_model=is_instance)
        out.append(prop)
    return out


def truth_iou(proposals: Sequence[Proposal], truth: list[AnnotatedImage], class_attribute: str
              ) -> dict[str, float]:
    """Per image present in both: the mean IoU of each true polygon with its matched proposed
    polygon of the same class (maximum-IoU assignment; unmatched true regions count 0)."""
    by_name = {p.filename: p for p in proposals}
    out = {}
    for im in truth:
        prop = by_name.get(im.filename)
        true = [r for r in im.regions if r.shape == "polygon" and len(r.xs) >= 3
                and r.attributes.get(class_attribute) in VERTEBRA_CLASSES]   # not implants
        if prop is None or not true:
            continue
        iou = np.zeros((len(true), len(prop.regions)))
        for i, t in enumerate(true):
            for j, p in enumerate(prop.regions):
                if t.attributes.get(class_attribute) == p.cls:
                    iou[i, j] = polygon_iou(t.xs, t.ys, p.xs, p.ys)
        rows, cols = linear_sum_assignment(-iou) if iou.size else ([], [])
        out[im.filename] = float(iou[rows, cols].sum() / len(true))
    return out


WORKLIST_FIELDS = ("rank", "file_name", "score", "regions", "reasons")


def write_proposals(proposals: Sequence[Proposal], output: str | Path, *, model: str,
                    class_attribute: str, class_options: dict[str, str] | None,
                    default_filepath: str, truth: dict[str, float] | None,
                    runs: Sequence[str]) -> dict:
    """Write the project, ``worklist.csv`` and ``proposals_summary.json``; return the summary."""
    output = Path(output)
    prepare_output(output.parent)
    if output.suffix.lower() != ".json":
        raise InvalidConfigError("the proposals project must be a .json file", file=output)
    images = via_images(proposals, class_attribute=class_attribute, model=model)
    project = via2_project(images, name=f"spinepipe proposals ({model})",
                           class_attribute=class_attribute, class_options=class_options,
                           default_filepath=default_filepath)
    region_attrs, file_attrs = proposal_attributes()
    project["_via_attributes"]["region"].update(region_attrs)
    project["_via_attributes"]["file"].update(file_attrs)
    order = sorted(proposals, key=lambda p: (-p.score, p.filename))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=WORKLIST_FIELDS, lineterminator="\n")
    writer.writeheader()
    for rank, p in enumerate(order, 1):
        writer.writerow({"rank": rank, "file_name": p.filename, "score": f"{p.score:.4f}",
                         "regions": len(p.regions), "reasons": "; ".join(p.reasons)})
    fits = [r.mask_iou for p in proposals for r in p.regions]
    summary = {"model": model, "runs": list(runs), "images": len(proposals),
               "regions": len(fits), "polygon_vs_mask_iou": float(np.mean(fits)) if fits else None,
               "needs_review": sum(p.score >= 1.0 for p in proposals),
               "endplate_corners_refined": sum(p.endplate_corners for p in proposals)}
    if truth is not None:
        summary["truth_images"] = len(truth)
        summary["truth_mean_iou"] = float(np.mean(list(truth.values()))) if truth else None
        summary["truth_iou"] = truth
    write_json(output, project, indent=None)
    write_text(output.parent / "worklist.csv", buf.getvalue())
    write_json(output.parent / "proposals_summary.json", summary)
    return summary


def image_paths(images: str | Path) -> list[Path]:
    folder = Path(images)
    if not folder.is_dir():
        raise MissingInputError("images folder not found", produced_by="export", file=folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
