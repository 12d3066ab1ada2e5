"""Inter-reader agreement: the readers measured against each other before any model is.

Input: convert's validated outlines of the images two or more readers read
(:attr:`converters.annotations.convert_plan.ConvertPlan.readers`; levels per reader as convert
assigns them), the images' pixel spacing (export's provenance). Geometry in the COCO convention
of :mod:`converters.annotations.coco` (continuous pixels, (0, 0) the top-left corner of the
top-left pixel); millimetres with the pixel spacing (rows, columns), empty without one.

Per image, level and reader pair (``pairs.csv``): whether each drew it, the polygons' IoU and
Dice (exact areas, shapely), and the boundary distances: both outlines sampled every
:data:`STEP_PX` pixel along their length (at most :data:`MAX_SAMPLES` points), each sample's
distance to the other outline, pooled
both ways: their mean (``mean_boundary``) and 95th percentile (``hd95``, the robust Hausdorff).

Per image, measure and reader pair (``measures_pairs.csv``): each reader's clinical measures
(:mod:`converters.spine.measures`, on their own polygons: lordosis, segmental angles, disc and body
heights in mm (px without a spacing), slips), ``diff`` = b - a.

``summary.json``: the readers; per pair (``"A|B"``, names sorted) the images, mean IoU and
boundary distance over the levels both drew, level disagreements (a level one drew and the other
did not), lordosis MAE, bias (mean of b - a) and 95 % limits of agreement (bias +- 1.96 SD,
Bland-Altman); per measure the ICC(2,1) (two-way random, absolute agreement, single rater:
pingouin's ``intraclass_corr``) with its 95 % CI, on the largest fully crossed set of readers and
images (every reader of the set read every image of it; more readers win a tie); per reader
against the consensus (:mod:`converters.annotations.consensus`) the mean IoU and lordosis MAE:
a reader who draws larger, or misses levels, shows there. With a known truth (``--truth``: a VIA
project of true polygons, e.g. the phantom's), ``against_truth``: every reader and the consensus
against it (mean IoU per true vertebra, a missed one 0; lordosis MAE).

Adjudication (:mod:`converters.annotations.adjudication`): ``worklist.csv`` ranks the images by disagreement (levels drawn by some readers
only, the lowest IoU of a level, the spread of the readers' lordosis); ``adjudication_via.json``
is a VIA 2 project of those images in that order with every reader's polygons (region attributes
``class``, ``level``, ``annotator``) and a file attribute ``settled`` (``no``): an expert keeps
one polygon per vertebra (editing it as needed), sets ``settled`` to ``yes`` and saves the project
as ``data/annotations/adjudicated/<name>.json``; convert then takes the settled images' polygons
as their ground truth (:mod:`converters.annotations.readers`).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import shapely
from shapely.geometry import Polygon

from converters.annotations.adjudication import WORKLIST_FIELDS, adjudication_project, rank_worklist
from converters.annotations.consensus import consensus
from converters.annotations.convert import IMAGE_SUFFIXES, ConvertConfig, ConvertReport, check
from converters.annotations.readers import ADJUDICATED, CONSENSUS, ReaderFile
from converters.annotations.regions import Outline
from converters.core.errors import InvalidViaError
from converters.core.files import prepare_output, write_json, write_text
from converters.core.parallel import map_jobs
from converters.core.provenance import pixel_spacing, read_record
from converters.spine.levels import LEVELS
from converters.spine.measures import LENGTHS, MEASURES, image_measures
from converters.spine.refine import MeasuresConfig

#: boundary sampling step, pixels (finer of this and the outline's length / MAX_SAMPLES)
STEP_PX = 0.5
#: samples per outline at most: a full-resolution vertebra (1,400 px around) every 5.5 px
MAX_SAMPLES = 256
PAIR_FIELDS = ["image", "level", "reader_a", "reader_b", "present_a", "present_b", "iou", "dice",
               "mean_boundary_px", "hd95_px", "mean_boundary_mm", "hd95_mm"]
MEASURE_FIELDS = ["image", "measure", "reader_a", "reader_b", "value_a", "value_b", "diff"]
#: the most readers whose every subset is tried for the ICC's fully crossed set
SUBSET_READERS = 12


@dataclass(frozen=True)
class AgreementConfig:
    """params.yaml section ``agreement``."""

    #: where the expert's VIA finds the PNGs (the adjudication project's default_filepath; as
    #: export's ``via_image_path``)
    via_image_path: str = ""


def _measure_columns(mm: bool) -> list[str]:
    """The measures compared: angles, lengths in mm (px without a spacing), slips."""
    unit = "_mm" if mm else "_px"
    return [c for c in MEASURES if not c.startswith("meyerding")
            and (c not in LENGTHS or c.endswith(unit))]


def _valid(o: Outline) -> Polygon:
    p = o.polygon()
    return p if p.is_valid else shapely.make_valid(p)


def _samples(ring: np.ndarray, step: float) -> np.ndarray:
    """Points every ``step`` along a closed ring of vertices ``(k, 2)`` (its vertices included)."""
    seg = np.diff(np.vstack([ring, ring[:1]]), axis=0)
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    n = np.maximum(np.ceil(lengths / step), 1).astype(int)
    t = np.concatenate([np.arange(k) / k for k in n])
    start = np.repeat(np.arange(len(ring)), n)
    return ring[start] + seg[start] * t[:, None]


def _to_ring(points: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Each point's distance to the closed polyline ``ring`` (vectorized over both)."""
    a = ring
    ab = np.roll(ring, -1, axis=0) - a                                   # (m, 2)
    ap = points[:, None, :] - a[None, :, :]                              # (n, m, 2)
    denom = np.maximum((ab * ab).sum(axis=1), 1e-12)
    t = np.clip((ap * ab[None]).sum(axis=2) / denom, 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.hypot(*(points[:, None, :] - closest).transpose(2, 0, 1)).min(axis=1)


def _ring(p: Polygon) -> np.ndarray:
    return np.asarray(p.exterior.coords)[:-1] if isinstance(p, Polygon) else \
        np.asarray(max(p.geoms, key=lambda g: g.area).exterior.coords)[:-1]


def boundary_distances(a: Polygon, b: Polygon, step: float = STEP_PX) -> np.ndarray:
    """Distances of points every ``step`` along each outline to the other outline, pooled."""
    ra, rb = _ring(a), _ring(b)
    return np.concatenate([_to_ring(_samples(ra, max(step, a.length / MAX_SAMPLES)), rb),
                           _to_ring(_samples(rb, max(step, b.length / MAX_SAMPLES)), ra)])


def _scaled(p: Polygon, spacing: tuple[float, float]) -> Polygon:
    return shapely.transform(p, lambda xy: xy * np.array([spacing[1], spacing[0]]))


def pair_row(image: str, level: str, ra: str, rb: str, a: Outline | None, b: Outline | None,
             spacing: tuple[float, float] | None, *, distances: bool = True) -> dict:
    """One ``pairs.csv`` row (module docstring); without ``distances``, the overlap only."""
    row = {"image": image, "level": level, "reader_a": ra, "reader_b": rb,
           "present_a": int(a is not None), "present_b": int(b is not None)}
    if a is None or b is None:
        return row
    pa, pb = _valid(a), _valid(b)
    inter, union = pa.intersection(pb).area, pa.union(pb).area
    row["iou"] = inter / union if union else 0.0
    row["dice"] = 2 * inter / (pa.area + pb.area) if pa.area + pb.area else 0.0
    if not distances:
        return row
    d = boundary_distances(pa, pb)
    row["mean_boundary_px"], row["hd95_px"] = float(d.mean()), float(np.percentile(d, 95))
    if spacing is not None:
        if spacing[0] != spacing[1]:   # anisotropic pixels: measured again in mm
            d = boundary_distances(_scaled(pa, spacing), _scaled(pb, spacing),
                                   STEP_PX * min(spacing))
        else:
            d = d * spacing[0]
        row["mean_boundary_mm"], row["hd95_mm"] = float(d.mean()), float(np.percentile(d, 95))
    return row


def _by_level(outlines: Sequence[Outline]) -> dict[str, Outline]:
    out: dict[str, Outline] = {}
    for o in outlines:
        if o.level is not None:
            out.setdefault(o.level, o)
    return out


def _measures(outlines: Sequence[Outline], spacing, vertebra_classes,
              checks: MeasuresConfig | None) -> dict:
    row, _ = image_measures([(o.level, np.c_[o.xs, o.ys]) for o in outlines
                             if o.cls in vertebra_classes], spacing, checks=checks)
    return row


@dataclass
class Agreement:
    pairs: list[dict] = field(default_factory=list)
    measures: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    worklist: list[dict] = field(default_factory=list)


def _icc(values: dict[str, dict[str, float]], readers: Sequence[str]) -> dict:
    """ICC(2,1) of one measure: ``values[image][reader]``, on the largest fully crossed set."""
    readers = sorted(readers)
    best: tuple[int, int, tuple[str, ...], list[str]] | None = None
    sizes = range(2, len(readers) + 1) if len(readers) <= SUBSET_READERS else [2]
    for k in sizes:
        for subset in itertools.combinations(readers, k):
            imgs = sorted(i for i, v in values.items() if all(r in v for r in subset))
            key = (len(imgs), k)
            if best is None or key > best[:2]:
                best = (len(imgs), k, subset, imgs)
    out = {"value": None, "ci95": None, "form": "ICC(2,1)", "readers": [], "images": 0}
    if best is None or best[0] < 3:
        return out
    _, _, subset, imgs = best
    out["readers"], out["images"] = list(subset), len(imgs)
    data = [(i, r, values[i][r]) for i in imgs for r in subset]
    vals = np.array([v for _, _, v in data])
    if np.ptp(vals) == 0:
        return out  # no variance at all: the ICC is undefined
    import pandas as pd
    import pingouin  # only here: the statistics library costs a second to import
    table = pingouin.intraclass_corr(pd.DataFrame(data, columns=["image", "reader", "value"]),
                                     targets="image", raters="reader", ratings="value")
    # pingouin 0.7 names McGraw & Wong's forms: ICC(A,1) is Shrout & Fleiss' ICC(2,1)
    row = table.set_index("Type").loc["ICC(A,1)"]
    if np.isfinite(row["ICC"]):
        out["value"] = round(float(row["ICC"]), 4)
        ci = [float(x) for x in row["CI95"]]
        # perfect agreement (or none) leaves pingouin's F-based interval undefined
        out["ci95"] = [round(x, 4) for x in ci] if all(map(math.isfinite, ci)) else None
    return out


def _pair_summary(pairs: list[dict], mpairs: list[dict]) -> dict:
    both = [p for p in pairs if p["present_a"] and p["present_b"]]
    lord = np.array([m["diff"] for m in mpairs
                     if m["measure"] == "lordosis_deg" and m["diff"] is not None])
    out = {"images": len({p["image"] for p in pairs}),
           "mean_iou": _mean([p["iou"] for p in both]),
           "mean_boundary_px": _mean([p["mean_boundary_px"] for p in both]),
           "level_disagreements": sum(p["present_a"] != p["present_b"] for p in pairs),
           "lordosis_mae_deg": None, "lordosis_bias_deg": None, "lordosis_loa_deg": None}
    if len(lord):
        bias = float(lord.mean())
        out.update(lordosis_mae_deg=round(float(np.abs(lord).mean()), 4),
                   lordosis_bias_deg=round(bias, 4))
        if len(lord) > 1:   # one difference has no spread: no limits
            sd = float(lord.std(ddof=1))
            out["lordosis_loa_deg"] = [round(bias - 1.96 * sd, 4), round(bias + 1.96 * sd, 4)]
    return out


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 4) if len(values) else None


