"""DICOM Measurement Reports (Comprehensive SR, template TID 1500, highdicom) of one radiograph's
clinical measures (:mod:`converters.spine.measures`), beside its SEG (:mod:`converters.dicom.seg`).

Input: one row of an evaluation's ``measures.csv`` (numbers as written there: angles in degrees,
lengths in mm, or in pixels when the pixel spacing is unknown, slips in %), the image's entry of
``endplates.json`` (per level and side the endplate's ``[posterior, anterior]`` corners, x y in
pixels, origin at the top-left corner of the top-left pixel: COCO's convention, which is also
DICOM's for 2-D spatial coordinates, PS3.3 C.18.6.1.2, so the points are written as they are,
(column, row)), the source radiograph (the anonymized object, or its re-identified copy:
:func:`converters.dicom.seg.reidentified_source`) and, where a SEG of the same prediction exists,
its segment numbers by label.

Content tree (TID 1500 "Imaging Measurement Report"):

- observation context: the algorithm as the observer *device* (its UID derived from the
  checkpoint's SHA-256; name ``spinepipe <model>``, model name ``<model> fold <k>, spinepipe
  <version>``, serial number the checkpoint's hash); procedure reported: SCT 363679005 "Imaging
  procedure";
- one measurement group (TID 1501) per measure of :data:`GROUPS`: lordosis L1-S1, the five
  segmental angles, the five discs, the five lumbar bodies, the five slips. Each group has a
  tracking identifier (``lordosis L1-S1``, ``disc L4-L5`` ...; a UID derived from the source, the
  run and the measure) and the finding sites (the levels' SNOMED CT structures); the algorithm is
  the document's observer device, named once. Each number is a TID 300
  measurement with its code and UCUM unit (:data:`CODES`), the side as the finding site's
  topographical modifier (anterior / central / posterior), INFERRED FROM the endplate lines it was
  measured between (SCOORD POLYLINE of two points each, on the source image) and, where a SEG
  exists, from the levels' segments (IMAGE: the SEG with Referenced Segment Numbers). A forward
  slip carries its Meyerding grade as a qualitative evaluation (a retrolisthesis, a negative
  slip, has none: the grade is defined for forward slips);
- a measure the library withheld is never a number: its group holds a TEXT item "Measurement
  withheld" with the reason (the levels' reasons from ``not_measurable``), and the number is
  absent. An image with no measure at all still gets its report, every group saying why.

Codes: SNOMED CT, DCM and UCUM where they exist (from pydicom's code dictionary, which is
DICOM PS3.16's); the rest from the private coding scheme :data:`PRIVATE_SCHEME`, declared in the
object's Coding Scheme Identification Sequence; the codes and the measurement groups are
:mod:`converters.dicom.sr_codes`'s. README "Results back to the PACS" lists them all.

Checked, never trusted: a number beyond :data:`PLAUSIBLE`, a Meyerding grade that is not its
slip's, a line of a reported measure missing, not two finite points or more than
:data:`EDGE_PX` off the image: :class:`InvalidTableError` (corners up to that far beyond an edge
are put on it).

UIDs are derived (:func:`sr_uid`: the source SOP Instance UID, model, fold, checkpoint and mode;
the instance UID also from what the report says, :func:`content_digest`), so a re-run of the same
evaluation writes the same objects and the PACS does not collect duplicates, while changed
numbers are a new object, never an old UID with other content.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Mapping, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from converters.core.errors import InvalidDicomError, InvalidTableError
from converters.dicom.read import read_dicom
from converters.dicom.seg import Algorithm
from converters.dicom.sr_codes import (CODES, GROUPS, PRIVATE_SCHEME, PRIVATE_SCHEME_NAME, SIDES,
                                       Group)
from converters.spine.measures import meyerding

#: the patient and study attributes of Type 2 the report copies from its source
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
          "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
#: a number beyond this is no measure of a spine (an angle, mm, pixels or %): refused
PLAUSIBLE = 1e6
#: endplate corners up to this far (pixels) beyond the image's edge are put on it; further: refused
EDGE_PX = 2.0

SERIES_NUMBER = 9101            # the SR series sorts after the SEG's (9100)


def reported_columns(row: Mapping[str, str]) -> list[str]:
    """The ``measures.csv`` columns a report of ``row`` carries, in order: lengths in mm where
    the row has a pixel spacing, else in pixels; Meyerding grades are the slips' evaluations."""
    return [c.format(unit=_length_unit(row)) for g in GROUPS for c in g.columns]


