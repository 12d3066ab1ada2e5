"""Retrieval from a PACS with pynetdicom: C-FIND the studies, C-GET or C-MOVE their instances;
and the way back: C-STORE of spinepipe's results (:func:`store`, ``spinepipe store``).

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

Deadlines (:data:`DEADLINE_FACTOR`): each study (its series and image C-FINDs and its C-GET /
C-MOVE, every attempt and backoff wait together) must finish within
``DEADLINE_FACTOR x retrieve.timeout_s`` seconds, and so must each study-level query (one per
manifest row, or the one date / modality query). ``timeout_s`` alone bounds each message, so a
PACS that answers just often enough (one C-FIND match every few seconds) could otherwise hold
a run forever. When the deadline passes the association is aborted (A-ABORT) wherever the
exchange is blocked; the study is recorded incomplete with the reason (instances completely
received before stay, each verified and whole; the study is not done), a query is reported
unanswered; the run goes on with the next one.

A failure status from the PACS (C-FIND, C-GET, C-MOVE, C-STORE) is explained in words from
pynetdicom's status tables (PS3.4 / PS3.7), with the PACS's Error Comment when it sends one:
``C-GET failed: status 0xC000 (Failure: Unable to Process)``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import socket
import ssl
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.sop_class import (ComputedRadiographyImageStorage,
                                  DigitalXRayImageStorageForPresentation,
                                  DigitalXRayImageStorageForProcessing,
                                  SecondaryCaptureImageStorage,
                                  StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove, Verification)
from pynetdicom.status import (QR_FIND_SERVICE_CLASS_STATUS, QR_GET_SERVICE_CLASS_STATUS,
                               QR_MOVE_SERVICE_CLASS_STATUS, STORAGE_SERVICE_CLASS_STATUS,
                               VERIFICATION_SERVICE_CLASS_STATUS, code_to_category)

from converters.dicom.read import read_dicom, transfer_syntax
from converters.core.errors import (InvalidDicomError, InvalidTableError, MissingInputError,
                                    SpinepipeError)
from converters.core.files import (is_own_file, prepare_output, remove_stale_temps, write_bytes,
                                   write_json)
from converters.core.paths import UnsafePathError, confined, is_uid
from converters.core.records import NotRegularFile, open_input

STORAGE_CLASSES = [ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                   DigitalXRayImageStorageForProcessing, SecondaryCaptureImageStorage]

#: a study (all its C-FINDs, C-GET / C-MOVE, attempts and backoff waits) and a study-level
#: query must each finish within this many times ``retrieve.timeout_s``
DEADLINE_FACTOR = 10

#: the C-STORE status of an object refused because it is not what was asked for
REFUSED_NOT_ASKED = 0x0124   # "Refused: Not Authorised" (PS3.7 Annex C)
#: the C-STORE status of an object refused because one of its UIDs is no valid UID
REFUSED_INVALID_UID = 0xC000  # "Cannot Understand"
#: C-STORE status for an object that could not be written here: "Refused: Out of Resources"
OUT_OF_RESOURCES = 0xA700

_STATUS_TABLES = {"C-FIND": QR_FIND_SERVICE_CLASS_STATUS, "C-GET": QR_GET_SERVICE_CLASS_STATUS,
                  "C-MOVE": QR_MOVE_SERVICE_CLASS_STATUS,
                  "C-STORE": STORAGE_SERVICE_CLASS_STATUS,
                  "C-ECHO": VERIFICATION_SERVICE_CLASS_STATUS}


class PacsError(SpinepipeError):
    """The PACS could not be reached, refused us, or did not answer in time."""


class DeadlineError(PacsError):
    """A study or a query did not finish within its deadline (the association was aborted)."""


def _printable(value: object, limit: int = 64) -> str:
    """A value sent by the PACS, safe to show on one line (control characters dropped)."""
    text = "".join(c if c.isprintable() else " " for c in str(value)).strip()
    return text[:limit] + ("..." if len(text) > limit else "")


def explain_status(service: str, status: Dataset) -> str:
    """``status 0xC000 (Failure: Unable to Process)`` for a DIMSE status of ``service``
    (C-FIND, C-GET, C-MOVE, C-STORE, C-ECHO), in the words of pynetdicom's status tables,
    with the PACS's Error Comment and failed sub-operations when it sent them."""
    code = int(status.Status)
    category, words = _STATUS_TABLES.get(service, {}).get(code, (code_to_category(code), ""))
    text = f"status 0x{code:04X} ({category}{': ' + words if words else ''})"
    failed = status.get("NumberOfFailedSuboperations")
    if failed:
        text += f", {int(failed)} sub-operation(s) failed"
    comment = status.get("ErrorComment")
    if comment:
        text += f", the PACS says {_printable(comment)!r}"
    return text


