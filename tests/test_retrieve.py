"""Retrieval from a real PACS: the tests start Orthanc (Debian package ``orthanc``) on free
loopback ports with a temporary configuration and storage, seed it through dcmtk's storescu,
and retrieve with C-GET and C-MOVE; one test kills the server mid-transfer."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import Orthanc
from converters.dicom.pacs import Pacs, PacsError, RetrieveConfig
from converters.dicom.retrieve import read_manifest, retrieve
from converters.core.errors import InvalidTableError
from converters.core.files import TEMP_MARK
from converters.phantom.writing import PhantomConfig, generate

SPINEPIPE = str(Path(sys.executable).parent / "spinepipe")


def _originals(phantom: Path) -> dict[str, Path]:
    return {pydicom.dcmread(p).SOPInstanceUID: p for p in (phantom / "dicom").rglob("*.dcm")}


def _check_complete(out: Path, originals: dict[str, Path]) -> None:
    got = sorted(out.rglob("*.dcm"))
    assert sorted(p.stem for p in got) == sorted(originals)  # all there, none twice
    assert not list(out.rglob(f"*{TEMP_MARK}*"))
    for p in got:
        ds = pydicom.dcmread(p)
        ref = pydicom.dcmread(originals[p.stem])
        assert np.array_equal(ds.pixel_array, ref.pixel_array)
        assert ds.PatientID == ref.PatientID


@pytest.mark.parametrize("method", ["c-get", "c-move"])
def test_retrieve_by_accession_manifest(pacs, small_phantom, tmp_path, method):
    originals = _originals(small_phantom)
    accessions = sorted({pydicom.dcmread(p).AccessionNumber for p in originals.values()})
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("AccessionNumber\n" + "\n".join(accessions) + "\n")
    out, state = tmp_path / "out", tmp_path / "state.json"
    report = retrieve(pacs.config(method=method), out, state, read_manifest(manifest))
    assert not report.failed and not report.not_found
    assert report.fetched == len(originals)
    _check_complete(out, originals)
    recorded = json.loads(state.read_text())
    assert all(s["status"] == "complete" and s["expected"] == s["received"] for s in recorded.values())
    again = retrieve(pacs.config(method=method), out, state, read_manifest(manifest))
    assert again.fetched == 0 and not again.failed  # resumable: nothing fetched twice


def test_retrieve_by_date_range_and_modality(pacs, small_phantom, tmp_path):
    report = retrieve(pacs.config(study_date_from="19000101", study_date_to="20991231",
                                  modalities=["CR", "DX"], body_part="LSPINE"),
                      tmp_path / "out", tmp_path / "state.json")
    assert not report.failed
    _check_complete(tmp_path / "out", _originals(small_phantom))
    none = retrieve(pacs.config(study_date_from="19000101", study_date_to="19001231"),
                    tmp_path / "none", tmp_path / "state2.json")
    assert none.studies == {} and none.not_found == ["query"]


def _cli_retrieve(pacs, tmp_path, manifest_rows, *args):
    manifest = tmp_path / "m.csv"
    manifest.write_text("AccessionNumber\n" + "".join(f"{r}\n" for r in manifest_rows))
    params = tmp_path / "params.yaml"
    params.write_text(f"retrieve:\n  enabled: true\n  port: {pacs.dicom_port}\n  timeout_s: 5\n")
    return subprocess.run([SPINEPIPE, "retrieve", "-o", str(tmp_path / "out"), "--manifest",
                           str(manifest), "--params", str(params), "--quiet", *args],
                          capture_output=True, text=True, timeout=120)


def test_an_unknown_accession_warns_and_the_batch_goes_on(pacs, small_phantom, tmp_path):
    """retrieve.missing: warn (the default): listed, the known studies fetched, exit 0; fail:
    the same fetch, then exit 1 with a line that does not promise a re-run would help."""
    originals = _originals(small_phantom)
    known = sorted({pydicom.dcmread(p).AccessionNumber for p in originals.values()})
    proc = _cli_retrieve(pacs, tmp_path, ["NOPE123", *known])
    assert proc.returncode == 0, proc.stderr
    assert "not found on the PACS: AccessionNumber=NOPE123" in proc.stderr
    assert "warning: 1 manifest row(s) not found on the PACS" in proc.stderr
    _check_complete(tmp_path / "out", originals)
    shutil.rmtree(tmp_path / "out")
    proc = _cli_retrieve(pacs, tmp_path, ["NOPE123", *known], "--missing", "fail")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: 1 manifest row(s) not found on the PACS") and "re-run" not in last
    _check_complete(tmp_path / "out", originals)     # the rest was fetched before the error


def test_an_unregistered_calling_ae_title_is_named_as_the_pacs_refusal(pacs, tmp_path):
    """Orthanc accepts the association of an AE title it does not know, then aborts at the
    first C-FIND: the error says the PACS refused, names our AE title and the setting."""
    proc = _cli_retrieve(pacs, tmp_path, ["X"], "--calling-aet", "STRANGER")
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: C-FIND refused: 127.0.0.1:") and "aborted it" in line
    assert "our AE title STRANGER" in line and "retrieve.calling_aet" in line
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = _cli_retrieve(pacs, tmp_path, ["X"], "--calling-aet", "A" * 17)
    assert proc.returncode == 1 and "--calling-aet must be an AE title of 1-16" in proc.stderr


def test_server_killed_mid_transfer_then_rerun_completes(tmp_path, monkeypatch):
    """The PACS dies right after the second object has been written (from inside the
    C-STORE handler: no race with the transfer): the run reports the failure, keeps what
    arrived, and a re-run after the PACS is back fetches only the rest."""
    import converters.dicom.retrieve as pacs_module
    archive = tmp_path / "archive"
    generate(PhantomConfig(n=10, seed=21, height=2560, width=1024, burned_in_share=0,
                           repeat_patient_share=0), archive, workers=1)
    originals = _originals(archive)
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        server.store(archive / "dicom")
        out, state = tmp_path / "out", tmp_path / "state.json"
        written = []

        def write_then_kill(path, data, **kw):
            real_write(path, data, **kw)
            written.append(path)
            if len(written) == 2:
                server.kill()

        real_write = pacs_module.write_bytes
        monkeypatch.setattr(pacs_module, "write_bytes", write_then_kill)
        delays: list[float] = []
        broken = retrieve(server.config(retries=2, backoff_s=0.5), out, state,
                          sleep=delays.append)
        monkeypatch.undo()
        assert broken.failed  # reported, not skipped
        first = len(list(out.rglob("*.dcm")))
        assert 2 <= first < len(originals), first  # a 5 MB object cannot be in flight whole
        recorded = json.loads(state.read_text())
        assert any(s["status"] != "complete" for s in recorded.values())
        assert delays[:2] == [0.5, 1.0]  # exponential backoff before giving a study up
        server.start()  # same storage: the PACS comes back
        report = retrieve(server.config(), out, state)
        assert not report.failed
        assert report.fetched == len(originals) - first  # only what was missing
        _check_complete(out, originals)
    finally:
        server.kill()


def _received(listener: socket.socket) -> bytes:
    """Everything the one client of ``listener`` sent before it closed the connection."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(60)  # a guard against a hang, not a measure
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return data


