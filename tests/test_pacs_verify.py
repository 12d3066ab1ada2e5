"""retrieve verifies what a PACS sends, and store re-sends what changed (issue 21, item 6).

A fake PACS built with pynetdicom (an AE on 127.0.0.1 whose server binds port 0 itself)
misbehaves on purpose: it pushes a foreign patient's object during C-GET / C-MOVE, trickles
C-FIND answers just faster than ``retrieve.timeout_s``, fails a C-GET with 0xC000. The store
re-send runs against the real Orthanc of conftest. Every loop of the fake PACS is bounded in
count, and its answers stop when our side aborts.
"""
from __future__ import annotations

import json
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import (ComputedRadiographyImageStorage,
                                  StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove)

from conftest import Orthanc, dicom_image, free_port
from converters.core.files import TEMP_MARK
from converters.dicom.pacs import (DEADLINE_FACTOR, REFUSED_NOT_ASKED, PacsError, RetrieveConfig,
                                   explain_status)
from converters.dicom.retrieve import retrieve
from converters.dicom.store import store
from pipeline.cli import main

STUDY, SERIES, SOP, PATIENT, ACCESSION = "1.2.3.21.1", "1.2.3.21.1.1", "1.2.3.21.1.1.1", "P21", "ACC21"


def _object(study=STUDY, series=SERIES, sop=SOP, patient=PATIENT, accession=ACCESSION) -> Dataset:
    ds = dicom_image(size=8, StudyInstanceUID=study, SeriesInstanceUID=series,
                     SOPInstanceUID=sop, PatientID=patient, AccessionNumber=accession)
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    return ds


