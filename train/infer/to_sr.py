"""An evaluation's clinical measures as DICOM Measurement Reports (Comprehensive SR, TID 1500) on
the radiographs they were measured on (``spinepipe to-sr``); the objects themselves:
:mod:`converters.dicom.sr`.

Input: an evaluation folder (``reports/eval/<model>/fold<k>``: ``measures.csv``, one row per test
image, and ``endplates.json``, its endplates), the exported PNG folder and the anonymized DICOM
tree (each image's source is the one its provenance record names:
:func:`train.infer.to_seg.find_source`, as for the SEG) and, optionally (``seg_dir``), to-seg's
folder: its ``to_seg.json`` must be of the same run (model, fold, checkpoint, mode) and where it
lists a SEG of the image (which must reference the very source object the report is on), every
measurement also points to the segments of the levels it was measured on.

Everything is read, checked and built before the first report is written (a bad input is one
error naming the file and image, and the output folder is left as it was). Output:
``<output>/<SR SOP Instance UID>.dcm`` per test image, every image, including one whose measures
were all withheld (its report says why), each written to a temporary name then renamed, and
``to_sr.json`` (per image: the SR file, how many measures were reported and withheld, the SEG
referenced). Reports an earlier run listed there and this one no longer writes (another
checkpoint's, changed numbers) are removed (:func:`train.infer.to_seg.retire_objects`), so the
folder holds what its record lists. Re-identification exactly as to-seg's: ``output`` inside the
private folder, every source's identity verified against the ledger before anything is written.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from converters.core.errors import InvalidTableError
from converters.core.files import prepare_output, write_bytes, write_json
from converters.core.paths import check_name, confined
from converters.core.records import read_json
from converters.dicom.read import read_dicom
from converters.dicom.seg import reidentified_source
from converters.dicom.sr import build_report, reported_columns, seg_reference
from converters.spine.measures import read_measures
from train.infer.to_seg import (algorithm_of, check_source, find_source, private_ledger,
                                retire_objects, verify_identities)

#: the record beside the reports
RECORD = "to_sr.json"


@dataclass(frozen=True)
class ToSrConfig:
    """params.yaml section ``to_sr``: whether the DVC stage writes the reports (of the run
    ``to_seg`` names, so that they point to its segments)."""

    enabled: bool = False


def _seg_index(seg_dir: Path | None, run: dict) -> dict[str, str]:
    """Image name -> SEG file name from to-seg's ``to_seg.json`` in ``seg_dir`` (None: no
    SEG to point to). The record must be of the same run and mode (``run``: model, fold,
    checkpoint, reidentified), else a one-line error: a report never points to the segments of
    another model, fold, checkpoint or mode."""
    if seg_dir is None:
        return {}
    path = seg_dir / "to_seg.json"
    record = read_json(path, what="to-seg record", made_by="to-seg", keys={"images": list})
    if not record["images"]:
        return {}                       # to-seg disabled or waiting: nothing to point to
    for key, value in run.items():
        if record.get(key) != value:
            raise InvalidTableError(f"the SEG objects are of another run ({key} "
                                    f"{str(record.get(key))[:70]!r}, this report's "
                                    f"{str(value)[:70]!r})", file=path)
    out = {}
    for row in record["images"]:
        if isinstance(row, dict) and isinstance(row.get("image"), str) \
                and isinstance(row.get("seg"), str):
            out[row["image"]] = row["seg"]
    return out


def _endplates(eval_dir: Path) -> dict | None:
    """``endplates.json``: per image, its ``prediction`` entry (None when the evaluation
    wrote none, made before spinepipe measured: the reports then carry no coordinates)."""
    path = eval_dir / "endplates.json"
    if not os.path.lexists(path):
        return None
    data = read_json(path, what="endplates", made_by="evaluate", shape=dict)
    out = {}
    for image, entry in data.items():
        pred = entry.get("prediction") if isinstance(entry, dict) else None
        if not isinstance(pred, dict) or not all(isinstance(v, dict) for v in pred.values()):
            raise InvalidTableError("endplates: an entry without a prediction object",
                                    file=path, image=str(image)[:200])
        out[image] = pred
    return out


def write_srs(eval_dir: str | Path, dicom_root: str | Path, png_dir: str | Path,
              output: str | Path, *, model: str, fold: int | None, run: str | Path | None = None,
              seg_dir: str | Path | None = None, private: str | Path | None = None,
              reidentify: bool = False,
              progress: Callable[[int, int], None] | None = None) -> dict:
    """Write one Measurement Report per test image of ``measures.csv``; return the record
    written as ``to_sr.json``. Every input is read and every report built before the first
    is written: a bad input is one error and an untouched output folder."""
    eval_dir, dicom_root, output = Path(eval_dir), Path(dicom_root), Path(output)
    png_dir = Path(png_dir)
    seg_dir = Path(seg_dir) if seg_dir is not None else None
    ledger, salt = private_ledger(private, output) if reidentify else (None, None)
    table = eval_dir / "measures.csv"
    rows = read_measures(table)
    for row in rows:
        check_name(row["file_name"], "image name", file=table)
    endplates = _endplates(eval_dir)
    algorithm = algorithm_of(model, fold, Path(run) if run is not None else None)
    record = {"model": model, "fold": fold, "reidentified": reidentify,
              "checkpoint_sha256": algorithm.checkpoint_sha256, "images": []}
    segs = _seg_index(seg_dir, {k: record[k] for k in ("model", "fold", "checkpoint_sha256",
                                                        "reidentified")})
    if ledger is not None:
        verify_identities([r["file_name"] for r in rows], dicom_root, png_dir, ledger, salt)
    built = []
    for done, row in enumerate(rows, 1):
        built.append(_built_report(row, dicom_root, png_dir, table, eval_dir, endplates,
                                   algorithm, segs, seg_dir, ledger, salt, reidentify))
        if progress:
            progress(done, 2 * len(rows))
    prepare_output(output)
    for done, (uid, data, entry) in enumerate(built, len(rows) + 1):
        target = confined(output, f"{uid}.dcm")
        write_bytes(target, data)
        record["images"].append({"image": entry["image"], "sr": target.name,
                                 **{k: entry[k] for k in ("measures", "withheld", "seg")}})
        if progress:
            progress(done, 2 * len(rows))
    retire_objects(output, RECORD, "sr", {r["sr"] for r in record["images"]})
    write_json(output / RECORD, record)
    return record


def _built_report(row: dict, dicom_root: Path, png_dir: Path, table: Path, eval_dir: Path,
                  endplates: dict | None, algorithm, segs: dict, seg_dir: Path | None,
                  ledger, salt, reidentify: bool) -> tuple[str, bytes, dict]:
    """One image's report built, not written: (SOP Instance UID, the file's bytes, its entry
    in the record). Its source is found through export's provenance and checked against it."""
    image = row["file_name"]
    src_path, provenance = find_source(dicom_root, png_dir, image)
    source = read_dicom(src_path, header_only=True)
    check_source(source, provenance, src_path)
    if ledger is not None:
        source = reidentified_source(source, ledger, salt)
    seg = None
    if image in segs:
        seg = seg_reference(confined(seg_dir, segs[image], file=seg_dir / "to_seg.json"),
                            str(source.SOPInstanceUID))
    # an image the endplates do not list: every line it was measured on is missing
    entry = None if endplates is None else endplates.get(image, {})
    try:
        sr = build_report(source, row, entry, algorithm, seg=seg, reidentified=reidentify)
    except InvalidTableError as exc:
        exc.file = exc.file or str(table if "column" in exc.message
                                   else eval_dir / "endplates.json")
        exc.image = exc.image or image
        raise
    columns = reported_columns(row)
    reported = sum(1 for c in columns if row[c] != "")
    buf = io.BytesIO()           # kept as bytes (tens of kB) until all are built
    sr.save_as(buf, enforce_file_format=True)
    return (str(sr.SOPInstanceUID), buf.getvalue(),
            {"image": image, "measures": reported, "withheld": len(columns) - reported,
             "seg": seg.sop_instance_uid if seg else None})