def _length_unit(row: Mapping[str, str]) -> str:
    return "mm" if _number(row, "pixel_spacing_mm") is not None else "px"


def _code(key: str):
    from highdicom.sr import CodedConcept
    scheme, value, meaning = CODES[key]
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def sr_uid(source_sop_uid: str, algorithm: Algorithm, kind: str, reidentified: bool,
           content: str = "") -> str:
    """A derived UID (``kind``: ``series``, ``instance``, ``device`` or a group's name;
    ``content``: the report's :func:`content_digest`, for its instance UID)."""
    return generate_uid(entropy_srcs=["spinepipe-sr", kind, source_sop_uid, algorithm.model,
                                      str(algorithm.fold), algorithm.checkpoint_sha256,
                                      "reidentified" if reidentified else "pseudonymized",
                                      content])


@dataclass(frozen=True)
class SegReference:
    """A SEG of the same prediction on the same source: what the measurements point to."""

    sop_class_uid: str
    sop_instance_uid: str
    segments: Mapping[str, int]              # segment label (a level) -> segment number
    dataset: Dataset                         # its header: the report's evidence


def seg_reference(path: str | Path, source_sop_uid: str) -> SegReference:
    """The segment numbers by label of a SEG file, read without its pixels; it must reference
    ``source_sop_uid`` (:class:`InvalidDicomError` otherwise)."""
    ds = read_dicom(path, header_only=True)
    try:
        refs = [str(i.ReferencedSOPInstanceUID) for s in ds.ReferencedSeriesSequence
                for i in s.ReferencedInstanceSequence]
        segments = {str(s.SegmentLabel): int(s.SegmentNumber) for s in ds.SegmentSequence}
    except (AttributeError, TypeError, ValueError):
        raise InvalidDicomError("not a Segmentation of one image (no Referenced Series or "
                                "Segment Sequence)", file=str(path), tag="(0062,0002)") from None
    if source_sop_uid not in refs:
        raise InvalidDicomError(f"the SEG does not reference the radiograph {source_sop_uid}",
                                file=str(path), tag="(0008,1115)")
    return SegReference(str(ds.SOPClassUID), str(ds.SOPInstanceUID), segments, ds)


def _number(row: Mapping[str, str], column: str) -> float | None:
    """A measures.csv cell as a number (None: empty: withheld); the table was read by
    :func:`converters.spine.measures.read_measures` (finite numbers); beyond
    :data:`PLAUSIBLE`: :class:`InvalidTableError`."""
    cell = (row.get(column) or "").strip()
    if not cell:
        return None
    value = float(cell)
    if not abs(value) < PLAUSIBLE:
        raise InvalidTableError(f"column {column}: {cell[:40]} is no measure of a spine")
    return value


def _reason(row: Mapping[str, str], levels: Sequence[str]) -> str:
    """Why a measure over ``levels`` was withheld: those levels' reasons from
    ``not_measurable`` (``L4: missing; ...``), or the whole cell."""
    cell = (row.get("not_measurable") or "").strip()
    parts = [p.strip() for p in cell.split(";") if p.strip()]
    mine = [p for p in parts if p.split(":", 1)[0].strip() in levels]
    return "; ".join(mine or parts) or "not measurable"


def _line(endplates: Mapping, level: str, side: str, cols: int, rows: int
          ) -> list[tuple[float, float]]:
    """An endplate's two corners (posterior, anterior) from an endplates.json entry, on the
    source's grid (corners up to :data:`EDGE_PX` beyond an edge put on it);
    :class:`InvalidTableError` naming the level and side when it is missing, not two finite
    points, or off the image."""
    where = f"endplate {level} {side}"
    try:
        pts = endplates[level][side]["endplate"]
        out = [(float(pts[0][0]), float(pts[0][1])), (float(pts[1][0]), float(pts[1][1]))]
    except (KeyError, IndexError, TypeError, ValueError, OverflowError):
        raise InvalidTableError(f"{where}: missing or not two [x, y] points") from None
    if len(pts) != 2 or not all(math.isfinite(v) for p in out for v in p):
        raise InvalidTableError(f"{where}: not two finite [x, y] points")
    for x, y in out:
        if not (-EDGE_PX <= x <= cols + EDGE_PX and -EDGE_PX <= y <= rows + EDGE_PX):
            raise InvalidTableError(f"{where}: point ({x:.6g}, {y:.6g}) off the "
                                    f"{cols}x{rows} image")
    return [(min(max(x, 0.0), cols), min(max(y, 0.0), rows)) for x, y in out]


