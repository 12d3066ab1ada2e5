"""DICOM Segmentation objects (highdicom) of predicted vertebrae, on their source radiographs.

One Segmentation per source image, ``BINARY``, on the source's own pixel grid (its Rows x
Columns; masks of another size are resized with nearest neighbour first). Segments:

- instance models: one per predicted vertebra, labelled by its level (``L1``..``L5``, ``S1``;
  an instance without a level: its class), typed with SNOMED CT's bone structure of L1..L5 /
  sacrum (lumbar spine structure without a level), category "Anatomical Structure";
  overlapping vertebrae stay overlapping segments (a label map could not hold them);
- semantic models: one per class (``lumbar``, ``sacrum``).

Every segment names the algorithm (family "Artificial Intelligence"; name ``spinepipe
<model>``, spinepipe's version, and as parameters the fold, the leaf config's name and the
checkpoint's SHA-256). Frames: one per non-empty segment; :func:`read_seg` reads an object
back with pydicom (frames and each frame's Referenced Segment Number). highdicom 0.28 writes
projection radiographs' Pixel Measures without a Slice Thickness (none exists) and its own
reader then refuses them, hence pydicom there.

UIDs are derived (``pydicom.uid.generate_uid`` over the source SOP Instance UID, the model,
fold and checkpoint and the mode, the instance's also over a digest of its segments), so a re-run
writes the same objects and the PACS does not collect duplicates, while other masks (changed
post-processing) are a new object, never an old UID with other pixels.

Two modes. *Pseudonymized*: the source is the anonymized object; the SEG references its
pseudonymous UIDs and carries its pseudonymous patient module: safe to share. *Re-identified*
(:func:`reidentified_source`): the anonymized object's patient, study, series and instance
identifiers are replaced by the originals from the private ledger, so the SEG lands in the
patient's real study in the PACS; such objects may be written only under the private folder. The
identity is verified against the ledger before anything is built
(:func:`converters.dicom.ledger.verified_identity`): an object whose pseudonym, identity key or
recorded Patient ID and issuer disagree with the ledger is refused, never attached to the wrong
patient.
"""
from __future__ import annotations

import copy
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from converters.dicom.read import read_dicom
from converters.core.errors import InvalidDicomError
from converters.dicom.ledger import verified_identity

SERIES_NUMBER = 9100            # where the SEG series sorts in a viewer's list


def _codes() -> tuple[dict, dict, object]:
    from pydicom.sr.codedict import codes
    levels = {"L1": codes.SCT.BoneStructureOfL1, "L2": codes.SCT.BoneStructureOfL2,
              "L3": codes.SCT.BoneStructureOfL3, "L4": codes.SCT.BoneStructureOfL4,
              "L5": codes.SCT.BoneStructureOfL5, "S1": codes.SCT.BoneStructureOfSacrum}
    classes = {"lumbar": codes.SCT.LumbarSpineStructure, "sacrum": codes.SCT.BoneStructureOfSacrum}
    return levels, classes, codes.SCT.AnatomicalStructure


@dataclass
class Segment:
    """One segment: its label (a level, or a class), class, mask and the model's score."""

    label: str
    cls: str
    mask: np.ndarray            # (rows, cols) bool, on the grid the model's output came in
    score: float | None = None


@dataclass(frozen=True)
class Algorithm:
    """What made the segments (the SEG's Algorithm Identification)."""

    model: str
    fold: int | None
    config: str
    checkpoint_sha256: str
    version: str


def seg_uid(source_sop_uid: str, algorithm: Algorithm, kind: str, reidentified: bool,
            content: str = "") -> str:
    """A derived UID (``kind``: ``series`` or ``instance``; ``content``: a digest of the
    segments, for the instance): the same inputs, the same UID; other masks, another UID."""
    return generate_uid(entropy_srcs=["spinepipe-seg", kind, source_sop_uid, algorithm.model,
                                      str(algorithm.fold), algorithm.checkpoint_sha256,
                                      "reidentified" if reidentified else "pseudonymized",
                                      content])


def reidentified_source(ds: Dataset, ledger: dict, salt: bytes | None = None) -> Dataset:
    """A copy of an anonymized object carrying the original identifiers from the ledger
    (patient name / ID / birth date / sex; study, series and SOP Instance UIDs, accession number,
    study date / time / ID, referring physician): what a re-identified SEG points to. The identity
    is checked first (:func:`converters.dicom.ledger.verified_identity`: the object's pseudonym is
    the one its instance entry records, the patient entry carries the same identity key, made of
    its recorded Patient ID and issuer, and, with ``salt``, that key's pseudonym);
    :class:`InvalidLedgerError` when any check fails, when the ledger does
    not know the instance, or predates the fields re-identification needs."""
    patient, inst = verified_identity(ledger, str(ds.SOPInstanceUID),
                                      str(ds.get("PatientID", "") or ""), salt)
    out = copy.deepcopy(ds)
    out.PatientName = patient.get("patient_name", "")
    out.PatientID = patient.get("patient_id", "")
    issuer = (patient.get("issuer") or [""])[0]
    if issuer:
        out.IssuerOfPatientID = issuer
    out.PatientBirthDate = patient.get("patient_birth_date", "")
    out.PatientSex = patient.get("patient_sex", "")
    out.StudyInstanceUID = inst["study_instance_uid"]
    out.SeriesInstanceUID = inst["series_instance_uid"]
    out.SOPInstanceUID = inst["sop_instance_uid"]
    out.AccessionNumber = inst.get("accession_number", "")
    out.StudyDate = inst.get("study_date", "")
    out.StudyTime = inst.get("study_time", "")
    out.StudyID = inst.get("study_id", "")
    out.ReferringPhysicianName = inst.get("referring_physician_name", "")
    for kw in ("PatientIdentityRemoved", "DeidentificationMethod",
               "DeidentificationMethodCodeSequence"):
        if kw in out:
            delattr(out, kw)
    return out


