"""The association with a PACS (pynetdicom), shared by retrieval
(:mod:`converters.dicom.retrieve`, ``spinepipe retrieve``) and the way back
(:mod:`converters.dicom.store`, ``spinepipe store``): the connection settings
(:class:`RetrieveConfig`, params.yaml section ``retrieve``: host, port, AE titles, TLS), one
association per study or query (:class:`Pacs`), deadlines and the PACS's statuses in words.

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

Which side refused, and why: what the PACS itself sends on an association (an A-ASSOCIATE-RJ
with its reason, an A-ABORT) is noted as each PDU arrives (:func:`_note_peer`), so an association
the PACS rejects names its reason ("Calling AE title not recognised"), and a query or transfer
the PACS ends with an abort is told apart from our own timeout: a PACS that accepts the
association and then aborts at the first C-FIND / C-GET / C-MOVE (Orthanc, dcm4chee) is one
that does not allow that service to our AE title (``retrieve.calling_aet``).
"""
from __future__ import annotations

import socket
import ssl
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ
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

from converters.core.errors import SpinepipeError

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


#: what the PACS itself sent on an association: "abort", or a rejection's reason in words
_FROM_PEER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _note_peer(event) -> None:
    """EVT_PDU_RECV: keep a rejection's reason, and whether the PACS aborted. Noted from the
    PDU as it is decoded: pynetdicom's state machine sometimes handles the connection closing
    right after an A-ASSOCIATE-RJ first, and then calls the association aborted (1 in 20
    against Orthanc); the PDU had come all the same."""
    pdu = event.pdu
    if isinstance(pdu, A_ASSOCIATE_RJ):
        try:  # pynetdicom's words raise ValueError on a value outside the standard's
            reason = pdu.reason_str
        except (ValueError, KeyError):
            reason = "no reason given"
        result = {1: "permanent", 2: "transient"}.get(pdu.result, "of unknown kind")
        source = {1: "Service User", 2: "Service Provider (ACSE)",
                  3: "Service Provider (Presentation)"}.get(pdu.source, "PACS")
        _FROM_PEER[event.assoc] = f"{reason} (rejected {result}, by the {source})"
    elif isinstance(pdu, A_ABORT_RQ):
        _FROM_PEER.setdefault(event.assoc, "abort")


class PacsError(SpinepipeError):
    """The PACS could not be reached, refused us, or did not answer in time."""


class DeadlineError(PacsError):
    """A study or a query did not finish within its deadline (the association was aborted)."""


