"""The ``spinepipe`` command line: every command has --help; bad arguments and bad params give
one line and exit code 1, never a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SPINEPIPE = str(Path(sys.executable).parent / "spinepipe")
COMMANDS = ["phantom", "retrieve", "anonymize", "export", "phantom-annotations", "convert", "agreement", "split",
            "train", "evaluate", "report", "validate"]


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


def test_root_help_lists_every_command_without_importing_them():
    proc = run("--help")
    assert proc.returncode == 0
    for command in COMMANDS + ["metrics"]:
        assert command in proc.stdout


INGEST_WITHOUT_TORCH = r"""
import sys
from pathlib import Path
from pipeline.cli import main
Path("split.yaml").write_text("split:\n  k: 2\n")
args = dict(params=["--params", "none.yaml", "--quiet", "--workers", "1"])
steps = [
    ["phantom", "--output", "raw", "--n", "16", "--height", "256", "--width", "128"],
    ["anonymize", "--input", "raw/dicom", "--output", "anon", "--private", "private"],
    ["export", "--input", "anon", "--output", "png"],
    ["convert", "--input", "ann", "--images", "png", "--output", "processed"],
    ["split", "--input", "processed", "--output", "splits"],
]
for step in steps:
    if step[0] == "convert":
        code = main(["phantom-annotations", "--via", "raw/annotations/via_project.json",
                     "--png", "png", "--private", "private", "--output", "ann", "--quiet"])
        assert code == 0, "phantom-annotations"
    extra = args["params"] if step[0] != "split" else ["--params", "split.yaml", "--quiet"]
    assert main(step + extra) == 0, step[0]
heavy = sorted(m for m in ("torch", "mmengine", "mmcv", "mmdet", "mmseg") if m in sys.modules)
print("HEAVY", heavy)
"""


def test_the_cli_and_the_ingest_stages_never_import_torch(tmp_path):
    """Start-up is a feature: only train and evaluate load torch and the mmlab stack."""
    proc = subprocess.run([sys.executable, "-c", INGEST_WITHOUT_TORCH], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout
    assert (tmp_path / "splits" / "splits.json").is_file()


def test_quiet_keeps_library_warnings_off_the_terminal(tmp_path):
    """pydicom warns about invalid values (a UID with letters, in a sequence item and at the
    top level); with --quiet the user sees the one summary line and nothing else."""
    from pydicom import config
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from conftest import dicom_image

    item = Dataset()
    item.add_new(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.1")
    item.add_new(0x00081155, "UI", "1.2.3.4x")
    ds = dicom_image(8)
    ds.add_new(0x00081140, "SQ", Sequence([item]))
    ds.add_new(0x00200052, "UI", "1.2.3.ABC")
    (tmp_path / "in").mkdir()
    saved = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds.save_as(tmp_path / "in" / "a.dcm", enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = saved
    proc = run("anonymize", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--private",
               str(tmp_path / "private"), "--params", str(tmp_path / "none.yaml"), "--quiet",
               "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["anonymize: 1 anonymized -> " + str(tmp_path / "out")]
