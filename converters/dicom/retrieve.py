"""Retrieval from a PACS (``spinepipe retrieve``): C-FIND the studies, C-GET or C-MOVE their
instances, each object verified before a byte of it is written; the association itself:
:mod:`converters.dicom.pacs`.

Queries (Study Root): by accession numbers or patient IDs (a CSV manifest with an
``AccessionNumber`` or ``PatientID`` column), or by study date range, modalities in study,
body part and series description.

Output: ``<output>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, each file
written as received (the encoded dataset with its file meta) to a temporary name and renamed,
so an interrupted transfer never leaves a file that looks complete.

UIDs sent by the PACS are untrusted: a Study, Series or SOP Instance UID that is not a valid DICOM
UID (:mod:`converters.core.paths`) never becomes a path; the object is refused (C-STORE status
0xC000), counted in the study's state as invalid, and the study reported incomplete.

Resumable: a state file (JSON, next to the output, identifiable like the archive itself)
records per study the instances expected (from an IMAGE-level C-FIND), received, the
attempts and the last error. A re-run fetches only the instances still missing. A study that
keeps failing is retried with exponential backoff and reported as failed, never dropped.

What a PACS sends is verified, not trusted (every object pushed by C-STORE during a C-GET or
to our C-MOVE destination): it must carry the Study Instance UID asked for, the Series
Instance UID asked for and one of the SOP Instance UIDs asked for, and the Patient ID of the
PACS's own C-FIND answer for that study. Anything else (a foreign patient's object, another
study's, an instance nobody asked for, one arriving when no retrieve is under way or after the
study's deadline) is refused with C-STORE status 0x0124 ("Refused: Not Authorised") before a
byte of it is written, and reported (report and state: which attribute differed; the values
of UIDs are shown, a Patient ID never is). A study with a refused object is incomplete.
"""
from __future__ import annotations

import csv
import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pydicom.dataset import Dataset

from converters.core.errors import InvalidTableError, MissingInputError
from converters.core.files import (is_own_file, prepare_output, remove_stale_temps, write_bytes,
                                   write_json)
from converters.core.paths import UnsafePathError, confined, is_uid
from converters.dicom.pacs import (Deadline, DeadlineError, OUT_OF_RESOURCES, Pacs, PacsError,
                                   REFUSED_INVALID_UID, REFUSED_NOT_ASKED, RetrieveConfig,
                                   printable, deadline_for)


@dataclass
class RetrieveReport:
    studies: dict[str, dict] = field(default_factory=dict)
    fetched: int = 0
    not_found: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)   # study UIDs that are no valid UID
    refused: list[str] = field(default_factory=list)   # objects stored with an invalid UID
    mismatched: list[str] = field(default_factory=list)  # objects refused: not what was asked
    unanswered: list[str] = field(default_factory=list)  # study-level queries that failed

    @property
    def failed(self) -> list[str]:
        return [uid for uid, s in self.studies.items() if s["status"] != "complete"]

    def problem_lines(self) -> list[str]:
        """Every query without a match or answer, refused object and incomplete study, one
        line each."""
        lines = [f"  not found on the PACS: {label}" for label in self.not_found]
        lines += [f"  unanswered: {line}" for line in self.unanswered]
        lines += [f"  refused: study UID {uid!r} from the PACS is not a valid UID"
                  for uid in self.invalid]
        lines += [f"  refused: object with an invalid UID {uids!r}" for uids in self.refused]
        lines += [f"  refused: {line}" for line in self.mismatched]
        lines += [f"  incomplete: study {uid} ({self.studies[uid].get('received', 0)}/"
                  f"{self.studies[uid].get('expected', '?')}): {self.studies[uid]['error']}"
                  for uid in self.failed]
        return lines


