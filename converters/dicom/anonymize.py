"""DICOM de-identification: an allowlist built from PS3.15 Annex E (DESIGN.md, convention 13).

Every element of an object, at every sequence depth and in the file meta, gets one action from one
table, ``converters/dicom/deid_actions.tsv`` (:data:`TABLE_FILE`, shipped with the package,
versioned: :data:`TABLE_VERSION`, read by :func:`action_table`). What no row keeps is removed:
unknown public tags, retired ones, private tags (unless allowlisted), free text. The rows:

- PS3.15 Table E.1-1 (dicom-anonymizer's ``dicomfields_2026c`` edition, copied into the table):
  ``X`` remove, ``Z`` empty, ``D`` dummy value, ``U`` remap UID; compound actions resolved as
  ``Z/D``, ``X/Z``, ``X/Z/D`` -> ``Z``, ``X/D`` -> ``X``, ``X/Z/U*`` (reference sequences) ->
  ``Q``.
- ``K`` keep: what a radiograph needs to be read and trained on (image pixel module, modality
  and VOI LUT numbers, rescale, photometric interpretation, pixel / imager pixel spacing and
  geometry, acquisition technique, modality, body part, view position, laterality, patient
  orientation, SOP class, instance / series numbers ...; the CT and MR image modules'
  technical attributes too, so that such objects of an archive stay valid). A kept *text*
  attribute keeps only the values its row's check allows (a number for DS / IS, the defined
  terms of a CS, a pattern, a well-known UID of PS3.6 for class / syntax UIDs, else remapped);
  any other value is emptied (audit ``V``): a name typed into Body Part Examined goes too.
- ``Q`` a sequence kept; each item's elements are judged by the same table; an item left
  empty is dropped. ``C`` Code Value / Coding Scheme Designator / Code Meaning of a code item:
  kept when (scheme, value) is a standard code in pydicom's concept dictionary (SCT, DCM, LN,
  UCUM, FMA, RadLex, NCIt, ...), the Code Meaning then *replaced* by the dictionary's meaning
  (free text typed as a meaning never survives); a code it does not know (local schemes,
  legacy SRT) is removed with its meaning. Coding Scheme Version and other code fields go.
- ``P`` Patient's Name and Patient ID become the pseudonym, at every depth
  (:mod:`converters.dicom.ledger`: patients keyed by issuer + Patient ID, without an ID by study).
- ``S`` the dates of Table E.1-1 (DA, and the date part of DT) shifted by one per-patient
  number of days (-365 to -3650) with option *Retain Longitudinal Temporal Information with
  Modified Dates* (``retain_longitudinal_modified_dates``, default on), so intervals between
  a patient's studies are kept; without it, the table's own action. Patient's Birth Date is
  emptied regardless; an unparseable date is emptied. Times follow the table.
- ``N`` set by spinepipe: PatientIdentityRemoved ``YES``, DeidentificationMethod and its
  CID 7050 code sequence, LongitudinalTemporalInformationModified; in the file meta the Media
  Storage SOP Class / Instance UIDs (the dataset's), Implementation Class UID and Version
  Name (spinepipe's own). File Meta Information Version and Transfer Syntax (a well-known
  one, else the object fails) are kept; the rest of the file meta (AE titles, private
  information) is removed.
- ``R`` pixel data. Native pixels are kept as they are. From encapsulated pixel data every
  comment (JPEG and JPEG 2000 COM) and application segment (APP0-APP15) is removed from each
  frame, with JP2 boxes around a JPEG 2000 codestream and any bytes after the end-of-image
  marker. Kept, because decoders need them and each is checked to be exactly its fixed size
  (no room for text): a JFIF APP0 without thumbnail, Adobe APP14 (colour transform), HP's
  APP8 ``mrfx`` in JPEG-LS (colour transform). The cleaned frames must decode to the very
  pixels of the original, else the object fails. RLE holds no text fields; other compressed
  syntaxes (MPEG, H.264, HEVC, JPEG XL) are refused.
- Options (params.yaml ``anonymize``) switch rows as PS3.15 defines them: *Retain Patient
  Characteristics* keeps sex, age, size, weight ... (checked values); *Retain Device Identity*
  keeps device serial number, station name, manufacturer, model, software versions ...;
  ``private_allowlist`` (``"GGGG,Private Creator,EE"``: *Retain Safe Private*) keeps those
  private elements and their creator. Curves (50xx) and overlays (60xx) are removed:
  overlays can carry burned-in text.

UIDs: ``2.25.<decimal of the first 128 bits of HMAC-SHA256(salt, uid)>``: valid UID syntax, the
same input UID gives the same output UID in every run of a project (same salt), so references
between objects stay consistent; well-known UIDs of PS3.6 Annex A (as pydicom lists them) are
kept, checked by list, not by prefix. The 128-byte Part 10 preamble is zeroed.

Audit: ``audit/<new SOP Instance UID>.json`` names the action of *every* element seen:
``counts`` (action -> keyword -> elements, file meta and sequence items included; elements
removed with their sequence count as ``X``; a tag without a keyword is named ``(GGGG,EEEE)``)
and ``changes`` (every element not kept: tag, keyword, action, path such as
``ReferencedImageSequence[0].ReferencedSOPInstanceUID``, ``file_meta.`` for the file meta).
No original value is written there. Elements are looked at raw (tag and VR) first: a kept
number or binary element is never decoded, only kept text values are checked.

Before anything is decoded or written: a file that ends inside an element is truncated (an error
naming the file, never a "non-image" skip); the pixel count the header and each codestream claim
must fit :data:`converters.dicom.pixels.MAX_PIXELS` (64 megapixels,
:func:`converters.dicom.pixels.check_pixel_budget`); uncompressed pixel data must hold every frame,
compressed pixel data must decode.

Burned-in annotation: objects with BurnedInAnnotation ``YES`` are quarantined (not written)
unless ``burned_in="blank"``, which fills the configured pixel regions with the image minimum,
writes the pixels uncompressed, sets BurnedInAnnotation ``NO`` and adds the Clean Pixel Data
option code. Objects without pixel data of a known non-image SOP class (SR, PR, KO, ...) are
skipped with their SOP class.

The secret salt and the ledger (original identifiers -> pseudonyms) live only in the private folder
(:mod:`converters.dicom.ledger`).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import struct
import uuid
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.errors import InvalidDicomError as _PydicomInvalid
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian

from converters.dicom.read import read_dicom, transfer_syntax
from converters.core.errors import (InvalidConfigError, InvalidDicomError, InvalidLedgerError,
                                    MissingInputError, SpinepipeError, UnsupportedDicomError)
from converters.core.incremental import IncrementalState, file_signature
from converters.core.files import (TEMP_MARK, atomic_path, prepare_output, remove_output,
                                   remove_stale_temps, write_json)
# patient_pseudonym and PSEUDONYM_PREFIX are re-exported: callers know them from here
from converters.dicom.ledger import (  # noqa: F401
    LEDGER_FILE, LEDGER_VERSION, PSEUDONYM_PREFIX, date_shift_days, load_ledger, mac,
    patient_identity, patient_pseudonym, pseudonym_of, read_private_json, record_instance,
    write_private_json)
from converters.core.parallel import map_jobs
from converters.core.paths import check_name, check_uid, confined
from converters.dicom.pixels import MAX_PIXELS, check_pixel_budget

TABLE_FILE = Path(__file__).with_name("deid_actions.tsv")
#: well-known UIDs of PS3.6 Annex A (never identifying): kept as they are
WELL_KNOWN_UIDS = frozenset(UID_dictionary)
#: "GGGG,Private Creator,EE" (params.yaml anonymize.private_allowlist)
ALLOWLIST_PATTERN = r"[0-9A-Fa-f]{4},[^,]*[^,\s][^,]*,[0-9A-Fa-f]{2}"  # a creator not blank
#: the file meta's implementation fields: spinepipe's own, whatever wrote the input
IMPLEMENTATION_CLASS_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "spinepipe:anonymize").int)
IMPLEMENTATION_VERSION_NAME = "SPINEPIPE_DEID"

#: CID 7050 De-identification Method codes (DCM)
CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel": ("113101", "Clean Pixel Data Option"),
    "modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "device_identity": ("113109", "Retain Device Identity Option"),
    "safe_private": ("113111", "Retain Safe Private Option"),
}


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
    # look for burned-in text by OCR (converters.dicom.burned_in) when BurnedInAnnotation is absent
    # or NO; text found -> quarantine, or blank its boxes, per burned_in
    ocr: bool = True
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
    # {"counts": {action: {keyword: n}}, "changes": [...]} (module docstring)
    audit: dict = field(default_factory=dict)
    # ledger rows (private): original identifiers -> pseudonyms; never written under data/
    ledger: dict = field(default_factory=dict)
    # skipped as a copy of this input (same SOP Instance UID): retried on every run, since
    # the first copy may go away
    duplicate_of: str = ""


# --------------------------------------------------------------------------------------------
# the table

ACTIONS = frozenset("KPUSZDXQCNR")
#: option names of the table -> (AnonymizeConfig field, the option is on when the field is)
OPTIONS = {"patient_characteristics": ("retain_patient_characteristics", True),
           "device_identity": ("retain_device_identity", True),
           "no_modified_dates": ("retain_longitudinal_modified_dates", False)}
_SPECIAL = {"(50xx,xxxx)": "curves", "(60xx,xxxx)": "overlays", "(gggg,0000)": "group_length",
            "(odd group)": "private", "*": "default"}
_TEXT_VRS = frozenset("AE AS CS DA DS DT IS LO LT PN SH ST TM UC UR UT UI".split())


@dataclass(frozen=True)
class Rule:
    """One row of the table: its action, the value check of a kept text attribute, and the
    actions its options switch to."""

    action: str
    check: str = ""
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ActionTable:
    version: str
    rows: dict[int, Rule]
    special: dict[str, Rule]


def _parse_rule(fields: list[str], where: str) -> Rule:
    action, check, opts = (fields + ["", "", ""])[2:5]
    options = []
    for item in filter(None, opts.split(",")):
        name, _, act = item.partition("=")
        if name not in OPTIONS or act not in ACTIONS:
            raise InvalidConfigError(f"unknown option {item!r}", file=where)
        options.append((name, act))
    if action not in ACTIONS:
        raise InvalidConfigError(f"unknown action {action!r}", file=where)
    if check:
        _value_check(check)  # compiles, or raises
    return Rule(action, check, tuple(options))


def _needs_check(tag: int, rule: Rule) -> bool:
    """A text attribute kept (by its row or an option) without a value check."""
    kept = rule.action == "K" or any(a == "K" for _, a in rule.options)
    return kept and not rule.check and tag >> 16 != 0x0002 and _dictionary_vr(tag) in _TEXT_VRS


# The cached functions below are plain functions wrapped by lru_cache rather than decorated:
# mutmut (make mutation) does not mutate decorated functions.
def _action_table_uncached(path: Path = TABLE_FILE) -> ActionTable:
    """The de-identification action table (module docstring), checked as it is read."""
    rows: dict[int, Rule] = {}
    special: dict[str, Rule] = {}
    version = ""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("#"):
            found = re.search(r"version (\S+)", line)
            version = version or (found.group(1) if found else "")
            continue
        fields = line.split("\t")
        if not line.strip() or fields[0] == "tag":
            continue
        rule = _parse_rule(fields, f"{path} line {n}")
        if fields[0] in _SPECIAL:
            special[_SPECIAL[fields[0]]] = rule
            continue
        found = re.fullmatch(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)", fields[0])
        if not found:
            raise InvalidConfigError(f"malformed tag {fields[0]!r}", file=f"{path} line {n}")
        tag = int(found.group(1) + found.group(2), 16)
        if _needs_check(tag, rule):
            raise InvalidConfigError("a text attribute is kept without a value check",
                                     file=f"{path} line {n}")
        rows[tag] = rule
    if not version or set(_SPECIAL.values()) - set(special):
        raise InvalidConfigError("the action table lacks its version or a default row", file=path)
    return ActionTable(version, rows, special)


action_table = lru_cache(maxsize=4)(_action_table_uncached)


def table_actions(options: AnonymizeConfig) -> dict:
    """tag -> (action, value check) of every row of the table with ``options`` applied (and
    ``curves``, ``overlays``, ``group_length``, ``private``, ``default``)."""
    return dict(_effective(options.retain_patient_characteristics,
                           options.retain_device_identity,
                           options.retain_longitudinal_modified_dates))


def _effective_uncached(characteristics: bool, device: bool, dates: bool) -> dict:
    """tag (or special name) -> (action, check) with the options applied."""
    on = {"patient_characteristics": characteristics, "device_identity": device,
          "no_modified_dates": not dates}
    table = action_table()

    def resolve(rule: Rule) -> tuple[str, str]:
        action = rule.action
        for name, act in rule.options:
            if on[name]:
                action = act
        return action, rule.check

    out: dict = {tag: resolve(rule) for tag, rule in table.rows.items()}
    out.update({name: resolve(rule) for name, rule in table.special.items()})
    return out


_effective = lru_cache(maxsize=16)(_effective_uncached)


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _value_check_uncached(check: str) -> Callable[[str], bool] | None:
    """A predicate on one value of a kept text attribute (None: anything goes)."""
    if check in ("", "any", "registry"):
        return None
    if check == "number":
        return lambda v: _NUMBER.fullmatch(v) is not None
    if check == "charset":
        from pydicom.charset import python_encoding
        allowed = frozenset(python_encoding) | {""}
        return allowed.__contains__
    if check.startswith("list:"):
        return frozenset(check[5:].split("|")).__contains__
    if check.startswith("re:"):
        pattern = re.compile(check[3:])
        return lambda v: pattern.fullmatch(v) is not None
    raise InvalidConfigError(f"unknown value check {check!r}", file=TABLE_FILE)


_value_check = lru_cache(maxsize=None)(_value_check_uncached)


def _dictionary_vr_uncached(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


_dictionary_vr = lru_cache(maxsize=None)(_dictionary_vr_uncached)


def _vr_fits(raw_vr: str | None, tag: int) -> bool:
    """The VR an element was written with is one the dictionary allows (or unknown)."""
    allowed = _dictionary_vr(tag)
    return raw_vr in (None, "UN", allowed) or raw_vr in allowed.split(" or ")


_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "AT": 4, "UV": 8, "SV": 8}


def _max_length_uncached(tag: int) -> int | None:
    """Bytes a kept binary number attribute can hold (its VR's size x the dictionary's largest
    VM); None when unbounded (``1-n``, OB / OW data)."""
    size = _SIZES.get(_dictionary_vr(tag).split(" or ")[0])
    try:
        vm = dictionary_VM(tag).split("-")[-1]
    except KeyError:
        return None
    return size * int(vm) if size and vm.isdigit() else None


_max_length = lru_cache(maxsize=None)(_max_length_uncached)


def _length_fits(raw, tag: int) -> bool:
    """A kept number attribute holds no more values than the dictionary allows (bytes of
    text stored as a long run of numbers in a one-value attribute are refused)."""
    limit = _max_length(tag)
    value = getattr(raw, "value", None)
    return limit is None or not isinstance(value, (bytes, bytearray)) or len(value) <= limit


def _standard_codes_uncached(scheme: str) -> dict[str, str]:
    """Code value -> code meaning of one coding scheme (``SCT``, ``DCM``, ...), from pydicom's
    dictionary; built per scheme on first use (the whole dictionary costs a tenth of a
    second, paid by every worker process that meets a code)."""
    try:
        from pydicom.sr._concepts_dict import concepts
    except ImportError:  # pragma: no cover - then no code is known, and every one is removed
        return {}
    out: dict[str, str] = {}
    for entries in concepts.get(scheme, {}).values():
        for value, (meaning, _cids) in entries.items():
            out.setdefault(value, meaning)
    return out


standard_codes = lru_cache(maxsize=64)(_standard_codes_uncached)


TABLE_VERSION = action_table().version


# --------------------------------------------------------------------------------------------
# pseudonyms


def remap_uid(salt: bytes, uid: str) -> str:
    """A valid, deterministic replacement UID under the 2.25 (UUID-derived) root."""
    return "2.25." + str(int.from_bytes(mac(salt, "uid", uid)[:16], "big"))


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
    rest = value[8:]
    return shifted + rest if shifted and re.fullmatch(r"[0-9.+-]*", rest) else shifted


# --------------------------------------------------------------------------------------------
# the engine

_DUMMY = {"PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANON", "ST": "ANONYMIZED",
          "LT": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANON",
          "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0",
          "DS": "0", "AE": "ANON"}


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


def _empty_value(vr: str):
    return Sequence() if vr == "SQ" else ("" if vr in _TEXT_VRS else None)


class _Engine:
    """Applies the table to one object, in place, and keeps its audit (module docstring)."""

    def __init__(self, salt: bytes, options: AnonymizeConfig, pseudonym: str, key: str):
        self.salt = salt
        self.pseudonym = pseudonym
        self.options = options
        self.days = date_shift_days(salt, key)
        self.rules = _effective(options.retain_patient_characteristics,
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
                                      _dictionary_vr(int(tag)) == "SQ" and not tag.is_private):
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
            if action not in ("X", "N", "Z", "D") and not _vr_fits(ds.get_item(tag).VR,
                                                                   int(tag)):
                action = "X"  # a VR the dictionary does not allow: contents unchecked
            _HANDLERS[action](self, ds, tag, check, path)
        self._code.pop(id(ds), None)

    def _keep(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        if check in ("", "any"):
            if not _length_fits(ds.get_item(tag), int(tag)):
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
        test = _value_check(check)
        bad = [v for v in values if not test(v)]
        if not bad:
            self.log(tag, "K", path)
            return
        vr = _dictionary_vr(int(tag)).split(" or ")[0]
        good = [v if test(v) else "" for v in values]
        keep_some = check[:3] in ("lis", "re:") and any(good)
        ds.add(DataElement(tag, vr, (good if len(good) > 1 else good[0]) if keep_some else ""))
        self.log(tag, "V", path)

    def _pseudonym(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        ds.add(DataElement(tag, _dictionary_vr(int(tag)), self.pseudonym))
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
        shift = _shift_da if elem.VR == "DA" else _shift_dt
        if elem.VM > 1:
            elem.value = [shift(str(v), self.days) for v in elem.value]
        elif elem.value not in (None, ""):
            elem.value = shift(str(elem.value), self.days)
        self.log(tag, "S", path)

    def _empty(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        vr = _dictionary_vr(int(tag)).split(" or ")[0]
        if vr == "SQ" or ds.get_item(tag).VR == "SQ":
            elem = ds[tag]
            if elem.VR == "SQ":
                self._count_removed(elem)
            vr = "SQ"
        ds.add(DataElement(tag, vr, _empty_value(vr)))
        self.log(tag, "Z", path)

    def _dummy(self, ds: Dataset, tag: BaseTag, check: str, path: str) -> None:
        vr = _dictionary_vr(int(tag)).split(" or ")[0]
        if vr == "UI":
            self._uid(ds, tag, check, path)
        elif vr == "SQ" or vr not in _DUMMY:
            self._empty(ds, tag, check, path)
        else:
            ds.add(DataElement(tag, vr, _DUMMY[vr]))
            self.log(tag, "D", path)

    def _remove(self, ds: Dataset, tag: BaseTag, path: str) -> None:
        raw = ds.get_item(tag)
        if raw.VR == "SQ" or (raw.VR in (None, "UN") and not tag.is_private
                              and _dictionary_vr(int(tag)) == "SQ"):
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


# --------------------------------------------------------------------------------------------
# text inside encapsulated pixel data

_JPEG = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                   "1.2.840.10008.1.2.4.70"})
_JPEG_LS = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
_J2K = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                  "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})
_RLE = frozenset({"1.2.840.10008.1.2.5"})


def _app_needed(marker: int, segment: bytes, ls: bool) -> bool:
    """An application segment a decoder needs, of exactly its fixed size (module docstring)."""
    payload = segment[4:]
    if marker == 0xE0:   # JFIF 1.0x header without thumbnail
        return len(segment) == 18 and payload[:5] == b"JFIF\0" and payload[12:14] == b"\0\0"
    if marker == 0xEE:   # Adobe: colour transform
        return len(segment) == 16 and payload[:5] == b"Adobe"
    return ls and marker == 0xE8 and len(segment) == 9 and payload[:4] == b"mrfx"


def _scan_end(data: bytes, i: int, ls: bool) -> int:
    """Where the entropy-coded data starting at ``i`` ends (the next marker)."""
    while True:
        j = data.find(b"\xff", i)
        if j < 0 or j + 1 >= len(data):
            return len(data)
        nxt = data[j + 1]
        if 0xD0 <= nxt <= 0xD7 or (nxt < 0x80 if ls else nxt == 0x00):
            i = j + 2  # restart marker or stuffed byte: still data
            continue
        return j


def _clean_jpeg(data: bytes, ls: bool = False) -> tuple[bytes, list[str]]:
    """A JPEG / JPEG-LS codestream without COM and APPn segments (but those a decoder needs)
    and without bytes after EOI; and what was removed."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("no start-of-image marker")
    out, removed, i, n = [data[:2]], [], 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise ValueError(f"no marker at byte {i}")
        marker = data[i + 1] if i + 1 < n else 0xD9
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            out.append(b"\xff\xd9")
            i += 2
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            out.append(data[i:i + 2])
            i += 2
            continue
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if end > n or end < i + 4:
            raise ValueError(f"segment 0xFF{marker:02X} runs past the end")
        segment = data[i:end]
        if marker == 0xFE or (0xE0 <= marker <= 0xEF and not _app_needed(marker, segment, ls)):
            removed.append("COM" if marker == 0xFE else f"APP{marker - 0xE0}")
        else:
            out.append(segment)
        i = end
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            j = _scan_end(data, i, ls)
            out.append(data[i:j])
            i = j
    if data[i:].strip(b"\0"):
        removed.append("bytes after the end of image")
    return (b"".join(out), removed) if removed else (data, [])


