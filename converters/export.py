"""Anonymized DICOM -> grayscale PNG for annotators and models, with provenance and a VIA stub.

Names: ``<patient pseudonym>_<SOPInstanceUID>.png`` (both already pseudonymized by
:mod:`converters.anonymize`), so the patient of every image is known downstream (splits group
by patient) and nothing identifying is in a name.

Pixels: :func:`converters.pixels.to_display` (decode, Modality LUT, MONOCHROME1 inverted,
optional VOI window, full-bit-depth histogram equalization or CLAHE), written as lossless
8-bit (or 16-bit) grayscale PNG by OpenCV at ``png_compression`` (0-9).

Also written under the output folder:
- ``provenance/<stem>.json``: source pseudonym UIDs, pixel spacing (mm, row then column),
  size, bit depth, photometric interpretation and every transform applied, in order;
- ``via_project.json``: a VIA 2.x project listing every exported PNG (file name and size in
  bytes), no regions yet, with the class attribute defined: annotators open it in VIA, draw,
  and save the project;
- ``report.json``: per source file, exported / failed with the reason.
Incremental: a source whose size and mtime are unchanged, and whose PNG exists, is skipped.
"""
from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import pydicom

from converters.errors import InvalidDicomError
from converters.io import atomic_path, write_json
from converters.parallel import map_jobs
from converters.pixels import DisplayOptions, to_display
from converters.via import ViaImage, via2_project

STATE_FILE = ".export_state.json"


@dataclass(frozen=True)
class ExportOptions:
    """params.yaml section ``export``."""

    bits: Literal[8, 16] = 8
    equalization: Literal["global", "clahe", "none"] = "global"
    clahe_clip_limit: float = 2.0
    clahe_tiles: int = 8
    use_voi_window: bool = False
    png_compression: int = 1
    modalities: list[str] = field(default_factory=lambda: ["CR", "DX", "DR", "RG"])
    fail_on_error: bool = True

    def display(self) -> DisplayOptions:
        return DisplayOptions(bits=self.bits, equalization=self.equalization,
                              clahe_clip_limit=self.clahe_clip_limit,
                              clahe_tiles=self.clahe_tiles, use_voi_window=self.use_voi_window)


def png_name(ds: pydicom.Dataset) -> str:
    return f"{ds.PatientID}_{ds.SOPInstanceUID}.png"


def _spacing(ds) -> list[float] | None:
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        if kw in ds and ds.get(kw):
            return [float(v) for v in ds.get(kw)]
    return None


def export_file(src: str | Path, out_dir: str | Path, options: ExportOptions,
                rel: str = "") -> dict:
    """Export one anonymized DICOM file; returns its provenance record. Raises on bad input."""
    rel = rel or str(src)
    try:
        ds = pydicom.dcmread(src)
    except Exception as exc:
        raise InvalidDicomError(f"unreadable DICOM ({type(exc).__name__})", file=rel) from None
    if "PixelData" not in ds:
        raise InvalidDicomError("no PixelData (non-image object)", file=rel, tag="(7FE0,0010)")
    if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        raise InvalidDicomError("not de-identified (PatientIdentityRemoved is not YES): "
                                "run spinepipe anonymize first", file=rel, tag="(0012,0062)")
    modality = str(ds.get("Modality", ""))
    if options.modalities and modality not in options.modalities:
        raise InvalidDicomError(f"modality {modality or 'missing'} is not a radiograph "
                                f"({', '.join(options.modalities)})", file=rel, tag="(0008,0060)")
    img, transforms = to_display(ds, options.display(), file=rel)
    name = png_name(ds)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, options.png_compression])
    if not ok:  # pragma: no cover - OpenCV refuses only impossible shapes
        raise InvalidDicomError("PNG encoding failed", file=rel)
    with atomic_path(Path(out_dir) / name) as tmp:
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
    write_json(Path(out_dir) / "provenance" / f"{name[:-4]}.json", record)
    return record


def _job(args) -> tuple[str, dict | None, str]:
    src, rel, out_dir, options = args
    try:
        return rel, export_file(src, out_dir, options, rel), ""
    except InvalidDicomError as exc:
        return rel, None, str(exc)
    except (ValueError, TypeError, KeyError, OSError, struct.error, EOFError) as exc:
        return rel, None, f"{rel}: {type(exc).__name__}: {exc}".splitlines()[0]


@dataclass
class ExportReport:
    exported: dict[str, str] = field(default_factory=dict)  # source rel -> png name
    failed: dict[str, str] = field(default_factory=dict)    # source rel -> reason
    reused: int = 0


def export_tree(input_dir: str | Path, output_dir: str | Path, options: ExportOptions, *,
                workers: int = 1, progress=None) -> ExportReport:
    """Export every ``*.dcm`` under ``input_dir`` (skipping ``audit/``) into ``output_dir``."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    state_path = output_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    report = ExportReport()
    jobs = []
    sources = sorted(p for p in input_dir.rglob("*.dcm") if "audit" not in p.parts)
    for p in sources:
        rel = str(p.relative_to(input_dir))
        st = p.stat()
        prev = state.get(rel)
        if prev and prev["size"] == st.st_size and prev["mtime_ns"] == st.st_mtime_ns \
                and prev["options"] == asdict(options) and (output_dir / prev["image"]).is_file():
            report.exported[rel] = prev["image"]
            report.reused += 1
            continue
        jobs.append((str(p), rel, str(output_dir), options))
    results = map_jobs(_job, jobs, workers=workers, progress=progress)
    for rel, record, error in results:
        st = (input_dir / rel).stat()
        if record is None:
            report.failed[rel] = error
            state.pop(rel, None)
            continue
        report.exported[rel] = record["image"]
        state[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "image": record["image"],
                      "options": asdict(options)}
    # sources that disappeared: remove their PNG and provenance
    present = {str(p.relative_to(input_dir)) for p in sources}
    current = {state[rel]["image"] for rel in present if rel in state}
    for rel in sorted(set(state) - present):
        image = state.pop(rel)["image"]
        if image in current:  # the same image now comes from another path
            continue
        for stale in (output_dir / image, output_dir / "provenance" / f"{image[:-4]}.json"):
            if stale.is_file():
                stale.unlink()
    images = sorted(set(report.exported.values()))
    write_json(output_dir / "via_project.json", via2_project(
        [ViaImage(name, (output_dir / name).stat().st_size) for name in images],
        name="spinepipe export"), indent=None)
    write_json(output_dir / "report.json", {
        "exported": len(images), "failed": report.failed, "options": asdict(options)})
    write_json(state_path, state, indent=None)
    return report