def printable(value: object, limit: int = 64) -> str:
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
        text += f", the PACS says {printable(comment)!r}"
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
    missing: Literal["fail", "warn"] = "warn"  # a manifest row the PACS does not know
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

    def new_ae(self, deadline: Deadline | None = None) -> AE:
        """An AE whose timeouts are ``timeout_s``, and never longer than what is left of
        ``deadline``."""
        ae = AE(ae_title=self.cfg.calling_aet)
        t = self.cfg.timeout_s
        if deadline is not None:
            t = max(min(t, deadline.left()), 0.05)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = t
        ae.connection_timeout = t
        return ae

    def associate(self, ae: AE, deadline: Deadline | None = None, **kwargs):
        where = f"{self.cfg.host}:{self.cfg.port} (AE {self.cfg.called_aet})"
        if deadline is not None:
            deadline.check(f"association with {where}")
        tls = (self.ssl_context, None) if self.ssl_context else None
        handlers = [*kwargs.pop("evt_handlers", []), (evt.EVT_PDU_RECV, _note_peer)]
        assoc = ae.associate(self.cfg.host, self.cfg.port, ae_title=self.cfg.called_aet,
                             tls_args=tls, evt_handlers=handlers, **kwargs)
        if assoc.is_established:
            return assoc
        reason = _FROM_PEER.get(assoc)
        if assoc.is_rejected or (reason and reason != "abort"):
            reason = reason or "no reason given"
            hint = {"Calling": f"register our AE title {self.cfg.calling_aet} there, or set "
                               "retrieve.calling_aet / --calling-aet",
                    "Called ": f"the PACS's own AE title is not {self.cfg.called_aet}: set "
                               "retrieve.called_aet / --called-aet"}.get(reason[:7],
                    f"is our AE title {self.cfg.calling_aet} known there, and the called AE right?")
            raise PacsError(f"association rejected by {where}: {reason}; {hint}")
        try:  # pynetdicom reports a refused connection as an abort: tell them apart
            socket.create_connection((self.cfg.host, self.cfg.port), timeout=self.cfg.timeout_s).close()
        except OSError as exc:
            raise PacsError(f"no answer from {where}: {exc.strerror or exc} "
                            "(is it running, and is the port right?)") from None
        if assoc.is_aborted:
            raise PacsError(f"association aborted by {where}")
        raise PacsError(f"no answer from {where} within {self.cfg.timeout_s:g} s")

    def echo(self) -> None:
        ae = self.new_ae()
        ae.add_requested_context(Verification)
        assoc = self.associate(ae)
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
        ae = self.new_ae(deadline)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        query.QueryRetrieveLevel = level
        assoc = self.associate(ae, deadline)
        out = []
        try:
            with _watchdog(assoc, deadline, f"C-FIND ({level} level)"):
                for status, identifier in assoc.send_c_find(
                        query, StudyRootQueryRetrieveInformationModelFind):
                    if not status:
                        raise self._no_answer(assoc, "C-FIND")
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
        scp = self.new_ae(deadline)
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
            ae = self.new_ae(deadline)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for cx in STORAGE_CLASSES:
                ae.add_requested_context(cx, ALL_TRANSFER_SYNTAXES[:])
            roles = [build_role(cx, scp_role=True) for cx in STORAGE_CLASSES]
            assoc = self.associate(ae, deadline, ext_neg=roles, evt_handlers=handlers)
            responses = lambda: assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
        else:
            server = self._move_destination(handlers, deadline)
            ae = self.new_ae(deadline)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            try:
                assoc = self.associate(ae, deadline)
            except PacsError:
                server.shutdown()
                raise
            responses = lambda: assoc.send_c_move(identifier, self.cfg.calling_aet,
                                                  StudyRootQueryRetrieveInformationModelMove)
        try:
            with _watchdog(assoc, deadline, f"{service} of study {study_uid}"):
                final = self._final_status(assoc, responses())
        finally:
            if assoc.is_established:
                assoc.release()
            if server is not None:
                server.shutdown()
        if final.Status not in (0x0000, 0xB000, 0xFF00):
            raise PacsError(f"{service} failed: {explain_status(service, final)}")
        return f"{service}: {explain_status(service, final)}" if final.Status == 0xB000 else ""

    def _no_answer(self, assoc, service: str) -> PacsError:
        """Why ``service`` got no status: the PACS aborted (it accepted the association
        but refuses the service to our AE title), or nothing came within ``timeout_s``."""
        where = f"{self.cfg.host}:{self.cfg.port} (AE {self.cfg.called_aet})"
        # the empty status can come before the association's own thread has read the abort
        # (and fired EVT_PDU_RECV): that thread ends once the association is gone
        assoc.join(timeout=min(2.0, self.cfg.timeout_s))
        if _FROM_PEER.get(assoc) == "abort":
            return PacsError(
                f"{service} refused: {where} accepted the association, then aborted it in "
                f"answer to our {service}; a PACS does this when it does not allow {service} "
                f"to our AE title {self.cfg.calling_aet} (Orthanc: DicomModalities, "
                f"DicomAlwaysAllowFind / Get / Move): register {self.cfg.calling_aet} there, "
                "or set retrieve.calling_aet / --calling-aet")
        return PacsError(f"{service}: no answer from {where} within {self.cfg.timeout_s:g} s "
                         "(retrieve.timeout_s)")

    def _final_status(self, assoc, responses) -> Dataset:
        final = None
        service = self.cfg.method.upper()
        for status, _ in responses:
            if not status:
                raise self._no_answer(assoc, service)
            final = status
        if final is None:
            raise PacsError(f"{service} interrupted: the association ended early")
        return final


