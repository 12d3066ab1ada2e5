"""An evaluation's predictions as DICOM Segmentation objects on the anonymized radiographs
(``spinepipe to-seg``); the objects themselves: :mod:`converters.dicom.seg`.

Input: an evaluation folder (``reports/eval/<model>/fold<k>``: ``instances.json`` for instance
models, ``predictions/<stem>.png`` class masks for semantic models), the exported PNG folder and
the anonymized DICOM tree it was exported from. Each PNG's source is the one its provenance record
names (``<png folder>/provenance/<stem>.json``, written by ``export``:
:mod:`converters.core.provenance`), never a name parsed or a glob: the record's ``source`` is
confined to the DICOM tree (:mod:`converters.core.paths`), and the DICOM found must carry the
record's SOP Instance UID.

Output: ``<output>/<SEG SOP Instance UID>.dcm`` per image (written to a temporary name, then
renamed), and ``to_seg.json`` (per image: source, SEG file, segments); objects an earlier run
listed there and this one no longer writes (another checkpoint's, other masks) are removed
(:func:`retire_objects`), so the folder holds what its record lists and ``store`` sends no
superseded object. With ``reidentify`` the objects point to the original study (:func:`converters.dicom.seg.reidentified_source`) and
``output`` must lie inside the private folder: anywhere else is refused before anything is read.
Every source's identity is verified against the ledger (with the private folder's salt) before any
SEG is written (:func:`converters.dicom.ledger.verified_identity`): a mismatch is a one-line error
naming the source, and nothing is written.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from converters.annotations.coco import DEFAULT_CLASSES
from converters.dicom.read import read_dicom
from converters.core.errors import (InvalidDicomError, InvalidLedgerError, InvalidTableError,
                                    MissingInputError, SpinepipeError, UnsafeLocationError)
from converters.core.files import atomic_path, prepare_output, remove_output, write_json
from converters.dicom.ledger import load_ledger, load_salt, verified_identity
from converters.core.paths import confined, is_safe_name
from converters.core.provenance import png_name, record_path
from converters.core.records import read_json
from converters.dicom.seg import Algorithm, Segment, build_segmentation, reidentified_source
from train.models import family

@dataclass(frozen=True)
class ToSegConfig:
    """params.yaml section ``to_seg``: the DVC stage's pseudonymized SEG of one run."""

    enabled: bool = False
    model: str = "mask_rcnn"
    fold: int = field(default=0, metadata={"min": 0})


def spinepipe_version() -> str:
    try:
        return version("spinepipe")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


def algorithm_of(model: str, fold: int | None, run: Path | None) -> Algorithm:
    """The model, fold, leaf config and the checkpoint's SHA-256 (``unknown`` when the
    evaluation's run is not at hand, e.g. predictions made elsewhere)."""
    digest, config = "unknown", "unknown"
    if run is not None and (run / "best.pth").is_file():
        h = hashlib.sha256()
        with (run / "best.pth").open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    if run is not None and (run / "config.py").is_file():
        config = f"{run.name}/config.py of {model}"
    return Algorithm(model, fold, config, digest, spinepipe_version())


CLASS_OF_ID = {v: k for k, v in DEFAULT_CLASSES.items()}


def segments_of(eval_dir: Path, image: str, model: str,
                instances: dict[str, list[dict]] | None) -> list[Segment]:
    """The segments of one evaluated image (module docstring)."""
    if family(model) == "instance":
        out = []
        for r in (instances or {}).get(image, []):
            cls = CLASS_OF_ID.get(int(r.get("category_id", 0)))
            if cls is None:
                continue
            out.append(Segment(r.get("level") or cls, cls,
                               mask_utils.decode(r["segmentation"]).astype(bool),
                               float(r.get("score", 1.0))))
        return out
    path = eval_dir / "predictions" / image
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.ndim != 2:
        raise SpinepipeError("prediction PNG missing or not a one-channel label map",
                             file=path)
    return [Segment(cls, cls, mask == v) for cls, v in DEFAULT_CLASSES.items()]


def find_source(dicom_root: Path, png_dir: Path, image: str) -> tuple[Path, dict]:
    """The anonymized DICOM an exported PNG was made from, and its provenance record (module
    docstring)."""
    path = record_path(png_dir, image)
    record = read_json(path, what="provenance record", made_by="export",
                       keys={"image": str, "source": str, "sop_instance_uid": str})
    if record["image"] != image:
        raise InvalidTableError(f"provenance record of {record['image'][:80]!r}, not of {image}",
                                file=path)
    patient = record.get("patient")
    if isinstance(patient, str) and png_name(patient, record["sop_instance_uid"]) != image:
        # export names every PNG after its patient and object: a record naming another
        # pseudonym or UID is another image's, whatever its "image" key says
        raise InvalidTableError(f"provenance record of another radiograph (patient and SOP "
                                f"Instance UID do not make the name {image})", file=path)
    source = confined(dicom_root, *record["source"].split("/"), file=path)
    if not source.is_file():
        raise MissingInputError(f"no anonymized DICOM for {image} under {dicom_root}",
                                produced_by="anonymize", file=source)
    return source, record


def check_private_output(private: str | Path | None, output: str | Path) -> Path:
    """The private folder, resolved; re-identified objects (and their records) are written
    only inside it: :class:`UnsafeLocationError` otherwise, before anything is read."""
    if private is None:
        raise UnsafeLocationError("--reidentify needs --private (the ledger's folder)")
    priv = Path(private).resolve()
    out = Path(output).resolve()
    if out != priv and priv not in out.parents:
        raise UnsafeLocationError(f"re-identified objects are written only under the "
                                  f"private folder {private}, not {output}")
    return priv