def _grade(row: Mapping[str, str], group: Group, slip: float) -> int | None:
    """The Meyerding grade of a slip row (None for a retrolisthesis: the grade is defined for
    forward slips); :class:`InvalidTableError` when the cell is not the grade of the slip."""
    cell = (row.get(group.grade) or "").strip()
    expected = meyerding(slip)
    try:
        grade = float(cell)
    except ValueError:
        grade = math.nan
    if grade != expected:
        raise InvalidTableError(f"column {group.grade}: {cell[:20]!r} is not the Meyerding "
                                f"grade of a {slip:.4g} % slip ({expected})")
    return expected if slip >= 0 else None


def content_digest(row: Mapping[str, str], endplates: Mapping | None, seg_uid: str) -> str:
    """What a report says (its numbers, its lines, the SEG it points to), for its SOP Instance
    UID: changed content is a new object, never the old UID with other numbers."""
    said = {c: row.get(c, "") for g in GROUPS for c in g.columns + ((g.grade,) if g.grade else ())}
    said.update({k: row.get(k, "") for k in ("lordosis_deg", "not_measurable",
                                                "pixel_spacing_mm")})
    text = json.dumps([said, endplates, seg_uid], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def build_report(source: Dataset, row: Mapping[str, str], endplates: Mapping | None,
                 algorithm: Algorithm, *, seg: SegReference | None = None,
                 reidentified: bool = False) -> Dataset:
    """The Measurement Report of one radiograph (module docstring). ``row``: its measures.csv
    row as strings (read by :func:`converters.spine.measures.read_measures`); ``endplates``:
    its endplates.json ``prediction`` entry: every line a reported measure was measured between
    must be there (None: the evaluation recorded no endplates; the report then has no
    coordinates). :class:`InvalidTableError` (without file and image: the caller's) when a
    number is implausible, a line is missing or off the image, or a Meyerding grade is not its
    slip's."""
    from highdicom.sr import MeasurementReport, ObservationContext

    try:
        rows, cols = int(source.Rows), int(source.Columns)
    except (AttributeError, TypeError, ValueError):
        raise InvalidDicomError("source image without Rows / Columns", tag="(0028,0010)") from None
    refs = _References(source, endplates, seg, cols, rows)
    unit = _length_unit(row)
    groups = [_measurement_group(group, row, unit, refs, algorithm, reidentified)
              for group in GROUPS]
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=_device(algorithm)),
        procedure_reported=_code("procedure"), imaging_measurements=groups)
    return _document(source, report, row, endplates, seg, algorithm, reidentified)


def _device(algorithm: Algorithm):
    """The algorithm, once: the observer device (name, version in the model name, the
    checkpoint's hash as serial number); the groups inherit it (TID 1501's own algorithm rows
    are optional, and 21 copies of them made the report twice as slow to build)."""
    from highdicom.sr import DeviceObserverIdentifyingAttributes, ObserverContext
    from pydicom.sr.codedict import codes
    return ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=sr_uid("", algorithm, "device", False), name=f"spinepipe {algorithm.model}",
            manufacturer_name="spinepipe",
            model_name=f"{algorithm.model} fold {algorithm.fold}, spinepipe "
                       f"{algorithm.version}"[:64],
            serial_number=algorithm.checkpoint_sha256[:64]))


@dataclass
class _References:
    """What a measurement points at: the endplate lines on the source image, the SEG's
    segments."""

    source: Dataset
    endplates: Mapping | None
    seg: SegReference | None
    cols: int
    rows: int

    @cached_property
    def _region_source(self):
        from highdicom.sr import SourceImageForRegion
        return SourceImageForRegion(
            referenced_sop_class_uid=str(self.source.SOPClassUID),
            referenced_sop_instance_uid=str(self.source.get("SOPInstanceUID", "")))

    def coordinates(self, group: Group) -> list:
        import numpy as np
        from highdicom.sr import CoordinatesForMeasurement, GraphicTypeValues
        if self.endplates is None:
            return []
        return [CoordinatesForMeasurement(
            graphic_type=GraphicTypeValues.POLYLINE,
            graphic_data=np.array(_line(self.endplates, level, side, self.cols, self.rows),
                                  dtype=np.float32),
            source_image=self._region_source) for level, side in group.lines]

    def segment_item(self, group: Group):
        from highdicom.sr import ImageContentItem, RelationshipTypeValues
        from pydicom.sr.codedict import codes
        if self.seg is None:
            return None
        numbers = sorted({self.seg.segments[lv] for lv, _ in group.lines
                          if lv in self.seg.segments})
        if not numbers:
            return None
        return ImageContentItem(name=codes.DCM.SourceOfMeasurement,
                                referenced_sop_class_uid=self.seg.sop_class_uid,
                                referenced_sop_instance_uid=self.seg.sop_instance_uid,
                                referenced_segment_numbers=numbers,
                                relationship_type=RelationshipTypeValues.INFERRED_FROM)