def _jp2_codestream(data: bytes) -> bytes:
    """The codestream of a JP2 file (its ``jp2c`` box)."""
    i = 0
    while i + 8 <= len(data):
        size, kind = int.from_bytes(data[i:i + 4], "big"), data[i + 4:i + 8]
        head = 8
        if size == 1:
            size, head = int.from_bytes(data[i + 8:i + 16], "big"), 16
        elif size == 0:
            size = len(data) - i
        if kind == b"jp2c":
            return data[i + head:i + size]
        if size < head:
            break
        i += size
    raise ValueError("a JP2 file without a codestream box")


def _j2k_segments(data: bytes, i: int, stop: bytes, removed: list[str]) -> tuple[list[bytes], int]:
    """The marker segments from ``i`` up to the marker ``stop``, COM segments left out."""
    kept = []
    while data[i:i + 2] != stop:
        if i + 4 > len(data) or data[i] != 0xFF:
            raise ValueError(f"no marker at byte {i}")
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if end > len(data) or end < i + 4:
            raise ValueError("a marker segment runs past the end")
        if data[i:i + 2] == b"\xff\x64":
            removed.append("COM")
        else:
            kept.append(data[i:end])
        i = end
    return kept, i


def _clean_j2k(data: bytes) -> tuple[bytes, list[str]]:
    """A JPEG 2000 codestream without COM segments (main and tile-part headers), JP2 boxes
    or bytes after EOC; and what was removed."""
    removed: list[str] = []
    original = data
    if data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
        data = _jp2_codestream(data)
        removed.append("JP2 boxes")
    if data[:2] != b"\xff\x4f":
        raise ValueError("no start-of-codestream marker")
    header, i = _j2k_segments(data, 2, b"\xff\x90", removed)
    tiles, in_tiles = [], []
    while data[i:i + 2] == b"\xff\x90":
        psot = int.from_bytes(data[i + 6:i + 10], "big")
        end = i + psot if psot else len(data) - (2 if data.endswith(b"\xff\xd9") else 0)
        segments, j = _j2k_segments(data, i + 12, b"\xff\x93", in_tiles)
        part = data[i:i + 12] + b"".join(segments) + data[j:end]
        if psot:
            part = part[:6] + len(part).to_bytes(4, "big") + part[10:]
        tiles.append(part)
        i = end
    if data[i:i + 2] != b"\xff\xd9" or data[i + 2:].strip(b"\0"):
        removed.append("bytes after the end of codestream")
    if not removed and not in_tiles:
        return original, []
    if in_tiles:  # tile-part lengths changed: the optional TLM segment would be wrong
        header = [s for s in header if s[:2] != b"\xff\x55"]
    return b"\xff\x4f" + b"".join(header) + b"".join(tiles) + b"\xff\xd9", removed + in_tiles