def _one_image(job: tuple) -> dict:
    """Everything agreement needs of one image (a worker's job): pair rows, measure rows, the
    readers' measures, each reader against the consensus, the worklist row."""
    image, readers, spacing, vertebra_classes, cons, truth, checks = job
    columns = _measure_columns(spacing is not None)
    levels = {r: _by_level(outs) for r, outs in readers.items()}
    meas = {r: _measures(outs, spacing, vertebra_classes, checks) for r, outs in readers.items()}
    out: dict = {"pairs": [], "measures": [], "values": {}, "vs_consensus": {}}
    for r, row in meas.items():
        for c in columns:
            if row.get(c) is not None:
                out["values"].setdefault(c, {})[r] = float(row[c])
    ious, lords = [], [meas[r]["lordosis_deg"] for r in meas
                       if meas[r]["lordosis_deg"] is not None]
    disagreements = 0
    for ra, rb in itertools.combinations(sorted(readers), 2):
        for lv in sorted(set(levels[ra]) | set(levels[rb]), key=_level_order):
            row = pair_row(image, lv, ra, rb, levels[ra].get(lv), levels[rb].get(lv), spacing)
            out["pairs"].append(row)
            disagreements += row["present_a"] != row["present_b"]
            if "iou" in row:
                ious.append(row["iou"])
        for c in columns:
            va, vb = meas[ra].get(c), meas[rb].get(c)
            if va is not None or vb is not None:
                out["measures"].append({"image": image, "measure": c, "reader_a": ra,
                                        "reader_b": rb, "value_a": va, "value_b": vb,
                                        "diff": None if va is None or vb is None else vb - va})
    cons = consensus(readers) if cons is None else cons
    cons_levels = _by_level(cons)
    cons_lord = _measures(cons, spacing, vertebra_classes, checks)["lordosis_deg"]
    for r in readers:
        iou_list = [pair_row(image, lv, r, "consensus", levels[r].get(lv), cons_levels.get(lv),
                             None, distances=False).get("iou", 0.0)
                    for lv in sorted(set(cons_levels) | set(levels[r]), key=_level_order)]
        mae = (abs(meas[r]["lordosis_deg"] - cons_lord)
               if cons_lord is not None and meas[r]["lordosis_deg"] is not None else None)
        out["vs_consensus"][r] = (iou_list, mae)
    if truth is not None:   # a known truth (the phantom's): every reader and the consensus
        true_levels = _by_level(truth)
        true_lord = _measures(truth, spacing, vertebra_classes, checks)["lordosis_deg"]
        out["vs_truth"] = {}
        for who, outs in [*sorted(readers.items()), (CONSENSUS, cons)]:
            mine = _by_level(outs)
            lord = _measures(outs, spacing, vertebra_classes, checks)["lordosis_deg"]
            out["vs_truth"][who] = (
                [pair_row(image, lv, who, "truth", mine.get(lv), t, None,
                          distances=False).get("iou", 0.0) for lv, t in true_levels.items()],
                abs(lord - true_lord) if lord is not None and true_lord is not None else None)
    out["worklist"] = {
        "image": image, "readers": " ".join(sorted(readers)),
        "level_disagreements": disagreements,
        "min_iou": round(min(ious), 4) if ious else None,
        "lordosis_range_deg": round(max(lords) - min(lords), 4) if len(lords) > 1 else None}
    return out


