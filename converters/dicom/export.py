"""Anonymized DICOM -> grayscale PNG for annotators and models, with provenance and a VIA stub.

Names: ``<patient pseudonym>_<SOPInstanceUID>.png`` (both already pseudonymized by
:mod:`converters.dicom.anonymize`), so the patient of every image is known downstream (splits group
by patient) and nothing identifying is in a name.

Pixels: :func:`converters.dicom.pixels.to_display` (decode, Modality LUT, MONOCHROME1 inverted,
optional VOI window, full-bit-depth histogram equalization or CLAHE), written as lossless 8-bit (or
16-bit) grayscale PNG by OpenCV at ``png_compression`` (0-9).

Also written under the output folder:
- ``provenance/<stem>.json``: source pseudonym UIDs, pixel spacing (mm, row then column),
  size, bit depth, photometric interpretation and every transform applied, in order;
- ``via_project.json``: a VIA 2.x project listing every exported PNG (file name and size in
  bytes), no regions yet, with the class attribute defined, and ``default_filepath`` set from
  ``via_image_path`` (where the annotators' VIA finds the PNGs, so Project > Load shows the
  images): annotators open it in VIA, draw, and save the project;
- ``report.json``: per source file, exported / failed with the reason.
Incremental and additive (:mod:`converters.core.incremental`, state in ``.export_state.json``,
grouped by input folder): a source whose size, mtime and options are unchanged, and whose PNG
exists, is skipped; a failure is retried on every run; a source gone from the input folder
loses its own PNG and provenance; PNGs exported earlier from another input folder stay (and
stay listed in ``via_project.json``).

Bounded and regular inputs: the pixel count a file claims (header and codestream, see
:func:`converters.dicom.pixels.check_pixel_budget`) is checked against ``max_pixels`` (default 64
megapixels, as convert's limit) before anything is decoded. Inputs are regular files: a ``*.dcm``
that is a FIFO, socket, device, folder or broken link fails without being opened (a FIFO would
block the run forever); a symbolic link is followed when it resolves to a regular file, wherever
that is (DVC's symlink cache links tracked files so), since export only reads it.

Names come from data and are checked (:mod:`converters.core.paths`): the Patient ID must be a safe
name (a pseudonym) and the SOP Instance UID a valid UID, or the file fails with an error naming the
tag; nothing is written outside the output folder.
"""
from __future__ import annotations

import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import pydicom

from converters.core.errors import InvalidDicomError, SpinepipeError, raised_by_a_parser
from converters.core.incremental import IncrementalState, file_signature
from converters.core.files import (atomic_path, prepare_output, remove_output, remove_stale_temps,
                                   write_json)
from converters.core.parallel import map_jobs
from converters.core.paths import check_name, check_uid, confined
from converters.dicom.pixels import (MAX_PIXELS, DisplayConfig, check_display, check_pixel_budget,
                                     to_display)
from converters.core.provenance import png_name, record_path
from converters.dicom.read import read_dicom
from converters.core.records import special_kind
from converters.annotations.via_project import ProjectImage, via2_project, via_filepath

STATE_FILE = ".export_state.json"


