"""The private folder: secret salt, patient identities and the pseudonym ledger.

Everything here can re-identify patients, so it lives only in the ``--private`` folder
(git-ignored, never a DVC output), an output root of its own (:mod:`converters.core.files`) with
mode 700, its files mode 600:

- ``salt``: 32 random bytes (hex) keying every HMAC (pseudonyms, UIDs, date shifts); the same
  salt gives the same pseudonyms across runs, which keeps a project's batches consistent.
- ``ledger.json`` (:data:`LEDGER_VERSION` 2): ``patients`` (pseudonym -> identity key, original
  Patient ID, issuer, Name, Birth Date, Sex, date shift, the input file that created the entry, and
  ``conflicts``) and ``instances`` (new SOP Instance UID -> pseudonym, identity key, original SOP /
  Series / Study Instance UID, accession number, study date / time / ID, referring physician, new
  study and series UIDs, input file): all a re-identified result needs to point back
  (:mod:`converters.dicom.seg`).
- ``anonymize_report.json`` and ``anonymize_state.*.json``: per input path (paths of an archive
  often contain identifiers) what happened, and what is up to date.

Identities never merge (DESIGN.md, convention 13: one identity key for patients):

- A patient is keyed by issuer + Patient ID (:func:`patient_identity`): ``id:<Patient ID>``
  when no issuer is given (Issuer of Patient ID (0010,0021) and the Universal Entity ID / Type
  of Issuer of Patient ID Qualifiers (0010,0024) all empty), else ``issuer:<JSON of issuer
  parts and ID>``. An object without a Patient ID is keyed by its study
  (``study:<Study Instance UID>``): two studies without an ID are two patients, never pooled.
- The pseudonym is ``SP`` + 10 hex digits of an HMAC of the key (:func:`pseudonym_of`). For
  ``id:`` keys the HMAC input is the Patient ID alone, exactly as before issuers were read, so
  pseudonyms of issuer-less archives did not change; ``issuer:`` and ``study:`` keys use their
  own HMAC domains. 40 bits: collisions become likely from about a million patients, and the
  ledger refuses them (next point) rather than merging two people.
- The ledger refuses to map two different keys to one pseudonym, and two patients (or two
  original objects) to one new SOP Instance UID: :class:`InvalidLedgerError`, one line naming
  the input file recorded first and the one refused (:func:`record_instance`). It never
  overwrites an entry: a later object of the same key whose name, birth date or sex differ
  (a name change, a correction, or two people sharing issuer + ID) leaves the first record in
  place; the differing values and their file are appended to the entry's ``conflicts`` and
  reported (the anonymize report's ``note``), for the curator to settle.
- Re-identification (:func:`verified_identity`) checks, before anything is written, that the
  object's pseudonym is the one its instance entry records, that the patient entry has the
  same key, that the key is the one its recorded Patient ID and issuer make, and (with the
  salt) that the key's pseudonym is that pseudonym.

Keyed replacements (:mod:`converters.dicom.deid_engine` applies them): UIDs become
``2.25.<decimal of the first 128 bits of HMAC-SHA256(salt, uid)>`` (:func:`remap_uid`: valid UID
syntax, the same in every run of a project, so references between objects stay consistent);
dates move by the patient's :func:`date_shift_days` (:func:`shift_da`, :func:`shift_dt`).

Older ledgers (no ``version``; pseudonyms from the Patient ID alone) are upgraded on load: a
patient with an ID gets the key ``id:<ID>`` (which its pseudonym already is); one without an ID
pooled every such patient under one pseudonym and is marked ``pooled``: re-identification of
its instances is refused. An upgraded patient whose objects carry an issuer now has another
pseudonym; anonymizing them again into the same output is refused (the instance is recorded
under the old pseudonym): anonymize into a new output with a new private folder.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.core.errors import (InvalidDicomError, InvalidLedgerError, MissingInputError,
                                    UnsafeLocationError)
from converters.core.files import atomic_path, prepare_output, read_own

SALT_FILE = "salt"
LEDGER_FILE = "ledger.json"
LEDGER_VERSION = 2
PSEUDONYM_PREFIX = "SP"
#: the patient fields compared when a key is seen again (differences: ``conflicts``)
DETAILS = ("patient_name", "patient_birth_date", "patient_sex")


def prepare_private(private: str | Path, *, forbidden: list[str | Path] = ()) -> Path:
    """Create the private folder (mode 700, an output root of this process); refuse one
    inside a public output or input tree."""
    private = Path(private).resolve()
    for other in forbidden:
        other = Path(other).resolve()
        if private == other or other in private.parents:
            raise UnsafeLocationError(f"the private folder {private} must not be inside {other}")
    if any(part == "data" for part in private.parts[-3:]):
        raise UnsafeLocationError(f"the private folder {private} must not be under a data/ folder")
    return prepare_output(private, private=True)


def write_private_json(path: Path, obj: Any) -> None:
    with atomic_path(path, mode=0o600) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))


def read_private_json(path: Path, default: Any) -> Any:
    try:
        raw = read_own(path)
    except OSError as exc:
        raise InvalidLedgerError(f"cannot read ({type(exc).__name__})", file=path) from None
    if raw is None:
        return default
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise InvalidLedgerError(f"cannot read ({type(exc).__name__})", file=path) from None


def _read_salt(path: Path) -> bytes | None:
    """The salt, ``None`` when there is none; read without following a link planted at its
    name (:class:`~converters.core.paths.UnsafePathError`, never another file's bytes as salt)."""
    try:
        raw = read_own(path)
        if raw is None:
            return None
        salt = bytes.fromhex(raw.decode("ascii").strip())
    except (ValueError, IsADirectoryError):
        salt = b""
    if len(salt) < 16:
        raise InvalidLedgerError("the salt is damaged (it must be at least 16 bytes in "
                                 "hex); restore it from a backup", file=path)
    return salt


def load_or_create_salt(private: Path) -> bytes:
    path = Path(private) / SALT_FILE
    salt = _read_salt(path)
    if salt is not None:
        return salt
    salt = secrets.token_bytes(32)
    with atomic_path(path, mode=0o600) as tmp:
        tmp.write_text(salt.hex() + "\n")
    return salt


def load_salt(private: Path) -> bytes:
    """The existing salt (re-identification never creates one)."""
    path = Path(private) / SALT_FILE
    salt = _read_salt(path)
    if salt is None:
        raise InvalidLedgerError("no salt in the private folder: not the folder the objects "
                                 "were anonymized with", file=path)
    return salt


# --------------------------------------------------------------------------------------------
# identities


def mac(salt: bytes, kind: str, value: str) -> bytes:
    """HMAC-SHA256 of ``value`` in the domain ``kind`` (pseudonyms, UIDs, date shifts)."""
    return hmac.new(salt, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class Identity:
    """Who an object belongs to: the key (module docstring) and what it is made of."""

    key: str
    patient_id: str
    issuer: tuple[str, ...]     # (Issuer of Patient ID, Universal Entity ID, its type)


def _text(ds, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "").strip()
    except Exception:  # pydicom raises many types for a malformed element
        return ""


def _issuer(ds) -> tuple[str, ...]:
    parts = [_text(ds, "IssuerOfPatientID"), "", ""]
    try:
        qualifiers = ds.get("IssuerOfPatientIDQualifiersSequence") or []
        item = qualifiers[0] if len(qualifiers) else None
    except Exception:
        item = None
    if item is not None:
        parts[1], parts[2] = _text(item, "UniversalEntityID"), _text(item, "UniversalEntityIDType")
    return tuple(parts)


def identity_key(patient_id: str, issuer: tuple[str, ...] | list[str], study_uid: str) -> str:
    """The key of a patient (module docstring)."""
    if not patient_id:
        return f"study:{study_uid}"
    if not any(issuer):
        return f"id:{patient_id}"
    return "issuer:" + json.dumps([*issuer, patient_id], ensure_ascii=True)


def patient_identity(ds, file: str = "") -> Identity:
    """The :class:`Identity` of an object (before de-identification)."""
    pid = _text(ds, "PatientID")
    issuer = _issuer(ds)
    study = _text(ds, "StudyInstanceUID")
    if not pid and not study:
        raise InvalidDicomError("neither a Patient ID nor a Study Instance UID: the object "
                                "cannot be told apart from other patients'", file=file,
                                tag="(0010,0020)")
    return Identity(identity_key(pid, issuer, study), pid, issuer if pid else ("", "", ""))


def pseudonym_of(salt: bytes, key: str) -> str:
    """``SP`` + 10 hex digits; an ``id:`` key hashes the Patient ID alone (as always)."""
    kind, _, value = key.partition(":")
    domain = {"id": "patient", "issuer": "patient-issuer", "study": "patient-study"}[kind]
    return PSEUDONYM_PREFIX + mac(salt, domain, value).hex()[:10].upper()


def patient_pseudonym(salt: bytes, patient_id: str, issuer: tuple[str, ...] = ()) -> str:
    """The pseudonym of a Patient ID (and issuer): :func:`pseudonym_of` its key."""
    return pseudonym_of(salt, identity_key(patient_id, issuer, ""))


def date_shift_days(salt: bytes, key: str) -> int:
    """-365 to -3650 days, one number per patient key (``id:`` keys as always)."""
    kind, _, value = key.partition(":")
    domain = "dates" if kind == "id" else f"dates-{kind}"
    return -(365 + int.from_bytes(mac(salt, domain, value)[:4], "big") % 3286)


# --------------------------------------------------------------------------------------------
# the ledger


def _upgrade(ledger: dict) -> dict:
    """A version-1 ledger (no identity keys) as version 2 (module docstring)."""
    for entry in ledger["patients"].values():
        if isinstance(entry, dict) and "key" not in entry:
            pid = str(entry.get("patient_id", ""))
            entry.update(key=f"id:{pid}" if pid else "id:", issuer=["", "", ""],
                         legacy=True, source=entry.get("source", "an earlier run"))
            if not pid:
                entry["pooled"] = True
    for entry in ledger["instances"].values():
        if isinstance(entry, dict) and "patient_key" not in entry:
            patient = ledger["patients"].get(entry.get("pseudonym"), {})
            entry["patient_key"] = patient.get("key", "")
            entry.setdefault("source", "an earlier run")
    ledger["version"] = LEDGER_VERSION
    return ledger


_NONE = object()


def load_ledger(private: Path, *, must_exist: bool = False) -> dict:
    """The pseudonym ledger of ``private``; an empty one when there is none yet (anonymize
    starts it), unless ``must_exist`` (a reader that maps pseudonyms back:
    :class:`MissingInputError` naming anonymize)."""
    path = Path(private) / LEDGER_FILE
    ledger = read_private_json(path, _NONE)
    if ledger is _NONE:
        if must_exist:
            raise MissingInputError("no pseudonym ledger in the private folder",
                                    produced_by="anonymize", file=path)
        ledger = {"version": LEDGER_VERSION, "patients": {}, "instances": {}}
    if not (isinstance(ledger, dict) and isinstance(ledger.get("patients"), dict)
            and isinstance(ledger.get("instances"), dict)):
        raise InvalidLedgerError("not a pseudonym ledger (needs 'patients' and 'instances')",
                                 file=path)
    version = ledger.get("version", 1)
    if version == 1 or version is None:
        return _upgrade(ledger)
    if version != LEDGER_VERSION:
        raise InvalidLedgerError(f"ledger version {version!r}: this spinepipe reads version "
                                 f"{LEDGER_VERSION} (and upgrades version 1)", file=path)
    return ledger


def _refuse_patient(entry: dict, row: dict, source: str) -> None:
    if entry.get("key") == row["patient_key"]:
        return
    why = (" (a ledger written before identity keys: anonymize into a new output with a new "
           "private folder)") if entry.get("legacy") else ""
    raise InvalidLedgerError(
        f"refused: pseudonym {row['pseudonym']} already stands for the patient of "
        f"{entry.get('source', 'an earlier run')}, and {source} is another patient (another "
        f"issuer + Patient ID, or study){why}")


def _refuse_instance(entry: dict, row: dict, source: str) -> None:
    if entry.get("pseudonym") == row["pseudonym"] and \
            entry.get("sop_instance_uid") == row["sop_instance_uid"]:
        return
    raise InvalidLedgerError(
        f"refused: SOP Instance UID {row['new_sop_instance_uid']} was recorded for "
        f"{entry.get('source', 'an earlier run')} (patient {entry.get('pseudonym')}), and "
        f"{source} gives it to patient {row['pseudonym']} or to another original object")


def record_instance(ledger: dict, row: dict, source: str) -> str:
    """Add one anonymized instance (``Outcome.ledger``, from input ``source``) to the ledger;
    refuse a collision (:class:`InvalidLedgerError`, nothing changed), never overwrite an
    entry. Returns a note when the patient's details differ from the first record."""
    patient = ledger["patients"].get(row["pseudonym"])
    instance = ledger["instances"].get(row["new_sop_instance_uid"])
    if patient is not None:
        _refuse_patient(patient, row, source)
    if instance is not None:
        _refuse_instance(instance, row, source)
    note = ""
    if patient is None:
        ledger["patients"][row["pseudonym"]] = {
            "key": row["patient_key"], "patient_id": row["patient_id"],
            "issuer": list(row["issuer"]), **{k: row.get(k, "") for k in DETAILS},
            "date_shift_days": row["date_shift_days"], "source": source}
    elif any(patient.get(k, "") != row.get(k, "") for k in DETAILS):
        seen = {k: row.get(k, "") for k in DETAILS}
        conflicts = patient.setdefault("conflicts", [])
        if all({k: c.get(k, "") for k in DETAILS} != seen for c in conflicts):
            conflicts.append({**seen, "source": source})
        note = (f"patient {row['pseudonym']}: name, birth date or sex differ from the first "
                "record (kept; see the ledger's conflicts)")
    if instance is None:
        ledger["instances"][row["new_sop_instance_uid"]] = {
            "pseudonym": row["pseudonym"], "patient_key": row["patient_key"],
            **{k: row.get(k, "") for k in INSTANCE_FIELDS}, "source": source}
    return note


#: instance fields recorded (older ledgers may lack the last six)
INSTANCE_FIELDS = ("sop_instance_uid", "study_instance_uid", "new_study_instance_uid",
                   "accession_number", "series_instance_uid", "new_series_instance_uid",
                   "study_date", "study_time", "study_id", "referring_physician_name")
#: instance fields recorded since re-identified results exist (older ledgers lack them)
INSTANCE_EXTRA = INSTANCE_FIELDS[4:]


def verified_identity(ledger: dict, sop: str, pseudonym: str,
                      salt: bytes | None = None) -> tuple[dict, dict]:
    """(patient entry, instance entry) of the anonymized object ``sop`` carrying
    ``pseudonym``, after the checks of the module docstring; :class:`InvalidLedgerError`
    (one line) when any fails."""
    inst = ledger.get("instances", {}).get(sop)
    if not isinstance(inst, dict):
        raise InvalidLedgerError(f"the ledger has no entry for SOP Instance UID {sop}: the "
                                 "object was not anonymized with this private folder")
    patient = ledger.get("patients", {}).get(inst.get("pseudonym"))
    if not isinstance(patient, dict) or any(k not in inst for k in ("series_instance_uid",
                                                                     "study_date")):
        raise InvalidLedgerError(f"the ledger entry of {sop} predates re-identification "
                                 "(no original series UID / study date): anonymize the "
                                 "archive again into a new output with this private folder")
    where = f"SOP Instance UID {sop}"
    if inst.get("pseudonym") != pseudonym:
        raise InvalidLedgerError(f"{where} carries patient {pseudonym}, but the ledger "
                                 f"records it for {inst.get('pseudonym')}: re-identification "
                                 "refused")
    if patient.get("pooled"):
        raise InvalidLedgerError(f"{where}: the ledger entry of {pseudonym} pooled patients "
                                 "without a Patient ID (an older spinepipe): re-identification "
                                 "refused")
    key = patient.get("key")
    made = identity_key(str(patient.get("patient_id", "")), patient.get("issuer") or [],
                        str(inst.get("study_instance_uid", "")))
    if not key or key != inst.get("patient_key") or key != made \
            or (salt is not None and pseudonym_of(salt, key) != pseudonym):
        raise InvalidLedgerError(f"{where}: the ledger's identity of {pseudonym} does not "
                                 "match its key (an edited or merged ledger): "
                                 "re-identification refused")
    return patient, inst


def original_row(ds, file: str) -> dict:
    """The original identifiers of an object the ledger keeps (private) beside its pseudonyms:
    what re-identification (``spinepipe to-seg --reidentify``) points back to."""

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


def remap_uid(salt: bytes, uid: str) -> str:
    """A valid, deterministic replacement UID under the 2.25 (UUID-derived) root."""
    return "2.25." + str(int.from_bytes(mac(salt, "uid", uid)[:16], "big"))


def shift_da(value: str, days: int) -> str:
    """A DA value (``YYYYMMDD``) moved by ``days`` (:func:`date_shift_days`); "" if unparseable."""
    try:
        d = _dt.datetime.strptime(value.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return ""  # unparseable date: emptied rather than kept
    return (d + _dt.timedelta(days=days)).strftime("%Y%m%d")


def shift_dt(value: str, days: int) -> str:
    """A DT value with its date part moved by ``days``; a time and offset after it kept only
    when they are digits and ``.+-``; "" without a date."""
    value = value.strip()
    if len(value) < 8:
        return ""
    shifted = shift_da(value[:8], days)
    rest = value[8:]
    return shifted + rest if shifted and re.fullmatch(r"[0-9.+-]*", rest) else shifted