def read_manifest(path: str | Path) -> list[tuple[str, str]]:
    """``[(key, value)]`` with key AccessionNumber or PatientID, from a CSV with a header."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError("manifest not found", file=path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = [c for c in ("AccessionNumber", "PatientID") if c in (reader.fieldnames or [])]
            if not cols:
                raise InvalidTableError("manifest needs an AccessionNumber or PatientID column "
                                 f"(found: {', '.join(reader.fieldnames or []) or 'nothing'})",
                                 file=path)
            rows = [(cols[0], (row[cols[0]] or "").strip()) for row in reader]
    except UnicodeDecodeError as exc:
        raise InvalidTableError(f"manifest is not UTF-8 text (byte {exc.start})", file=path) from None
    except csv.Error as exc:
        raise InvalidTableError(f"malformed CSV: {exc}", file=path) from None
    rows = [r for r in rows if r[1]]
    if not rows:
        raise InvalidTableError("manifest lists no study", file=path)
    return rows


def _study_query(cfg: RetrieveConfig) -> Dataset:
    q = Dataset()
    q.StudyInstanceUID = ""
    q.PatientID = ""
    q.AccessionNumber = ""
    q.StudyDate = ""
    q.ModalitiesInStudy = ""
    q.NumberOfStudyRelatedInstances = ""
    return q


def find_studies(pacs: Pacs, cfg: RetrieveConfig, manifest: list[tuple[str, str]] | None,
                 unanswered: list[str] | None = None) -> tuple[dict[str, Dataset], list[str]]:
    """Studies to fetch (StudyInstanceUID -> C-FIND answer) and manifest entries not found.
    A query that does not finish within its deadline is added to ``unanswered`` (label and
    reason) and its partial answers are dropped; the others go on."""
    studies: dict[str, Dataset] = {}
    not_found: list[str] = []
    unanswered = unanswered if unanswered is not None else []
    queries: list[tuple[str, Dataset]] = []
    if manifest:
        for key, value in manifest:
            q = _study_query(cfg)
            setattr(q, key, value)
            queries.append((f"{key}={value}", q))
    else:
        q = _study_query(cfg)
        if cfg.study_date_from or cfg.study_date_to:
            q.StudyDate = f"{cfg.study_date_from}-{cfg.study_date_to}"
        if cfg.modalities:
            q.ModalitiesInStudy = "\\".join(cfg.modalities)
        queries.append(("query", q))
    for label, q in queries:
        try:
            answers = pacs.find("STUDY", q, deadline_for(cfg))
        except DeadlineError as exc:
            unanswered.append(f"{label}: {exc}")
            continue
        if not answers:
            not_found.append(label)
        for a in answers:
            studies[str(a.StudyInstanceUID)] = a
    if cfg.body_part or cfg.series_description:
        studies = {uid: a for uid, a in studies.items() if _series_or_report(
            pacs, cfg, uid, unanswered)}
    return studies, not_found


def _series_or_report(pacs: Pacs, cfg: RetrieveConfig, uid: str, unanswered: list[str]) -> bool:
    try:
        return bool(_series(pacs, cfg, uid, deadline_for(cfg)))
    except DeadlineError as exc:
        unanswered.append(f"series of study {printable(uid)}: {exc}")
        return False


def _series(pacs: Pacs, cfg: RetrieveConfig, study_uid: str,
            deadline: Deadline | None = None) -> list[Dataset]:
    q = Dataset()
    q.StudyInstanceUID = study_uid
    q.SeriesInstanceUID = ""
    q.Modality = ""
    q.BodyPartExamined = cfg.body_part or ""
    q.SeriesDescription = cfg.series_description or ""
    return pacs.find("SERIES", q, deadline)


def list_instances(pacs: Pacs, cfg: RetrieveConfig, study_uid: str,
                   deadline: Deadline | None = None) -> list[tuple[str, str]]:
    """``[(SeriesInstanceUID, SOPInstanceUID)]`` of a study, series filters applied."""
    deadline = deadline or deadline_for(cfg)
    out = []
    for series in _series(pacs, cfg, study_uid, deadline):
        if cfg.modalities and str(series.get("Modality", "")) not in cfg.modalities:
            continue
        q = Dataset()
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = series.SeriesInstanceUID
        q.SOPInstanceUID = ""
        out += [(str(series.SeriesInstanceUID), str(a.get("SOPInstanceUID", "")))
                for a in pacs.find("IMAGE", q, deadline)]
    return sorted(out)


@dataclass(frozen=True)
class Asked:
    """What one C-GET / C-MOVE asked for: the objects the PACS may send in answer."""

    study: str
    series: str
    sops: frozenset[str]
    patient_id: str           # from the PACS's C-FIND answer for the study
    deadline: Deadline

    def mismatch(self, ds: Dataset, uids: list[str]) -> str:
        """Why an object received for this request is not what was asked ('' when it is);
        ``uids``: its Study, Series and SOP Instance UIDs (valid UIDs)."""
        why = []
        if uids[0] != self.study:
            why.append(f"StudyInstanceUID {uids[0]} (asked: {self.study})")
        if uids[1] != self.series:
            why.append(f"SeriesInstanceUID {uids[1]} (asked: {self.series})")
        if uids[2] not in self.sops:
            why.append(f"SOPInstanceUID {uids[2]} was not asked for")
        if str(ds.get("PatientID") or "") != self.patient_id:
            why.append("PatientID differs from the study's (the PACS's C-FIND answer)")
        if not why and self.deadline.left() <= 0:
            why.append("arrived after the study's deadline")
        return "; ".join(why)


class Receiver:
    """The C-STORE handler of a retrieve: writes what was asked for (``expecting``), refuses
    everything else before writing a byte, and remembers each refusal with its reason."""

    def __init__(self, output: Path):
        self.output = output
        self.lock = threading.Lock()
        self.asked: Asked | None = None
        self.fetched = 0
        self.invalid: list[str] = []           # "study/series/sop" of objects with invalid UIDs
        self.refused: list[tuple[str, str]] = []  # (study asked for, one line: what and why)

    @contextmanager
    def expecting(self, asked: Asked) -> Iterator[None]:
        with self.lock:
            self.asked = asked
        try:
            yield
        finally:
            with self.lock:
                self.asked = None

    def handle(self, event) -> int:
        ds = event.dataset
        uids = [str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                              "SOPInstanceUID")]
        with self.lock:
            asked = self.asked
            if not all(is_uid(u) for u in uids):  # never a path: refused, and reported
                self.invalid.append("/".join(u[:80] for u in uids))
                return REFUSED_INVALID_UID
            why = asked.mismatch(ds, uids) if asked else "no retrieve was under way"
            if why:
                self.refused.append((asked.study if asked else "",
                                     f"object {uids[2]} sent for study "
                                     f"{asked.study if asked else '(none)'}: {why}"))
                return REFUSED_NOT_ASKED
        try:
            write_bytes(confined(self.output, uids[0], uids[1], f"{uids[2]}.dcm"),
                        event.encoded_dataset(include_meta=True))
        except UnsafePathError as exc:  # a link planted in the output: said, never followed
            with self.lock:
                self.refused.append((uids[0], f"object {uids[2]} not written: {exc}"))
            return OUT_OF_RESOURCES
        with self.lock:
            self.fetched += 1
        return 0x0000

    def refusals(self, study: str) -> list[str]:
        with self.lock:
            return [line for s, line in self.refused if s == study]


def _attempt(pacs: Pacs, cfg: RetrieveConfig, uid: str, patient_id: str, receiver: Receiver,
             deadline: Deadline, entry: dict) -> bool:
    """One try at a study: list its instances, fetch the missing ones, update ``entry``;
    True when every instance listed is here."""
    found = list_instances(pacs, cfg, uid, deadline)
    expected = [(se, sop) for se, sop in found if is_uid(se) and is_uid(sop)]
    bad = len(found) - len(expected)
    entry.update(expected=len(found), invalid_uids=bad)
    # a regular file, not a link planted at its name (that object is fetched and written anew)
    here = lambda se, sop: is_own_file(receiver.output / uid / se / f"{sop}.dcm")
    by_series: dict[str, list[str]] = {}
    for se, sop in expected:
        if not here(se, sop):
            by_series.setdefault(se, []).append(sop)
    notes = []
    try:
        for se, sops in by_series.items():
            with receiver.expecting(Asked(uid, se, frozenset(sops), patient_id, deadline)):
                notes.append(pacs.retrieve(uid, se, sops, receiver.handle, deadline))
    finally:
        entry["received"] = sum(here(se, sop) for se, sop in expected)
    still = len(expected) - entry["received"]
    notes = [n for n in notes if n]
    errors = [f"{still} instance(s) not received" + (f" ({'; '.join(notes)})" if notes else "")
              ] if still else []
    if bad:
        errors.append(f"{bad} instance(s) with an invalid UID refused")
    entry.update(status="complete" if not errors else "incomplete", error="; ".join(errors))
    return not still


def _fetch_study(pacs: Pacs, cfg: RetrieveConfig, uid: str, answer: Dataset, entry: object,
                 receiver: Receiver, sleep: Callable[[float], None]) -> dict:
    """Every attempt at one study within its deadline; the study's new state entry."""
    entry = dict(entry) if isinstance(entry, dict) else {}
    if not isinstance(entry.get("attempts"), int):
        entry["attempts"] = 0
    deadline = deadline_for(cfg)
    patient_id = str(answer.get("PatientID") or "")
    before = len(receiver.refusals(uid))
    for attempt in range(cfg.retries + 1):
        entry["attempts"] += 1
        try:
            if _attempt(pacs, cfg, uid, patient_id, receiver, deadline, entry):
                break  # invalid UIDs do not get better by asking again
        except DeadlineError as exc:
            entry.update(status="incomplete", error=str(exc))
            break
        except PacsError as exc:
            entry.update(status="failed", error=str(exc))
        if attempt < cfg.retries:
            wait = cfg.backoff_s * 2 ** attempt
            if wait >= deadline.left():
                entry["error"] += f"; no time left for another attempt within {deadline.budget_s:g} s"
                break
            sleep(wait)
    refused = receiver.refusals(uid)[before:]
    entry["refused"] = len(refused)
    if refused:
        entry["status"] = "incomplete"
        entry["error"] = "; ".join(filter(None, [entry.get("error", ""),
                                                 f"{len(refused)} object(s) refused: {refused[0]}"]))
    entry["accession_number"] = str(answer.get("AccessionNumber", ""))
    return entry


