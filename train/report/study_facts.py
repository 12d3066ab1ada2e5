"""The facts a study text uses, read from the pipeline's records (:mod:`train.report.study`'s
docstring lists the records and how hostile ones are treated): :class:`Sources` (where they are),
:class:`Facts` (each fact None where its record is missing) and :func:`gather`; with the Markdown
helpers every text uses (:func:`_md` escapes a record's value).
"""
from __future__ import annotations

import csv
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from converters.core.errors import SpinepipeError
from converters.core.provenance import pixel_spacing
from converters.core.records import open_input, read_json


#: what a sentence says when its record is missing
NOT_RECORDED = "not recorded"
TO_COMPLETE = "*to be completed by the authors*"


@dataclass(frozen=True)
class Sources:
    """Where the records are (the pipeline's defaults: README "Where results appear")."""

    anon: Path = Path("data/interim/anon")
    png: Path = Path("data/interim/png")
    processed: Path = Path("data/processed")
    splits: Path = Path("data/splits")
    models: Path = Path("models")
    #: the phantom's truth (converters/phantom/writing.py): present, the data is synthetic
    phantom_truth: Path = Path("data/raw/truth.json")


def _record(path: Path) -> dict | None:
    try:
        return read_json(path, what="record")
    except SpinepipeError:
        return None


def _dict(value) -> dict:
    """A record's value where an object is expected ({} for anything else)."""
    return value if isinstance(value, dict) else {}


def _int(value, most: int = 10 ** 12) -> int | None:
    """A record's count: a whole number from 0 to ``most`` (None for anything else)."""
    return value if isinstance(value, int) and not isinstance(value, bool) \
        and 0 <= value <= most else None


_MD_SPECIAL = re.compile(r"([\\`*_\[\]()!|#<>~])")


def _md(value) -> str:
    """A record's value as Markdown text: every character Markdown would read as markup
    (links, images, emphasis, table cells) escaped, and on one line; a value that is no word or
    number (null, a boolean, NaN, a list or an object) is not recorded."""
    if _scalar(value) is None:
        return NOT_RECORDED
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))[:300]


def _scalar(value) -> str | int | float | None:
    """A record's value where a word or a number is expected (None for anything else)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _threshold(value) -> float | None:
    """An IoU threshold from a record: a number in (0, 1] (None for anything else)."""
    v = _scalar(value)
    return float(v) if isinstance(v, (int, float)) and 0 < v <= 1 else None


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "n/a"


def _counts(counter: Counter | None) -> str:
    """``DX (50), CR (49)``."""
    return ", ".join(f"{_md(k)} ({v})" for k, v in (counter or Counter()).most_common()) \
        or NOT_RECORDED


def _range(pair: tuple | None, fmt: str = "{}") -> str:
    if pair is None:
        return NOT_RECORDED
    lo, hi = (fmt.format(v) for v in pair)
    return lo if lo == hi else f"{lo}-{hi}"


def _kinds(counts) -> str:
    """convert's problem counts in words: ``unannotated image: 10``."""
    if not isinstance(counts, dict):
        return NOT_RECORDED
    return "; ".join(f"{_md(str(k).replace('_', ' '))}: {_md(v)}"
                     for k, v in counts.items()) or "none"


def _or(value, fmt: str = "{}") -> str:
    return NOT_RECORDED if value is None else fmt.format(value)


def _counts_said(counts) -> str:
    """anonymize's counts (``99 anonymized, 11 quarantined``), or not recorded."""
    if not isinstance(counts, dict) or not counts:
        return f"counts {NOT_RECORDED}"
    return ", ".join(f"{_md(v)} {_md(k)}" for k, v in counts.items())

# --------------------------------------------------------------------------------------------
# facts from the records


@dataclass
class Facts:
    """Every fact the texts use, each None where its record is missing."""

    images: int | None = None
    patients: int | None = None
    rows: tuple[int, int] | None = None
    columns: tuple[int, int] | None = None
    modalities: Counter | None = None
    bits: Counter | None = None
    manufacturers: Counter | None = None
    spacing_mm: tuple[float, float] | None = None
    anonymize: dict | None = None
    export: dict | None = None
    convert: dict | None = None
    via_versions: Counter | None = None
    annotated: int | None = None
    implants: int | None = None
    overlaps: int | None = None
    classes: list[str] | None = None
    instances: int | None = None
    points: tuple[float, int, int] | None = None       # mean, min, max per polygon
    readers: list[str] | None = None                   # images.csv's readers, all images
    multi_read: int | None = None                      # images read by two or more
    truths: Counter | None = None                      # ground truth by kind
    consensus_points: int | None = None                # most points of a consensus polygon
    splits: dict | None = None
    split_summary: dict | None = None
    synthetic: bool = False


ONE_READER = "one reader's"


def gather(src: Sources) -> Facts:
    """The facts of the records under ``src`` (module docstring); each record that is not as
    its stage writes it leaves its facts None ("not recorded"), it never fails."""
    f = Facts()
    for part in (_provenance_facts, _anonymize_facts, _annotation_facts, _split_facts):
        try:
            part(src, f)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError):
            continue          # a malformed record: its facts stay unrecorded
    try:
        truth = _record(src.phantom_truth)
        f.synthetic = bool(truth)          # the phantom's cases (an empty one: phantom off)
    except (TypeError, ValueError):
        f.synthetic = False
    return f


