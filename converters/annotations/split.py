"""Deterministic, persisted, patient-grouped and stratified splits (DESIGN.md, convention 6).

Input: the convert stage's ``images.csv`` (one row per image: ``file_name``, ``patient``,
``implants``, ``overlap``) and ``coco.json``. Output (under the split folder):

- ``splits.json``: ``{"seed", "k", "strata", "test": [file names], "folds": [{"train": [...],
  "val": [...]}, ...]}``, file names sorted, the single source every later stage reads;
- ``test/coco.json``, ``test/list.txt`` and per fold ``fold<k>/train.json``, ``val.json``
  (COCO subsets, annotation ids kept) and ``train.txt`` / ``val.txt`` (image stems, one per
  line: MMSegmentation's split lists);
- ``summary.json``: images, patients and images per stratum in the test set and each fold.

Method: cases are ordered by their image's content hash (``images.csv`` ``content``, then the file
name; pseudonyms and new UIDs depend on the site's secret salt, the pixels do not, so two
workspaces with different salts split the same images the same way), patients are numbered in
that order, then scikit-learn's ``StratifiedGroupKFold`` (seeded through a permutation of those
patient numbers) splits them with the patient as group and the stratum
(implants x overlap) as label; a batch too small for that (no stratum with as many images as
splits) is stratified by overlap, then implants, then not at all, and ``strata`` in ``splits.json``
says so. The fixed test set is one fold of a first pass sized to the test share; the k folds split
the rest. No patient is ever in two of test / folds' val sets. Test size: ``test_size`` images (100
as in the study), at most ``max_test_fraction`` of them.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.core.errors import (InsufficientDataError, InvalidConfigError, InvalidTableError,
                                    MissingInputError)
from converters.core.files import prepare_output, write_json, write_text
from converters.core import waiting
from converters.core.records import read_json


# ---- the split folder's layout: written here, read by training and evaluation


def splits_file(root: str | Path) -> Path:
    """``splits.json``: written last, so its presence means the rest is there."""
    return Path(root) / "splits.json"


def fold_file(root: str | Path, fold: int, part: str, suffix: str) -> Path:
    """A fold's ``train`` / ``val`` part: ``json`` (COCO subset) or ``txt`` (image stems)."""
    return Path(root) / f"fold{fold}" / f"{part}.{suffix}"


def test_set_file(root: str | Path, suffix: str) -> Path:
    """The fixed test set: ``coco.json`` (COCO subset) or ``list.txt`` (image stems)."""
    return Path(root) / "test" / ("coco.json" if suffix == "json" else "list.txt")


@dataclass(frozen=True)
class SplitConfig:
    """params.yaml section ``split``."""

    seed: int = 0
    k: int = 5
    test_size: int = 100             # images in the fixed test set (the study: 100 of 830)
    max_test_fraction: float = 0.2   # small sets: the test set shrinks to this share


def _strata(rows: list[dict]) -> np.ndarray:
    return np.array([int(r["implants"]) * 2 + int(r["overlap"]) for r in rows])


STRATUM_NAMES = {0: "no implant, no overlap", 1: "no implant, overlap",
                 2: "implant, no overlap", 3: "implant, overlap"}


