"""DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile.

The action of every attribute comes from the standard's Table E.1-1 as the
``dicom-anonymizer`` package ships it (``dicomanonymizer.dicom_anonymization_databases``,
edition :data:`TABLE_EDITION`); this module is the engine that applies it:

- ``X`` remove; ``Z`` zero-length; ``D`` dummy value of the VR; ``U`` UID remapped.
  Compound actions resolve as: ``Z/D`` and ``X/Z/D`` -> ``Z``, ``X/Z`` -> ``Z``, ``X/D`` -> ``X``,
  ``X/Z/U*`` (reference sequences) -> kept with their UIDs remapped.
- Patient ID and Patient's Name become the patient's pseudonym (``SP`` + 10 hex digits of an
  HMAC of the original Patient ID).
- UIDs: ``2.25.<decimal of the first 128 bits of HMAC-SHA256(salt, uid)>``: valid UID syntax,
  the same input UID gives the same output UID in every run of a project (same salt), and
  references between objects stay consistent. Every instance UID is remapped, at every
  sequence depth, unless it is a well-known UID of the standard's registry (PS3.6 Annex A as
  pydicom lists it: transfer syntaxes, SOP classes, coding schemes, ...), checked by list, not by
  prefix (a crafted ``1.2.840.10008.9/../x`` is remapped like any other value).
  ``*ClassUID`` / ``*SyntaxUID`` attributes are kept.
- Patient's Name and Patient ID are replaced by the pseudonym wherever they occur, sequence
  items included; every other Table E.1-1 attribute is handled at every sequence depth.
- The 128-byte Part 10 preamble (free text in some archives) is zeroed.
- Pixel data is checked before an object is called anonymized: uncompressed, its length must
  hold Rows x Columns x Samples x BitsAllocated x Frames; compressed, it must decode. An image
  object without pixel data (truncated) is an error, never a "non-image" skip.
- Option *Retain Longitudinal Temporal Information with Modified Dates* (default on): every
  DA value, and the date part of every DT value, anywhere in the dataset is shifted by one
  per-patient number of days (-365 to -3650, from an HMAC of the Patient ID), so intervals
  between a patient's studies are kept. Times follow the table. Patient's Birth Date is
  emptied regardless. Off: dates follow the table (mostly emptied or removed).
- Private attributes are removed, except those listed in ``private_allowlist``
  (``"GGGG,Private Creator,EE"`` entries: the Retain Safe Private option).
- Curves (50xx) and overlays (60xx) are removed: overlays can carry burned-in text.
- PatientIdentityRemoved ``YES``, DeidentificationMethod and DeidentificationMethodCodeSequence
  (CID 7050) are set; LongitudinalTemporalInformationModified ``MODIFIED`` when dates moved.

Burned-in annotation: objects with BurnedInAnnotation ``YES`` are quarantined (not written)
unless ``burned_in="blank"``, which fills the configured pixel regions with the image minimum,
writes the pixels uncompressed, sets BurnedInAnnotation ``NO`` and adds the Clean Pixel Data
option code. Objects without pixel data (SR, PR, KO, ...) are skipped with their SOP class.

The secret salt and the ledger (original identifiers -> pseudonyms) live only in the private
folder (:mod:`converters.ledger`). Audit records list the tags changed and the action taken,
never the original values.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import struct
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError as _PydicomInvalid
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian

from pydicom._uid_dict import UID_dictionary

from converters.errors import InvalidDicomError, MissingInputError, SpinepipeError
from converters.io import (TEMP_MARK, atomic_path, prepare_output, remove_stale_temps,
                           write_json)
from converters.incremental import IncrementalState, file_signature
from converters.ledger import (load_ledger, read_private_json, update_ledger,
                               write_private_json)
from converters.parallel import map_jobs
from converters.paths import check_name, check_uid, confined

TABLE_EDITION = "dicomfields_2026c"
#: well-known UIDs of PS3.6 Annex A (never identifying): kept as they are
WELL_KNOWN_UIDS = frozenset(UID_dictionary)
#: "GGGG,Private Creator,EE" (params.yaml anonymize.private_allowlist)
ALLOWLIST_PATTERN = r"[0-9A-Fa-f]{4},[^,]+,[0-9A-Fa-f]{2}"
PSEUDONYM_PREFIX = "SP"

#: CID 7050 De-identification Method codes (DCM)
CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel": ("113101", "Clean Pixel Data Option"),
    "modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "device_identity": ("113109", "Retain Device Identity Option"),
    "safe_private": ("113111", "Retain Safe Private Option"),
}
PATIENT_CHARACTERISTICS = {0x00101010, 0x00101020, 0x00101030, 0x00102160, 0x00102180,
                           0x001021A0, 0x001021C0, 0x00100040, 0x00102203}
DEVICE_IDENTITY = {0x00181000, 0x00081010, 0x0018700A, 0x00181002, 0x00181008, 0x00181009}


@dataclass(frozen=True)
class AnonymizeConfig:
    """Profile options (params.yaml section ``anonymize``)."""

    retain_longitudinal_modified_dates: bool = True
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    private_allowlist: list[str] = field(default_factory=list, metadata={
        "pattern": ALLOWLIST_PATTERN, "example": "0009,CREATOR,10"})
    burned_in: Literal["quarantine", "blank"] = "quarantine"
    # pixel regions blanked when burned_in == "blank": [x, y, width, height] in pixels
    blank_regions: list[list[int]] = field(default_factory=list)
    fail_on_error: bool = True


@dataclass
class Outcome:
    """What happened to one input file."""

    status: Literal["anonymized", "skipped", "quarantined", "failed"]
    reason: str = ""
    patient_pseudonym: str = ""
    new_sop_uid: str = ""
    new_study_uid: str = ""
    date_shift_days: int = 0
    audit: list[dict] = field(default_factory=list)
    # ledger rows (private): original identifiers -> pseudonyms; never written under data/
    ledger: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# the table


@lru_cache(maxsize=1)
def profile_table() -> tuple[dict[int, str], list[tuple[int, int, int, int, str]]]:
    """(exact tag -> action, [(group, element, group mask, element mask, action)])."""
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    db = dicom_anonymization_database_selector(TABLE_EDITION)
    resolve = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z",
               "X_Z_TAGS": "Z", "X_D_TAGS": "X", "X_Z_D_TAGS": "Z", "X_Z_U_STAR_TAGS": "U*"}
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, action in resolve.items():
        for entry in db[category]:
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = action
            else:
                masked.append((entry[0], entry[1], entry[2], entry[3], action))
    return exact, masked


def action_for(tag: BaseTag) -> str | None:
    exact, masked = profile_table()
    action = exact.get(int(tag))
    if action is not None:
        return action
    for group, element, gmask, emask, act in masked:
        if (tag.group & gmask) == group and (tag.element & emask) == (element & emask):
            return act
    return None


# --------------------------------------------------------------------------------------------
# pseudonyms


def _mac(salt: bytes, kind: str, value: str) -> bytes:
    return hmac.new(salt, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()


def remap_uid(salt: bytes, uid: str) -> str:
    """A valid, deterministic replacement UID under the 2.25 (UUID-derived) root."""
    return "2.25." + str(int.from_bytes(_mac(salt, "uid", uid)[:16], "big"))


def patient_pseudonym(salt: bytes, patient_id: str) -> str:
    return PSEUDONYM_PREFIX + _mac(salt, "patient", patient_id).hex()[:10].upper()


def date_shift_days(salt: bytes, patient_id: str) -> int:
    return -(365 + int.from_bytes(_mac(salt, "dates", patient_id)[:4], "big") % 3286)


def _shift_da(value: str, days: int) -> str:
    try:
        d = _dt.datetime.strptime(value.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return ""  # unparseable date: emptied rather than kept
    return (d + _dt.timedelta(days=days)).strftime("%Y%m%d")


def _shift_dt(value: str, days: int) -> str:
    value = value.strip()
    if len(value) < 8:
        return ""
    shifted = _shift_da(value[:8], days)
    return shifted + value[8:] if shifted else ""


# --------------------------------------------------------------------------------------------
# the engine

_DUMMY = {"PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANON", "ST": "ANONYMIZED",
          "LT": "ANONYMIZED", "UT": "ANONYMIZED", "CS": "ANON", "DA": "19000101",
          "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0"}


class _Engine:
    def __init__(self, salt: bytes, options: AnonymizeConfig, patient_id: str,
                 pseudonym: str):
        self.salt = salt
        self.pseudonym = pseudonym
        self.options = options
        self.days = date_shift_days(salt, patient_id)
        self.audit: list[dict] = []
        allow = set()
        for entry in options.private_allowlist:
            group, creator, element = entry.split(",", 2)  # the params loader checked it
            allow.add((int(group, 16), creator.strip(), int(element, 16)))
        self.private_allow = allow

    def log(self, tag: BaseTag, action: str, path: str) -> None:
        self.audit.append({"tag": f"({tag.group:04X},{tag.element:04X})",
                           "keyword": keyword_for_tag(tag), "action": action, "path": path})

    def uid(self, value: str) -> str:
        return value if value in WELL_KNOWN_UIDS else remap_uid(self.salt, value)

    def remap_uid_element(self, elem: DataElement) -> None:
        if elem.VM > 1:
            elem.value = [self.uid(str(v)) for v in elem.value]
        elif elem.value:
            elem.value = self.uid(str(elem.value))

    def _private_kept(self, ds: Dataset, tag: BaseTag) -> bool:
        if not self.private_allow or tag.element < 0x1000:
            return False
        creator_tag = Tag(tag.group, tag.element >> 8)
        creator = ds.get(creator_tag)
        name = str(creator.value).strip() if creator is not None else ""
        return (tag.group, name, tag.element & 0xFF) in self.private_allow

    def _kept_private(self, ds: Dataset) -> set[int]:
        """Private tags to keep (allowlisted elements and their creators)."""
        keep: set[int] = set()
        if not self.private_allow:
            return keep
        for tag in ds.keys():
            if tag.is_private and tag.element >= 0x1000 and self._private_kept(ds, tag):
                keep.add(int(tag))
                keep.add(int(Tag(tag.group, tag.element >> 8)))
        return keep

    def dataset(self, ds: Dataset, path: str = "") -> None:
        """Apply the profile to ``ds`` and its sequences, in place.

        Elements are looked at raw (tag and VR) first; only those the profile changes are
        decoded, so everything else is written back byte for byte and quickly.
        """
        opts = self.options
        keep_private = self._kept_private(ds)
        for tag in list(ds.keys()):
            itag = int(tag)
            raw = ds.get_item(tag)
            if tag.is_private or (tag.group & 0xFF00) in (0x5000, 0x6000):
                # private elements (unless allowlisted), curves and overlays
                if itag not in keep_private:
                    self.log(tag, "X", f"{path}{tag}")
                    del ds[tag]
                continue
            if itag in (0x00100010, 0x00100020):  # Patient's Name / Patient ID
                if path:  # inside a sequence item: the pseudonym too (top level: the caller)
                    ds[tag].value = self.pseudonym
                    self.log(tag, "P", f"{path}{keyword_for_tag(tag)}")
                continue
            action = action_for(tag)
            if opts.retain_patient_characteristics and itag in PATIENT_CHARACTERISTICS:
                action = None
            if opts.retain_device_identity and itag in DEVICE_IDENTITY:
                action = None
            vr = raw.VR
            if vr in (None, "UN"):  # implicit VR or a wrong VR in the file: use the dictionary
                vr = _dictionary_vr(tag)
            keyword = keyword_for_tag(tag)
            if action is None and vr not in ("DA", "DT", "SQ", "UN") and not (
                    vr == "UI" and _is_instance_uid(keyword)):
                continue  # kept as is, never decoded
            elem = ds[tag]
            vr = elem.VR
            where = f"{path}{keyword or str(tag)}"
            if vr == "UN":  # contents that cannot be interpreted cannot be checked: removed
                self.log(tag, "X", where)
                del ds[tag]
                continue
            if opts.retain_longitudinal_modified_dates and vr in ("DA", "DT") \
                    and itag != 0x00100030 and action in (None, "D", "Z", "X"):
                if elem.value not in (None, ""):
                    shift = _shift_da if vr == "DA" else _shift_dt
                    values = elem.value if elem.VM > 1 else [elem.value]
                    elem.value = [shift(str(v), self.days) for v in values] \
                        if elem.VM > 1 else shift(str(values[0]), self.days)
                    self.log(tag, "M", where)
                continue
            if vr == "SQ":
                if action == "X":
                    self.log(tag, "X", where)
                    del ds[tag]
                elif action in ("Z", "D"):
                    elem.value = Sequence()
                    self.log(tag, action, where)
                else:  # keep the structure (and U*: its UIDs remapped), clean every item
                    if action == "U*":
                        self.log(tag, "U*", where)
                    for i, item in enumerate(elem.value):
                        self.dataset(item, f"{where}[{i}].")
                continue
            if action == "X":
                self.log(tag, "X", where)
                del ds[tag]
            elif action == "Z":
                elem.value = None if vr != "UI" else ""
                self.log(tag, "Z", where)
            elif action == "D":
                if vr == "UI":
                    self.remap_uid_element(elem)
                    self.log(tag, "U", where)
                else:
                    elem.value = _DUMMY.get(vr, None)
                    self.log(tag, "D", where)
            elif vr == "UI":  # U, U*, or an instance UID the table does not list
                before = elem.value
                self.remap_uid_element(elem)
                if elem.value != before:
                    self.log(tag, "U", where)
            elif action in ("U", "U*"):
                elem.value = None
                self.log(tag, "Z", where)


def _dictionary_vr(tag: BaseTag) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _is_instance_uid(keyword: str) -> bool:
    """A UI attribute to remap: every one but class / syntax UIDs and a few registry
    references; an attribute unknown to the dictionary (no keyword) is remapped too."""
    if not keyword:
        return True
    return keyword.endswith("UID") and not keyword.endswith(("ClassUID", "SyntaxUID")) \
        and keyword not in ("CodingSchemeUID", "ContextUID", "MappingResourceUID")


def _set_method(ds: Dataset, options: AnonymizeConfig, clean_pixels: bool) -> None:
    keys = ["basic"]
    if options.retain_longitudinal_modified_dates:
        keys.append("modified_dates")
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    if options.retain_patient_characteristics:
        keys.append("patient_characteristics")
    if options.retain_device_identity:
        keys.append("device_identity")
    if options.private_allowlist:
        keys.append("safe_private")
    if clean_pixels:
        keys.append("clean_pixel")
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [CODES[k][1] for k in keys]  # LO, VM 1-n
    items = []
    for k in keys:
        item = Dataset()
        item.CodeValue, item.CodeMeaning = CODES[k]
        item.CodingSchemeDesignator = "DCM"
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)


def _blank(ds: Dataset, regions: list[list[int]], file: str) -> None:
    arr = ds.pixel_array.copy()
    if arr.ndim != 2:
        raise InvalidDicomError("cannot blank burned-in text of a multi-frame or colour image",
                                file=file)
    fill = arr.min()
    for x, y, w, h in regions:
        arr[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = fill
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    ds.BurnedInAnnotation = "NO"


def anonymize_dataset(ds: Dataset, salt: bytes, options: AnonymizeConfig,
                      file: str = "") -> Outcome:
    """De-identify ``ds`` in place. Returns the outcome (status, pseudonyms, audit, ledger).

    Raises :class:`InvalidDicomError` for objects that cannot be handled; non-image and
    burned-in objects come back as ``skipped`` / ``quarantined`` outcomes, ``ds`` untouched.
    """
    if "SOPClassUID" not in ds:
        raise InvalidDicomError("no SOP Class UID in the dataset (truncated, or not a "
                                "composite object)", file=file, tag="(0008,0016)")
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        sop = ds.get("SOPClassUID")
        name = getattr(sop, "name", None) or str(sop or "unknown SOP class")
        if "Image Storage" in name or any(k in ds for k in _IMAGE_PIXEL_MODULE):
            raise InvalidDicomError(f"{name} object without PixelData (truncated or corrupt)",
                                    file=file, tag="(7FE0,0010)")
        return Outcome("skipped", f"non-image object ({name})")
    check_pixel_data(ds, file)
    burned = str(ds.get("BurnedInAnnotation", "")).upper() == "YES"
    if burned and options.burned_in == "quarantine":
        return Outcome("quarantined", "BurnedInAnnotation YES")
    if burned and not options.blank_regions:
        return Outcome("quarantined", "BurnedInAnnotation YES and no blank_regions configured")

    original_pid = str(ds.get("PatientID", "") or "")
    def text(keyword: str) -> str:
        return str(ds.get(keyword, "") or "")

    original = {
        "patient_id": original_pid,
        "patient_name": text("PatientName"),
        "accession_number": text("AccessionNumber"),
        "study_instance_uid": text("StudyInstanceUID"),
        "sop_instance_uid": text("SOPInstanceUID"),
        # what a re-identified result (spinepipe to-seg --reidentify) needs to point back
        "series_instance_uid": text("SeriesInstanceUID"),
        "patient_birth_date": text("PatientBirthDate"),
        "patient_sex": text("PatientSex"),
        "study_date": text("StudyDate"),
        "study_time": text("StudyTime"),
        "study_id": text("StudyID"),
        "referring_physician_name": text("ReferringPhysicianName"),
    }
    if not original["sop_instance_uid"]:
        raise InvalidDicomError("no SOPInstanceUID", file=file, tag="(0008,0018)")
    if not original["study_instance_uid"]:
        raise InvalidDicomError("no StudyInstanceUID", file=file, tag="(0020,000D)")
    pseudonym = patient_pseudonym(salt, original_pid)
    engine = _Engine(salt, options, original_pid, pseudonym)
    if burned:
        _blank(ds, options.blank_regions, file)
        engine.audit.append({"tag": "(7FE0,0010)", "keyword": "PixelData", "action": "C",
                             "path": "PixelData"})
    engine.dataset(ds)
    ds.PatientID = pseudonym
    ds.PatientName = pseudonym
    engine.audit += [{"tag": "(0010,0020)", "keyword": "PatientID", "action": "P", "path": "PatientID"},
                     {"tag": "(0010,0010)", "keyword": "PatientName", "action": "P", "path": "PatientName"}]
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        if "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for kw in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                   "ReceivingApplicationEntityTitle", "PrivateInformationCreatorUID",
                   "PrivateInformation"):
            if kw in meta:
                del meta[kw]
    _set_method(ds, options, clean_pixels=burned)
    return Outcome(
        "anonymized", patient_pseudonym=pseudonym, new_sop_uid=str(ds.SOPInstanceUID),
        new_study_uid=str(ds.get("StudyInstanceUID", "")),
        date_shift_days=engine.days if options.retain_longitudinal_modified_dates else 0,
        audit=engine.audit,
        ledger={**original, "pseudonym": pseudonym,
                "new_sop_instance_uid": str(ds.SOPInstanceUID),
                "new_study_instance_uid": str(ds.get("StudyInstanceUID", "")),
                "new_series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
                "date_shift_days": engine.days if options.retain_longitudinal_modified_dates else 0})


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_IMAGE_PIXEL_MODULE = ("Rows", "Columns", "BitsAllocated")


def check_pixel_data(ds: Dataset, file: str = "") -> None:
    """Raise :class:`InvalidDicomError` unless the pixel data is complete: uncompressed, its
    length holds every frame; compressed (encapsulated), it decodes."""
    if "PixelData" not in ds:
        return  # float pixel data: rare, parametric maps; nothing to check here
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise InvalidDicomError("pixel data without valid Rows, Columns and BitsAllocated",
                                file=file, tag="(0028,0010)") from None
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1  # unreadable frame count (seen in real files): at least one whole frame
    if min(rows, cols, bits, samples, frames) < 1:
        raise InvalidDicomError(f"pixel data of {cols}x{rows} pixels, {samples} sample(s), "
                                f"{bits} bits, {frames} frame(s)", file=file, tag="(0028,0010)")
    if ts is not None and ts.is_encapsulated:
        try:
            ds.pixel_array  # noqa: B018 - decoded only to prove that it decodes
        except Exception as exc:  # decoders raise many types on corrupt streams
            raise InvalidDicomError(f"compressed pixel data does not decode ({ts.name}): "
                                    f"{exc}".splitlines()[0], file=file,
                                    tag="(7FE0,0010)") from None
        return
    expected = (rows * cols * samples * frames * bits + 7) // 8
    got = len(ds.PixelData or b"")
    if got < expected:
        raise InvalidDicomError(f"pixel data truncated: {got} bytes where {cols}x{rows}x"
                                f"{samples}x{bits} bits x {frames} frame(s) need {expected}",
                                file=file, tag="(7FE0,0010)")


def read_dicom(path: str) -> Dataset:
    """Read a DICOM file (Part 10, or a raw dataset as some archives store), or raise."""
    try:
        return pydicom.dcmread(path, force=False)
    except _PydicomInvalid:
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as exc:
            raise InvalidDicomError(f"not a DICOM file ({type(exc).__name__})", file=path) from None
        if "SOPClassUID" not in ds:
            raise InvalidDicomError("not a DICOM file (no DICM preamble, no SOP Class UID)",
                                    file=path) from None
        return ds
    except Exception as exc:
        raise InvalidDicomError(f"unreadable DICOM ({type(exc).__name__}: {exc})".splitlines()[0],
                                file=path) from None


# --------------------------------------------------------------------------------------------
# a whole archive


@dataclass
class TreeReport:
    """Counts for the public report, and per-input details for the private one."""

    counts: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)   # output relpath -> public facts
    private_rows: dict[str, dict] = field(default_factory=dict)  # input key -> details

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def failed_inputs(self) -> list[str]:
        return sorted(k for k, r in self.private_rows.items() if r["status"] == "failed")

    def detail_lines(self, *, failures_only: bool = False) -> list[str]:
        """One line per input handled now that was not anonymized (for the terminal only:
        input paths may carry identifiers)."""
        shown = ("failed",) if failures_only else ("failed", "quarantined", "skipped")
        return [f"  {row['status']}: {key}: {row['reason']}"
                for key, row in sorted(self.private_rows.items())
                if not row.get("reused") and row["status"] in shown]


def _part_name(out_rel: str, rel: str) -> str:
    """Where a worker writes an object before the parent moves it to ``out_rel``: hidden and
    marked temporary, so a run killed in between leaves nothing a re-run keeps."""
    folder, _, name = out_rel.rpartition("/")
    return f"{folder}/.{name}.{hashlib.sha1(rel.encode()).hexdigest()[:12]}{TEMP_MARK}"


def _anonymize_file(args: tuple[str, str, str, bytes, AnonymizeConfig]) -> tuple[str, Outcome, str]:
    src, rel, out_root, salt, options = args
    try:
        ds = read_dicom(src)
        outcome = anonymize_dataset(ds, salt, options, file=rel)
        if outcome.status != "anonymized":
            return rel, outcome, ""
        parts = (check_name(outcome.patient_pseudonym, "pseudonym", file=rel),
                 check_uid(outcome.new_study_uid, "Study Instance UID", file=rel,
                           tag="(0020,000D)"),
                 check_uid(outcome.new_sop_uid, "SOP Instance UID", file=rel,
                           tag="(0008,0018)") + ".dcm")
        out_rel = "/".join(parts)
        if getattr(ds, "preamble", None) is not None:
            ds.preamble = b"\0" * 128  # free text in some archives (names, MRNs)
        # written under a name of its own: two inputs may carry the same SOP Instance UID, and
        # the parent decides which one becomes out_rel (see _part_name)
        with atomic_path(confined(out_root, _part_name(out_rel, rel), file=rel)) as tmp:
            ds.save_as(tmp, enforce_file_format=hasattr(ds, "file_meta") and bool(ds.file_meta))
        return rel, outcome, out_rel
    except SpinepipeError as exc:
        return rel, Outcome("failed", str(exc)), ""
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OSError,
            OverflowError, EOFError, NotImplementedError, struct.error) as exc:
        # malformed values pydicom chokes on: report, go on
        return rel, Outcome("failed", f"{rel}: {type(exc).__name__}: {exc}".splitlines()[0]), ""


def _options_key(options: AnonymizeConfig) -> str:
    return hashlib.sha1(json.dumps(asdict(options), sort_keys=True).encode()).hexdigest()[:16]


def _cacheable(row: dict) -> bool:
    """Failures (and duplicates, whose first copy may go away) are retried on every run."""
    return row["status"] in ("anonymized", "quarantined") or (
        row["status"] == "skipped" and not row["reason"].startswith("duplicate"))


def check_input_folders(folders: list[str | Path]) -> None:
    """:class:`MissingInputError` naming the first input folder that does not exist."""
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise MissingInputError("input folder not found", file=folder)


def anonymize_tree(input_dir: str | Path | list, output_dir: str | Path, private: Path,
                   salt: bytes, options: AnonymizeConfig, *, workers: int = 1,
                   progress=None) -> TreeReport:
    """Anonymize every file under ``input_dir`` (recursively; a list of folders is walked in
    turn, their files keyed ``<folder name>/<path>``) into ``output_dir``.

    Output layout: ``<pseudonym>/<new StudyInstanceUID>/<new SOPInstanceUID>.dcm`` plus
    ``audit/<new SOPInstanceUID>.json`` (tags changed and actions, no original values).

    Incremental and additive (:mod:`converters.incremental`; the state lives in the private
    folder, one file per output folder, since input paths can carry identifiers): an input
    whose size, mtime and options are unchanged, and whose output still exists, is not
    processed again; failures are never cached; a file that disappeared from an input folder
    walked now has its own earlier output (and audit record) removed, unless another input
    still produces it. Input folders not given in this run (other batches) are left alone,
    and so are their outputs. Inputs are only read.
    """
    inputs = [Path(d) for d in input_dir] if isinstance(input_dir, list) else [Path(input_dir)]
    check_input_folders(inputs)
    output_dir = prepare_output(output_dir)
    remove_stale_temps(output_dir)
    out_id = hashlib.sha1(str(output_dir.resolve()).encode()).hexdigest()[:12]
    state = IncrementalState(private / f"anonymize_state.{out_id}.json",
                             loader=lambda p: read_private_json(p, None),
                             writer=write_private_json)
    opt_key = _options_key(options)
    sources: dict[str, tuple[str, str, Path]] = {}  # key -> (folder, rel, path)
    for d in inputs:
        folder = str(d.resolve())
        for p in sorted(d.rglob("*")):
            if p.is_file():
                rel = str(p.relative_to(d))
                sources[f"{d.name}/{rel}" if len(inputs) > 1 else rel] = (folder, rel, p)
    todo, report = [], TreeReport()
    for key, (folder, rel, p) in sources.items():
        prev = state.up_to_date(folder, rel, file_signature(p, opt_key),
                                lambda o: (output_dir / o).is_file())
        if prev and _cacheable(prev["row"]):
            report.private_rows[key] = {**prev["row"], "reused": True}
            continue
        state.forget(folder, rel)  # redone now (or failing again): claims nothing meanwhile
        todo.append((str(p), key, str(output_dir), salt, options))
    ledger = load_ledger(private)
    results = map_jobs(_anonymize_file, todo, workers=workers, progress=progress)
    walked = {f for f, _, _ in sources.values()}
    for folder in walked:  # files gone from a folder walked now: their own outputs go
        for out_rel in state.prune(folder, [rel for f, rel, _ in sources.values() if f == folder]):
            for stale in (output_dir / out_rel, output_dir / "audit" / f"{Path(out_rel).stem}.json"):
                if stale.is_file():
                    stale.unlink()
    owner = {o: f"{Path(g).name}:{k}" for g, entries in state.data["groups"].items()
             for k, e in entries.items() for o in e["outputs"]}
    for key, outcome, out_rel in sorted(results, key=lambda r: r[0]):
        folder, rel, p = sources[key]
        if out_rel:
            part = output_dir / _part_name(out_rel, key)
            if out_rel in owner and owner[out_rel] != key:
                part.unlink()  # an earlier input (in path order) has this SOP Instance UID
                outcome = Outcome("skipped", "duplicate SOP Instance UID: same object as "
                                  f"{owner[out_rel]}")
                out_rel = ""
            else:
                owner[out_rel] = key
                part.replace(output_dir / out_rel)
        row = {"status": outcome.status, "reason": outcome.reason, "output": out_rel}
        report.private_rows[key] = row
        if outcome.status == "anonymized":
            update_ledger(ledger, outcome.ledger)
            write_json(output_dir / "audit" / f"{outcome.new_sop_uid}.json",
                       {"output": out_rel, "profile_table": TABLE_EDITION,
                        "changes": outcome.audit}, indent=None)
        if outcome.status != "failed":
            state.record(folder, rel, file_signature(p, opt_key),
                         [out_rel] if out_rel else [], row=row)
    for key, row in report.private_rows.items():
        report.counts[row["status"]] = report.counts.get(row["status"], 0) + 1
    for out_rel in state.outputs():
        report.outputs[out_rel] = {"status": "anonymized"}
    write_private_json(private / "ledger.json", ledger)
    state.save()
    write_private_json(private / "anonymize_report.json", report.private_rows)
    write_json(output_dir / "report.json", {
        "counts": report.counts, "profile_table": TABLE_EDITION,
        "options": {k: v for k, v in options.__dict__.items()},
        "outputs": sorted(report.outputs),
        "not_anonymized": "see the private folder's anonymize_report.json (input paths "
                          "may contain identifiers)"})
    return report