def agreement(readers_of: dict[str, dict[str, list[Outline]]], all_readers: Sequence[str],
              spacing_of: Callable[[str], tuple[float, float] | None],
              vertebra_classes: Sequence[str] = ("lumbar", "sacrum"), *,
              consensus_of: dict[str, list[Outline]] | None = None,
              truth_of: dict[str, list[Outline]] | None = None,
              measures: MeasuresConfig | None = None, workers: int = 1) -> Agreement:
    """Agreement of the readers on the images two or more of them read (module docstring).
    ``readers_of[image][reader]``: that reader's outlines; ``all_readers``: every reader of the
    batch (those who share no image with another are listed in the summary);
    ``consensus_of``: consensus outlines already built (convert's), the rest are built here;
    ``truth_of``: known true outlines of some images (the phantom's), against which every
    reader and the consensus are measured too (``against_truth``); ``measures``: the
    plausibility limits of the measures (params.yaml ``measures``; None: the defaults). Images
    are spread over ``workers`` processes."""
    res = Agreement()
    by_pair: dict[str, tuple[list[dict], list[dict]]] = {}
    per_measure: dict[str, dict[str, dict[str, float]]] = {}
    vs_consensus: dict[str, tuple[list[float], list[float]]] = {}
    images = sorted(i for i in readers_of if len(readers_of[i]) > 1)
    spacings = {image: spacing_of(image) for image in images}
    jobs = [(image, readers_of[image], spacings[image], tuple(vertebra_classes),
             (consensus_of or {}).get(image), (truth_of or {}).get(image), measures)
            for image in images]
    vs_truth: dict[str, tuple[list[float], list[float]]] = {}
    for image, one in zip(images, map_jobs(_one_image, jobs, workers=workers)):
        for row in one["pairs"]:
            by_pair.setdefault(f"{row['reader_a']}|{row['reader_b']}", ([], []))[0].append(row)
        for row in one["measures"]:
            by_pair.setdefault(f"{row['reader_a']}|{row['reader_b']}", ([], []))[1].append(row)
        res.pairs += one["pairs"]
        res.measures += one["measures"]
        for c, values in one["values"].items():
            per_measure.setdefault(c, {})[image] = values
        _pool(vs_consensus, one["vs_consensus"])
        _pool(vs_truth, one.get("vs_truth", {}))
        res.worklist.append(one["worklist"])
    rank_worklist(res.worklist)
    seen = {r for i in images for r in readers_of[i]}
    res.summary = {
        "readers": sorted(all_readers),
        "readers_without_overlap": sorted(set(all_readers) - seen),
        "images_read_by_two_or_more": len(images),
        "lengths_in": "mm" if any(v is not None for v in spacings.values()) else "px",
        "pairs": {k: _pair_summary(*v) for k, v in sorted(by_pair.items())},
        "icc": {c: _icc(per_measure[c], sorted(seen)) for c in _ordered(per_measure)},
        "against_consensus": {r: {"mean_iou": _mean(v[0]), "lordosis_mae_deg": _mean(v[1])}
                              for r, v in sorted(vs_consensus.items())},
    }
    if vs_truth:
        res.summary["against_truth"] = {
            w: {"mean_iou": _mean(v[0]), "lordosis_mae_deg": _mean(v[1]),
                "images": sum(1 for i in images if truth_of and i in truth_of)}
            for w, v in sorted(vs_truth.items(), key=lambda kv: (kv[0] == CONSENSUS, kv[0]))}
    return res


