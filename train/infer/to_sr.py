"""An evaluation's clinical measures as DICOM Measurement Reports (Comprehensive SR, TID 1500) on
the radiographs they were measured on (``spinepipe to-sr``); the objects themselves:
:mod:`converters.dicom.sr`.

Input: an evaluation folder (``reports/eval/<model>/fold<k>``: ``measures.csv``, one row per test
image, and ``endplates.json``, its endplates), the exported PNG folder and the anonymized DICOM
tree (each image's source is the one its provenance record names:
:func:`train.infer.to_seg.find_source`, as for the SEG) and, optionally, to-seg's folder: where it
holds a SEG of the same image (its ``to_seg.json`` names it, and the SEG references the same
source), every measurement also points to the segments of the levels it was measured on.

Output: ``<output>/<SR SOP Instance UID>.dcm`` per test image, every image, including one whose
measures were all withheld (its report says why), written to a temporary name then renamed, and
``to_sr.json`` (per image: source, SR file, how many measures were reported and withheld, the SEG
referenced). Re-identification exactly as to-seg's: ``output`` inside the private folder, every
source's identity verified against the ledger before anything is written; a pseudonymized report
never references a re-identified SEG nor the reverse (the SEG must reference the very source
object the report does).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from converters.core.errors import InvalidDicomError, InvalidTableError
from converters.core.files import atomic_path, prepare_output, write_json
from converters.core.paths import confined
from converters.core.records import read_json
from converters.dicom.read import read_dicom
from converters.dicom.seg import reidentified_source
from converters.dicom.sr import SegReference, build_report, reported_columns, seg_reference
from converters.spine.measures import read_measures
from train.infer.to_seg import algorithm_of, find_source, private_ledger, verify_identities


@dataclass(frozen=True)
class ToSrConfig:
    """params.yaml section ``to_sr``: whether the DVC stage writes the reports (of the run
    ``to_seg`` names, so that they point to its segments)."""

    enabled: bool = False


def _seg_index(seg_dir: Path | None) -> dict[str, str]:
    """Image name -> SEG file name from to-seg's ``to_seg.json`` (empty without one)."""
    if seg_dir is None or not (seg_dir / "to_seg.json").is_file():
        return {}
    record = read_json(seg_dir / "to_seg.json", what="to-seg record", made_by="to-seg",
                       keys={"images": list})
    out = {}
    for row in record["images"]:
        if isinstance(row, dict) and isinstance(row.get("image"), str) \
                and isinstance(row.get("seg"), str):
            out[row["image"]] = row["seg"]
    return out


def _endplates(eval_dir: Path) -> dict:
    """``endplates.json``: per image, its ``prediction`` entry (empty when the evaluation
    wrote none, e.g. made before spinepipe measured: the reports then carry no coordinates)."""
    path = eval_dir / "endplates.json"
    if not path.is_file():
        return {}
    data = read_json(path, what="endplates", made_by="evaluate", shape=dict)
    return {k: v.get("prediction") or {} for k, v in data.items() if isinstance(v, dict)}


def write_srs(eval_dir: str | Path, dicom_root: str | Path, png_dir: str | Path,
              output: str | Path, *, model: str, fold: int | None, run: str | Path | None = None,
              seg_dir: str | Path | None = None, private: str | Path | None = None,
              reidentify: bool = False,
              progress: Callable[[int, int], None] | None = None) -> dict:
    """Write one Measurement Report per test image of ``measures.csv``; return the record
    written as ``to_sr.json``."""
    eval_dir, dicom_root, output = Path(eval_dir), Path(dicom_root), Path(output)
    png_dir = Path(png_dir)
    seg_dir = Path(seg_dir) if seg_dir is not None else None
    ledger, salt = private_ledger(private, output) if reidentify else (None, None)
    rows = read_measures(eval_dir / "measures.csv")
    endplates = _endplates(eval_dir)
    segs = _seg_index(seg_dir)
    algorithm = algorithm_of(model, fold, Path(run) if run is not None else None)
    record = {"model": model, "fold": fold, "reidentified": reidentify,
              "checkpoint_sha256": algorithm.checkpoint_sha256, "images": []}
    if ledger is not None:
        verify_identities([r["file_name"] for r in rows], dicom_root, png_dir, ledger, salt)
    # every source found before anything is written: a gone one is an error, not half a folder
    sources = [find_source(dicom_root, png_dir, r["file_name"]) for r in rows]
    prepare_output(output)
    for done, (row, (src_path, provenance)) in enumerate(zip(rows, sources), 1):
        image = row["file_name"]
        source = read_dicom(src_path, header_only=True)
        if str(source.get("SOPInstanceUID", "")) != provenance["sop_instance_uid"]:
            raise InvalidDicomError("the SOP Instance UID differs from the image's provenance "
                                    "record", file=src_path, tag="(0008,0018)")
        if ledger is not None:
            source = reidentified_source(source, ledger, salt)
        seg: SegReference | None = None
        if image in segs:
            seg = seg_reference(confined(seg_dir, segs[image], file=seg_dir / "to_seg.json"),
                                str(source.SOPInstanceUID))
        entry = endplates.get(image, {})
        if not isinstance(entry, dict):
            raise InvalidTableError("endplates entry is not an object", image=image,
                                    file=eval_dir / "endplates.json")
        sr = build_report(source, row, entry, algorithm, seg=seg, reidentified=reidentify)
        target = confined(output, f"{sr.SOPInstanceUID}.dcm")
        with atomic_path(target) as tmp:
            sr.save_as(tmp, enforce_file_format=True)
        columns = reported_columns(row)
        reported = sum(1 for c in columns if row[c] != "")
        record["images"].append({"image": image, "sr": target.name, "measures": reported,
                                 "withheld": len(columns) - reported,
                                 "seg": seg.sop_instance_uid if seg else None})
        if progress:
            progress(done, len(rows))
    write_json(output / "to_sr.json", record)
    return record

