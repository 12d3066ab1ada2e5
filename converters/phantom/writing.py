"""Synthetic lateral lumbar spine radiographs: the product's embedded default data set.

Real X-rays cannot ship, so :func:`generate` writes what a hospital archive and its annotators
would hand over:

- ``dicom/<PatientID>/<AccessionNumber>/<SOPInstanceUID>.dcm``: Computed Radiography or
  Digital X-Ray (For Presentation) objects, 12 bits stored in 16 allocated, unsigned,
  MONOCHROME2 (bone bright) or, for a share of images, MONOCHROME1 (stored inverted), with the
  identifying attributes a real archive carries (names, IDs, dates, accession number,
  institution, physicians, UIDs, a private block repeating the patient ID) and, for a share of
  images, the patient's name burned into the pixels with BurnedInAnnotation ``YES``.
- ``annotations/via_project.json``: a VIA 2.0.x project, one polygon of 6-15 points per
  vertebral body (class ``lumbar`` for each lumbar vertebra drawn, ``sacrum`` for the sacrum) and,
  as in the study, the implants (``cage``, ``screw``, ``rod``). Images are named
  ``<SOPInstanceUID>.png`` with size -1 (VIA's "unknown"): the demo maps them to the exported,
  pseudonymized PNG names through the private ledger (:mod:`converters.phantom.annotator`).
- ``truth.json``: per image, the true level of each region (``L1``..``L5``, ``L6`` on a spine
  with a sixth lumbar vertebra, ``S1``, or ``null`` for implants), what was drawn (overlapping
  levels, implants, thoracic vertebrae, a slip and its size, a ``transitional`` vertebra
  (``six_lumbar`` / ``sacralized_L5``), osteophytes, vacuum discs, a fracture and its cement),
  the pixel spacing, the true ``endplates`` (per level ``superior`` and, lumbar, ``inferior``:
  [posterior corner, anterior corner] where the rounded corners truly are; the VIA polygon's
  vertices are those clicks rounded to whole pixels) and the true clinical ``measures`` computed
  from them (:mod:`converters.spine.measures`; ``null`` with a sixth lumbar vertebra, which
  the L1-S1 frame has no place for).

Geometry: the COCO convention of :mod:`converters.annotations.coco`: continuous coordinates, x to
the right, y down, (0, 0) at the top-left corner of the top-left pixel, pixel (row i, column j)
centred at (j + 0.5, i + 0.5). The image is a projection (:mod:`converters.phantom.anatomy`,
:mod:`converters.phantom.physics`): the annotator's polygons lie on the outlines of the projected
solids; what overlaps in projection (bodies on a collapsed disc, bowel gas, the iliac wings,
metal) overlaps in the image.

Determinism: each image depends only on ``(seed, image index)`` and its patient's anatomy only
on ``(seed, patient index)``, so results do not depend on the number of worker processes.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from converters.phantom.anatomy import MAX_VALUE, Region, render
from converters.phantom.plan import SIX_LUMBAR, Case, PhantomConfig, plan_cases
from converters.core.files import atomic_path, prepare_output, write_json
from converters.spine.measures import measures_from_endplates
from converters.core.parallel import map_jobs
from converters.annotations.via_project import ProjectImage, polygon_region, via2_project

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
PRIVATE_CREATOR = "SPINEPIPE PHANTOM"

_FIRST = ["ANNA", "BERND", "CLARA", "DIETER", "ELKE", "FRANZ", "GERDA", "HANS", "INGE",
          "JONAS", "KARIN", "LUKAS", "MARTA", "NIKLAS", "OLGA", "PETER", "RUTH", "STEFAN",
          "TANJA", "UWE", "VERA", "WALTER"]
_LAST = ["MUELLER", "SCHMIDT", "SCHNEIDER", "FISCHER", "WEBER", "MEYER", "WAGNER", "BECKER",
         "SCHULZ", "HOFFMANN", "KOCH", "RICHTER", "KLEIN", "WOLF", "NEUMANN", "BRAUN",
         "ZIMMERMANN", "HARTMANN", "KRAUSE", "LANGE", "KOVACS", "NAGY"]
_INSTITUTIONS = ["ST. ELISABETH SPINE CENTRE", "KLINIKUM NORD WIRBELSAEULE",
                 "UNIVERSITY HOSPITAL ORTHOPAEDICS"]
_PHYSICIANS = ["HUBER^MARKUS^^DR.", "LORENZ^SABINE^^DR.", "KELLER^THOMAS^^PROF. DR."]


@dataclass
class CaseResult:
    sop_instance_uid: str
    patient_id: str
    dicom_path: str
    regions: list[Region] = field(default_factory=list)
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# DICOM


def _patient(cfg: PhantomConfig, patient_index: int) -> dict:
    rng = np.random.default_rng([cfg.seed, 3, patient_index])
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    birth = _dt.date(1940, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 365 * 50)))
    return {
        "name": f"{last}^{first}",
        "id": f"PID{cfg.seed % 1000:03d}{patient_index:05d}",
        "birth": birth.strftime("%Y%m%d"),
        "sex": "F" if first in _FIRST[::2] else "M",
        "institution": _INSTITUTIONS[patient_index % len(_INSTITUTIONS)],
        "physician": _PHYSICIANS[int(rng.integers(0, len(_PHYSICIANS)))],
        "first_study": _dt.date(2012, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 3000))),
    }


def _uid(cfg: PhantomConfig, *parts) -> str:
    return generate_uid(entropy_srcs=["spinepipe-phantom", str(cfg.seed), *map(str, parts)])


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    meta.ImplementationVersionName = "SPINEPIPE_PH"
    return meta


def _dataset(cfg: PhantomConfig, case: Case, pixels: np.ndarray,
             rng: np.random.Generator) -> Dataset:
    monochrome1, burned_in, dx = case.monochrome1, case.burned_in, case.dx
    facing = "left" if case.facing_left else "right"
    pat = _patient(cfg, case.patient_index)
    study_date = pat["first_study"] + _dt.timedelta(days=120 * case.patient_image)
    study_time = f"{8 + case.index % 10:02d}{(7 * case.index) % 60:02d}{(13 * case.index) % 60:02d}"
    age = (study_date.year - int(pat["birth"][:4]))
    sop_class = DX_IMAGE_STORAGE_PRESENTATION if dx else CR_IMAGE_STORAGE
    study_uid = _uid(cfg, "study", case.patient_index, case.patient_image)
    series_uid = _uid(cfg, "series", case.patient_index, case.patient_image)
    sop_uid = _uid(cfg, "sop", case.index)

    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if not dx else ["ORIGINAL", "PRIMARY", ""]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = study_time
    ds.AccessionNumber = f"ACC{cfg.seed % 100:02d}{case.index:06d}"
    ds.Modality = "DX" if dx else "CR"
    if dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "SPINEPIPE"
    ds.InstitutionName = pat["institution"]
    ds.InstitutionAddress = "HAUPTSTRASSE 1, 10115 BERLIN"
    ds.ReferringPhysicianName = pat["physician"]
    ds.StationName = f"XR-ROOM-{1 + case.patient_index % 3}"
    ds.StudyDescription = "LWS SEITLICH"
    ds.SeriesDescription = "LWS LAT"
    ds.OperatorsName = "TECH^ANNA"
    ds.ManufacturerModelName = "PHANTOM-XR"
    _patient_module(ds, pat, age)
    ds.BodyPartExamined = "LSPINE"
    ds.DeviceSerialNumber = f"SN{1000 + case.patient_index % 3}"
    ds.SoftwareVersions = "spinepipe-phantom 1"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{case.patient_index:04d}{case.patient_image}"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    # rows run towards the patient's front (facing right) or back, columns towards the feet
    ds.PatientOrientation = ["A" if facing == "right" else "P", "F"]
    ds.ViewPosition = "LL"
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "YES" if burned_in else "NO"
    ds.LossyImageCompression = "00"
    _pixel_module(ds, pixels, monochrome1, case.pixel_spacing_mm)
    _acquisition(ds, rng, dx, monochrome1, case.pixel_spacing_mm)
    _private_block(ds, pat, study_date)
    stored = (MAX_VALUE - pixels) if monochrome1 else pixels
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def _patient_module(ds: Dataset, pat: dict, age: int) -> None:
    """The patient's identity, and a second ID from another system (as archives carry)."""
    ds.PatientName = pat["name"]
    ds.PatientID = pat["id"]
    ds.PatientBirthDate = pat["birth"]
    ds.PatientSex = pat["sex"]
    ds.PatientAge = f"{age:03d}Y"
    other = Dataset()
    other.PatientID = f"KIS{int(pat['id'][3:]) + 7_000_000}"
    other.IssuerOfPatientID = "KIS"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]


