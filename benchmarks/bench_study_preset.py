"""GPU readiness: the study preset (the paper's set-up) for one model and one fold, for a
bounded number of iterations, on whatever device there is; seconds per iteration and peak
memory, read from MMEngine's own log.

Run it where the study will run (a GPU machine), after the pipeline's data exist
(`dvc repro split`):

    .venv/bin/python benchmarks/bench_study_preset.py --model mask_rcnn --iters 50

Epoch-based models (Mask R-CNN, YOLACT) train one epoch on as many images as the iterations
need; iteration-based ones (U-Net, PSPNet, DeepLabv3) `--iters` iterations. The run goes to
a temporary work dir; nothing of the project changes. Measured on the 2-core CPU development
machine (one iteration at 640x1600, validation on the fold's images included): Mask R-CNN
96 s / 5.7 GB, YOLACT 55 s / 2.9 GB, U-Net 160 s / 9.7 GB, PSPNet 122 s / 6.0 GB, DeepLabv3
170 s / 6.4 GB: the study preset is for GPUs.
"""
from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPINEPIPE = str(Path(sys.executable).parent / "spinepipe")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mask_rcnn")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    epoch_based = args.model in ("mask_rcnn", "yolact")
    options = (["train_cfg.max_epochs=1", f"train_dataloader.dataset.indices={2 * args.iters}",
                "train_cfg.val_interval=2"] if epoch_based else
               [f"train_cfg.max_iters={args.iters}", f"train_cfg.val_interval={args.iters + 1}"])
    with tempfile.TemporaryDirectory() as work:
        cmd = [SPINEPIPE, "train", "--model", args.model, "--fold", str(args.fold), "--preset",
               "study", "--params", args.params, "--work-dir", work, "--quiet"]
        for o in options:
            cmd += ["--cfg-options", o]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        log = (Path(work) / "train.log").read_text(errors="replace")
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    times = [float(t) for t in re.findall(r"Iter\(train\).*?\btime: ([0-9.]+)", log)]
    memory = [int(m) for m in re.findall(r"\bmemory: ([0-9]+)", log)]
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"study preset, {args.model} fold {args.fold}: {proc.stdout.strip() or proc.stderr.strip()}")
    if times:
        print(f"  seconds per iteration (MMEngine's log, last {len(times)} reports): "
              f"{sum(times) / len(times):.3f}")
    print(f"  wall {wall:.1f} s for the whole command; peak host memory {rss:.0f} MB"
          + (f"; peak GPU memory {max(memory)} MB" if memory else ""))


if __name__ == "__main__":
    main()