def _provenance_facts(src: Sources, f: Facts) -> None:
    provenance = [r for r in (_record(p) for p in sorted((src.png / "provenance")
                                                          .glob("*.json"))) if r]
    if not provenance:
        return
    f.images = len(provenance)
    patients = [r.get("patient") for r in provenance]
    f.patients = (len(set(patients)) if all(isinstance(p, str) and p for p in patients)
                  else None)
    rows = [v for v in (_int(r.get("rows")) for r in provenance) if v]
    cols = [v for v in (_int(r.get("columns")) for r in provenance) if v]
    f.rows = (min(rows), max(rows)) if rows else None
    f.columns = (min(cols), max(cols)) if cols else None
    f.modalities = Counter(_md(r.get("modality")) for r in provenance)
    f.bits = Counter(_md(r.get("bits_stored")) for r in provenance)
    spacing = [sp[0] for sp in (pixel_spacing(r) for r in provenance) if sp]
    f.spacing_mm = (min(spacing), max(spacing)) if spacing else None


def _anonymize_facts(src: Sources, f: Facts) -> None:
    f.export = _record(src.png / "report.json")
    f.anonymize = _record(src.anon / "report.json")
    if f.anonymize and isinstance(f.anonymize.get("outputs"), list):
        f.manufacturers = _manufacturers(src.anon, f.anonymize["outputs"])


def _annotation_facts(src: Sources, f: Facts) -> None:
    f.convert = _record(src.processed / "report.json")
    if f.convert and isinstance(f.convert.get("formats"), dict):
        f.via_versions = Counter(_md(v) for v in f.convert["formats"].values())
    table = src.processed / "images.csv"
    consensus: set = set()         # the images whose ground truth is the readers' consensus
    try:
        with open_input(table, "r", encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            columns = set(reader.fieldnames or [])
            rows_ = list(reader)
        f.annotated = len(rows_)
        if {"implants", "overlap"} <= columns:
            f.implants = sum(1 for r in rows_ if (r.get("implants") or "0") not in ("0", ""))
            f.overlaps = sum(1 for r in rows_ if (r.get("overlap") or "0") not in ("0", ""))
        if {"readers", "ground_truth"} <= columns:
            sets = [str(r.get("readers") or "").split() for r in rows_]
            f.readers = sorted({x for s in sets for x in s})
            f.multi_read = sum(len(s) > 1 for s in sets)
            f.truths = Counter("consensus" if r.get("ground_truth") == "consensus" else
                               "adjudicated" if r.get("ground_truth") == "adjudicated" else
                               ONE_READER for r in rows_)
            consensus = {r["file_name"] for r in rows_ if r.get("ground_truth") == "consensus"
                         and isinstance(r.get("file_name"), str) and r["file_name"]}
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    coco = _record(src.processed / "coco.json")
    if coco and isinstance(coco.get("annotations"), list):
        f.classes = [_md(c.get("name")) for c in coco.get("categories", [])
                     if isinstance(c, dict)]
        f.instances = len(coco["annotations"])
        pts = _points(coco["annotations"])
        if pts:
            f.points = (sum(pts) / len(pts), min(pts), max(pts))
        f.consensus_points = _most_points(coco, consensus)


def _points(annotations: list, image_ids: set | None = None) -> list[int]:
    """Points of each polygon of the annotations (of the images ``image_ids``: all if None)."""
    return [len(p) // 2 for a in annotations if isinstance(a, dict)
            and (image_ids is None or a.get("image_id") in image_ids)
            and isinstance(a.get("segmentation"), list)
            for p in a["segmentation"] if isinstance(p, list)]


def _most_points(coco: dict, names: set[str]) -> int | None:
    """The most points of one polygon (three or more) on the images ``names`` (None: no such
    polygon, or an image not named, ids not numbers: not recorded)."""
    ids = {im["id"] for im in coco.get("images", []) if isinstance(im, dict)
           and isinstance(im.get("file_name"), str) and im["file_name"] in names
           and isinstance(im.get("id"), int)}
    return max((n for n in _points(coco["annotations"], ids) if n >= 3), default=None)


def _split_facts(src: Sources, f: Facts) -> None:
    f.splits = _record(src.splits / "splits.json")
    f.split_summary = _record(src.splits / "summary.json")


def _manufacturers(anon: Path, outputs: list) -> Counter | None:
    """Manufacturer (and model) of the anonymized objects, read without pixels."""
    from converters.core.paths import confined
    from converters.dicom.read import read_dicom
    out: Counter = Counter()
    root = os.path.realpath(anon)
    for rel in outputs:
        if not isinstance(rel, str):
            continue
        try:
            path = confined(anon, *rel.split("/"))
            # read, never through a link out of the tree (the private folder is beside it)
            if not os.path.realpath(path).startswith(root + os.sep) or any(
                    p.is_symlink() for p in [path, *path.parents] if len(p.parts) >
                    len(Path(anon).parts)):
                continue
            ds = read_dicom(path, header_only=True)
        except (SpinepipeError, OSError, ValueError):
            continue
        out[str(ds.get("Manufacturer", "") or "removed by de-identification")] += 1
    return out or None


# --------------------------------------------------------------------------------------------
# a leaf config read as data

