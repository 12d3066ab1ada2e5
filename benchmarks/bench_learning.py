"""Do the five models learn the phantom as the study's models learnt real radiographs? Train
each with the demo preset on fold 0, evaluate it on the fixed test set exactly as `make demo`
does, and print each model's mean IoU and recognition rate beside the study's (Konya et al.
2021, Table 1), with the wall and CPU time of training + evaluation.

Calibration target (issue 28): each within 5 percentage points of the study's (mean IoU
81-88 %; recognition Mask R-CNN 99, YOLACT 98, U-Net 91, DeepLabv3 70, PSPNet 43 %). The
composite recognition on the test images with overlapping vertebrae is printed next to them:
the study's finding is that the instance models keep those apart.

Needs the demo's data (run `make demo` first, or `dvc repro split`); uses params.yaml.

    .venv/bin/python benchmarks/bench_learning.py [--models unet yolact] [--fold 0]
"""
from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train.report.tables import STUDY_TABLE1

MODELS = ["mask_rcnn", "yolact", "unet", "pspnet", "deeplabv3"]
#: the calibration band: percentage points either side of the study's value
BAND = 5.0
CALIBRATED = ("mean_iou", "recognition_rate")


def run_or_exit(cmd: list[str]) -> None:
    """Run a spinepipe command; on failure exit with its output's tail."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[1:3])} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def _composite_on_overlaps(per_image: Path) -> tuple[float, int]:
    rows = [r for r in csv.DictReader(per_image.open()) if int(r["gt_overlaps"] or 0) > 0]
    return (sum(int(r["composite"]) for r in rows) / len(rows) if rows else float("nan"),
            len(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--fold", type=int, default=0)
    args = ap.parse_args()
    spinepipe = str(Path(sys.executable).parent / "spinepipe")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            work, out = Path(tmp) / model, Path(tmp) / f"eval_{model}"
            run_or_exit([spinepipe, "train", "--model", model, "--fold", str(args.fold),
                  "--work-dir", str(work), "--quiet"])
            run_or_exit([spinepipe, "evaluate", "--model", model, "--fold", str(args.fold),
                  "--run-dir", str(work), "--output", str(out), "--quiet"])
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            s = json.loads((out / "summary.json").read_text())
            comp_ov, n_ov = _composite_on_overlaps(out / "per_image.csv")
            missed = [f"{k} {100 * s[k]:.1f} vs {100 * STUDY_TABLE1[model][k]:.1f}"
                      for k in CALIBRATED
                      if abs(100 * (s[k] - STUDY_TABLE1[model][k])) > BAND]
            rows.append((model, s, comp_ov, n_ov, cpu / 60, wall / 60, missed))
            print(f"{model}: done in {wall / 60:.1f} min", file=sys.stderr)
    print(f"{'model':10} {'images':>6} {'mIoU':>6} {'recog':>6} {'compos':>6} "
          f"{'comp/ovl':>9} {'CPU-min':>8} {'wall-min':>8}  the study's, within {BAND:.0f} points")
    for model, s, comp_ov, n_ov, cpu, wall, missed in rows:
        target = ", ".join(f"{k} {100 * STUDY_TABLE1[model][k]:.1f}" for k in CALIBRATED)
        verdict = "met" if not missed else "MISSED (" + "; ".join(missed) + ")"
        print(f"{model:10} {s['images']:6d} {s['mean_iou']:6.3f} {s['recognition_rate']:6.2f} "
              f"{s['composite_recognition_rate']:6.2f} {comp_ov:5.2f} ({n_ov:d}) {cpu:8.1f} "
              f"{wall:8.1f}  {target}: {verdict}")
    inst = [(c, m) for m, _, c, n, *_ in rows if m in ("mask_rcnn", "yolact") and n]
    sem = [(c, m) for m, _, c, n, *_ in rows if m not in ("mask_rcnn", "yolact") and n]
    if inst and sem:
        (ci, mi), (cs, ms) = max(inst), max(sem)
        print(f"composite recognition on the images with overlaps: best instance {mi} {ci:.2f} "
              f"vs best semantic {ms} {cs:.2f}" + (f" ({ci / cs:.2f}x)" if cs else ""))


if __name__ == "__main__":
    main()
