"""Per-image pixel metrics: spinepipe (train/evaluation/metrics.py) vs a straightforward
implementation of the same formulas with one boolean mask per class
(benchmarks/reference_metrics.py, as the study's reference implementation computes them), on label
masks at 1100x2870.

Targets (issue 6): >= 50x faster with identical values, and the metrics of a pair take less
time than decoding its two PNGs. The product runs on all pairs; the reference (slow) on the
first ``--reference`` pairs, compared per pair.

    .venv/bin/python benchmarks/bench_metrics.py [--pairs 1000] [--reference 30]
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from converters.annotations.coco import PNG_LABEL_PARAMS
from reference_metrics import reference_metrics
from train.evaluation.metrics import METRICS, pixel_metrics

H, W = 2870, 1100


def make_pair(rng: np.random.Generator) -> tuple[bytes, bytes]:
    """A ground truth (five lumbar vertebrae and a sacrum as quadrilaterals) and a prediction
    with shifted, resized and partly missed vertebrae, both as label PNGs."""
    gt, pred = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    y = 700 + rng.integers(-100, 100)
    for k in range(6):
        h = 260 if k < 5 else 420
        x0 = 350 + rng.integers(-40, 40) + 25 * k
        quad = np.array([[x0, y], [x0 + 380, y + 20], [x0 + 370, y + h], [x0 - 10, y + h - 20]])
        value = 1 if k < 5 else 2
        cv2.fillPoly(gt, [quad.astype(np.int32)], value)
        if rng.random() > 0.05:
            jitter = quad + rng.normal(0, 12, quad.shape)
            cv2.fillPoly(pred, [jitter.astype(np.int32)], value if rng.random() > 0.03 else 3 - value)
        y += h + 40
    return (cv2.imencode(".png", gt, PNG_LABEL_PARAMS)[1].tobytes(),
            cv2.imencode(".png", pred, PNG_LABEL_PARAMS)[1].tobytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--reference", type=int, default=30)
    ap.add_argument("--distinct", type=int, default=25, help="distinct pairs, cycled")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    pool = [make_pair(rng) for _ in range(args.distinct)]
    decoded = [(cv2.imdecode(np.frombuffer(g, np.uint8), cv2.IMREAD_UNCHANGED),
                cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_UNCHANGED)) for g, p in pool]

    t0 = time.perf_counter()
    for i in range(args.pairs):
        g, p = pool[i % len(pool)]
        cv2.imdecode(np.frombuffer(g, np.uint8), cv2.IMREAD_UNCHANGED)
        cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_UNCHANGED)
    decode = (time.perf_counter() - t0) / args.pairs

    t0 = time.perf_counter()
    ours = [pixel_metrics(*decoded[i % len(decoded)][::-1]) for i in range(args.pairs)]
    fast = (time.perf_counter() - t0) / args.pairs

    n = min(args.reference, args.pairs)
    t0 = time.perf_counter()
    ref = [reference_metrics(*decoded[i % len(decoded)][::-1]) for i in range(n)]
    slow = (time.perf_counter() - t0) / n
    worst = max(abs(ours[i][k] - ref[i][k]) for i in range(n) for k in METRICS)

    print(f"{args.pairs} pairs at {W}x{H} (label PNGs, {len(pool)} distinct, cycled)")
    print(f"  decode both PNGs     {1e3 * decode:8.2f} ms / pair")
    print(f"  spinepipe metrics    {1e3 * fast:8.2f} ms / pair  (all {args.pairs} pairs: "
          f"{fast * args.pairs:.1f} s)")
    print(f"  per-class reference  {1e3 * slow:8.2f} ms / pair  (timed on {n} pairs)")
    print(f"  speed-up {slow / fast:6.1f}x   (target >= 50x: {'met' if slow / fast >= 50 else 'MISSED'})")
    print(f"  metrics / decode {fast / decode:5.2f}   (target < 1: {'met' if fast < decode else 'MISSED'})")
    print(f"  largest difference from the reference: {worst:.2e} "
          f"({'identical' if worst < 1e-12 else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