def private_ledger(private: str | Path | None, output: Path) -> tuple[dict, bytes]:
    """The ledger and salt for re-identification; the output must lie inside ``private``."""
    priv = check_private_output(private, output)
    return load_ledger(priv, must_exist=True), load_salt(priv)


def check_source(source, provenance: dict, path: Path) -> None:
    """The DICOM found is the object the provenance record names (its SOP Instance UID, and
    its patient pseudonym where the record has one): :class:`InvalidDicomError` otherwise."""
    if str(source.get("SOPInstanceUID", "")) != provenance["sop_instance_uid"]:
        raise InvalidDicomError("the SOP Instance UID differs from the image's provenance "
                                "record", file=path, tag="(0008,0018)")
    patient = provenance.get("patient")
    if isinstance(patient, str) and str(source.get("PatientID", "")) != patient:
        raise InvalidDicomError("the Patient ID differs from the image's provenance record",
                                file=path, tag="(0010,0020)")


def retire_objects(output: Path, record_file: str, key: str, keep: set[str]) -> int:
    """Delete the objects an earlier run listed in this folder's record (``record_file``,
    ``images[*][key]``) that this run no longer writes (an older checkpoint's or content's, an
    image no longer evaluated), so that the folder holds what its record lists and ``store``
    never sends a superseded object. Only regular ``*.dcm`` files the earlier record names are
    touched, confined to the folder; an unreadable earlier record retires nothing."""
    path = output / record_file
    try:
        old = read_json(path, what="earlier record", shape=dict, keys={"images": list})
    except SpinepipeError:
        return 0
    names = {row.get(key) for row in old["images"] if isinstance(row, dict)}
    return sum(remove_output(output, name) for name in names
               if isinstance(name, str) and name.endswith(".dcm") and is_safe_name(name)
               and name not in keep)


def verify_identities(images: list[str], dicom_root: Path, png_dir: Path, ledger: dict,
                      salt: bytes) -> None:
    """Every source's identity checked against the ledger before anything is written."""
    for image in images:
        src_path, _ = find_source(dicom_root, png_dir, image)
        head = read_dicom(src_path, header_only=True)
        try:
            verified_identity(ledger, str(head.get("SOPInstanceUID", "")),
                              str(head.get("PatientID", "") or ""), salt)
        except InvalidLedgerError as exc:
            exc.file = exc.file or str(src_path)
            raise


def write_segs(eval_dir: str | Path, dicom_root: str | Path, png_dir: str | Path,
               output: str | Path, *, model: str, fold: int | None, run: str | Path | None = None,
               private: str | Path | None = None, reidentify: bool = False,
               progress: Callable[[int, int], None] | None = None) -> dict:
    """Write one SEG per evaluated image with at least one segment; return the record
    written as ``to_seg.json``."""
    eval_dir, dicom_root, output = Path(eval_dir), Path(dicom_root), Path(output)
    png_dir = Path(png_dir)
    ledger, salt = private_ledger(private, output) if reidentify else (None, None)
    summary_path = eval_dir / "per_image.csv"
    if not summary_path.is_file():
        raise MissingInputError("evaluation not found", produced_by="evaluate", file=summary_path)
    images = [r["file_name"] for r in csv.DictReader(summary_path.open())
              if r.get("predicted", "1") != "0"]
    instances = None
    if family(model) == "instance":
        rows = read_json(eval_dir / "instances.json", what="predicted instances",
                         made_by="evaluate", shape=list)
        instances = {}
        for r in rows:
            instances.setdefault(r.get("file_name"), []).append(r)
    algorithm = algorithm_of(model, fold, Path(run) if run is not None else None)
    record = {"model": model, "fold": fold, "reidentified": reidentify,
              "checkpoint_sha256": algorithm.checkpoint_sha256, "images": []}
    if ledger is not None:
        verify_identities(images, dicom_root, png_dir, ledger, salt)
    # every source found and checked, every prediction there, before the first SEG is written
    # (the SEGs themselves are megabytes each: built one at a time, not all held first)
    for image in images:
        src_path, provenance = find_source(dicom_root, png_dir, image)
        check_source(read_dicom(src_path, header_only=True), provenance, src_path)
        if instances is None and not (eval_dir / "predictions" / image).is_file():
            raise MissingInputError("prediction PNG missing", produced_by="evaluate",
                                    file=eval_dir / "predictions" / image)
    prepare_output(output)
    for done, image in enumerate(images, 1):
        src_path, provenance = find_source(dicom_root, png_dir, image)
        source = read_dicom(src_path)
        check_source(source, provenance, src_path)
        segments = segments_of(eval_dir, image, model, instances)
        if not any(np.asarray(s.mask).any() for s in segments):
            record["images"].append({"image": image, "seg": None, "segments": []})
            continue
        if ledger is not None:
            source = reidentified_source(source, ledger, salt)
        seg = build_segmentation(source, segments, algorithm, reidentified=reidentify)
        target = confined(output, f"{seg.SOPInstanceUID}.dcm")
        with atomic_path(target) as tmp:
            seg.save_as(tmp, enforce_file_format=True)
        record["images"].append({"image": image, "seg": target.name,
                                 "segments": [str(s.SegmentLabel) for s in seg.SegmentSequence]})
        if progress:
            progress(done, len(images))
    retire_objects(output, "to_seg.json", "seg", {r["seg"] for r in record["images"] if r["seg"]})
    write_json(output / "to_seg.json", record)
    return record
