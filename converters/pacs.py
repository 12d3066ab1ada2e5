"""Retrieval from a PACS with pynetdicom: C-FIND the studies, C-GET or C-MOVE their instances;
and the way back: C-STORE of spinepipe's results (:func:`store`, ``spinepipe store``).

Queries (Study Root): by accession numbers or patient IDs (a CSV manifest with an
``AccessionNumber`` or ``PatientID`` column), or by study date range, modalities in study,
body part and series description.

Output: ``<output>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, each file
written as received (the encoded dataset with its file meta) to a temporary name and renamed,
so an interrupted transfer never leaves a file that looks complete.

UIDs sent by the PACS are untrusted: a Study, Series or SOP Instance UID that is not a valid
DICOM UID (:mod:`converters.paths`) never becomes a path; the object is refused (C-STORE
status 0xC000), counted in the study's state as invalid, and the study reported incomplete.

Resumable: a state file (JSON, next to the output, identifiable like the archive itself)
records per study the instances expected (from an IMAGE-level C-FIND), received, the
attempts and the last error. A re-run fetches only the instances still missing. A study that
keeps failing is retried with exponential backoff and reported as failed, never dropped.
"""
from __future__ import annotations

import csv
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.sop_class import (ComputedRadiographyImageStorage,
                                  DigitalXRayImageStorageForPresentation,
                                  DigitalXRayImageStorageForProcessing,
                                  SecondaryCaptureImageStorage,
                                  StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove, Verification)

from converters.errors import InvalidTableError, MissingInputError, SpinepipeError
from converters.io import atomic_path, prepare_output, remove_stale_temps, write_json
from converters.paths import confined, is_uid

STORAGE_CLASSES = [ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                   DigitalXRayImageStorageForProcessing, SecondaryCaptureImageStorage]


class PacsError(SpinepipeError):
    """The PACS could not be reached, refused us, or did not answer in time."""


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
    timeout_s: float = field(default=30.0, metadata={"min": 0.1})
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

    @property
    def failed(self) -> list[str]:
        return [uid for uid, s in self.studies.items() if s["status"] != "complete"]

    def problem_lines(self) -> list[str]:
        """Every query without a match, refused UID and incomplete study, one line each."""
        lines = [f"  not found on the PACS: {label}" for label in self.not_found]
        lines += [f"  refused: study UID {uid!r} from the PACS is not a valid UID"
                  for uid in self.invalid]
        lines += [f"  refused: object with an invalid UID {uids!r}" for uids in self.refused]
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
    """One remote Q/R SCP; every call opens its own association (as PACS prefer)."""

    def __init__(self, cfg: RetrieveConfig):
        self.cfg = cfg
        self.ssl_context = None
        if cfg.tls_ca:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.tls_ca)
            ctx.check_hostname = False  # PACS certificates rarely name the host; CA still checked
            if cfg.tls_cert:
                ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key or None)
            self.ssl_context = ctx

    def _ae(self) -> AE:
        ae = AE(ae_title=self.cfg.calling_aet)
        t = self.cfg.timeout_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = t
        ae.connection_timeout = t
        return ae

    def _associate(self, ae: AE, **kwargs):
        where = f"{self.cfg.host}:{self.cfg.port} (AE {self.cfg.called_aet})"
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
                raise PacsError(f"C-ECHO failed on {self.cfg.host}:{self.cfg.port}")
        finally:
            assoc.release()

    def find(self, level: str, query: Dataset) -> list[Dataset]:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        query.QueryRetrieveLevel = level
        assoc = self._associate(ae)
        out = []
        try:
            for status, identifier in assoc.send_c_find(
                    query, StudyRootQueryRetrieveInformationModelFind):
                if not status:
                    raise PacsError(f"C-FIND timed out on {self.cfg.host}:{self.cfg.port}")
                if status.Status in (0xFF00, 0xFF01) and identifier is not None:
                    out.append(identifier)
                elif status.Status not in (0x0000, 0xFF00, 0xFF01):
                    raise PacsError(f"C-FIND failed with status 0x{status.Status:04X}")
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

    def retrieve(self, study_uid: str, series_uid: str | None, sop_uids: list[str] | None,
                 on_store: Callable[[object], int]) -> None:
        """C-GET or C-MOVE a study (or a list of instances of one series)."""
        identifier = self._retrieve_identifier(study_uid, series_uid, sop_uids)
        handlers = [(evt.EVT_C_STORE, on_store)]
        if self.cfg.method == "c-get":
            ae = self._ae()
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for cx in STORAGE_CLASSES:
                ae.add_requested_context(cx, ALL_TRANSFER_SYNTAXES[:])
            roles = [build_role(cx, scp_role=True) for cx in STORAGE_CLASSES]
            assoc = self._associate(ae, ext_neg=roles, evt_handlers=handlers)
            responses = lambda: assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
            server = None
        else:
            scp = self._ae()
            for cx in STORAGE_CLASSES:
                scp.add_supported_context(cx, ALL_TRANSFER_SYNTAXES[:])
            try:
                server = scp.start_server(("127.0.0.1" if self.cfg.host in ("127.0.0.1", "localhost")
                                           else "", self.cfg.move_port), block=False,
                                          evt_handlers=handlers)
            except OSError as exc:
                raise PacsError(f"cannot listen on port {self.cfg.move_port} for C-MOVE: {exc}") from None
            ae = self._ae()
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            try:
                assoc = self._associate(ae)
            except PacsError:
                server.shutdown()
                raise
            responses = lambda: assoc.send_c_move(identifier, self.cfg.calling_aet,
                                                  StudyRootQueryRetrieveInformationModelMove)
        try:
            final = None
            for status, _ in responses():
                if not status:
                    raise PacsError(f"transfer interrupted: no answer from {self.cfg.host}:"
                                    f"{self.cfg.port} within {self.cfg.timeout_s:g} s")
                final = status
            if final is None:
                raise PacsError("transfer interrupted: the association ended early")
            if final.Status not in (0x0000, 0xB000, 0xFF00):
                raise PacsError(f"retrieve failed with status 0x{final.Status:04X}")
        finally:
            if assoc.is_established:
                assoc.release()
            if server is not None:
                server.shutdown()


