"""The ``spinepipe`` command line: every command has --help; bad arguments and bad params give
one line and exit code 1, never a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SPINEPIPE = str(Path(sys.executable).parent / "spinepipe")
COMMANDS = ["phantom", "retrieve", "anonymize", "export", "phantom-annotations", "convert", "split",
            "train", "evaluate", "report"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SPINEPIPE, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    proc = run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--quiet" in proc.stdout and "Usage" in proc.stdout


def test_help_of_the_metrics_tool():
    proc = run("metrics", "--help")
    assert proc.returncode == 0 and "--pred" in proc.stdout and "--gt" in proc.stdout


def test_phantom_command_writes_dicom_and_via(tmp_path):
    proc = run("phantom", "--output", str(tmp_path / "out"), "--n", "3", "--seed", "1",
               "--height", "256", "--width", "128", "--quiet", "--params", str(tmp_path / "none.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "out" / "dicom").rglob("*.dcm"))) == 3
    assert (tmp_path / "out" / "annotations" / "via_project.json").is_file()


def test_phantom_reads_its_params_section(tmp_path):
    (tmp_path / "params.yaml").write_text("phantom:\n  n: 2\n  height: 256\n  width: 128\n")
    proc = run("phantom", "--output", "out", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "out" / "dicom").rglob("*.dcm"))) == 2


@pytest.mark.parametrize("args, message", [
    (["phantom", "--output", "x", "--n", "abc"], "'abc' is not a valid integer"),  # wrong type
    (["phantom", "--output", "x", "--n", "0"], "n must be at least 1"),            # out of range
    (["phantom", "--output", "x", "--bogus"], "No such option '--bogus'"),          # unknown flag
    (["phantom"], "Missing option '--output'"),                                      # missing
    (["nosuchcommand"], "No such command 'nosuchcommand'"),                          # unknown cmd
])
def test_wrong_arguments_give_one_line_and_exit_1(tmp_path, args, message):
    proc = run(*args, cwd=tmp_path)  # no params.yaml there: only the arguments count
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("params, message", [
    ("phantom:\n  n: 2\n  hieght: 256\n", "unknown key 'phantom.hieght'"),  # typo in a key
    ("phantom:\n  n: two\n", "key 'phantom.n' must be an integer"),       # wrong type
    ("phantom: [1, 2\n", "malformed YAML"),                                 # broken YAML
])
def test_bad_params_name_the_key_and_file(tmp_path, params, message):
    (tmp_path / "params.yaml").write_text(params)
    proc = run("phantom", "--output", "out", cwd=tmp_path)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line and message in line and "params.yaml" in line, proc.stderr
    assert not (tmp_path / "out").exists()
