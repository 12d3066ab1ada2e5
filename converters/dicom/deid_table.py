"""The de-identification profile: the PS3.15 Annex E action table, its options and value
checks (DESIGN.md, convention 13; the engine that applies it: :mod:`converters.dicom.deid_engine`).

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
- ``R`` pixel data: see :mod:`converters.dicom.deid_pixels`.
- Options (params.yaml ``anonymize``) switch rows as PS3.15 defines them: *Retain Patient
  Characteristics* keeps sex, age, size, weight ... (checked values); *Retain Device Identity*
  keeps device serial number, station name, manufacturer, model, software versions ...;
  ``private_allowlist`` (``"GGGG,Private Creator,EE"``: *Retain Safe Private*) keeps those
  private elements and their creator. Curves (50xx) and overlays (60xx) are removed:
  overlays can carry burned-in text.

The table is read and checked once per process (:func:`action_table`, cached): a row's tag,
action, options and value check are checked as it is read, and a kept text attribute without a
value check is refused. Its version (:data:`TABLE_VERSION`) is recorded in every audit and in
the incremental state, so a new table redoes every object once.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal

from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.datadict import dictionary_VM, dictionary_VR

from converters.core.errors import InvalidConfigError


TABLE_FILE = Path(__file__).with_name("deid_actions.tsv")


#: well-known UIDs of PS3.6 Annex A (never identifying): kept as they are
WELL_KNOWN_UIDS = frozenset(UID_dictionary)


#: "GGGG,Private Creator,EE" (params.yaml anonymize.private_allowlist)
ALLOWLIST_PATTERN = r"[0-9A-Fa-f]{4},[^,]*[^,\s][^,]*,[0-9A-Fa-f]{2}"  # a creator not blank


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


ACTIONS = frozenset("KPUSZDXQCNR")


#: option names of the table -> (AnonymizeConfig field, the option is on when the field is)
OPTIONS = {"patient_characteristics": ("retain_patient_characteristics", True),
           "device_identity": ("retain_device_identity", True),
           "no_modified_dates": ("retain_longitudinal_modified_dates", False)}


_SPECIAL = {"(50xx,xxxx)": "curves", "(60xx,xxxx)": "overlays", "(gggg,0000)": "group_length",
            "(odd group)": "private", "*": "default"}


TEXT_VRS = frozenset("AE AS CS DA DS DT IS LO LT PN SH ST TM UC UR UT UI".split())


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
        value_check(check)  # compiles, or raises
    return Rule(action, check, tuple(options))


def _needs_check(tag: int, rule: Rule) -> bool:
    """A text attribute kept (by its row or an option) without a value check."""
    kept = rule.action == "K" or any(a == "K" for _, a in rule.options)
    return kept and not rule.check and tag >> 16 != 0x0002 and dictionary_vr(tag) in TEXT_VRS


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
    return dict(effective_rules(options.retain_patient_characteristics,
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


effective_rules = lru_cache(maxsize=16)(_effective_uncached)


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


value_check = lru_cache(maxsize=None)(_value_check_uncached)


def _dictionary_vr_uncached(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


dictionary_vr = lru_cache(maxsize=None)(_dictionary_vr_uncached)


def vr_fits(raw_vr: str | None, tag: int) -> bool:
    """The VR an element was written with is one the dictionary allows (or unknown)."""
    allowed = dictionary_vr(tag)
    return raw_vr in (None, "UN", allowed) or raw_vr in allowed.split(" or ")


_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "AT": 4, "UV": 8, "SV": 8}


def _max_length_uncached(tag: int) -> int | None:
    """Bytes a kept binary number attribute can hold (its VR's size x the dictionary's largest
    VM); None when unbounded (``1-n``, OB / OW data)."""
    size = _SIZES.get(dictionary_vr(tag).split(" or ")[0])
    try:
        vm = dictionary_VM(tag).split("-")[-1]
    except KeyError:
        return None
    return size * int(vm) if size and vm.isdigit() else None


_max_length = lru_cache(maxsize=None)(_max_length_uncached)


def length_fits(raw, tag: int) -> bool:
    """A kept number attribute holds no more values than the dictionary allows (bytes of
    text stored as a long run of numbers in a one-value attribute are refused)."""
    limit = _max_length(tag)
    value = getattr(raw, "value", None)
    return limit is None or not isinstance(value, (bytes, bytearray)) or len(value) <= limit


def _meanings(entries: dict) -> dict[str, str]:
    """Code value -> code meaning of one scheme of pydicom's concept dictionary (its entries
    are grouped by keyword; the first meaning of a value wins)."""
    out: dict[str, str] = {}
    for by_value in entries.values():
        for value, (meaning, _cids) in by_value.items():
            out.setdefault(value, meaning)
    return out


def code_table_file() -> Path:
    """Where ``make`` keeps pydicom's code meanings, compiled (:func:`write_code_table`)."""
    return Path(sys.prefix) / "share" / "spinepipe" / "sr_codes.marshal"


def write_code_table(path: Path | None = None) -> Path:
    """Compile pydicom's concept dictionary into ``path`` (an install step, ``make bytecode``,
    like Python's own byte-compiling): importing the dictionary costs every process that meets
    a code 60 ms, reading the compiled table 5 ms. Keyed by pydicom's version: after an upgrade
    the table is ignored until ``make`` writes it again."""
    import marshal

    import pydicom
    from pydicom.sr._concepts_dict import concepts

    from converters.core.files import prepare_output, write_bytes

    path = Path(path or code_table_file())
    prepare_output(path.parent)          # the one write path: confined, no links, umask
    write_bytes(path, marshal.dumps({"pydicom": pydicom.__version__,
                                     "codes": {scheme: _meanings(entries)
                                               for scheme, entries in concepts.items()}}))
    return path


@lru_cache(maxsize=1)
def _compiled_codes() -> dict | None:
    """The compiled table of this pydicom's codes; None when absent, of another pydicom
    version or not a table (then pydicom's own dictionary is read)."""
    import marshal

    import pydicom

    try:
        data = marshal.loads(code_table_file().read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("pydicom") != pydicom.__version__ \
            or not isinstance(data.get("codes"), dict):
        return None
    return data["codes"]


def _standard_codes_uncached(scheme: str) -> dict[str, str]:
    """Code value -> code meaning of one coding scheme (``SCT``, ``DCM``, ...), from pydicom's
    dictionary: its compiled table when ``make`` wrote one for this pydicom, else the
    dictionary itself (a tenth of a second, paid by every worker process that meets a code)."""
    compiled = _compiled_codes()
    if compiled is not None:
        table = compiled.get(scheme, {})
        return table if isinstance(table, dict) else {}
    try:
        from pydicom.sr._concepts_dict import concepts
    except ImportError:  # pragma: no cover - then no code is known, and every one is removed
        return {}
    return _meanings(concepts.get(scheme, {}))


standard_codes = lru_cache(maxsize=64)(_standard_codes_uncached)


TABLE_VERSION = action_table().version


#: CID 7050 De-identification Method codes (DCM)
CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel": ("113101", "Clean Pixel Data Option"),
    "modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "device_identity": ("113109", "Retain Device Identity Option"),
    "safe_private": ("113111", "Retain Safe Private Option"),
}


def set_method(ds: Dataset, options: AnonymizeConfig, clean_pixels: bool) -> None:
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


DUMMY_VALUES = {"PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANON", "ST": "ANONYMIZED",
          "LT": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANON",
          "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0",
          "DS": "0", "AE": "ANON"}


def empty_value(vr: str):
    return Sequence() if vr == "SQ" else ("" if vr in TEXT_VRS else None)