def _cleaner(ts: str, file: str) -> Callable[[bytes], tuple[bytes, list[str]]] | None:
    if ts in _JPEG:
        return _clean_jpeg
    if ts in _JPEG_LS:
        return lambda frame: _clean_jpeg(frame, ls=True)
    if ts in _J2K:
        return _clean_j2k
    if ts in _RLE:
        return None
    raise UnsupportedDicomError(f"cannot check {getattr(ts, 'name', ts)} pixel data for text "
                                "(only JPEG, JPEG-LS, JPEG 2000 and RLE)", file=file,
                                tag="(7FE0,0010)")


def clean_pixel_markers(ds: Dataset, decoded: np.ndarray | None, file: str = "") -> list[str]:
    """Remove comment and application segments from every frame of encapsulated pixel data
    (module docstring); the result must decode to ``decoded``. Returns what was removed."""
    ts = transfer_syntax(ds, file)
    if ts is None or not ts.is_encapsulated or "PixelData" not in ds:
        return []
    clean = _cleaner(ts, file)
    if clean is None:
        return []
    from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames

    frames_n = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=frames_n))
        cleaned = [clean(f) for f in frames]
    except (ValueError, IndexError, struct.error) as exc:
        raise InvalidDicomError(f"cannot read the {ts.name} codestream to remove text "
                                f"markers: {exc}", file=file, tag="(7FE0,0010)") from None
    removed = sorted({r for _, rs in cleaned for r in rs})
    if not removed:
        return []
    new = [c for c, _ in cleaned]
    if "ExtendedOffsetTable" in ds:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = \
            encapsulate_extended(new)
    else:
        ds.PixelData = encapsulate(new, has_bot=len(new) > 1)
    _same_pixels(ds, decoded, file)
    return removed


def _same_pixels(ds: Dataset, decoded: np.ndarray | None, file: str) -> None:
    try:
        after = ds.pixel_array
    except Exception as exc:  # decoders raise many types on corrupt streams
        raise InvalidDicomError(f"pixel data without its text markers does not decode: "
                                f"{exc}".splitlines()[0], file=file, tag="(7FE0,0010)") from None
    if decoded is None or after.shape != decoded.shape or not np.array_equal(after, decoded):
        raise InvalidDicomError("removing the text markers of the pixel data changed the "
                                "pixels: refused", file=file, tag="(7FE0,0010)")


# --------------------------------------------------------------------------------------------
# one object


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


def _native_view(ds: Dataset) -> np.ndarray | None:
    """A read-only view of native (uncompressed, little-endian) pixel data, without a copy,
    when it equals what pydicom decodes: one frame, one sample, unsigned 8 or 16 bits, no bit
    set above BitsStored (pydicom would mask those). None otherwise. pydicom's own array costs
    a copy and a masking pass of the whole image (a third of the OCR's time on a CR), and OCR
    only reads the pixels."""
    ts = transfer_syntax(ds)
    try:
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        stored = int(ds.get("BitsStored", bits))
        simple = (int(ds.get("PixelRepresentation", 0)) == 0 and bits in (8, 16)
                  and 0 < stored <= bits and int(ds.get("SamplesPerPixel", 1) or 1) == 1
                  and _frame_count(ds) == 1)
    except (AttributeError, TypeError, ValueError, BytesLengthException):
        return None
    data = ds.get("PixelData")
    if not simple or ts is None or ts.is_encapsulated or not ts.is_little_endian or \
            not isinstance(data, bytes) or len(data) < rows * cols * bits // 8:
        return None
    view = np.frombuffer(data, dtype=np.uint8 if bits == 8 else "<u2", count=rows * cols)
    if stored < bits and int(view.max()) >> stored:
        return None
    return view.reshape(rows, cols)


def _stored_pixels(ds: Dataset, file: str) -> np.ndarray:
    """The uncompressed pixel data as an array (read only: :func:`_native_view` where it
    applies); a header pydicom cannot use (an unreadable NumberOfFrames, as
    check_pixel_data allows) read as one frame of Rows x Columns."""
    view = _native_view(ds)
    if view is not None:
        return view
    try:
        return ds.pixel_array
    except (ValueError, TypeError, AttributeError, NotImplementedError):
        pass
    try:
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}[bits]
        arr = np.frombuffer(ds.PixelData, dtype=dtype, count=rows * cols * samples)
        return arr.reshape((rows, cols, samples) if samples > 1 else (rows, cols))
    except (ValueError, TypeError, KeyError, AttributeError):
        raise InvalidDicomError("pixel data cannot be read for the burned-in text check",
                                file=file, tag="(7FE0,0010)") from None


def _grey_frames(ds: Dataset, pixels: np.ndarray) -> list[np.ndarray]:
    """The 2-D planes OCR reads: each frame, colour averaged to grey (the array itself when
    it is one grey frame)."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = _frame_count(ds)
    arr = pixels
    if samples > 1:
        arr = arr.mean(axis=-1).astype(pixels.dtype)
    if frames > 1 and arr.ndim == 3:
        return list(arr)
    return [arr]


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


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_IMAGE_PIXEL_MODULE = ("Rows", "Columns", "BitsAllocated")


def _skip_non_image(ds: Dataset, file: str) -> Outcome | None:
    """A ``skipped`` outcome for an object of a known non-image SOP class; an error for an
    image object (or an unknown class) without pixel data: truncated or corrupt."""
    if "SOPClassUID" not in ds:
        raise InvalidDicomError("no SOP Class UID in the dataset (truncated, or not a "
                                "composite object)", file=file, tag="(0008,0016)")
    if any(k in ds for k in _PIXEL_KEYWORDS):
        return None
    sop = ds.get("SOPClassUID")
    name = getattr(sop, "name", None) or str(sop or "unknown SOP class")
    if "Image Storage" in name or any(k in ds for k in _IMAGE_PIXEL_MODULE):
        raise InvalidDicomError(f"{name} object without PixelData (truncated or corrupt)",
                                file=file, tag="(7FE0,0010)")
    return Outcome("skipped", f"non-image object ({name})")


def _original_row(ds: Dataset, file: str) -> dict:
    def text(keyword: str) -> str:
        return str(ds.get(keyword, "") or "")

    row = {k: text(kw) for k, kw in (
        ("patient_name", "PatientName"), ("accession_number", "AccessionNumber"),
        ("study_instance_uid", "StudyInstanceUID"), ("sop_instance_uid", "SOPInstanceUID"),
        # what a re-identified result (spinepipe to-seg --reidentify) needs to point back
        ("series_instance_uid", "SeriesInstanceUID"), ("patient_birth_date", "PatientBirthDate"),
        ("patient_sex", "PatientSex"), ("study_date", "StudyDate"), ("study_time", "StudyTime"),
        ("study_id", "StudyID"), ("referring_physician_name", "ReferringPhysicianName"))}
    if not row["sop_instance_uid"]:
        raise InvalidDicomError("no SOPInstanceUID", file=file, tag="(0008,0018)")
    if not row["study_instance_uid"]:
        raise InvalidDicomError("no StudyInstanceUID", file=file, tag="(0020,000D)")
    return row


def anonymize_dataset(ds: Dataset, salt: bytes, options: AnonymizeConfig,
                      file: str = "") -> Outcome:
    """De-identify ``ds`` in place. Returns the outcome (status, pseudonyms, audit, ledger).

    Raises :class:`InvalidDicomError` for objects that cannot be handled; non-image and
    burned-in objects come back as ``skipped`` / ``quarantined`` outcomes, ``ds`` untouched.
    """
    skipped = _skip_non_image(ds, file)
    if skipped is not None:
        return skipped
    decoded = check_pixel_data(ds, file)
    burned = str(ds.get("BurnedInAnnotation", "")).upper() == "YES"
    if burned and options.burned_in == "quarantine":
        return Outcome("quarantined", "BurnedInAnnotation YES")
    if burned and not options.blank_regions:
        return Outcome("quarantined", "BurnedInAnnotation YES and no blank_regions configured")
    found, frame = [], None
    if not burned and options.ocr:  # the flag is optional (CR) and not trusted when NO
        from converters.dicom.burned_in import find_burned_in_text

        frame = decoded if decoded is not None else _stored_pixels(ds, file)
        planes = _grey_frames(ds, frame)
        for i, plane in enumerate(planes):  # every frame of a multi-frame object is read
            found = find_burned_in_text(plane)
            if found and (options.burned_in == "quarantine" or len(planes) > 1
                          or plane is not frame):
                where = f" of frame {i + 1}" if len(planes) > 1 else ""
                blank = "" if options.burned_in == "quarantine" else \
                    " (a multi-frame or colour image is not blanked)"
                return Outcome("quarantined", "burned-in text found by OCR at "
                               f"{[b.region for b in found]}{where} (x, y, width, height)"
                               + blank)
    original = _original_row(ds, file)
    identity = patient_identity(ds, file)
    pseudonym = pseudonym_of(salt, identity.key)
    engine = _Engine(salt, options, pseudonym, identity.key)
    if burned:
        _blank(ds, options.blank_regions, file)
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
    _set_method(ds, options, clean_pixels=burned or bool(found))
    days = engine.days if options.retain_longitudinal_modified_dates else 0
    new = {"pseudonym": pseudonym, "new_sop_instance_uid": str(ds.SOPInstanceUID),
           "new_study_instance_uid": str(ds.get("StudyInstanceUID", "")),
           "new_series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
           "date_shift_days": days, "patient_key": identity.key,
           "patient_id": identity.patient_id, "issuer": list(identity.issuer)}
    return Outcome("anonymized", patient_pseudonym=pseudonym, new_sop_uid=new[
        "new_sop_instance_uid"], new_study_uid=new["new_study_instance_uid"],
        date_shift_days=days, audit=engine.audit(), ledger={**original, **new})


def _frame_count(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError, BytesLengthException):
        return 1  # unreadable frame count (seen in real files): at least one whole frame


def check_pixel_data(ds: Dataset, file: str = "",
                     max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
    """Raise :class:`InvalidDicomError` unless the pixel data is complete: uncompressed, its
    length holds every frame; compressed (encapsulated), it decodes (the decoded pixels are
    returned). The pixel count is checked against ``max_pixels`` before any decoding."""
    if "PixelData" not in ds:
        return None  # float pixel data: rare, parametric maps; nothing to check here
    ts = transfer_syntax(ds, file)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError, BytesLengthException):
        raise InvalidDicomError("pixel data without valid Rows, Columns and BitsAllocated",
                                file=file, tag="(0028,0010)") from None
    frames = _frame_count(ds)
    if min(rows, cols, bits, samples, frames) < 1:
        raise InvalidDicomError(f"pixel data of {cols}x{rows} pixels, {samples} sample(s), "
                                f"{bits} bits, {frames} frame(s)", file=file, tag="(0028,0010)")
    if ts is not None and ts.is_encapsulated:
        check_pixel_budget(ds, max_pixels, file)
        try:
            return ds.pixel_array
        except Exception as exc:  # decoders raise many types on corrupt streams
            raise InvalidDicomError(f"compressed pixel data does not decode ({ts.name}): "
                                    f"{exc}".splitlines()[0], file=file,
                                    tag="(7FE0,0010)") from None
    expected = (rows * cols * samples * frames * bits + 7) // 8
    got = len(ds.PixelData or b"")
    if got < expected:
        raise InvalidDicomError(f"pixel data truncated: {got} bytes where {cols}x{rows}x"
                                f"{samples}x{bits} bits x {frames} frame(s) need {expected}",
                                file=file, tag="(7FE0,0010)")
    if rows * cols * samples * frames > max_pixels:  # the frame count as read above
        raise InvalidDicomError(f"the header claims {rows}x{cols} pixels x {frames} frame(s) x "
                                f"{samples} sample(s); at most {max_pixels:,} are decoded",
                                file=file, tag="(0028,0010)")
    return None


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
        """One line per input handled now that was not anonymized, or anonymized with a note
        (for the terminal only: input paths may carry identifiers)."""
        shown = ("failed",) if failures_only else ("failed", "quarantined", "skipped")
        lines = []
        for key, row in sorted(self.private_rows.items()):
            if row.get("reused"):
                continue
            if row["status"] in shown:
                lines.append(f"  {row['status']}: {key}: {row['reason']}")
            elif row.get("note") and not failures_only:
                lines.append(f"  note: {key}: {row['note']}")
        return lines


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
        _decode_if_reencoded(ds)
        # written under a name of its own: two inputs may carry the same SOP Instance UID, and
        # the parent decides which one becomes out_rel (see _part_name)
        with atomic_path(confined(out_root, _part_name(out_rel, rel), file=rel)) as tmp:
            ds.save_as(tmp, enforce_file_format=hasattr(ds, "file_meta") and bool(ds.file_meta))
        return rel, outcome, out_rel
    except SpinepipeError as exc:
        return rel, Outcome("failed", str(exc)), ""
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OSError,
            OverflowError, EOFError, NotImplementedError, struct.error, BytesLengthException,
            _PydicomInvalid) as exc:
        # malformed values pydicom chokes on: report, go on
        return rel, Outcome("failed", f"{rel}: {type(exc).__name__}: {exc}".splitlines()[0]), ""


def _decode_if_reencoded(ds: Dataset) -> None:
    """Elements read in implicit VR from a file whose transfer syntax says explicit VR are
    decoded (pydicom writes raw elements as they came, and has no VR to write for them)."""
    ts = transfer_syntax(ds)
    if ts is not None and not ts.is_implicit_VR and \
            any(getattr(ds.get_item(tag), "VR", "") is None for tag in ds.keys()):
        for _ in ds.iterall():
            pass


#: the incremental state's rows (2: a duplicate is marked by ``duplicate_of``, not its reason)
STATE_VERSION = 2


def _options_key(options: AnonymizeConfig) -> str:
    """What an output depends on besides its input: the options, the action table's version
    and the identity keys' (a new table or ledger version redoes every object once)."""
    facts = {**asdict(options), "table": TABLE_VERSION, "ledger": LEDGER_VERSION,
             "state": STATE_VERSION}
    return hashlib.sha1(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _cacheable(row: dict) -> bool:
    """Failures (and duplicates, whose first copy may go away) are retried on every run."""
    return row["status"] in ("anonymized", "quarantined", "skipped") and \
        not row.get("duplicate_of")


def check_input_folders(folders: list[str | Path]) -> None:
    """:class:`MissingInputError` naming the first input folder that does not exist."""
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise MissingInputError("input folder not found", file=folder)


def _sources(inputs: list[Path]) -> dict[str, tuple[str, str, Path]]:
    """Input key -> (folder, path relative to it, path) of every file under ``inputs``."""
    sources: dict[str, tuple[str, str, Path]] = {}
    for d in inputs:
        folder = str(d.resolve())
        for p in sorted(d.rglob("*")):
            if p.is_file():
                rel = str(p.relative_to(d))
                sources[f"{d.name}/{rel}" if len(inputs) > 1 else rel] = (folder, rel, p)
    return sources


def _settle(key: str, outcome: Outcome, out_rel: str, output_dir: Path, owner: dict,
            ledger: dict) -> tuple[Outcome, str, str]:
    """Move one written object into place, or refuse it (a duplicate SOP Instance UID, an
    identity the ledger refuses); record it in the ledger. Returns (outcome, output, note)."""
    if not out_rel:
        return outcome, out_rel, ""
    part = output_dir / _part_name(out_rel, key)
    if out_rel in owner and owner[out_rel] != key:
        remove_output(output_dir, _part_name(out_rel, key))
        # an earlier input (in path order) has this SOP Instance UID
        return Outcome("skipped", f"duplicate SOP Instance UID: same object as "
                       f"{owner[out_rel]}", duplicate_of=owner[out_rel]), "", ""
    try:
        note = record_instance(ledger, outcome.ledger, key)
    except InvalidLedgerError as exc:
        remove_output(output_dir, _part_name(out_rel, key))
        return Outcome("failed", str(exc)), "", ""
    owner[out_rel] = key
    part.replace(output_dir / out_rel)
    write_json(output_dir / "audit" / f"{outcome.new_sop_uid}.json",
               {"output": out_rel, "action_table": TABLE_VERSION, **outcome.audit},
               indent=None)
    return outcome, out_rel, note


def anonymize_tree(input_dir: str | Path | list, output_dir: str | Path, private: Path,
                   salt: bytes, options: AnonymizeConfig, *, workers: int = 1,
                   progress=None) -> TreeReport:
    """Anonymize every file under ``input_dir`` (recursively; a list of folders is walked in
    turn, their files keyed ``<folder name>/<path>``) into ``output_dir``.

    Output layout: ``<pseudonym>/<new StudyInstanceUID>/<new SOPInstanceUID>.dcm`` plus
    ``audit/<new SOPInstanceUID>.json`` (the action of every element, no original values).

    Incremental and additive (:mod:`converters.core.incremental`; the state lives in the private
    folder, one file per output folder, since input paths can carry identifiers): an input whose
    size, mtime and options (and the table's version) are unchanged, and whose output still exists,
    is not processed again; failures are never cached; a file that disappeared from an input folder
    walked now has its own earlier output (and audit record) removed, unless another input still
    produces it. Input folders not given in this run (other batches) are left alone, and so are
    their outputs. Inputs are only read. An object whose identity the ledger refuses
    (:func:`converters.dicom.ledger.record_instance`) fails, and nothing of it is kept.
    """
    inputs = [Path(d) for d in input_dir] if isinstance(input_dir, list) else [Path(input_dir)]
    check_input_folders(inputs)
    if options.ocr:
        from converters.dicom.burned_in import check_ocr_available

        check_ocr_available()  # one line before the first file, not one per file
    output_dir = prepare_output(output_dir)
    remove_stale_temps(output_dir)
    out_id = hashlib.sha1(str(output_dir.resolve()).encode()).hexdigest()[:12]
    state = IncrementalState(private / f"anonymize_state.{out_id}.json",
                             loader=lambda p: read_private_json(p, None),
                             writer=write_private_json)
    opt_key = _options_key(options)
    sources = _sources(inputs)
    todo, report = [], TreeReport()
    for key, (folder, rel, p) in sources.items():
        prev = state.up_to_date(folder, rel, file_signature(p, opt_key), output_dir)
        if prev and _cacheable(prev["row"]):
            report.private_rows[key] = {**prev["row"], "reused": True}
            continue
        state.forget(folder, rel)  # redone now (or failing again): claims nothing meanwhile
        todo.append((str(p), key, str(output_dir), salt, options))
    ledger = load_ledger(private)
    results = map_jobs(_anonymize_file, todo, workers=workers, progress=progress)
    for folder in {f for f, _, _ in sources.values()}:  # files gone: their own outputs go
        for out_rel in state.prune(folder, [rel for f, rel, _ in sources.values() if f == folder]):
            remove_output(output_dir, out_rel)
            remove_output(output_dir, f"audit/{Path(out_rel).stem}.json")
    owner = {o: f"{Path(g).name}:{k}" for g, entries in state.data["groups"].items()
             for k, e in entries.items() for o in e["outputs"]}
    for key, outcome, out_rel in sorted(results, key=lambda r: r[0]):
        folder, rel, p = sources[key]
        outcome, out_rel, note = _settle(key, outcome, out_rel, output_dir, owner, ledger)
        row = {"status": outcome.status, "reason": outcome.reason, "output": out_rel,
               **({"note": note} if note else {}),
               **({"duplicate_of": outcome.duplicate_of} if outcome.duplicate_of else {})}
        report.private_rows[key] = row
        if outcome.status != "failed":
            state.record(folder, rel, file_signature(p, opt_key),
                         [out_rel] if out_rel else [], row=row)
    _write_reports(report, state, ledger, private, output_dir, options)
    return report


def _write_reports(report: TreeReport, state: IncrementalState, ledger: dict, private: Path,
                   output_dir: Path, options: AnonymizeConfig) -> None:
    for row in report.private_rows.values():
        report.counts[row["status"]] = report.counts.get(row["status"], 0) + 1
    for out_rel in state.outputs():
        report.outputs[out_rel] = {"status": "anonymized"}
    write_private_json(private / LEDGER_FILE, ledger)
    state.save()
    write_private_json(private / "anonymize_report.json", report.private_rows)
    write_json(output_dir / "report.json", {
        "counts": report.counts, "action_table": TABLE_VERSION,
        "options": {k: v for k, v in options.__dict__.items()},
        "outputs": sorted(report.outputs),
        "not_anonymized": "see the private folder's anonymize_report.json (input paths "
                          "may contain identifiers)"})