def _pdu_types(data: bytes) -> list[int]:
    """The DICOM upper-layer PDUs in ``data`` by type (PS3.8 9.3: type, reserved, length)."""
    types, i = [], 0
    while i + 6 <= len(data):
        types.append(data[i])
        i += 6 + int.from_bytes(data[i + 2:i + 6], "big")
    assert i == len(data), "a PDU cut short"
    return types


def test_connection_problems_are_clear_errors(tmp_path):
    with socket.socket() as closed:  # bound, never listening: the connection is refused
        closed.bind(("127.0.0.1", 0))
        refused = RetrieveConfig(enabled=True, port=closed.getsockname()[1], timeout_s=1,
                                 retries=0)
        with pytest.raises(PacsError, match=r"no answer from 127\.0\.0\.1:\d+"):
            retrieve(refused, tmp_path / "o1", tmp_path / "s1.json",
                     [("AccessionNumber", "X")])
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mute = RetrieveConfig(enabled=True, port=silent.getsockname()[1], timeout_s=1, retries=0)
        with pytest.raises(PacsError, match="within 1 s|aborted"):
            retrieve(mute, tmp_path / "o2", tmp_path / "s2.json", [("AccessionNumber", "X")])
        # the timeout path: the association was asked for (A-ASSOCIATE-RQ, PDU type 1),
        # nothing answered, and retrieve itself gave up (A-ABORT, PDU type 7) and closed
        sent = _received(silent)
    assert _pdu_types(sent) == [1, 7], sent[:16]


def test_rejected_association_names_the_pacs(tmp_path):
    server = Orthanc(tmp_path / "orthanc", check_called_aet=True).start()
    try:
        with pytest.raises(PacsError, match="rejected by 127.0.0.1:.*: Called AE title not "
                           r"recognised \(rejected permanent, by the Service User\); the "
                           "PACS's own AE title is not WRONGAET: set retrieve.called_aet"):
            retrieve(server.config(called_aet="WRONGAET"), tmp_path / "o", tmp_path / "s.json",
                     [("AccessionNumber", "X")])
        # Orthanc closes the connection right after its A-ASSOCIATE-RJ, and pynetdicom then
        # sometimes calls the association aborted (1 in 20): the reason must come every time
        said = set()
        for _ in range(100):
            with pytest.raises(PacsError) as err:
                Pacs(server.config(called_aet="WRONGAET")).echo()
            said.add(str(err.value).split(": ", 1)[1])
        assert len(said) == 1 and next(iter(said)).startswith("Called AE title not recognised")
    finally:
        server.kill()


def test_tls(tmp_path, small_phantom):
    assert shutil.which("openssl")
    cert, key = tmp_path / "pacs.crt", tmp_path / "pacs.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    server = Orthanc(tmp_path / "orthanc", tls={"cert": str(cert), "key": str(key)}).start()
    try:
        plain = retrieve  # without TLS the server refuses to talk
        with pytest.raises(PacsError):
            plain(server.config(timeout_s=2, retries=0), tmp_path / "o0", tmp_path / "s0.json",
                  [("AccessionNumber", "X")])
        cfg = server.config(tls_ca=str(cert), tls_cert=str(cert), tls_key=str(key))
        report = retrieve(cfg, tmp_path / "o", tmp_path / "s.json", [("AccessionNumber", "X")])
        assert report.not_found == ["AccessionNumber=X"]  # the query went through over TLS
    finally:
        server.kill()


@pytest.mark.parametrize("content, message", [
    ("Name\nfoo\n", "needs an AccessionNumber or PatientID column"),  # wrong header
    ("PatientID\n\n", "lists no study"),                               # empty
])
def test_bad_manifest(tmp_path, content, message):
    p = tmp_path / "m.csv"
    p.write_text(content)
    with pytest.raises(InvalidTableError, match=message):
        read_manifest(p)