def _measurement_group(group: Group, row: Mapping[str, str], unit: str, refs: _References,
                       algorithm: Algorithm, reidentified: bool):
    """One group's measurements (with their lines and segments), its Meyerding grade, and a
    text for every measure withheld."""
    from highdicom.sr import (FindingSite, Measurement, MeasurementsAndQualitativeEvaluations,
                              QualitativeEvaluation, RelationshipTypeValues, TextContentItem,
                              TrackingIdentifier)
    measurements, withheld = [], []
    levels = tuple(dict.fromkeys(lv for lv, _ in group.lines))
    gunit = unit if group.unit == "{unit}" else group.unit
    for column in group.columns:
        column = column.format(unit=gunit)
        value = _number(row, column)
        if value is None:
            withheld.append(f"{column}: {_reason(row, levels)}")
            continue
        side = next((s for s in SIDES if f"_{s}_" in column), None)
        sites = None if side is None else [FindingSite(anatomic_location=_code(group.sites[0]),
                                                       topographical_modifier=_code(side))]
        m = Measurement(name=_code(group.code), value=value, unit=_code(gunit),
                        finding_sites=sites, referenced_coordinates=refs.coordinates(group) or None)
        item = refs.segment_item(group)
        if item is not None:
            if "ContentSequence" not in m[0]:       # a number without lines or sites
                m[0].ContentSequence = []
            m[0].ContentSequence.append(item)
        measurements.append(m)
    evaluations = None
    if group.grade is not None and measurements:
        grade = _grade(row, group, measurements[0].value)
        if grade is not None:
            evaluations = [QualitativeEvaluation(_code("meyerding"), _code(f"grade_{grade}"))]
    elif group.grade is not None and (row.get(group.grade) or "").strip():
        raise InvalidTableError(f"column {group.grade}: a grade without its slip")
    sop_uid = str(refs.source.get("SOPInstanceUID", ""))
    g = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            identifier=group.name, uid=sr_uid(sop_uid, algorithm, group.name, reidentified)),
        finding_sites=[FindingSite(_code(s)) for s in group.sites],
        measurements=measurements or None, qualitative_evaluations=evaluations)
    for text in withheld:
        g[0].ContentSequence.append(TextContentItem(
            name=_code("withheld"), value=text[:1024],
            relationship_type=RelationshipTypeValues.CONTAINS))
    return g


def _document(source: Dataset, report, row: Mapping[str, str], endplates: Mapping | None,
              seg: SegReference | None, algorithm: Algorithm, reidentified: bool) -> Dataset:
    """The Comprehensive SR around the report: the patient and study modules from the source
    (Type 2 attributes it lacks, which an archive's object need not carry, written empty), the
    SEG as evidence, the private coding scheme declared."""
    import highdicom as hd
    if not str(source.get("StudyInstanceUID", "")):
        raise InvalidDicomError("source image without Study Instance UID", tag="(0020,000D)")
    sop_uid = str(source.get("SOPInstanceUID", ""))
    first = copy.copy(source)
    for keyword in _TYPE2:
        if keyword not in first:
            setattr(first, keyword, "")
    evidence = [first] + ([seg.dataset] if seg is not None else [])
    with warnings.catch_warnings():
        # a pseudonym is a one-component Patient's Name: valid DICOM, highdicom warns
        warnings.filterwarnings("ignore", message="The string .* is unlikely to represent")
        sr = hd.sr.ComprehensiveSR(
            evidence=evidence, content=report,
            series_instance_uid=sr_uid(sop_uid, algorithm, "series", reidentified),
            series_number=SERIES_NUMBER,
            sop_instance_uid=sr_uid(sop_uid, algorithm, "instance", reidentified,
                                    content_digest(row, endplates,
                                                   seg.sop_instance_uid if seg else "")),
            instance_number=1, manufacturer="spinepipe", is_complete=True,
            series_description=f"spinepipe {algorithm.model} measures"[:64])
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = PRIVATE_SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = "spinepipe"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr
