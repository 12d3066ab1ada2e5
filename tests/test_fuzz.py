"""Property-style robustness: seeded random mutations of a VIA file and of a DICOM header go
through ``spinepipe convert`` and ``spinepipe anonymize`` (in-process, as a user runs them).

Every case must end in exit 0, or exit 1 with exactly one ``Error:`` line; never a traceback
(an exception escaping ``pipeline.cli.main`` fails the test with the case's seed), and never a
file written outside the output folder: the *whole* temporary root of the test (every file,
folder and link, links never followed) is compared before and after each case, everything
outside the command's output folders must be unchanged. The sandbox sits four folders below
that root, and each command runs from the sandbox (its working folder), so the hostile
values' ``../../../ESCAPED`` lands inside what is watched whether a path is built from an
output folder or from the working folder; ``/etc/passwd`` is compared too. The generator is seeded: a failing case is reproduced by its
printed seed. (The hypothesis-driven fuzz of the same inputs: ``test_fuzz_property.py``.)
"""
from __future__ import annotations

import copy
import json
import random
import shutil
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pipeline.cli import main
from test_fuzz_property import changed_outside, passwd_hash, snapshot
from test_hostile import image

CASES = 520  # at least 500 per run, per command
NO_PARAMS = "/nonexistent/params.yaml"

HOSTILE = [None, "", "abc", "../../../ESCAPED", "/etc/passwd", -1, 0, 1, 3.5, -1e308, 1e308,
           float("nan"), float("inf"), True, [], {}, [[1, 2]], [None], {"a": [1, 2]},
           "\u0000\u202e", "x" * 300, 2 ** 70, ["lumbar"], {"lumbar": True}, "undefined"]


def _sandbox(tmp_path: Path, monkeypatch) -> Path:
    """The sandbox, four folders below the watched root and the working folder of the
    commands: ``../../../ESCAPED`` from any folder in it (or from the working folder) stays
    below ``tmp_path``; the root also holds a file and a link an escape could hit."""
    (tmp_path / "victim.txt").write_text("keep me")
    (tmp_path / "link_out").symlink_to("/nonexistent-target")
    sandbox = tmp_path / "d1" / "d2" / "d3" / "sandbox"
    sandbox.mkdir(parents=True)
    monkeypatch.chdir(sandbox)
    return sandbox


def _confined(tmp_path: Path, before: dict, passwd: str, allowed: list[Path],
              seed: int) -> None:
    """Nothing under the whole temporary root changed but ``allowed``; /etc/passwd intact."""
    rel = [str(p.relative_to(tmp_path)) for p in allowed]
    changed = changed_outside(before, snapshot(tmp_path, content=False), rel)
    assert changed == [], f"case seed {seed}: wrote outside {rel}: {changed}"
    assert passwd_hash() == passwd, f"case seed {seed}: /etc/passwd changed"


def _run(capsys, args: list[str], seed: int) -> int:
    try:
        code = main(args)
    except BaseException as exc:  # a traceback: the bug this test exists to find
        raise AssertionError(f"case seed {seed}: {type(exc).__name__}: {exc}") from exc
    err = capsys.readouterr().err
    errors = [l for l in err.splitlines() if l.startswith("Error:")]
    assert "Traceback" not in err, f"case seed {seed}: {err}"
    assert (code == 0 and not errors) or (code == 1 and len(errors) == 1), \
        f"case seed {seed}: exit {code}, stderr:\n{err}"
    return code


# --------------------------------------------------------------------------------------------
# VIA


def _base_via() -> dict:
    regions = [{"shape_attributes": {"name": "polygon", "all_points_x": [10, 40, 40, 10],
                                     "all_points_y": [y, y, y + 12, y + 12]},
                "region_attributes": {"class": "lumbar"}} for y in (5, 22, 39, 56, 73)]
    regions.append({"shape_attributes": {"name": "polygon", "all_points_x": [10, 45, 25],
                                         "all_points_y": [92, 92, 118]},
                    "region_attributes": {"class": "sacrum"}})
    regions.append({"shape_attributes": {"name": "rect", "x": 2, "y": 3, "width": 5,
                                         "height": 6}, "region_attributes": {"class": "screw"}})
    meta = {"filename": "a.png", "size": -1, "regions": regions, "file_attributes": {}}
    return {"_via_settings": {"core": {"default_filepath": ""}},
            "_via_img_metadata": {"a.png-1": meta},
            "_via_attributes": {"region": {"class": {"type": "dropdown", "options": {}}}}}


def _nodes(obj, path=()):
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nodes(v, path + (i,))


def _mutate_json(doc: dict, rng: random.Random) -> dict:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        nodes = [(p, o) for p, o in _nodes(doc) if p]
        path, _ = rng.choice(nodes)
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        op = rng.random()
        if op < 0.55:
            parent[key] = copy.deepcopy(rng.choice(HOSTILE))
        elif op < 0.7:
            del parent[key]
        elif op < 0.8 and isinstance(parent, dict):  # a hostile key next to it
            parent[rng.choice(["../x", "", "0", "regions", "filename"])] = rng.choice(HOSTILE)
        elif op < 0.9 and isinstance(parent[key], list) and parent[key]:
            parent[key] = parent[key] * rng.randint(2, 50)  # long lists
        else:
            parent[key] = [parent[key]]  # one level deeper
    return doc