@dataclass
class StoreReport:
    """What ``store`` did, per instance: ``stored`` now, ``already`` stored by an earlier run
    (the state file says so), ``failed`` (with the PACS's status or the reason)."""

    instances: list[dict] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(r["outcome"] == outcome for r in self.instances)


#: C-STORE statuses that mean "stored" (success, and the warnings "coerced", "elements
#: discarded", "does not match SOP class")
STORE_OK = (0x0000, 0xB000, 0xB006, 0xB007)


def store(cfg: RetrieveConfig, files: list[Path], state_path: str | Path,
          progress: Callable[[int, int], None] | None = None) -> StoreReport:
    """C-STORE ``files`` (DICOM Part 10) to the PACS of ``cfg`` over one association (TLS
    when configured). Resumable: ``state_path`` (JSON) records, per PACS address, the SOP
    Instance UIDs it accepted; a re-run sends only the others. A failure is reported and
    never recorded, so the next run tries again."""
    import pydicom

    state_path = Path(state_path)
    try:
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    except (ValueError, OSError):
        state = {}
    where = f"{cfg.called_aet}@{cfg.host}:{cfg.port}"
    done = set(state.get(where, []))
    report = StoreReport()
    todo = []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
            sop_class, sop = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
            ts = str(ds.file_meta.TransferSyntaxUID)
        except Exception as exc:  # pydicom raises many kinds on a damaged file
            report.instances.append({"file": str(path), "sop_instance_uid": "",
                                     "outcome": "failed",
                                     "reason": f"unreadable DICOM ({type(exc).__name__})"})
            continue
        if sop in done:
            report.instances.append({"file": str(path), "sop_instance_uid": sop,
                                     "outcome": "already", "reason": ""})
            continue
        todo.append((path, ds, sop_class, ts))
    if todo:
        pacs = Pacs(cfg)
        ae = pacs._ae()
        for sop_class, ts in sorted({(c, t) for _, _, c, t in todo})[:128]:
            ae.add_requested_context(sop_class, [ts])
        assoc = pacs._associate(ae)
        try:
            for n, (path, ds, sop_class, ts) in enumerate(todo, 1):
                sop = str(ds.SOPInstanceUID)
                status = assoc.send_c_store(ds) if assoc.is_established else None
                code = getattr(status, "Status", None) if status else None
                if code in STORE_OK:
                    done.add(sop)
                    state[where] = sorted(done)
                    write_json(state_path, state)
                    report.instances.append({"file": str(path), "sop_instance_uid": sop,
                                             "outcome": "stored", "reason": ""})
                else:
                    why = (f"status 0x{code:04X}" if code is not None else
                           "no answer (association lost or no accepted presentation context)")
                    report.instances.append({"file": str(path), "sop_instance_uid": sop,
                                             "outcome": "failed", "reason": why})
                if progress:
                    progress(n, len(todo))
        finally:
            if assoc.is_established:
                assoc.release()
    return report


def _study_query(cfg: RetrieveConfig) -> Dataset:
    q = Dataset()
    q.StudyInstanceUID = ""
    q.PatientID = ""
    q.AccessionNumber = ""
    q.StudyDate = ""
    q.ModalitiesInStudy = ""
    q.NumberOfStudyRelatedInstances = ""
    return q


