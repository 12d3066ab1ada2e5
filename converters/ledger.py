"""The private folder: secret salt and pseudonym ledger.

Everything here can re-identify patients, so it lives only in the ``--private`` folder
(git-ignored, never a DVC output), created with mode 700, its files with mode 600:

- ``salt``: 32 random bytes (hex) keying every HMAC (pseudonyms, UIDs, date shifts); the same
  salt gives the same pseudonyms across runs, which keeps a project's batches consistent.
- ``ledger.json``: ``patients`` (pseudonym -> original Patient ID / Name / Birth Date / Sex,
  date shift) and ``instances`` (new SOP Instance UID -> original SOP / Series / Study
  Instance UID, accession number, study date / time / ID, referring physician, and the new
  study and series UIDs): all a re-identified result needs to point back
  (:mod:`converters.seg`).
- ``anonymize_report.json`` and ``anonymize_state.json``: per input path (paths of an archive
  often contain identifiers) what happened, and what is up to date.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from converters.errors import InvalidLedgerError, UnsafeLocationError
from converters.io import atomic_path

SALT_FILE = "salt"
LEDGER_FILE = "ledger.json"


def prepare_private(private: str | Path, *, forbidden: list[str | Path] = ()) -> Path:
    """Create the private folder (mode 700); refuse one inside a public output or input tree."""
    private = Path(private).resolve()
    for other in forbidden:
        other = Path(other).resolve()
        if private == other or other in private.parents:
            raise UnsafeLocationError(f"the private folder {private} must not be inside {other}")
    if any(part == "data" for part in private.parts[-3:]):
        raise UnsafeLocationError(f"the private folder {private} must not be under a data/ folder")
    private.mkdir(parents=True, exist_ok=True)
    os.chmod(private, 0o700)
    return private


def write_private_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
        os.chmod(tmp, 0o600)


def read_private_json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise InvalidLedgerError(f"cannot read ({type(exc).__name__})", file=path) from None


def load_or_create_salt(private: Path) -> bytes:
    path = private / SALT_FILE
    if path.is_file():
        try:
            salt = bytes.fromhex(path.read_text().strip())
        except (ValueError, OSError):
            salt = b""
        if len(salt) < 16:
            raise InvalidLedgerError("the salt is damaged (it must be at least 16 bytes in "
                                     "hex); restore it from a backup", file=path)
        return salt
    salt = secrets.token_bytes(32)
    with atomic_path(path) as tmp:
        tmp.write_text(salt.hex() + "\n")
        os.chmod(tmp, 0o600)
    return salt


def load_ledger(private: Path) -> dict:
    ledger = read_private_json(private / LEDGER_FILE, {"patients": {}, "instances": {}})
    if not (isinstance(ledger, dict) and isinstance(ledger.get("patients"), dict)
            and isinstance(ledger.get("instances"), dict)):
        raise InvalidLedgerError("not a pseudonym ledger (needs 'patients' and 'instances')",
                                 file=private / LEDGER_FILE)
    return ledger


def update_ledger(ledger: dict, row: dict) -> None:
    """Add one anonymized instance (``Outcome.ledger``) to the ledger."""
    ledger["patients"][row["pseudonym"]] = {
        "patient_id": row["patient_id"], "patient_name": row["patient_name"],
        "patient_birth_date": row.get("patient_birth_date", ""),
        "patient_sex": row.get("patient_sex", ""),
        "date_shift_days": row["date_shift_days"]}
    ledger["instances"][row["new_sop_instance_uid"]] = {
        "pseudonym": row["pseudonym"], "sop_instance_uid": row["sop_instance_uid"],
        "study_instance_uid": row["study_instance_uid"],
        "new_study_instance_uid": row["new_study_instance_uid"],
        "accession_number": row["accession_number"],
        **{k: row.get(k, "") for k in INSTANCE_EXTRA}}


#: instance fields recorded since re-identified results exist (older ledgers lack them)
INSTANCE_EXTRA = ("series_instance_uid", "new_series_instance_uid", "study_date", "study_time",
                  "study_id", "referring_physician_name")