def test_random_via_mutations_never_crash_nor_escape(tmp_path, capsys, monkeypatch):
    sandbox = _sandbox(tmp_path, monkeypatch)
    (sandbox / "img").mkdir(parents=True)
    cv2.imwrite(str(sandbox / "img" / "a.png"), np.full((120, 60), 100, np.uint8))
    base = _base_via()
    rng = random.Random(20261125)
    outcomes = {0: 0, 1: 0}
    for case in range(CASES):
        seed = rng.randrange(2 ** 32)
        doc = _mutate_json(base, random.Random(seed))
        via = sandbox / "via.json"
        via.write_text(json.dumps(doc, allow_nan=True))
        out = f"out{case % 4}"
        before, passwd = snapshot(tmp_path, content=False), passwd_hash()
        args = ["convert", "--input", str(via), "--images", str(sandbox / "img"),
                "--output", str(sandbox / out), "--params", NO_PARAMS, "--quiet",
                "--workers", "1"]
        outcomes[_run(capsys, args, seed)] += 1
        _confined(tmp_path, before, passwd, [sandbox / out], seed)
    assert min(outcomes.values()) > 50, outcomes  # both outcomes are exercised


# --------------------------------------------------------------------------------------------
# DICOM


_TARGETS = ["PatientID", "PatientName", "SOPInstanceUID", "StudyInstanceUID",
            "SeriesInstanceUID", "Rows", "Columns", "BitsAllocated", "SamplesPerPixel",
            "NumberOfFrames", "SOPClassUID", "PixelData", "BurnedInAnnotation", "StudyDate",
            "ReferencedImageSequence", "PhotometricInterpretation", "PixelRepresentation"]
_VALUES = ["../../../ESCAPED", "1.2.840.10008.9/../../../ESCAPED", "", "0", "65535", "60000",
           "1..2", "x" * 70, "DOE^JOHN", "20250230", "\\", "YES", "-1", "1.2.840.10008.1.2"]


def _base_dicom() -> bytes:
    item = Dataset()
    item.PatientName = "DOE^JOHN"
    item.ReferencedSOPInstanceUID = "1.2.3.4.5.6"
    ds = image(ReferencedImageSequence=Sequence([item]), StudyDate="20200101")
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _mutate_dicom(base: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.45:  # byte level: the header (pixel data starts near the end)
        data = bytearray(base)
        header_end = len(base) - 128
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            at = rng.randrange(128, header_end)
            if kind < 0.5:
                data[at] = rng.randrange(256)
            elif kind < 0.75:
                data[at:at + 4] = rng.randrange(2 ** 32).to_bytes(4, "little")
            else:
                del data[at:at + rng.randint(1, 16)]
        if rng.random() < 0.25:
            data = data[:rng.randrange(len(data))]
        return bytes(data)
    ds = pydicom.dcmread(BytesIO(base))
    for _ in range(rng.randint(1, 3)):
        kw = rng.choice(_TARGETS)
        value = rng.choice(_VALUES)
        try:
            if kw == "PixelData":
                ds.PixelData = ds.PixelData[:rng.randrange(len(ds.PixelData))]
            elif kw == "ReferencedImageSequence":
                ds.ReferencedImageSequence[0].PatientID = value
                ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = value
            elif kw in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel",
                        "PixelRepresentation"):
                setattr(ds, kw, rng.choice([0, 1, 3, 60000, 65535]))
            elif rng.random() < 0.2:
                delattr(ds, kw) if kw in ds else None
            else:
                setattr(ds, kw, value)
        except (ValueError, TypeError, OverflowError):
            continue  # pydicom itself refuses to hold that value
    buf = BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=False)
    except (ValueError, TypeError, OverflowError, AttributeError):
        return base[: rng.randrange(len(base))]
    return buf.getvalue()


def test_random_dicom_header_mutations_never_crash_nor_escape(tmp_path, capsys, monkeypatch):
    sandbox = _sandbox(tmp_path, monkeypatch)
    private = sandbox / "private"
    base = _base_dicom()
    rng = random.Random(1125)
    outcomes = {0: 0, 1: 0}
    for case in range(CASES):
        seed = rng.randrange(2 ** 32)
        inp = sandbox / f"in{case}"
        inp.mkdir(parents=True)
        (inp / "x.dcm").write_bytes(_mutate_dicom(base, random.Random(seed)))
        out = f"out{case % 4}"
        before, passwd = snapshot(tmp_path, content=False), passwd_hash()
        outcomes[_run(capsys, ["anonymize", "--input", str(inp), "--output",
                               str(sandbox / out), "--private", str(private), "--params",
                               NO_PARAMS, "--quiet", "--workers", "1"], seed)] += 1
        _confined(tmp_path, before, passwd, [sandbox / out, private], seed)
        shutil.rmtree(inp)  # read by this case only: keeps the watched tree small
    assert min(outcomes.values()) > 50, outcomes
    written = [p for out in sandbox.glob("out*") for p in out.rglob("*.dcm")]
    assert written, "no mutation produced an anonymized object: the generator is too harsh"
    for p in written:  # whatever was anonymized carries no identifier
        blob = p.read_bytes()
        assert b"DOE" not in blob and b"MRN998877" not in blob and b"ESCAPED" not in blob