def _load_state(state_path: Path) -> dict:
    """The resume state; empty when missing or damaged (every study is checked again)."""
    try:
        state = json.loads(state_path.read_text()) if is_own_file(state_path) else {}
    except (ValueError, OSError):
        state = {}
    return state if isinstance(state, dict) else {}


def switch_off(output: str | Path, state_path: str | Path) -> bool:
    """``retrieve.enabled`` off: mark the resume state ``"enabled": false`` (what was received
    stays recorded, and in ``output``, for when it is switched on again; the stages reading
    ``output`` leave it out meanwhile: :func:`converters.core.records.source_switched_off`).
    Returns whether ``output`` holds a batch received before."""
    output, state_path = prepare_output(output), Path(state_path)
    prepare_output(state_path.parent)  # the state lies beside the output folder
    write_json(state_path, {**_load_state(state_path), "enabled": False})
    return any(output.iterdir())


def retrieve(cfg: RetrieveConfig, output: str | Path, state_path: str | Path,
             manifest: list[tuple[str, str]] | None = None,
             progress: Callable[[int, int], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> RetrieveReport:
    """Find the studies, fetch what is missing (verifying every object received), record
    everything in ``state_path``."""
    output, state_path = prepare_output(output), Path(state_path)
    prepare_output(state_path.parent)  # the resume state lies beside the output folder
    remove_stale_temps(output)  # a transfer killed mid-file left its temp file
    state = _load_state(state_path)
    if state.pop("enabled", True) is False:  # switched on again (records.source_switched_off)
        write_json(state_path, state)
    pacs = Pacs(cfg)
    report = RetrieveReport()
    studies, report.not_found = find_studies(pacs, cfg, manifest, report.unanswered)
    receiver = Receiver(output)
    for n, uid in enumerate(sorted(studies), 1):
        if is_uid(uid):
            state[uid] = _fetch_study(pacs, cfg, uid, studies[uid], state.get(uid),
                                      receiver, sleep)
            write_json(state_path, state)
        else:
            report.invalid.append(uid[:80])
        if progress:
            progress(n, len(studies))
    report.studies = {uid: state[uid] for uid in studies if is_uid(uid) and uid in state}
    report.fetched = receiver.fetched
    report.refused = sorted(set(receiver.invalid))
    report.mismatched = [line for _, line in receiver.refused]
    return report
