"""The benchmarks run (benchmarks/, `make bench`): each one that needs no trained model runs end
to end here on a few small images, so that a change elsewhere that breaks one (a signature
changed under it, a write outside an output root) fails the tests, not the next `make bench`
(both happened: bench_measures called the phantom's render with an argument it no longer
takes, bench_export wrote outside every output root). The ones that read the demo's trained
models (bench_knobs, bench_refine, bench_learning, bench_propose, bench_study_preset) and
bench_dataloader (a study-preset pipeline, half a minute) import and answer --help. Their
numbers are not checked: timing is the benchmarks' work, never a test's (dicognito, the
anonymization peer, is only in `make bench`: without it they say so and go on)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--height", "256", "--width", "128"]
RUNS = {
    "bench_measures.py": ["--n", "3", "--distinct", "2", "--refined", "1"],
    "bench_metrics.py": ["--pairs", "4", "--reference", "2", "--distinct", "2"],
    "bench_phantom.py": ["--n", "2", *SMALL],
    "bench_agreement.py": ["--n", "4", "--unique", "2", *SMALL],
    "bench_convert.py": ["--n", "4", "--unique", "2", *SMALL],
    "bench_export.py": ["--n", "2", *SMALL],
    "bench_seg.py": ["--n", "2"],
    "bench_anonymize.py": ["--n", "2", *SMALL],
    "bench_commands.py": ["--n", "2", *SMALL],
}
TRAINED = ("bench_knobs.py", "bench_refine.py", "bench_learning.py", "bench_propose.py",
           "bench_study_preset.py", "bench_dataloader.py")


def _run(script: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)])}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_every_benchmark_is_run_or_asked_for_help_here():
    """A new benchmark gets a line above (the class: none rots unseen)."""
    scripts = {p.name for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert scripts == set(RUNS) | set(TRAINED)


@pytest.mark.parametrize("script", sorted(RUNS))
def test_a_benchmark_runs_end_to_end_on_small_images(script):
    done = _run(script, RUNS[script])
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    assert "target" in done.stdout, done.stdout[-2000:]       # it got as far as its verdicts
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("script", TRAINED)
def test_a_benchmark_of_the_trained_models_answers_help(script):
    done = _run(script, ["--help"])
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    assert "usage:" in done.stdout