def _pool(into: dict[str, tuple[list[float], list[float]]],
          one: dict[str, tuple[list[float], float | None]]) -> None:
    """One image's IoUs and lordosis error per reader added to the pooled lists."""
    for who, (iou_list, mae) in one.items():
        ious, maes = into.setdefault(who, ([], []))
        ious += iou_list
        if mae is not None:
            maes.append(mae)


def _level_order(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else len(LEVELS)


def _ordered(per_measure: dict) -> list[str]:
    return [c for c in MEASURES if c in per_measure]


def csv_text(rows: Sequence[dict], fields: Sequence[str]) -> str:
    """Rows as CSV text: floats to 4 decimals, empty cells for missing values."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else f"{v:.4f}" if isinstance(v, float) else v)
                         for k, v in row.items()})
    return buf.getvalue()


def _truth(truth: Path, images: Path, cfg: ConvertConfig) -> dict[str, list[Outline]]:
    """The true outlines of a VIA project, checked as convert checks a reader (a problem in
    the yardstick is an error naming it; a count of vertebrae other than the study's is not a
    problem of the yardstick); images without a polygon left out."""
    report = ConvertReport()
    known = check([ReaderFile("truth", truth)], images, Path("."), cfg, report,
                  readers_only=True)
    # counts are anatomy, not damage: a transitional spine's six lumbar vertebrae are a truth
    bad = [p for p in report.problems
           if p.kind not in ("unannotated_image", "lumbar_count", "missing_sacrum")]
    if bad:
        raise InvalidViaError(f"the truth has {len(bad)} problem(s); first: {bad[0].kind}: "
                              f"{bad[0].message}", file=truth, image=bad[0].image or None)
    return {name: outs["truth"] for name, outs in known.readers.items() if outs["truth"]}


def write_agreement(files: Sequence[ReaderFile], images: str | Path, output: str | Path,
                    cfg: ConvertConfig, opts: AgreementConfig = AgreementConfig(), *,
                    truth: str | Path | None = None, measures: MeasuresConfig | None = None,
                    workers: int = 1) -> dict:
    """``spinepipe agreement``: the readers' outlines read and validated as convert does
    (``convert.reference`` does not matter here; the ``adjudicated`` reader is the expert's, not
    compared), :func:`agreement`, then every output under ``output`` (module docstring);
    returns ``summary.json``'s content."""
    images, output = Path(images), Path(output)
    cfg = dataclasses.replace(cfg, reference=CONSENSUS)
    files = [f for f in files if f.reader != ADJUDICATED]
    report = ConvertReport()
    plan = check(files, images, Path("."), cfg, report, readers_only=True)
    truth_of = _truth(Path(truth), images, cfg) if truth is not None else None
    result = agreement(plan.readers, sorted({f.reader for f in files}),
                       lambda name: pixel_spacing(read_record(images, name)),
                       tuple(cfg.classes), truth_of=truth_of, measures=measures,
                       workers=workers)
    listed = {w["image"] for w in result.worklist}
    sizes = {p.name: p.stat().st_size for p in images.iterdir()
             if p.name in listed and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    prepare_output(output)
    write_text(output / "pairs.csv", csv_text(result.pairs, PAIR_FIELDS))
    write_text(output / "measures_pairs.csv", csv_text(result.measures, MEASURE_FIELDS))
    write_text(output / "worklist.csv", csv_text(result.worklist, WORKLIST_FIELDS))
    write_json(output / "summary.json", result.summary)
    write_json(output / "adjudication_via.json",
               adjudication_project(result.worklist, plan.readers, sizes,
                                    class_attribute=report.class_attribute,
                                    default_filepath=opts.via_image_path), indent=None)
    return result.summary