def find_studies(pacs: Pacs, cfg: RetrieveConfig,
                 manifest: list[tuple[str, str]] | None) -> tuple[dict[str, Dataset], list[str]]:
    """Studies to fetch (StudyInstanceUID -> C-FIND answer) and manifest entries not found."""
    studies: dict[str, Dataset] = {}
    not_found: list[str] = []
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
        answers = pacs.find("STUDY", q)
        if not answers:
            not_found.append(label)
        for a in answers:
            studies[str(a.StudyInstanceUID)] = a
    if cfg.body_part or cfg.series_description:
        studies = {uid: a for uid, a in studies.items() if _series(pacs, cfg, uid)}
    return studies, not_found


def _series(pacs: Pacs, cfg: RetrieveConfig, study_uid: str) -> list[Dataset]:
    q = Dataset()
    q.StudyInstanceUID = study_uid
    q.SeriesInstanceUID = ""
    q.Modality = ""
    q.BodyPartExamined = cfg.body_part or ""
    q.SeriesDescription = cfg.series_description or ""
    return pacs.find("SERIES", q)


def list_instances(pacs: Pacs, cfg: RetrieveConfig, study_uid: str) -> list[tuple[str, str]]:
    """``[(SeriesInstanceUID, SOPInstanceUID)]`` of a study, series filters applied."""
    out = []
    for series in _series(pacs, cfg, study_uid):
        if cfg.modalities and str(series.get("Modality", "")) not in cfg.modalities:
            continue
        q = Dataset()
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = series.SeriesInstanceUID
        q.SOPInstanceUID = ""
        out += [(str(series.SeriesInstanceUID), str(a.get("SOPInstanceUID", "")))
                for a in pacs.find("IMAGE", q)]
    return sorted(out)


def _store_handler(output: Path, counter: list[int], invalid: list[str], lock: threading.Lock):
    def handle(event) -> int:
        ds = event.dataset
        uids = [str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                              "SOPInstanceUID")]
        if not all(is_uid(u) for u in uids):
            with lock:  # never a path: refused, and reported with the study
                invalid.append("/".join(u[:80] for u in uids))
            return 0xC000
        with atomic_path(confined(output, uids[0], uids[1], f"{uids[2]}.dcm")) as tmp:
            tmp.write_bytes(event.encoded_dataset(include_meta=True))
        with lock:
            counter[0] += 1
        return 0x0000
    return handle


def retrieve(cfg: RetrieveConfig, output: str | Path, state_path: str | Path,
             manifest: list[tuple[str, str]] | None = None,
             progress: Callable[[int, int], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> RetrieveReport:
    """Find the studies, fetch what is missing, record everything in ``state_path``."""
    output, state_path = prepare_output(output), Path(state_path)
    remove_stale_temps(output)  # a transfer killed mid-file left its temp file
    try:
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    except (ValueError, OSError):
        state = {}  # a damaged state file: every study is checked again
    pacs = Pacs(cfg)
    studies, not_found = find_studies(pacs, cfg, manifest)
    report = RetrieveReport(not_found=not_found)
    counter, lock, invalid = [0], threading.Lock(), []
    handler = _store_handler(output, counter, invalid, lock)
    for n, uid in enumerate(sorted(studies), 1):
        entry = state.get(uid, {"attempts": 0}) if is_uid(uid) else {"attempts": 0}
        if not is_uid(uid):
            report.invalid.append(uid[:80])
            if progress:
                progress(n, len(studies))
            continue
        for attempt in range(cfg.retries + 1):
            try:
                found = list_instances(pacs, cfg, uid)
                expected = [(se, sop) for se, sop in found if is_uid(se) and is_uid(sop)]
                bad = len(found) - len(expected)
                missing = [(se, sop) for se, sop in expected
                           if not (output / uid / se / f"{sop}.dcm").is_file()]
                by_series: dict[str, list[str]] = {}
                for se, sop in missing:
                    by_series.setdefault(se, []).append(sop)
                for se, sops in by_series.items():
                    pacs.retrieve(uid, se, sops, handler)
                still = [sop for se, sop in expected
                         if not (output / uid / se / f"{sop}.dcm").is_file()]
                errors = [f"{len(still)} instance(s) not received"] if still else []
                if bad:
                    errors.append(f"{bad} instance(s) with an invalid UID refused")
                entry.update(expected=len(found), received=len(expected) - len(still),
                             invalid_uids=bad, error="; ".join(errors))
                entry["status"] = "complete" if not errors else "incomplete"
                if not still:
                    break  # invalid UIDs do not get better by asking again
            except PacsError as exc:
                entry.update(status="failed", error=str(exc))
            entry["attempts"] = entry.get("attempts", 0) + 1
            if attempt < cfg.retries:
                sleep(cfg.backoff_s * 2 ** attempt)
        entry["accession_number"] = str(studies[uid].get("AccessionNumber", ""))
        state[uid] = entry
        write_json(state_path, state)
        if progress:
            progress(n, len(studies))
    report.studies = {uid: state[uid] for uid in studies if uid in state}
    report.fetched = counter[0]
    report.refused = sorted(set(invalid))
    return report
