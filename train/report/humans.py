"""Humans vs models: every model beside the readers' own disagreement, on the same test images.

Input: ``spinepipe agreement``'s folder (:mod:`converters.annotations.agreement`: ``pairs.csv``,
``measures_pairs.csv``, ``summary.json``), the evaluations (``instances.json``: each model's
vertebrae with their levels, COCO RLE; ``measures.csv`` / ``measures_truth.csv``), the test set's
ground truth (``splits/test/coco.json``: polygons with levels).

The images compared: the test images two or more readers read. Per vertebra IoU: a model's
instance of a level against the ground truth's polygon of that level (pycocotools, the
evaluation's raster), a reader's polygon against another's (``pairs.csv``, exact areas); a level
one side lacks counts 0 for both. Measures: mean absolute difference per group
(:data:`train.evaluation.agreement.GROUPS`): a model against the ground truth, a reader against a
reader; ``n`` the images measured (where both sides gave the measure). "Within the readers'
variability": the model's IoU at least, its error at most, the readers'. Every file is read as hostile: a damaged or missing one leaves its part out (the
report says so), never a traceback.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd

from converters.core.errors import InvalidTableError
from converters.core.records import open_input, read_json
from train.evaluation.agreement import GROUPS
from train.models import display_name, eval_dir

#: measure groups compared (lengths in mm: agreement's lengths follow the pixel spacing)
COMPARED = {"lordosis_deg": "Lordosis L1-S1 MAE (deg)",
            "segmental_deg": "Segmental angle MAE (deg)",
            "disc_height_mm": "Disc height MAE (mm)",
            "body_height_mm": "Body height MAE (mm)",
            "slip_pct": "Slip MAE (%)"}
IOU = "Mean IoU per vertebra"


def _rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """A CSV's rows; the ``columns`` must be there (else one line naming the file)."""
    try:
        with open_input(path, "r", encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise InvalidTableError(f"missing column(s) {', '.join(missing)}", file=path)
            return [{k: (v if isinstance(v, str) else "") for k, v in row.items() if k}
                    for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidTableError(f"unreadable ({type(exc).__name__})", file=path) from None


def _number(value: str | None) -> float | None:
    try:
        v = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) else None


def load_agreement(folder: str | Path) -> dict | None:
    """The agreement folder's tables, or None when it is absent or has no image read twice."""
    folder = Path(folder)
    files = [folder / n for n in ("pairs.csv", "measures_pairs.csv", "summary.json")]
    if not all(f.is_file() for f in files):
        return None
    summary = read_json(files[2], what="the readers' agreement summary",
                        made_by="spinepipe agreement")
    if not summary.get("images_read_by_two_or_more"):
        return None
    return {"pairs": _rows(files[0], ("image", "reader_a", "reader_b", "iou")),
            "measures": _rows(files[1], ("image", "measure", "reader_a", "reader_b", "value_a",
                                         "value_b", "diff")),
            "summary": summary}


def _truth_polygons(test_coco: Path) -> dict[str, dict]:
    """Test image -> {"size": (h, w), "levels": {level: polygon}}."""
    data = read_json(test_coco, what="the test set's COCO file", made_by="spinepipe split",
                     keys={"images": list, "annotations": list})
    out: dict[str, dict] = {}
    ids: dict[object, str] = {}
    try:
        for im in data["images"]:
            out[str(im["file_name"])] = {"size": (int(im["height"]), int(im["width"])),
                                         "levels": {}}
            ids[im["id"]] = str(im["file_name"])
        for a in data["annotations"]:
            name = ids.get(a.get("image_id"))
            poly = a.get("segmentation")
            if name is not None and isinstance(a.get("level"), str) and isinstance(poly, list):
                out[name]["levels"].setdefault(a["level"], poly)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidTableError(f"unexpected structure ({type(exc).__name__})",
                                file=test_coco) from None
    return out


def model_ious(eval_root: Path, runs: list[tuple[str, int]], test_coco: Path,
               images: set[str]) -> dict[str, list[float]]:
    """Per model: the IoU of each ground-truth vertebra of ``images`` (0 where the model has no
    instance of that level), over every fold."""
    from pycocotools import mask as mask_utils
    truth = _truth_polygons(test_coco)
    out: dict[str, list[float]] = {}
    for model, fold in runs:
        path = eval_dir(model, fold, eval_root) / "instances.json"
        if not path.is_file():
            continue
        best: dict[tuple[str, str], dict] = {}
        for inst in read_json(path, what="an evaluation's instances", shape=list,
                              made_by="spinepipe evaluate"):
            if not isinstance(inst, dict):
                continue
            key = (inst.get("file_name"), inst.get("level"))
            score = _number(str(inst.get("score", 0))) or 0.0
            if key[0] in images and isinstance(key[1], str) and (
                    key not in best or score > best[key]["_score"]):
                best[key] = {**inst, "_score": score}
        values = out.setdefault(model, [])
        try:
            for name in sorted(images & set(truth)):
                h, w = truth[name]["size"]
                for level, poly in truth[name]["levels"].items():
                    pred = best.get((name, level))
                    if pred is None:
                        values.append(0.0)
                        continue
                    gt = mask_utils.merge(mask_utils.frPyObjects(poly, h, w))
                    rle = dict(pred["segmentation"])
                    if isinstance(rle.get("counts"), str):
                        rle["counts"] = rle["counts"].encode("ascii")
                    values.append(float(mask_utils.iou([rle], [gt], [0])[0][0]))
        except (KeyError, TypeError, ValueError, AttributeError, UnicodeEncodeError) as exc:
            raise InvalidTableError(f"an instance or a test polygon pycocotools cannot read "
                                    f"({type(exc).__name__})", file=path) from None
    return out


def _mae(pairs: list[tuple[float, float]]) -> float | None:
    return float(np.mean([abs(a - b) for a, b in pairs])) if pairs else None


def humans_vs_models(agreement: dict, clinical: dict[str, tuple[list[dict], list[dict]]],
                     ious: dict[str, list[float]], test_images: set[str]) -> pd.DataFrame | None:
    """Rows: mean IoU and each measure group; columns: the readers, then every model ("value
    (yes / no)": within the readers' variability). None when no test image was read twice."""
    read_twice = {r["image"] for r in agreement["pairs"]} & test_images
    if not read_twice:
        return None
    reader_iou = [(_number(r.get("iou")) or 0.0) for r in agreement["pairs"]
                  if r["image"] in read_twice]
    readers: dict[str, float | None] = {IOU: float(np.mean(reader_iou)) if reader_iou else None}
    counts: dict[str, int] = {}
    for group, label in COMPARED.items():
        cols = set(GROUPS[group])
        rows = [(r["image"], _number(r.get("diff"))) for r in agreement["measures"]
                if r["image"] in read_twice and r.get("measure") in cols]
        diffs = [abs(d) for _, d in rows if d is not None]
        readers[label] = float(np.mean(diffs)) if diffs else None
        counts[label] = len({i for i, d in rows if d is not None})
    table = {f"Readers (reader vs reader, {len(read_twice)} test images)":
             {k: _fmt(v, k) + (f" (n={counts[k]})" if k in counts and v is not None else "")
              for k, v in readers.items()}}
    for model, (pred, true) in clinical.items():
        col = {}
        iou = ious.get(model)
        col[IOU] = _within(float(np.mean(iou)) if iou else None, readers[IOU], higher=True,
                           key=IOU)
        for group, label in COMPARED.items():
            pairs = [(t["file_name"], a, b) for p, t in zip(pred, true)
                     if t["file_name"] in read_twice for c in GROUPS[group]
                     for a, b in [(_number(p.get(c)), _number(t.get(c)))]
                     if a is not None and b is not None]
            col[label] = _within(_mae([(a, b) for _, a, b in pairs]), readers[label],
                                 higher=False, key=label, n=len({i for i, _, _ in pairs}))
        table[display_name(model)] = col
    return pd.DataFrame(table)


def _fmt(v: float | None, key: str) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" if key == IOU else f"{v:.2f}"


def _within(value: float | None, readers: float | None, *, higher: bool, key: str,
            n: int | None = None) -> str:
    """``value (yes / no)``, with the number of images measured (``n``, each image once
    whatever the folds)."""
    if value is None:
        return "n/a"
    count = f"; n={n}" if n is not None else ""
    if readers is None:
        return f"{_fmt(value, key)} ({count[2:]})" if count else _fmt(value, key)
    ok = value >= readers if higher else value <= readers
    return f"{_fmt(value, key)} ({'yes' if ok else 'no'}{count})"


def agreement_tables(agreement: dict) -> dict[str, pd.DataFrame]:
    """The readers' own tables: per pair, the ICC per measure, each reader vs the consensus."""
    s = agreement["summary"]
    out: dict[str, pd.DataFrame] = {}
    pairs = s.get("pairs") if isinstance(s.get("pairs"), dict) else {}
    if pairs:
        out["readers_pairs"] = pd.DataFrame({
            k.replace("|", " vs "): {
                "Images": _count(v.get("images")), "Mean IoU": _num(v.get("mean_iou"), 3),
                "Mean boundary distance (px)": _num(v.get("mean_boundary_px"), 2),
                "Level disagreements": _count(v.get("level_disagreements")),
                "Lordosis MAE (deg)": _num(v.get("lordosis_mae_deg"), 2),
                "Lordosis bias (deg)": _num(v.get("lordosis_bias_deg"), 2),
                "Lordosis 95 % LoA (deg)": _loa(v.get("lordosis_loa_deg"))}
            for k, v in pairs.items() if isinstance(v, dict)}).T
    icc = s.get("icc") if isinstance(s.get("icc"), dict) else {}
    if icc:
        out["readers_icc"] = pd.DataFrame({
            m: {"ICC(2,1)": _num(v.get("value"), 3),
                "95 % CI": _loa(v.get("ci95"), 2),
                "Readers": (" ".join(map(str, v["readers"]))
                            if isinstance(v.get("readers"), list) else "n/a"),
                "Images": _count(v.get("images"))}
            for m, v in icc.items() if isinstance(v, dict)}).T
    cons = s.get("against_consensus") if isinstance(s.get("against_consensus"), dict) else {}
    if cons:
        out["readers_vs_consensus"] = pd.DataFrame({
            r: {"Mean IoU": _num(v.get("mean_iou"), 3),
                "Lordosis MAE (deg)": _num(v.get("lordosis_mae_deg"), 2)}
            for r, v in cons.items() if isinstance(v, dict)}).T
    truth = s.get("against_truth") if isinstance(s.get("against_truth"), dict) else {}
    if truth:
        out["readers_vs_truth"] = pd.DataFrame({
            w: {"Images": _count(v.get("images")), "Mean IoU": _num(v.get("mean_iou"), 3),
                "Lordosis MAE (deg)": _num(v.get("lordosis_mae_deg"), 2)}
            for w, v in truth.items() if isinstance(v, dict)}).T
    return out


def _count(v: object) -> str:
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else "n/a"


def _num(v: object, digits: int) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def _loa(v: object, digits: int = 1) -> str:
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return f"{v[0]:.{digits}f} to {v[1]:.{digits}f}"
    return "n/a"


def readers_lordosis(agreement: dict) -> dict[str, tuple[list[dict], list[dict]]]:
    """The readers' lordosis pairs in the shape :func:`train.report.figures.bland_altman_figure`
    draws: per pair, (reader b's rows, reader a's rows)."""
    out: dict[str, tuple[list[dict], list[dict]]] = {}
    for r in agreement["measures"]:
        if r.get("measure") != "lordosis_deg":
            continue
        a, b = _number(r.get("value_a")), _number(r.get("value_b"))
        if a is None or b is None:
            continue
        rows = out.setdefault(f"{r['reader_a']} vs {r['reader_b']}", ([], []))
        rows[0].append({"lordosis_deg": str(b)})
        rows[1].append({"lordosis_deg": str(a)})
    return out