def _on_grid(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    mask = np.asarray(mask).astype(bool)
    if mask.shape == (rows, cols):
        return mask
    return cv2.resize(mask.astype(np.uint8), (cols, rows),
                      interpolation=cv2.INTER_NEAREST).astype(bool)


def build_segmentation(source: Dataset, segments: list[Segment], algorithm: Algorithm, *,
                       reidentified: bool = False) -> Dataset:
    """The Segmentation of ``segments`` on ``source`` (module docstring); at least one
    non-empty segment. :class:`InvalidDicomError` when the source cannot carry one."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    try:
        rows, cols = int(source.Rows), int(source.Columns)
    except (AttributeError, TypeError, ValueError):
        raise InvalidDicomError("source image without Rows / Columns", tag="(0028,0010)") from None
    levels, classes, category = _codes()
    masks = [_on_grid(s.mask, rows, cols) for s in segments]
    kept = [(s, m) for s, m in zip(segments, masks) if m.any()]
    if not kept:
        raise ValueError("no non-empty segment")
    alg = hd.AlgorithmIdentificationSequence(
        name=f"spinepipe {algorithm.model}", family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.version, source="spinepipe",
        parameters={"fold": str(algorithm.fold), "config": algorithm.config,
                    "checkpoint_sha256": algorithm.checkpoint_sha256})
    descriptions = []
    for k, (s, _) in enumerate(kept, 1):
        prop = levels.get(s.label) or classes.get(s.cls) or classes["lumbar"]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=k, segment_label=s.label, segmented_property_category=category,
            segmented_property_type=prop,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=alg,
            tracking_id=f"{s.label} ({s.cls})",
            tracking_uid=generate_uid(entropy_srcs=["spinepipe-track", str(source.SOPInstanceUID),
                                                    algorithm.model, s.label, str(k)])))
    pixels = np.stack([m for _, m in kept], axis=-1)[None]      # (1 frame, rows, cols, n)
    digest = hashlib.sha256("|".join(s.label for s, _ in kept).encode())
    digest.update(np.packbits(pixels).tobytes())
    with warnings.catch_warnings():
        # a pseudonym is a one-component Patient's Name: valid DICOM, highdicom warns
        warnings.filterwarnings("ignore", message="The string .* is unlikely to represent")
        seg = hd.seg.Segmentation(
            source_images=[source], pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=seg_uid(str(source.SOPInstanceUID), algorithm, "series",
                                        reidentified),
            series_number=SERIES_NUMBER,
            sop_instance_uid=seg_uid(str(source.SOPInstanceUID), algorithm, "instance",
                                     reidentified, digest.hexdigest()),
            instance_number=1, manufacturer="spinepipe",
            manufacturer_model_name=f"spinepipe {algorithm.model}",
            software_versions=algorithm.version, device_serial_number="none",
            content_label="VERTEBRAE",
            content_description=f"{algorithm.model} fold {algorithm.fold}"[:64],
            series_description=f"spinepipe {algorithm.model} vertebrae"[:64])
    # General Image: Patient Orientation is Type 2C for images without a patient frame of
    # reference (projection radiographs): the source's, or empty
    seg.PatientOrientation = source.get("PatientOrientation", "")
    return seg


def read_seg(path: str | Path) -> list[tuple[str, str, np.ndarray]]:
    """(segment label, segmented property type code value, (rows, cols) bool mask) of every
    segment of a BINARY Segmentation of one source image, read with pydicom."""
    ds = read_dicom(path)
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    by_number = {}
    for item, frame in zip(ds.PerFrameFunctionalGroupsSequence, frames):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        by_number[number] = by_number.get(number, np.zeros(frame.shape, bool)) | frame.astype(bool)
    out = []
    for seg in ds.SegmentSequence:
        n = int(seg.SegmentNumber)
        out.append((str(seg.SegmentLabel), str(seg.SegmentedPropertyTypeCodeSequence[0].CodeValue),
                    by_number.get(n, np.zeros((int(ds.Rows), int(ds.Columns)), bool))))
    return out