@dataclass(frozen=True)
class Deadline:
    """An absolute deadline (``time.monotonic()``) with the budget it was made from."""

    at: float
    budget_s: float

    @classmethod
    def after(cls, budget_s: float) -> "Deadline":
        return cls(time.monotonic() + budget_s, budget_s)

    def left(self) -> float:
        return self.at - time.monotonic()

    def error(self, what: str) -> DeadlineError:
        return DeadlineError(f"{what} stopped: not finished within {self.budget_s:g} s (the "
                             f"deadline, {DEADLINE_FACTOR} x retrieve.timeout_s); association "
                             "aborted")

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise self.error(what)


def deadline_for(cfg: "RetrieveConfig") -> Deadline:
    """The deadline of one study (or study-level query) starting now."""
    return Deadline.after(DEADLINE_FACTOR * cfg.timeout_s)


@contextmanager
def _watchdog(assoc, deadline: Deadline, what: str) -> Iterator[None]:
    """Abort ``assoc`` when ``deadline`` passes, wherever the exchange is blocked (waiting for
    a message, or inside a C-STORE); :class:`DeadlineError` once it did."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        assoc.abort()

    timer = threading.Timer(max(deadline.left(), 0.0), fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except PacsError:
        if fired.is_set():
            raise deadline.error(what) from None
        raise
    finally:
        timer.cancel()
        timer.join()
    if fired.is_set():
        raise deadline.error(what)


@dataclass(frozen=True)
class RetrieveConfig:
    """params.yaml section ``retrieve``."""

    enabled: bool = False               # the DVC stage's switch (off: the phantom is the source)
    host: str = "127.0.0.1"
    port: int = field(default=4242, metadata={"min": 1, "max": 65535})
    called_aet: str = "ORTHANC"
    calling_aet: str = "SPINEPIPE"
    method: Literal["c-get", "c-move"] = "c-get"
    move_port: int = field(default=11113, metadata={"min": 1, "max": 65535})            # our storage SCP for C-MOVE (the PACS must know it)
    manifest: str = ""                  # CSV with AccessionNumber or PatientID column
    study_date_from: str = ""           # YYYYMMDD
    study_date_to: str = ""
    modalities: list[str] = field(default_factory=lambda: ["CR", "DX"])
    body_part: str = ""                 # e.g. LSPINE
    series_description: str = ""        # e.g. *LAT* (wildcards as the PACS supports them)
    timeout_s: float = field(default=30.0, metadata={"min": 0.1})   # per message; x DEADLINE_FACTOR per study
    retries: int = field(default=3, metadata={"min": 0})
    backoff_s: float = field(default=2.0, metadata={"min": 0.0})
    tls_ca: str = ""                    # CA bundle to verify the PACS; enables TLS
    tls_cert: str = ""                  # our client certificate (mutual TLS)
    tls_key: str = ""


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


class Pacs:
    """One remote Q/R SCP; every call opens its own association (as PACS prefer). A C-FIND
    or retrieve runs under a :class:`Deadline` (a fresh one per call unless given)."""

    def __init__(self, cfg: RetrieveConfig):
        self.cfg = cfg
        self.ssl_context = None
        if cfg.tls_ca:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.tls_ca)
            ctx.check_hostname = False  # PACS certificates rarely name the host; CA still checked
            if cfg.tls_cert:
                ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key or None)
            self.ssl_context = ctx

    def _ae(self, deadline: Deadline | None = None) -> AE:
        """An AE whose timeouts are ``timeout_s``, and never longer than what is left of
        ``deadline``."""
        ae = AE(ae_title=self.cfg.calling_aet)
        t = self.cfg.timeout_s
        if deadline is not None:
            t = max(min(t, deadline.left()), 0.05)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = t
        ae.connection_timeout = t
        return ae

    def _associate(self, ae: AE, deadline: Deadline | None = None, **kwargs):
        where = f"{self.cfg.host}:{self.cfg.port} (AE {self.cfg.called_aet})"
        if deadline is not None:
            deadline.check(f"association with {where}")
        tls = (self.ssl_context, None) if self.ssl_context else None
        assoc = ae.associate(self.cfg.host, self.cfg.port, ae_title=self.cfg.called_aet,
                             tls_args=tls, **kwargs)
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise PacsError(f"association rejected by {where} (is our AE title "
                            f"{self.cfg.calling_aet} known there, and the called AE right?)")
        try:  # pynetdicom reports a refused connection as an abort: tell them apart
            socket.create_connection((self.cfg.host, self.cfg.port), timeout=self.cfg.timeout_s).close()
        except OSError as exc:
            raise PacsError(f"no answer from {where}: {exc.strerror or exc} "
                            "(is it running, and is the port right?)") from None
        if assoc.is_aborted:
            raise PacsError(f"association aborted by {where}")
        raise PacsError(f"no answer from {where} within {self.cfg.timeout_s:g} s")

    def echo(self) -> None:
        ae = self._ae()
        ae.add_requested_context(Verification)
        assoc = self._associate(ae)
        try:
            status = assoc.send_c_echo()
            if not status or status.Status != 0:
                why = explain_status("C-ECHO", status) if status else "no answer"
                raise PacsError(f"C-ECHO failed on {self.cfg.host}:{self.cfg.port}: {why}")
        finally:
            if assoc.is_established:
                assoc.release()

    def find(self, level: str, query: Dataset, deadline: Deadline | None = None) -> list[Dataset]:
        """The C-FIND answers to ``query`` at ``level``; :class:`DeadlineError` when they
        are not all in before ``deadline``."""
        deadline = deadline or deadline_for(self.cfg)
        ae = self._ae(deadline)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        query.QueryRetrieveLevel = level
        assoc = self._associate(ae, deadline)
        out = []
        try:
            with _watchdog(assoc, deadline, f"C-FIND ({level} level)"):
                for status, identifier in assoc.send_c_find(
                        query, StudyRootQueryRetrieveInformationModelFind):
                    if not status:
                        raise PacsError(f"C-FIND timed out on {self.cfg.host}:{self.cfg.port}")
                    if status.Status in (0xFF00, 0xFF01) and identifier is not None:
                        out.append(identifier)
                    elif status.Status not in (0x0000, 0xFF00, 0xFF01):
                        raise PacsError(f"C-FIND failed: {explain_status('C-FIND', status)}")
        except DeadlineError as exc:
            raise DeadlineError(f"{exc}, after {len(out)} answer(s)") from None
        finally:
            if assoc.is_established:
                assoc.release()
        return out

    def _retrieve_identifier(self, study_uid: str, series_uid: str | None,
                             sop_uids: list[str] | None) -> Dataset:
        ds = Dataset()
        ds.StudyInstanceUID = study_uid
        if sop_uids:
            ds.QueryRetrieveLevel = "IMAGE"
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = sop_uids if len(sop_uids) > 1 else sop_uids[0]
        else:
            ds.QueryRetrieveLevel = "STUDY"
        return ds

    def _move_destination(self, handlers, deadline: Deadline):
        """Our storage SCP for C-MOVE, listening on ``move_port``."""
        scp = self._ae(deadline)
        for cx in STORAGE_CLASSES:
            scp.add_supported_context(cx, ALL_TRANSFER_SYNTAXES[:])
        host = "127.0.0.1" if self.cfg.host in ("127.0.0.1", "localhost") else ""
        try:
            return scp.start_server((host, self.cfg.move_port), block=False,
                                    evt_handlers=handlers)
        except OSError as exc:
            raise PacsError(f"cannot listen on port {self.cfg.move_port} for C-MOVE: {exc}") from None

    def retrieve(self, study_uid: str, series_uid: str | None, sop_uids: list[str] | None,
                 on_store: Callable[[object], int], deadline: Deadline | None = None) -> str:
        """C-GET or C-MOVE a study (or a list of instances of one series), aborted when
        ``deadline`` passes (:class:`DeadlineError`). Returns the final status in words when
        it is a warning (some sub-operations failed), else ``""``."""
        deadline = deadline or deadline_for(self.cfg)
        identifier = self._retrieve_identifier(study_uid, series_uid, sop_uids)
        handlers = [(evt.EVT_C_STORE, on_store)]
        service, server = self.cfg.method.upper(), None
        if self.cfg.method == "c-get":
            ae = self._ae(deadline)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for cx in STORAGE_CLASSES:
                ae.add_requested_context(cx, ALL_TRANSFER_SYNTAXES[:])
            roles = [build_role(cx, scp_role=True) for cx in STORAGE_CLASSES]
            assoc = self._associate(ae, deadline, ext_neg=roles, evt_handlers=handlers)
            responses = lambda: assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
        else:
            server = self._move_destination(handlers, deadline)
            ae = self._ae(deadline)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            try:
                assoc = self._associate(ae, deadline)
            except PacsError:
                server.shutdown()
                raise
            responses = lambda: assoc.send_c_move(identifier, self.cfg.calling_aet,
                                                  StudyRootQueryRetrieveInformationModelMove)
        try:
            with _watchdog(assoc, deadline, f"{service} of study {study_uid}"):
                final = self._final_status(responses())
        finally:
            if assoc.is_established:
                assoc.release()
            if server is not None:
                server.shutdown()
        if final.Status not in (0x0000, 0xB000, 0xFF00):
            raise PacsError(f"{service} failed: {explain_status(service, final)}")
        return f"{service}: {explain_status(service, final)}" if final.Status == 0xB000 else ""

    def _final_status(self, responses) -> Dataset:
        final = None
        for status, _ in responses:
            if not status:
                raise PacsError(f"transfer interrupted: no answer from {self.cfg.host}:"
                                f"{self.cfg.port} within {self.cfg.timeout_s:g} s")
            final = status
        if final is None:
            raise PacsError("transfer interrupted: the association ended early")
        return final


@dataclass
class StoreReport:
    """What ``store`` did, per instance: ``stored`` now, ``already`` stored by an earlier run
    with the same content (the state file says so), ``failed`` (with the PACS's status in
    words, or the reason). A ``stored`` instance that an earlier run had stored with other
    content has the reason ``changed since the last store``."""

    instances: list[dict] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(r["outcome"] == outcome for r in self.instances)


#: C-STORE statuses that mean "stored" (success, and the warnings "coerced", "elements
#: discarded", "does not match SOP class")
STORE_OK = (0x0000, 0xB000, 0xB006, 0xB007)


def _store_state(state_path: Path, where: str) -> tuple[dict, dict[str, str]]:
    """The whole state file and, for the PACS ``where``, SOP Instance UID -> sha256 of the
    file as it was stored. The state file is input too: anything malformed counts as not
    stored (an old list of UIDs without hashes: sent again, once)."""
    try:
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    except (ValueError, OSError):
        state = {}
    if not isinstance(state, dict):
        state = {}
    sent = state.get(where)
    if isinstance(sent, dict):
        return state, {k: v for k, v in sent.items() if isinstance(k, str) and isinstance(v, str)}
    return state, {}


def _read_for_store(path: Path) -> tuple[Dataset, str]:
    """The dataset of ``path`` and the sha256 of its bytes, from one read (what is hashed is
    what is sent)."""
    try:
        with open_input(path) as fh:
            data = fh.read()
    except NotRegularFile as exc:
        raise InvalidDicomError(exc.strerror, file=path) from None
    except OSError as exc:
        raise InvalidDicomError(f"cannot be read ({exc.strerror})", file=path) from None
    ds = read_dicom(data, name=path)
    if transfer_syntax(ds, path) is None:
        raise InvalidDicomError("no file meta: not a Part 10 file", file=path)
    for keyword, tag in (("SOPClassUID", "(0008,0016)"), ("SOPInstanceUID", "(0008,0018)")):
        if not str(ds.get(keyword) or ""):
            raise InvalidDicomError(f"no {keyword}", file=path, tag=tag)
    return ds, hashlib.sha256(data).hexdigest()


def store(cfg: RetrieveConfig, files: list[Path], state_path: str | Path,
          progress: Callable[[int, int], None] | None = None) -> StoreReport:
    """C-STORE ``files`` (DICOM Part 10) to the PACS of ``cfg`` over one association (TLS
    when configured). Resumable: ``state_path`` (JSON) records, per PACS address, the SOP
    Instance UIDs it accepted with the sha256 of each file's bytes; a re-run sends the files
    not recorded and those whose content changed since (a SEG rewritten under the same UID).
    A failure is reported and never recorded, so the next run tries again. Whether a PACS
    replaces an instance it already holds under that UID is its policy (Orthanc:
    ``OverwriteInstances``)."""
    state_path = Path(state_path)
    prepare_output(state_path.parent)  # the resume state (store writes nothing else)
    where = f"{cfg.called_aet}@{cfg.host}:{cfg.port}"
    state, sent = _store_state(state_path, where)
    report = StoreReport()
    todo = []
    for path in files:
        try:
            ds, digest = _read_for_store(path)
        except InvalidDicomError as exc:
            report.instances.append({"file": str(path), "sop_instance_uid": "",
                                     "outcome": "failed", "reason": exc.message})
            continue
        sop = str(ds.SOPInstanceUID)
        if sent.get(sop) == digest:
            report.instances.append({"file": str(path), "sop_instance_uid": sop,
                                     "outcome": "already", "reason": ""})
            continue
        todo.append((path, ds, digest, "changed since the last store" if sop in sent else ""))
    if todo:
        _send(cfg, todo, state, where, sent, state_path, report, progress)
    return report


def _send(cfg: RetrieveConfig, todo: list, state: dict, where: str, sent: dict[str, str],
          state_path: Path, report: StoreReport, progress) -> None:
    """C-STORE ``todo`` over one association, recording each success in the state file."""
    pacs = Pacs(cfg)
    ae = pacs._ae()
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds, _, _ in todo}
    for sop_class, ts in sorted(contexts)[:128]:
        ae.add_requested_context(sop_class, [ts])
    assoc = pacs._associate(ae)
    try:
        for n, (path, ds, digest, note) in enumerate(todo, 1):
            sop = str(ds.SOPInstanceUID)
            status = assoc.send_c_store(ds) if assoc.is_established else None
            code = getattr(status, "Status", None) if status else None
            if code in STORE_OK:
                sent[sop] = digest
                state[where] = dict(sorted(sent.items()))
                write_json(state_path, state)
                report.instances.append({"file": str(path), "sop_instance_uid": sop,
                                         "outcome": "stored", "reason": note})
            else:
                why = (explain_status("C-STORE", status) if code is not None else
                       "no answer (association lost or no accepted presentation context)")
                report.instances.append({"file": str(path), "sop_instance_uid": sop,
                                         "outcome": "failed", "reason": why})
            if progress:
                progress(n, len(todo))
    finally:
        if assoc.is_established:
            assoc.release()


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
        unanswered.append(f"series of study {_printable(uid)}: {exc}")
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


def retrieve(cfg: RetrieveConfig, output: str | Path, state_path: str | Path,
             manifest: list[tuple[str, str]] | None = None,
             progress: Callable[[int, int], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> RetrieveReport:
    """Find the studies, fetch what is missing (verifying every object received), record
    everything in ``state_path``."""
    output, state_path = prepare_output(output), Path(state_path)
    prepare_output(state_path.parent)  # the resume state lies beside the output folder
    remove_stale_temps(output)  # a transfer killed mid-file left its temp file
    try:
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    except (ValueError, OSError):
        state = {}  # a damaged state file: every study is checked again
    if not isinstance(state, dict):
        state = {}
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
