"""Do the models learn? Train each model with the demo preset on the phantom's fold 0 and print
the validation score reached and the CPU time it took.

Targets (issue 5): U-Net mIoU >= 0.80 and Mask R-CNN mask AP50 >= 0.80, each within 10
CPU-minutes. Needs the demo's data (run `make demo` first, or `dvc repro split`).

    .venv/bin/python benchmarks/bench_learning.py [--models unet mask_rcnn] [--fold 0]
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
import json

TARGETS = {"unet": 0.80, "mask_rcnn": 0.80}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["unet", "mask_rcnn", "pspnet", "deeplabv3", "yolact"])
    ap.add_argument("--fold", type=int, default=0)
    args = ap.parse_args()
    spinepipe = str(Path(sys.executable).parent / "spinepipe")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            work = Path(tmp) / model
            subprocess.run([spinepipe, "train", "--model", model, "--fold", str(args.fold),
                            "--work-dir", str(work), "--quiet"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            m = json.loads((work / "metrics.json").read_text())
            best = m["best"] / 100 if m["metric"] == "mIoU" else m["best"]
            rows.append((model, m["metric"], best, cpu / 60, wall / 60))
    print(f"{'model':10} {'metric':18} {'best':>6} {'CPU-min':>8} {'wall-min':>8}  target")
    for model, metric, best, cpu, wall in rows:
        target = TARGETS.get(model)
        verdict = "" if target is None else (
            f">= {target:.2f} in 10 CPU-min: " + ("met" if best >= target and cpu <= 10 else "MISSED"))
        print(f"{model:10} {metric:18} {best:6.3f} {cpu:8.1f} {wall:8.1f}  {verdict}")


if __name__ == "__main__":
    main()