def _private_block(ds: Dataset, pat: dict, study_date: _dt.date) -> None:
    """A private block, as vendors write: it repeats identifying values."""
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", pat["id"])
    block.add_new(0x11, "LO", f"{pat['name']} {pat['birth']}")
    block.add_new(0x12, "DA", study_date.strftime("%Y%m%d"))


def _pixel_module(ds: Dataset, pixels: np.ndarray, monochrome1: bool, spacing: float) -> None:
    """Image Pixel and presentation attributes: 12 bits stored in 16, unsigned."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
    ds.ImagerPixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"


def _acquisition(ds: Dataset, rng: np.random.Generator, dx: bool, monochrome1: bool,
                 spacing: float) -> None:
    """What the modality records of the exposure (DX: its detector and the anatomy coded)."""
    if dx:
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1 if monochrome1 else 1
        ds.DetectorType = "SCINTILLATOR"
        ds.PositionerType = "NONE"
        ds.ImagerPixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
        ds.AcquisitionContextSequence = []
        ds.AnatomicRegionSequence = [Dataset()]
        code = ds.AnatomicRegionSequence[0]
        code.CodeValue = "122496007"     # SNOMED CT: lumbar spine structure
        code.CodingSchemeDesignator = "SCT"
        code.CodeMeaning = "Lumbar spine"
    else:
        ds.PlateType = "STANDARD"
    ds.KVP = f"{rng.uniform(78, 95):.0f}"
    ds.DistanceSourceToDetector = "1150"
    ds.ExposureTime = int(rng.integers(80, 400))
    ds.XRayTubeCurrent = int(rng.integers(200, 500))


def _write_case(args: tuple[Case, PhantomConfig, str]) -> CaseResult:
    case, cfg, out = args
    pixels, regions, info = render(case)
    rng = np.random.default_rng([cfg.seed, 4, case.index, 1])
    if case.burned_in:
        pat = _patient(cfg, case.patient_index)
        burn_in(pixels, [pat["name"].replace("^", " "), pat["id"], pat["birth"]])
    ds = _dataset(cfg, case, pixels, rng)
    rel = Path("dicom") / ds.PatientID / ds.AccessionNumber / f"{ds.SOPInstanceUID}.dcm"
    with atomic_path(Path(out) / rel) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    info.update(monochrome1=case.monochrome1, burned_in=case.burned_in, modality=ds.Modality,
                patient_index=case.patient_index, pixel_spacing_mm=float(ds.PixelSpacing[0]))
    return CaseResult(ds.SOPInstanceUID, ds.PatientID, str(rel), regions, info)


def generate(cfg: PhantomConfig, output: str | Path, *, workers: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> list[CaseResult]:
    """Write ``cfg.n`` phantom radiographs and their VIA annotations under ``output``.

    Work is spread over ``workers`` processes (default: all cores). Returns one
    :class:`CaseResult` per image, in index order.
    """
    cfg.validate()
    output = prepare_output(output)
    cases = plan_cases(cfg)
    workers = workers or os.cpu_count() or 1
    jobs = [(c, cfg, str(output)) for c in cases]
    results = map_jobs(_write_case, jobs, workers=workers, progress=progress)
    _write_annotations(output, results)
    return results


def _write_annotations(output: Path, results: list[CaseResult]) -> None:
    images, truth = [], {}
    for r in results:
        via_regions = [polygon_region(reg.points, **{"class": reg.cls}) for reg in r.regions]
        images.append(ProjectImage(f"{r.sop_instance_uid}.png", -1, tuple(via_regions)))
        endplates = {reg.level: reg.endplates() for reg in r.regions if reg.corners}
        # a sixth lumbar vertebra has no place in the measures' L1-S1 frame: none are made
        six = r.info.get("transitional") == SIX_LUMBAR
        measures = (None if six else
                    measures_from_endplates(endplates, (r.info["pixel_spacing_mm"],) * 2))
        truth[r.sop_instance_uid] = {
            "dicom": r.dicom_path,
            "patient_id": r.patient_id,
            "levels": [reg.level for reg in r.regions],
            "classes": [reg.cls for reg in r.regions],
            **r.info,
            "endplates": endplates,
            "measures": measures,
        }
    write_json(output / "annotations" / "via_project.json",
               via2_project(images, name="spinepipe phantom"), indent=None)
    write_json(output / "truth.json", truth)




def burn_in(pixels: np.ndarray, lines: Sequence[str]) -> None:
    """Write text into the top-left corner of the pixels (MONOCHROME2 sense, saturated white),
    as a modality's overlay burned into the image would be."""
    h, w = pixels.shape
    scale = max(0.3, w / 700)
    thick = max(1, int(round(scale * 1.5)))
    mask = np.zeros((h, w), np.uint8)
    y = int(24 * scale) + 4
    for line in lines:
        cv2.putText(mask, line, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
        y += int(30 * scale) + 4
    pixels[mask > 127] = MAX_VALUE