class FakePacs:
    """A Q/R SCP holding ``held`` (C-FIND answers come from them). On every C-GET / C-MOVE it
    sends the asked held objects and then ``extra`` (``instead``: only ``extra``);
    ``get_status`` replaces the transfer by that final status; ``trickle`` = (level,
    interval_s, count) answers a C-FIND at that level with ``count`` copies of its answers,
    ``interval_s`` apart; ``watch``: a folder listed right after each refused C-STORE."""

    def __init__(self, held: list[Dataset], *, extra: tuple[Dataset, ...] = (),
                 instead: bool = False, get_status: Dataset | None = None,
                 trickle: tuple[str, float, int] | None = None, watch: Path | None = None):
        self.held, self.extra, self.instead = held, list(extra), instead
        self.get_status, self.trickle, self.watch = get_status, trickle, watch
        self.store_statuses: list[int] = []   # what our side answered to each C-STORE
        self.seen_after_refusal: list[list[str]] = []  # files under ``watch`` right then
        self.find_answers = 0
        self.move_port = 0
        ae = AE(ae_title="FAKEPACS")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        for cx in (StudyRootQueryRetrieveInformationModelFind,
                   StudyRootQueryRetrieveInformationModelGet,
                   StudyRootQueryRetrieveInformationModelMove):
            ae.add_supported_context(cx)
        ae.add_supported_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian,
                                 scu_role=False, scp_role=True)            # C-GET sub-operations
        ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)  # C-MOVE
        self.ae = ae
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_C_FIND, self._find), (evt.EVT_C_GET, self._get),
            (evt.EVT_C_MOVE, self._move), (evt.EVT_DIMSE_RECV, self._recv)])
        self.port = self.server.server_address[1]

    def config(self, **kw) -> RetrieveConfig:
        base = dict(enabled=True, port=self.port, called_aet="FAKEPACS", timeout_s=5.0,
                    retries=0, backoff_s=0.01, move_port=self.move_port or 11113)
        return RetrieveConfig(**{**base, **kw})

    def close(self) -> None:
        self.server.shutdown()
        self.ae.shutdown()

    # -- C-FIND: Study Root, answers built from the held objects
    # answer keys per level; the first one is the level's unique key
    KEYS = {"STUDY": ("StudyInstanceUID", "PatientID", "AccessionNumber"),
            "SERIES": ("SeriesInstanceUID", "StudyInstanceUID", "Modality"),
            "IMAGE": ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")}
    MATCH = ("StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber", "PatientID")

    def _answers(self, q: Dataset) -> list[Dataset]:
        keys = self.KEYS[q.QueryRetrieveLevel]
        out: dict[str, Dataset] = {}
        for ds in self.held:
            if any(q.get(k) and str(q.get(k)) != str(ds.get(k)) for k in self.MATCH):
                continue
            a = Dataset()
            a.QueryRetrieveLevel = q.QueryRetrieveLevel
            for k in keys:
                setattr(a, k, ds.get(k))
            out[str(a.get(keys[0]))] = a
        return list(out.values())

    def _find(self, event):
        answers = self._answers(event.identifier)
        level, interval, count = self.trickle or ("", 0.0, 1)
        if event.identifier.QueryRetrieveLevel == level:
            answers = answers * count
            for n, a in enumerate(answers):
                if n:
                    time.sleep(interval)
                if event.is_cancelled or not event.assoc.is_established:
                    return
                self.find_answers += 1
                yield 0xFF00, a
            return
        for a in answers:
            self.find_answers += 1
            yield 0xFF00, a

    # -- C-GET / C-MOVE: the asked-for held objects, then the extra ones
    def _sent(self, identifier: Dataset) -> list[Dataset]:
        sops = identifier.get("SOPInstanceUID")
        sops = {str(s) for s in (sops if isinstance(sops, (list, MultiValue))
                                 else [sops])} if sops else None
        asked = [ds for ds in self.held if str(ds.StudyInstanceUID) == identifier.StudyInstanceUID
                 and (sops is None or str(ds.SOPInstanceUID) in sops)]
        return self.extra if self.instead else asked + self.extra

    def _transfer(self, event):
        if self.get_status is not None:
            yield 1
            yield self.get_status, None
            return
        objects = self._sent(event.identifier)
        yield len(objects)
        for ds in objects:
            if event.is_cancelled or not event.assoc.is_established:
                return
            yield 0xFF00, ds
            if self.store_statuses and self.store_statuses[-1] == REFUSED_NOT_ASKED and self.watch:
                self.seen_after_refusal.append(sorted(p.name for p in self.watch.rglob("*")
                                                      if p.is_file()))

    def _get(self, event):
        yield from self._transfer(event)

    def _move(self, event):
        yield "127.0.0.1", self.move_port, {"evt_handlers": [(evt.EVT_DIMSE_RECV, self._recv)]}
        yield from self._transfer(event)

    def _recv(self, event):
        if type(event.message).__name__ == "C_STORE_RSP":
            self.store_statuses.append(int(event.message.command_set.Status))


@pytest.fixture()
def fake_pacs():
    made: list[FakePacs] = []

    def make(*args, **kw) -> FakePacs:
        made.append(FakePacs(*args, **kw))
        return made[-1]

    yield make
    for pacs in made:
        pacs.close()


def _retrieve_with_move_port(pacs: FakePacs, out: Path, state: Path, **kw):
    """retrieve by C-MOVE; our storage SCP binds a port chosen just before: retried on
    another port (at most 3 times) should it have been taken meanwhile."""
    for _ in range(3):
        pacs.move_port = free_port()
        try:
            return retrieve(pacs.config(method="c-move", **kw), out, state,
                            [("AccessionNumber", ACCESSION)])
        except PacsError as exc:
            if "cannot listen" not in str(exc):
                raise
    raise AssertionError("no free port for the C-MOVE destination")


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# (foreign object the PACS pushes besides / instead of the asked one, attributes named)
FOREIGN = {
    # the case: another patient's object of another study
    "other patient and study": (_object("1.2.3.99.1", "1.2.3.99.1.1", "1.2.3.99.1.1.1", "FOREIGN99",
                                        "ACC99"), ["StudyInstanceUID", "SeriesInstanceUID",
                                                   "SOPInstanceUID", "PatientID"]),
    # the right study and patient, an instance nobody asked for
    "instance not asked": (_object(sop="1.2.3.21.1.1.77"), ["SOPInstanceUID"]),
    # the right study, another series
    "other series": (_object(series="1.2.3.21.1.2", sop="1.2.3.21.1.2.1"),
                     ["SeriesInstanceUID", "SOPInstanceUID"]),
    # the asked UIDs, but another patient's object (a PACS that mixed two patients)
    "asked UIDs, other patient": (_object(patient="FOREIGN99"), ["PatientID"]),
}


@pytest.mark.parametrize("method", ["c-get", "c-move"])
@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_an_object_that_was_not_asked_for_is_refused_and_reported(fake_pacs, tmp_path, case,
                                                                   method):
    foreign, attributes = FOREIGN[case]
    replaces = case == "asked UIDs, other patient"  # sent in place of the asked object
    out = tmp_path / "out"
    pacs = fake_pacs([_object()], extra=(foreign,), instead=replaces, watch=out)
    state = tmp_path / "state.json"
    if method == "c-get":
        report = retrieve(pacs.config(), out, state, [("AccessionNumber", ACCESSION)])
    else:
        report = _retrieve_with_move_port(pacs, out, state)
    # refused by C-STORE status, before anything was written
    assert REFUSED_NOT_ASKED in pacs.store_statuses
    assert pacs.seen_after_refusal and all(
        names in ([], [f"{SOP}.dcm"]) for names in pacs.seen_after_refusal)
    # never kept: only the asked object, no temporary file, the foreign patient nowhere
    expected = [] if replaces else [f"{STUDY}/{SERIES}/{SOP}.dcm"]
    assert _files(out) == expected
    assert not any(b"FOREIGN99" in (out / f).read_bytes() for f in _files(out))
    assert not list(tmp_path.rglob(f"*{TEMP_MARK}*"))
    # reported, with the attribute(s) that differed
    (line,) = report.mismatched
    assert f"sent for study {STUDY}" in line
    for attribute in attributes:
        assert attribute in line
    assert "FOREIGN99" not in line  # a Patient ID is never shown
    study = report.studies[STUDY]
    assert study["status"] == "incomplete" and study["refused"] == 1
    assert attributes[0] in study["error"]
    assert report.failed == [STUDY]
    assert any(attributes[-1] in p for p in report.problem_lines())


def test_the_cli_reports_a_refused_object_and_exits_1(fake_pacs, tmp_path, capsys):
    foreign, _ = FOREIGN["other patient and study"]
    pacs = fake_pacs([_object()], extra=(foreign,))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"AccessionNumber\n{ACCESSION}\n")
    params = tmp_path / "params.yaml"
    params.write_text(f"retrieve:\n  enabled: true\n  port: {pacs.port}\n  called_aet: FAKEPACS\n"
                      "  timeout_s: 5\n  retries: 0\n")
    code = main(["retrieve", "-o", str(tmp_path / "out"), "--manifest", str(manifest),
                 "--params", str(params), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"refused: object 1.2.3.99.1.1.1 sent for study {STUDY}: StudyInstanceUID" in err
    assert err.strip().splitlines()[-1].startswith("Error: 1 stud(ies) incomplete")
    assert "1 object(s) refused (not what was asked)" in err.strip().splitlines()[-1]
    assert "Traceback" not in err and "FOREIGN99" not in err


@pytest.mark.parametrize("level", ["STUDY", "IMAGE"])
def test_a_trickling_pacs_is_cut_off_at_the_study_deadline(fake_pacs, tmp_path, level):
    """One C-FIND answer every 0.3 s, each within timeout_s (1 s), 60 of them: without an
    overall deadline the query would run 18 s; the deadline is 10 x timeout_s."""
    count = 60
    pacs = fake_pacs([_object()], trickle=(level, 0.3, count))
    report = retrieve(pacs.config(timeout_s=1.0, retries=2), tmp_path / "out",
                      tmp_path / "state.json", [("AccessionNumber", ACCESSION)],
                      sleep=lambda s: None)
    assert pacs.find_answers < count  # stopped: the association was aborted
    reason = f"not finished within {DEADLINE_FACTOR * 1.0:g} s"
    if level == "STUDY":  # the query is unanswered; nothing fetched, nothing recorded done
        assert report.studies == {} and report.fetched == 0
        (line,) = report.unanswered
        assert line.startswith(f"AccessionNumber={ACCESSION}: C-FIND (STUDY level) stopped")
        assert reason in line and "association aborted" in line
    else:  # the study is incomplete, with the reason, after one attempt (no retry past it)
        study = report.studies[STUDY]
        assert study["status"] == "incomplete" and study["attempts"] == 1
        assert study["error"].startswith("C-FIND (IMAGE level) stopped") and reason in study["error"]
        assert report.failed == [STUDY] and report.fetched == 0
        assert json.loads((tmp_path / "state.json").read_text())[STUDY]["status"] == "incomplete"
    assert not _files(tmp_path / "out")


@pytest.mark.parametrize("method", ["c-get", "c-move"])
def test_a_failure_status_is_explained_in_words(fake_pacs, tmp_path, method):
    status = Dataset()
    status.Status = 0xC000
    status.ErrorComment = "archive\noffline"
    pacs = fake_pacs([_object()], get_status=status)
    if method == "c-get":
        report = retrieve(pacs.config(), tmp_path / "out", tmp_path / "s.json",
                          [("AccessionNumber", ACCESSION)])
    else:
        report = _retrieve_with_move_port(pacs, tmp_path / "out", tmp_path / "s.json")
    study = report.studies[STUDY]
    assert study["status"] == "failed"
    assert study["error"] == (f"{method.upper()} failed: status 0xC000 (Failure: Unable to "
                              "Process), 1 sub-operation(s) failed, the PACS says 'archive offline'")
    assert any("Unable to Process" in line for line in report.problem_lines())


@pytest.mark.parametrize("service, code, words", [
    ("C-FIND", 0xA700, "Failure: Refused: Out of Resources"),
    ("C-GET", 0xA702, "Failure: Refused: Out of resources, unable to perform sub-operations"),
    ("C-MOVE", 0xA801, "Failure: Move destination unknown"),
    ("C-STORE", 0xA7FF, "Failure: Refused: Out of Resources"),
    ("C-STORE", 0xC123, "Failure: Cannot Understand"),
    ("C-GET", 0xD123, "Unknown"),  # not in any table: the category pynetdicom gives it
])
def test_explain_status_uses_the_status_tables(service, code, words):
    status = Dataset()
    status.Status = code
    assert explain_status(service, status) == f"status 0x{code:04X} ({words})"


# --------------------------------------------------------------------------------------------
# store: a content hash per object


def _orthanc_file(server: Orthanc, sop: str) -> bytes:
    """The instance Orthanc holds under ``sop``, by its REST API on loopback."""
    base = f"http://127.0.0.1:{server.http_port}"
    query = json.dumps({"Level": "Instance", "Query": {"SOPInstanceUID": sop}}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{base}/tools/find", data=query),
                                timeout=10) as r:
        (orthanc_id,) = json.loads(r.read())
    with urllib.request.urlopen(f"{base}/instances/{orthanc_id}/file", timeout=10) as r:
        return r.read()


def test_store_resends_an_object_rewritten_under_the_same_uid(tmp_path, capsys):
    server = Orthanc(tmp_path / "orthanc")
    config = json.loads((server.root / "orthanc.json").read_text())
    config["OverwriteInstances"] = True  # this PACS replaces an instance sent again
    (server.root / "orthanc.json").write_text(json.dumps(config))
    server.start()
    try:
        folder = tmp_path / "seg"
        folder.mkdir()
        path, state = folder / "a.dcm", folder / ".store_state.json"
        ds = _object()
        ds.save_as(path, enforce_file_format=True)
        cfg = server.config()
        assert [r["outcome"] for r in store(cfg, [path], state).instances] == ["stored"]
        assert [r["outcome"] for r in store(cfg, [path], state).instances] == ["already"]
        ds.PixelData = np.full(64, 4095, dtype=np.uint16).tobytes()  # new masks, same UID
        ds.save_as(path, enforce_file_format=True)
        params = tmp_path / "params.yaml"
        params.write_text(f"retrieve:\n  port: {server.dicom_port}\n  timeout_s: 10\n")
        code = main(["store", "--input", str(folder), "--params", str(params)])
        err = capsys.readouterr().err
        assert code == 0, err
        assert "stored: a.dcm (changed since the last store)" in err
        assert "store: 1 stored, 0 already there, 0 failed" in err
        held = pydicom.dcmread(BytesIO(_orthanc_file(server, SOP)))
        assert held.PixelData == ds.PixelData  # the PACS holds the new content
        assert [r["outcome"] for r in store(cfg, [path], state).instances] == ["already"]
    finally:
        server.kill()


def test_store_explains_a_refusal_in_words(tmp_path):
    """A storage SCP that answers 0xA700: the reason is in words, nothing recorded."""
    ae = AE(ae_title="FULL")
    ae.add_supported_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: 0xA700)])
    try:
        folder = tmp_path / "seg"
        folder.mkdir()
        _object().save_as(folder / "a.dcm", enforce_file_format=True)
        cfg = RetrieveConfig(port=server.server_address[1], called_aet="FULL", timeout_s=5)
        (r,) = store(cfg, [folder / "a.dcm"], folder / ".store_state.json").instances
        assert r["outcome"] == "failed"
        assert r["reason"] == "status 0xA700 (Failure: Refused: Out of Resources)"
        assert not (folder / ".store_state.json").exists()
    finally:
        server.shutdown()
