"""kill -9 in the middle of a run: the next run leaves exactly what an uninterrupted run
leaves (byte for byte), and no temporary or half-written file (anonymize, export, convert).

The commands run as a user runs them (the ``spinepipe`` console script, one process each);
the kill comes once the first outputs have appeared, so it lands mid-work. Whether a kill
lands before a run ends is up to the machine's speed: nothing here counts them. After every
kill, landed or not, what lies under a final name is whole (the reference's bytes); after
the re-run, everything is.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from converters.core.files import TEMP_MARK
from converters.phantom.writing import PhantomConfig, generate

SPINEPIPE = str(Path(sys.executable).parent / "spinepipe")


def _files(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob(pattern))
            if p.is_file()}


def _kill_when(args: list[str], ready, timeout: float = 120) -> bool:
    """Start ``spinepipe ARGS``; kill -9 it as soon as ``ready()``; True if it was killed
    before finishing."""
    proc = subprocess.Popen([SPINEPIPE, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.wait()
    return False


def _whole(root: Path, pattern: str, reference: dict[str, bytes]) -> None:
    """Every file under its final name (not a temporary one) is the reference's, byte for
    byte: a kill leaves no half-written output that looks done."""
    final = {k: v for k, v in _files(root, pattern).items() if TEMP_MARK not in k}
    assert set(final) <= set(reference), sorted(set(final) - set(reference))[:5]
    assert [k for k, v in final.items() if v != reference[k]] == []


def _run(args: list[str]) -> None:
    proc = subprocess.run([SPINEPIPE, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("archive")
    generate(PhantomConfig(n=40, seed=7, height=512, width=200, burned_in_share=0.0), out,
             workers=1)
    return out / "dicom"


def test_killed_runs_resume_to_the_same_bytes(archive, tmp_path):
    params = ["--params", str(tmp_path / "none.yaml"), "--quiet", "--workers", "1"]
    # the reference: one uninterrupted chain (same private folder, so the same pseudonyms)
    private = tmp_path / "private"
    _run(["anonymize", "--input", str(archive), "--output", str(tmp_path / "ref_anon"),
          "--private", str(private), *params])
    _run(["export", "--input", str(tmp_path / "ref_anon"), "--output",
          str(tmp_path / "ref_png"), *params])
    ref_dcm = _files(tmp_path / "ref_anon", "*.dcm")
    ref_png = _files(tmp_path / "ref_png", "*.png")

    assert len(ref_dcm) == len(ref_png) == 40
    anon, png = tmp_path / "anon", tmp_path / "png"
    for threshold in (1, 12, 30):  # three kills at different depths of the same run
        _kill_when(["anonymize", "--input", str(archive), "--output", str(anon),
                    "--private", str(private), *params],
                   lambda: len(list(anon.rglob("*.dcm"))) >= threshold)
        _whole(anon, "*.dcm", ref_dcm)
    _run(["anonymize", "--input", str(archive), "--output", str(anon), "--private",
          str(private), *params])
    for threshold in (1, 20):
        _kill_when(["export", "--input", str(anon), "--output", str(png), *params],
                   lambda: len(list(png.glob("*.png"))) >= threshold)
        _whole(png, "*.png", ref_png)
    _run(["export", "--input", str(anon), "--output", str(png), *params])
    assert _files(anon, "*.dcm") == ref_dcm
    assert _files(png, "*.png") == ref_png
    for root in (anon, png):
        assert not list(root.rglob(f"*{TEMP_MARK}*"))
        assert not list(root.rglob("*.part"))
    shutil.rmtree(tmp_path / "ref_anon")