# Coarser labels, tried in turn when no stratum of the finer one has n_splits images (a small
# batch): stratification then keeps what it can instead of refusing the split.
LABELLINGS = (("implants x overlap", lambda y: y), ("overlap", lambda y: y % 2),
              ("implants", lambda y: y // 2), ("none", lambda y: np.zeros_like(y)))


def _grouped_split(n_splits: int, seed: int, y: np.ndarray, groups: np.ndarray):
    """StratifiedGroupKFold, seeded by relabelling the groups; returns (folds, labelling).

    scikit-learn's ``shuffle=True`` stratifies markedly worse (seen here: up to 7 points off
    a stratum's share where ``shuffle=False`` stays within 1), so the groups are renamed
    through a seeded permutation instead, which changes the algorithm's tie-breaking order
    and hence the split, and ``shuffle=False`` is used. The label is the finest of
    :data:`LABELLINGS` with at least one stratum of ``n_splits`` images (scikit-learn refuses
    when every stratum is smaller; a stratum smaller than ``n_splits`` merely warns).
    """
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold  # 0.5 s: here, not at import
    names = list(dict.fromkeys(groups))   # in the cases' order (salt-free), not by name
    relabel = dict(zip(names, np.random.default_rng(seed).permutation(len(names))))
    seeded = np.array([relabel[g] for g in groups])
    label, coarse = next((name, f(y)) for name, f in LABELLINGS
                         if np.bincount(f(y)).max() >= n_splits or name == "none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=False)
        try:
            return list(cv.split(np.zeros(len(y)), coarse, seeded)), label
        except ValueError as exc:    # too few images / patients for this many splits
            raise InsufficientDataError(f"{len(y)} images of {len(names)} patients cannot be "
                                        f"split {n_splits} ways ({exc})") from None


def make_splits(rows: list[dict], cfg: SplitConfig, file: str = "images.csv") -> dict:
    """Compute the splits of the table rows (pure: no I/O)."""
    rows = sorted(rows, key=lambda r: (r.get("content") or "", r["file_name"]))
    names = np.array([r["file_name"] for r in rows])
    groups = np.array([r["patient"] for r in rows])
    n_patients = len(set(groups))
    if cfg.k < 2:
        raise InvalidConfigError(f"split.k must be at least 2, got {cfg.k}")
    if not 0 < cfg.max_test_fraction < 1:
        raise InvalidConfigError("split.max_test_fraction must be between 0 and 1")
    if n_patients < cfg.k + 1:
        raise InsufficientDataError(f"{len(rows)} images of {n_patients} patients cannot make a test set "
                         f"and {cfg.k} patient-grouped folds (need at least {cfg.k + 1} "
                         "patients)", file=file)
    y = _strata(rows)
    n_test = min(cfg.test_size, int(len(rows) * cfg.max_test_fraction))
    n_test = max(n_test, 1)
    first = min(max(2, round(len(rows) / n_test)), n_patients)
    test_folds, test_label = _grouped_split(first, cfg.seed, y, groups)
    test_idx = test_folds[0][1]
    rest = np.setdiff1d(np.arange(len(rows)), test_idx)
    if len(set(groups[rest])) < cfg.k:
        raise InsufficientDataError(f"after the test set, {len(set(groups[rest]))} patients remain for "
                         f"{cfg.k} folds", file=file)
    folds = []
    cv_folds, cv_label = _grouped_split(cfg.k, cfg.seed, y[rest], groups[rest])
    for train_i, val_i in cv_folds:
        folds.append({"train": sorted(names[rest][train_i].tolist()),
                      "val": sorted(names[rest][val_i].tolist())})
    strata = (f"{test_label} (images.csv)" if test_label == cv_label else
              f"test: {test_label}, folds: {cv_label} (images.csv)")
    if {test_label, cv_label} != {LABELLINGS[0][0]}:
        strata += "; coarser than implants x overlap: too few images per stratum"
    return {"seed": cfg.seed, "k": cfg.k, "strata": strata,
            "test": sorted(names[test_idx].tolist()), "folds": folds}


def _summary(splits: dict, rows: dict[str, dict]) -> dict:
    def describe(files: list[str]) -> dict:
        strata = _strata([rows[f] for f in files]) if files else np.array([], int)
        return {"images": len(files), "patients": len({rows[f]["patient"] for f in files}),
                "strata": {STRATUM_NAMES[s]: int((strata == s).sum()) for s in STRATUM_NAMES}}
    out = {"test": describe(splits["test"])}
    for k, fold in enumerate(splits["folds"]):
        out[f"fold{k}"] = {"train": describe(fold["train"]), "val": describe(fold["val"])}
    return out


def _coco_subset(coco: dict, files: list[str]) -> dict:
    keep = set(files)
    images = [i for i in coco["images"] if i["file_name"] in keep]
    ids = {i["id"] for i in images}
    return {**{k: v for k, v in coco.items() if k not in ("images", "annotations")},
            "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}


def write_splits(processed: str | Path, output: str | Path, cfg: SplitConfig) -> dict:
    """Read ``processed/images.csv`` + ``coco.json``; write the splits; return the summary."""
    processed, output = Path(processed), Path(output)
    table, coco_path = processed / "images.csv", processed / "coco.json"
    for p in (table, coco_path):
        if not p.is_file():
            raise MissingInputError("not found", produced_by="convert", file=p)
    try:
        with table.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except UnicodeDecodeError as exc:
        raise InvalidTableError(f"not UTF-8 text (byte {exc.start})", file=table) from None
    except csv.Error as exc:
        raise InvalidTableError(f"malformed CSV: {exc}", file=table) from None
    need = {"file_name", "patient", "implants", "overlap"}
    if rows and need - set(rows[0]):
        raise InvalidTableError(f"column '{sorted(need - set(rows[0]))[0]}' missing", file=table)
    if rows:
        splits = make_splits(rows, cfg, str(table))
    else:  # nothing annotated yet: empty splits that say so (converters.core.waiting)
        splits = {"seed": cfg.seed, "k": cfg.k, "strata": "", "test": [],
                  "folds": [{"train": [], "val": []} for _ in range(cfg.k)],
                  waiting.KEY: f"no annotated image in {table}"}
    coco = read_json(coco_path, what="COCO annotations", made_by="convert",
                     keys={"images": list, "annotations": list})
    by_name = {r["file_name"]: r for r in rows}
    summary = _summary(splits, by_name)
    stem = lambda f: Path(f).stem  # noqa: E731
    prepare_output(output)
    write_json(test_set_file(output, "json"), _coco_subset(coco, splits["test"]), indent=None)
    write_text(test_set_file(output, "txt"), "".join(f"{stem(f)}\n" for f in splits["test"]))
    for k, fold in enumerate(splits["folds"]):
        for part in ("train", "val"):
            write_json(fold_file(output, k, part, "json"), _coco_subset(coco, fold[part]),
                       indent=None)
            write_text(fold_file(output, k, part, "txt"),
                       "".join(f"{stem(f)}\n" for f in fold[part]))
    write_json(output / "summary.json", summary)
    write_json(splits_file(output), splits)  # last: its presence means the rest is done
    return summary
