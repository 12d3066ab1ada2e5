"""The de-identification engine: the action table (:mod:`converters.dicom.deid_table`)
applied to every element of one object, in place, with its audit.

UIDs: remapped by :func:`converters.dicom.ledger.remap_uid` (keyed by the salt, the same in
every run of a project, so references between objects stay consistent); well-known UIDs of PS3.6 Annex A (as pydicom lists them) are
kept, checked by list, not by prefix. The 128-byte Part 10 preamble is zeroed.

Audit: ``audit/<new SOP Instance UID>.json`` names the action of *every* element seen:
``counts`` (action -> keyword -> elements, file meta and sequence items included; elements
removed with their sequence count as ``X``; a tag without a keyword is named ``(GGGG,EEEE)``)
and ``changes`` (every element not kept: tag, keyword, action, path such as
``ReferencedImageSequence[0].ReferencedSOPInstanceUID``, ``file_meta.`` for the file meta).
No original value is written there. Elements are looked at raw (tag and VR) first: a kept
number or binary element is never decoded, only kept text values are checked.

Order, for one object (:func:`anonymize_dataset`): non-image objects are skipped; the pixel
data is checked (:func:`converters.dicom.deid_pixels.check_pixel_data`); burned-in text is
looked for (flag, then OCR); then the elements, the file meta, the pixel markers, and the
de-identification method attributes. Nothing is written here: :mod:`converters.dicom.anonymize`
writes the object and its audit.

Burned-in annotation: objects with BurnedInAnnotation ``YES`` are quarantined (not written)
unless ``burned_in="blank"``, which fills the configured pixel regions with the image minimum,
writes the pixels uncompressed, sets BurnedInAnnotation ``NO`` and adds the Clean Pixel Data
option code. Objects without pixel data of a known non-image SOP class (SR, PR, KO, ...) are
skipped with their SOP class.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian

from converters.core.errors import UnsupportedDicomError
from converters.dicom.ledger import (date_shift_days, original_row, patient_identity, pseudonym_of,
                                     remap_uid, shift_da, shift_dt)
from converters.dicom.deid_pixels import (blank_pixels, non_image_reason, grey_frames,
                                          stored_pixels, check_pixel_data, clean_pixel_markers)
from converters.dicom.deid_table import (set_method, DUMMY_VALUES, AnonymizeConfig,
                                         WELL_KNOWN_UIDS, empty_value, dictionary_vr,
                                         effective_rules, length_fits, value_check, vr_fits,
                                         standard_codes)


#: the file meta's implementation fields: spinepipe's own, whatever wrote the input
IMPLEMENTATION_CLASS_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "spinepipe:anonymize").int)
IMPLEMENTATION_VERSION_NAME = "SPINEPIPE_DEID"


@dataclass
class Outcome:
    """What happened to one input file."""

    status: Literal["anonymized", "skipped", "quarantined", "failed"]
    reason: str = ""
    patient_pseudonym: str = ""
    new_sop_uid: str = ""
    new_study_uid: str = ""
    date_shift_days: int = 0
    # {"counts": {action: {keyword: n}}, "changes": [...]} (module docstring)
    audit: dict = field(default_factory=dict)
    # ledger rows (private): original identifiers -> pseudonyms; never written under data/
    ledger: dict = field(default_factory=dict)
    # skipped as a copy of this input (same SOP Instance UID): retried on every run, since
    # the first copy may go away
    duplicate_of: str = ""


def _name(tag: BaseTag) -> str:
    return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"


def _text_values(raw) -> list[str]:
    """The values of a (raw or decoded) text element, without decoding it through pydicom."""
    value = raw.value
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("latin-1")
    elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v).strip(" \0") for v in value]
    else:
        text = str(value)
    text = text.rstrip(" \0")
    return [v.strip(" \0") for v in text.split("\\")] if text else []


class _Engine:
    """Applies the table to one object, in place, and keeps its audit (module docstring)."""

    def __init__(self, salt: bytes, options: AnonymizeConfig, pseudonym: str, key: str):
        self.salt = salt
        self.pseudonym = pseudonym
        self.options = options
        self.days = date_shift_days(salt, key)
        self.rules = effective_rules(options.retain_patient_characteristics,
                                options.retain_device_identity,
                                options.retain_longitudinal_modified_dates)
        self.counts: dict[str, dict[str, int]] = {}
        self.changes: list[dict] = []
        allow = set()
        for entry in options.private_allowlist:
            group, creator, element = entry.split(",", 2)  # the params loader checked it
            allow.add((int(group, 16), creator.strip(), int(element, 16)))
        self.private_allow = allow
        self._code: dict[int, str | None] = {}

    # ---- the audit

    def log(self, tag: BaseTag, action: str, path: str, *, change: bool = True) -> None:
        name = _name(tag)
        per = self.counts.setdefault(action, {})
        per[name] = per.get(name, 0) + 1
        if change and action != "K":
            self.changes.append({"tag": f"({tag.group:04X},{tag.element:04X})",
                                 "keyword": name, "action": action, "path": f"{path}{name}"})

    def audit(self) -> dict:
        return {"counts": self.counts, "changes": self.changes}

    def _count_removed(self, elem: DataElement) -> None:
        """Elements inside a sequence removed or emptied: counted as removed (``X``)."""
        for item in elem.value or ():
            for tag in list(item.keys()):
                raw = item.get_item(tag)
                self.log(tag, "X", "", change=False)
                if raw.VR == "SQ" or (raw.VR in (None, "UN") and
                                      dictionary_vr(int(tag)) == "SQ" and not tag.is_private):
                    try:
                        inner = item[tag]
                    except Exception:  # an undecodable sequence: counted as one element
                        continue
                    if inner.VR == "SQ":
                        self._count_removed(inner)

    # ---- rules

    def rule(self, tag: BaseTag) -> tuple[str, str]:
        found = self.rules.get(int(tag))
        if found is not None:
            return found
        if (tag.group & 0xFF00) == 0x5000:
            return self.rules["curves"]
        if (tag.group & 0xFF00) == 0x6000:
            return self.rules["overlays"]
        if tag.element == 0:
            return self.rules["group_length"]
        return self.rules["default"]

    def uid(self, value: str) -> str:
        return value if value in WELL_KNOWN_UIDS else remap_uid(self.salt, value)

    def _private_kept(self, ds: Dataset, tag: BaseTag) -> bool:
        if not self.private_allow or tag.element < 0x1000:
            return False
        creator = ds.get(Tag(tag.group, tag.element >> 8))
        if creator is None:  # no creator: nobody can say whose element it is
            return False
        name = str(creator.value).strip()
        return bool(name) and (tag.group, name, tag.element & 0xFF) in self.private_allow

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

    # ---- the walk

    def dataset(self, ds: Dataset, path: str = "") -> None:
        """Apply the table to ``ds`` and its sequences, in place."""
        keep_private = self._kept_private(ds)
        self._code.pop(id(ds), None)
        for tag in list(ds.keys()):
            if tag.is_private:
                if int(tag) in keep_private:
                    self.log(tag, "K", path)
                else:
                    self._remove(ds, tag, path)
                continue
            action, check = self.rule(tag)
            if tag.group == 0x0002:  # file meta elements in the data set: not their place
                action = "X"
            if action not in ("X", "N", "Z", "D") and not vr_fits(ds.get_item(tag).VR,
                                                                   int(tag)):
                action = "X"  # a VR the dictionary does not allow: contents unchecked
            _HANDLERS[action](self, ds, tag, check, path)
        self._code.pop(id(ds), None)

    def _keep(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        if check in ("", "any"):
            if not length_fits(ds.get_item(tag), int(tag)):
                self._remove(ds, tag, path)
                return
            self.log(tag, "K", path)  # kept as is, never decoded
            return
        raw = ds.get_item(tag)
        values = _text_values(raw)
        if check == "registry":
            if all(v in WELL_KNOWN_UIDS or not v for v in values):
                self.log(tag, "K", path)
            else:
                self._uid(ds, tag, check, path)
            return
        test = value_check(check)
        bad = [v for v in values if not test(v)]
        if not bad:
            self.log(tag, "K", path)
            return
        vr = dictionary_vr(int(tag)).split(" or ")[0]
        good = [v if test(v) else "" for v in values]
        keep_some = check[:3] in ("lis", "re:") and any(good)
        ds.add(DataElement(tag, vr, (good if len(good) > 1 else good[0]) if keep_some else ""))
        self.log(tag, "V", path)

    def _pseudonym(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        ds.add(DataElement(tag, dictionary_vr(int(tag)), self.pseudonym))
        self.log(tag, "P", path)

    def _uid(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        elem = ds[tag]
        if elem.VR != "UI":
            self._remove(ds, tag, path)
            return
        if elem.VM > 1:
            elem.value = [self.uid(str(v)) for v in elem.value]
        elif elem.value:
            elem.value = self.uid(str(elem.value))
        self.log(tag, "U", path)

    def _shift(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        elem = ds[tag]
        if elem.VR not in ("DA", "DT"):
            self._remove(ds, tag, path)
            return
        shift = shift_da if elem.VR == "DA" else shift_dt
        if elem.VM > 1:
            elem.value = [shift(str(v), self.days) for v in elem.value]
        elif elem.value not in (None, ""):
            elem.value = shift(str(elem.value), self.days)
        self.log(tag, "S", path)

    def _empty(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        vr = dictionary_vr(int(tag)).split(" or ")[0]
        if vr == "SQ" or ds.get_item(tag).VR == "SQ":
            elem = ds[tag]
            if elem.VR == "SQ":
                self._count_removed(elem)
            vr = "SQ"
        ds.add(DataElement(tag, vr, empty_value(vr)))
        self.log(tag, "Z", path)

    def _dummy(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        vr = dictionary_vr(int(tag)).split(" or ")[0]
        if vr == "UI":
            self._uid(ds, tag, check, path)
        elif vr == "SQ" or vr not in DUMMY_VALUES:
            self._empty(ds, tag, check, path)
        else:
            ds.add(DataElement(tag, vr, DUMMY_VALUES[vr]))
            self.log(tag, "D", path)

    def _remove(self, ds: Dataset, tag: BaseTag, path: str) -> None:
        raw = ds.get_item(tag)
        if raw.VR == "SQ" or (raw.VR in (None, "UN") and not tag.is_private
                              and dictionary_vr(int(tag)) == "SQ"):
            try:
                elem = ds[tag]
                if elem.VR == "SQ":
                    self._count_removed(elem)
            except Exception:  # an undecodable sequence: removed as one element
                pass
        del ds[tag]
        self.log(tag, "X", path)

    def _remove_rule(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        self._remove(ds, tag, path)

    def _sequence(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        elem = ds[tag]
        if elem.VR != "SQ":
            self._remove(ds, tag, path)
            return
        self.log(tag, "Q", path)
        where = f"{path}{_name(tag)}"
        for i, item in enumerate(elem.value):
            self.dataset(item, f"{where}[{i}].")
        if any(len(item) == 0 for item in elem.value):
            elem.value = Sequence([item for item in elem.value if len(item)])

    def _code_meaning(self, ds: Dataset) -> str | None:
        """The standard meaning of ``ds``'s code, or None (module docstring)."""
        if id(ds) not in self._code:
            try:
                scheme = str(ds.get("CodingSchemeDesignator", "") or "").strip()
                value = str(ds.get("CodeValue", "") or "").strip()
            except Exception:  # a malformed element: no standard code
                scheme = value = ""
            self._code[id(ds)] = standard_codes(scheme).get(value) if value else None
        return self._code[id(ds)]

    def _code_element(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        meaning = self._code_meaning(ds)
        if meaning is None:
            self._remove(ds, tag, path)
        elif int(tag) == 0x00080104:  # Code Meaning: the dictionary's, never the input's
            ds.add(DataElement(tag, "LO", meaning))
            self.log(tag, "C", path)
        else:
            self.log(tag, "K", path)

    def _set_later(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        if ds.get_item(tag).VR == "SQ":
            self._count_removed(ds[tag])
        del ds[tag]
        self.log(tag, "N", path)

    def _pixels(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        if path:  # pixel data inside a sequence item: not this table's business
            self._remove(ds, tag, path)
            return
        self.log(tag, "R", path, change=False)

    # ---- the file meta

    def file_meta(self, ds: Dataset, file: str) -> None:
        """Apply the table's file meta rows (module docstring) and set spinepipe's fields."""
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            return
        for tag in list(meta.keys()):
            action, check = self.rule(tag) if tag.group == 0x0002 else ("X", "")
            if action == "K" and check == "registry":
                uid = str(meta[tag].value or "")
                if uid not in WELL_KNOWN_UIDS:
                    raise UnsupportedDicomError(f"transfer syntax {uid[:64]!r} is not a known "
                                                "one", file=file, tag="(0002,0010)")
            if action == "K":
                self.log(tag, "K", "file_meta.")
            else:
                del meta[tag]
                self.log(tag, "X" if action != "N" else "N", "file_meta.")
        if "FileMetaInformationVersion" not in meta:
            meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME


_HANDLERS: dict[str, Callable] = {
    "K": _Engine._keep, "P": _Engine._pseudonym, "U": _Engine._uid, "S": _Engine._shift,
    "Z": _Engine._empty, "D": _Engine._dummy, "X": _Engine._remove_rule,
    "Q": _Engine._sequence, "C": _Engine._code_element, "N": _Engine._set_later,
    "R": _Engine._pixels,
}


def _ocr(ds: Dataset, decoded: np.ndarray | None, options: AnonymizeConfig,
         file: str) -> tuple[list, np.ndarray | None, str]:
    """Burned-in text looked for by OCR in every frame (the flag is optional in CR and not
    trusted when NO): (boxes found, the frame read, why the object is quarantined or "")."""
    from converters.dicom.burned_in import find_burned_in_text

    frame = decoded if decoded is not None else stored_pixels(ds, file)
    planes = grey_frames(ds, frame)
    found: list = []
    for i, plane in enumerate(planes):  # every frame of a multi-frame object is read
        found = find_burned_in_text(plane)
        if found and (options.burned_in == "quarantine" or len(planes) > 1
                      or plane is not frame):
            where = f" of frame {i + 1}" if len(planes) > 1 else ""
            blank = "" if options.burned_in == "quarantine" else \
                " (a multi-frame or colour image is not blanked)"
            return found, frame, ("burned-in text found by OCR at "
                                  f"{[b.region for b in found]}{where} (x, y, width, height)"
                                  + blank)
    return found, frame, ""


def anonymize_dataset(ds: Dataset, salt: bytes, options: AnonymizeConfig,
                      file: str = "") -> Outcome:
    """De-identify ``ds`` in place. Returns the outcome (status, pseudonyms, audit, ledger).

    Raises :class:`InvalidDicomError` for objects that cannot be handled; non-image and
    burned-in objects come back as ``skipped`` / ``quarantined`` outcomes, ``ds`` untouched.
    """
    skipped = non_image_reason(ds, file)
    if skipped is not None:
        return Outcome("skipped", skipped)
    decoded = check_pixel_data(ds, file)
    burned = str(ds.get("BurnedInAnnotation", "")).upper() == "YES"
    if burned and options.burned_in == "quarantine":
        return Outcome("quarantined", "BurnedInAnnotation YES")
    if burned and not options.blank_regions:
        return Outcome("quarantined", "BurnedInAnnotation YES and no blank_regions configured")
    found, frame = [], None
    if not burned and options.ocr:
        found, frame, quarantined = _ocr(ds, decoded, options, file)
        if quarantined:
            return Outcome("quarantined", quarantined)
    original = original_row(ds, file)
    identity = patient_identity(ds, file)
    pseudonym = pseudonym_of(salt, identity.key)
    engine = _Engine(salt, options, pseudonym, identity.key)
    if burned:
        blank_pixels(ds, options.blank_regions, file)
        engine.changes.append({"tag": "(7FE0,0010)", "keyword": "PixelData", "action": "C",
                               "path": "PixelData", "blanked": len(options.blank_regions)})
    if found:  # burned_in: blank, text found by OCR
        from converters.dicom.burned_in import blank_boxes

        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = np.ascontiguousarray(blank_boxes(frame, found)).tobytes()
        ds.BurnedInAnnotation = "NO"
        engine.changes.append({"tag": "(7FE0,0010)", "keyword": "PixelData", "action": "C",
                               "path": "PixelData", "ocr_regions": [b.region for b in found]})
    engine.dataset(ds)
    ds.PatientID = pseudonym
    ds.PatientName = pseudonym
    engine.file_meta(ds, file)
    if not burned and not found:
        removed = clean_pixel_markers(ds, decoded, file)
        if removed:
            engine.changes.append({"tag": "(7FE0,0010)", "keyword": "PixelData", "action": "R",
                                   "path": "PixelData", "removed": removed})
    set_method(ds, options, clean_pixels=burned or bool(found))
    days = engine.days if options.retain_longitudinal_modified_dates else 0
    new = {"pseudonym": pseudonym, "new_sop_instance_uid": str(ds.SOPInstanceUID),
           "new_study_instance_uid": str(ds.get("StudyInstanceUID", "")),
           "new_series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
           "date_shift_days": days, "patient_key": identity.key,
           "patient_id": identity.patient_id, "issuer": list(identity.issuer)}
    return Outcome("anonymized", patient_pseudonym=pseudonym, new_sop_uid=new[
        "new_sop_instance_uid"], new_study_uid=new["new_study_instance_uid"],
        date_shift_days=days, audit=engine.audit(), ledger={**original, **new})