@dataclass(frozen=True)
class ExportConfig:
    """params.yaml section ``export``."""

    bits: Literal[8, 16] = 8
    equalization: Literal["global", "clahe", "none"] = "global"
    clahe_clip_limit: float = field(default=2.0, metadata={"min": 0.0})
    clahe_tiles: int = field(default=8, metadata={"min": 1, "max": 256})
    use_voi_window: bool = False
    png_compression: int = field(default=1, metadata={"min": 0, "max": 9})
    modalities: list[str] = field(default_factory=lambda: ["CR", "DX", "DR", "RG"])
    fail_on_error: bool = True
    # where the annotators' VIA finds the PNGs: a folder or an http(s) URL prefix ("" = ask)
    via_image_path: str = ""
    # pixel values (rows x columns x frames x samples) a file may claim; checked before decoding
    max_pixels: int = field(default=MAX_PIXELS, metadata={"min": 1})

    def signature(self) -> dict:
        """What an exported PNG depends on (not where VIA looks for it, not error policy or
        the size limit)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("via_image_path", "fail_on_error", "max_pixels")}

    def display(self) -> DisplayConfig:
        return DisplayConfig(bits=self.bits, equalization=self.equalization,
                              clahe_clip_limit=self.clahe_clip_limit,
                              clahe_tiles=self.clahe_tiles, use_voi_window=self.use_voi_window,
                              max_pixels=self.max_pixels)


def _checked_png_name(ds: pydicom.Dataset, file: str = "") -> str:
    """``<PatientID>_<SOPInstanceUID>.png``, both checked: a value from the file never
    becomes a path unvalidated."""
    pid = check_name(str(ds.get("PatientID", "")), "Patient ID", file=file, tag="(0010,0020)")
    sop = check_uid(str(ds.get("SOPInstanceUID", "")), "SOP Instance UID", file=file,
                    tag="(0008,0018)")
    return png_name(pid, sop)


def _spacing(ds) -> list[float] | None:
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        if kw in ds and ds.get(kw):
            return [float(v) for v in ds.get(kw)]
    return None


def export_file(src: str | Path, out_dir: str | Path, options: ExportConfig,
                rel: str = "") -> dict:
    """Export one anonymized DICOM file; returns its provenance record. Raises on bad input."""
    rel = rel or str(src)
    ds = read_dicom(src, name=rel)
    if "PixelData" not in ds:
        raise InvalidDicomError("no PixelData (non-image object)", file=rel, tag="(7FE0,0010)")
    check_pixel_budget(ds, options.max_pixels, rel, setting="export.max_pixels")
    if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        raise InvalidDicomError("not de-identified (PatientIdentityRemoved is not YES): "
                                "anonymize it first", file=rel, tag="(0012,0062)")
    modality = str(ds.get("Modality", ""))
    if options.modalities and modality not in options.modalities:
        raise InvalidDicomError(f"modality {modality or 'missing'} is not a radiograph "
                                f"({', '.join(options.modalities)})", file=rel, tag="(0008,0060)")
    name = _checked_png_name(ds, rel)
    img, transforms = to_display(ds, options.display(), file=rel)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, options.png_compression])
    if not ok:  # pragma: no cover - OpenCV refuses only impossible shapes
        raise InvalidDicomError("PNG encoding failed", file=rel)
    with atomic_path(confined(out_dir, name, file=rel)) as tmp:
        tmp.write_bytes(buf.tobytes())
    transforms.append(f"png(compression={options.png_compression})")
    record = {
        "image": name, "source": rel, "patient": str(ds.PatientID),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "sop_instance_uid": str(ds.SOPInstanceUID), "modality": modality,
        "rows": int(ds.Rows), "columns": int(ds.Columns),
        "bits_stored": int(ds.get("BitsStored", 0)),
        "photometric_interpretation": str(ds.PhotometricInterpretation),
        "transfer_syntax": str(getattr(ds.file_meta, "TransferSyntaxUID", "")),
        "pixel_spacing_mm": _spacing(ds), "png_bits": options.bits, "png_bytes": len(buf),
        "transforms": transforms,
    }
    write_json(record_path(out_dir, name), record)
    return record


def _job(args) -> tuple[str, dict | None, str]:
    src, rel, out_dir, options = args
    try:
        return rel, export_file(src, out_dir, options, rel), ""
    except SpinepipeError as exc:
        return rel, None, str(exc)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OSError,
            OverflowError, NotImplementedError, struct.error, EOFError) as exc:
        # a parser's error on hostile bytes, or the file system's: the file's failure, retried
        # on the next run; anything else raised these types in spinepipe's code: a bug
        if not (raised_by_a_parser(exc) or isinstance(exc, OSError)):
            raise
        return rel, None, f"{rel}: {type(exc).__name__}: {exc}".splitlines()[0]


@dataclass
class ExportReport:
    exported: dict[str, str] = field(default_factory=dict)  # source rel -> png name
    failed: dict[str, str] = field(default_factory=dict)    # source rel -> reason
    reused: int = 0
    removed: int = 0      # PNGs whose anonymized source is gone from the input folder

    def failure_lines(self) -> list[str]:
        return [f"  failed: {reason}" for _, reason in sorted(self.failed.items())]


def export_tree(input_dir: str | Path, output_dir: str | Path, options: ExportConfig, *,
                workers: int = 1, progress=None) -> ExportReport:
    """Export every ``*.dcm`` under ``input_dir`` (skipping ``audit/``) into ``output_dir``."""
    input_dir = Path(input_dir)
    check_display(options.display())
    output_dir = prepare_output(output_dir)
    remove_stale_temps(output_dir)
    state = IncrementalState(output_dir / STATE_FILE)
    # relative: the output must not depend on where the workspace is (DVC's experiment queue
    # runs each experiment in a workspace of its own)
    group = os.path.relpath(input_dir.resolve(), output_dir.resolve())
    opt = options.signature()
    report = ExportReport()
    jobs = []
    sources = sorted(p for p in input_dir.rglob("*.dcm")
                     if "audit" not in p.relative_to(input_dir).parts)
    for p in sources:
        rel = str(p.relative_to(input_dir))
        kind = special_kind(p)
        if kind:  # never opened: a FIFO would block the run (module docstring)
            state.forget(group, rel)
            report.failed[rel] = str(InvalidDicomError(f"not a regular file ({kind})", file=rel))
            continue
        prev = state.up_to_date(group, rel, file_signature(p, opt),
                                output_dir)
        if prev:
            report.exported[rel] = prev["outputs"][0]
            report.reused += 1
            continue
        state.forget(group, rel)
        jobs.append((str(p), rel, str(output_dir), options))
    results = map_jobs(_job, jobs, workers=workers, progress=progress)
    for rel, record, error in results:
        if record is None:
            report.failed[rel] = error  # not recorded: retried next run
            continue
        report.exported[rel] = record["image"]
        state.record(group, rel, file_signature(input_dir / rel, opt),
                     [record["image"], f"provenance/{record['image'][:-4]}.json"])
    # sources gone from this input folder: their own PNG and provenance go
    for stale in state.prune(group, [str(p.relative_to(input_dir)) for p in sources]):
        # a regular file below the output, nothing else
        if remove_output(output_dir, stale) and stale.endswith(".png"):
            report.removed += 1
    images = [o for o in state.outputs() if o.endswith(".png") and "/" not in o]
    write_json(output_dir / "via_project.json", via2_project(
        [ProjectImage(name, (output_dir / name).stat().st_size) for name in images],
        name="spinepipe export", default_filepath=via_filepath(options.via_image_path)),
        indent=None)
    write_json(output_dir / "report.json", {
        "exported": len(images), "failed": report.failed, "options": asdict(options)})
    state.save()
    return report
