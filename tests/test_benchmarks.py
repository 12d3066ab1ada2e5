"""The benchmarks run (benchmarks/, `make bench`): each one that needs no trained model runs end
to end here on a few small images (in each of its modes), so that a change elsewhere that
breaks one (a signature changed under it, a write outside an output root) fails the tests,
not the next `make bench` (both happened: bench_measures called the phantom's render with an
argument it no longer takes, bench_export wrote outside every output root). The ones that
read the demo's trained models (bench_knobs, bench_refine, bench_learning, bench_propose,
bench_study_preset) import and answer --help, and every option bench_study_preset hands to
`spinepipe train` is one train knows. Their numbers are not checked: timing is the
benchmarks' work, never a test's (dicognito, the anonymization peer, is only in `make bench`:
without it they say so and go on)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--height", "256", "--width", "128"]
RUNS = [
    ("bench_measures.py", ["--n", "3", "--distinct", "2", "--refined", "1"]),
    ("bench_metrics.py", ["--pairs", "4", "--reference", "2", "--distinct", "2"]),
    ("bench_phantom.py", ["--n", "2", *SMALL]),
    ("bench_agreement.py", ["--n", "4", "--unique", "2", *SMALL]),
    ("bench_convert.py", ["--n", "4", "--unique", "2", *SMALL]),
    ("bench_convert.py", ["--n", "4", "--unique", "2", "--regions-only", *SMALL]),
    ("bench_export.py", ["--n", "2", *SMALL]),
    ("bench_seg.py", ["--n", "2"]),
    ("bench_anonymize.py", ["--n", "2", "--rounds", "1", *SMALL]),
    ("bench_anonymize.py", ["--ocr-eval", "1", *SMALL]),
    ("bench_commands.py", ["--n", "2", *SMALL]),
    ("bench_dataloader.py", ["--n", "8", "--models", "unet"]),
]
TRAINED = ("bench_knobs.py", "bench_refine.py", "bench_learning.py", "bench_propose.py",
           "bench_study_preset.py")
TIMEOUT_S = 300


def _run(script: str, args: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of one benchmark, in its own process group: on a timeout
    the whole group is killed (the spinepipe commands it started too), and the test fails with
    what it had printed."""
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{script} {' '.join(args)} ran past {TIMEOUT_S} s:\n{(out + err)[-2000:]}")
    return proc.returncode, out, err


def test_every_benchmark_is_run_or_asked_for_help_here():
    """A new benchmark gets a line above (the class: none rots unseen)."""
    scripts = {p.name for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert scripts == {s for s, _ in RUNS} | set(TRAINED)


@pytest.mark.parametrize("script, args", RUNS, ids=[" ".join([s, *a]) for s, a in RUNS])
def test_a_benchmark_runs_end_to_end_on_small_images(script, args):
    code, out, err = _run(script, args)
    assert code == 0, (out + err)[-2000:]
    assert re.search(r"target|floor|false positives", out), out[-2000:]   # its verdicts
    assert "Traceback" not in err


@pytest.mark.parametrize("script", TRAINED)
def test_a_benchmark_of_the_trained_models_answers_help(script):
    code, out, err = _run(script, ["--help"])
    assert code == 0, (out + err)[-2000:]
    assert "usage:" in out


def test_the_study_preset_benchmark_hands_train_only_options_it_knows():
    """bench_study_preset only builds a `spinepipe train` command line: every option in it is
    one `spinepipe train --help` lists."""
    source = (ROOT / "benchmarks" / "bench_study_preset.py").read_text()
    handed = {opt for line in source.splitlines() if "add_argument" not in line
              for opt in re.findall(r"\"(--[a-z][a-z-]*)\"", line)}
    assert {"--model", "--preset", "--work-dir"} <= handed
    spinepipe = Path(sys.executable).with_name("spinepipe")
    shown = subprocess.run([str(spinepipe), "train", "--help"], capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "200"}, check=True).stdout
    assert not [opt for opt in handed if opt not in shown], shown
