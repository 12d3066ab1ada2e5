"""Pixel metrics (train/evaluation/metrics.py) on hand-computed cases, against the straightforward
per-class-mask implementation, pooled metrics, and ``spinepipe metrics``."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from converters.core.errors import ShapeMismatchError, SpinepipeError
from train.evaluation.metrics import METRICS, confusion, pixel_metrics, pooled_metrics

ROOT = Path(__file__).resolve().parents[1]
SPINEPIPE = str(Path(sys.executable).parent / "spinepipe")
_spec = importlib.util.spec_from_file_location("reference_metrics",
                                               ROOT / "benchmarks" / "reference_metrics.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def m(rows):
    return np.array(rows, np.uint8)


@pytest.mark.parametrize("pred, gt, expected", [
    # one lumbar pixel of two lost to background, one background pixel called lumbar:
    # n00 1, t0 2, p0 1; n11 2, t1 2, p1 3
    (m([[0, 1], [1, 1]]), m([[0, 0], [1, 1]]),
     (3 / 4, (1 / 2 + 1) / 2, (1 / 2 + 2 / 3) / 2, (2 * 1 / 2 + 2 * 2 / 3) / 4)),
    # a class that is only predicted adds 0 to the IoU sum and nothing to the divisor
    (m([[0, 0], [0, 1]]), m([[0, 0], [0, 0]]), (3 / 4, 3 / 4, 3 / 4, 3 / 4)),
    # a ground-truth class that is missed: IoU 0, divisor 2
    (m([[0, 0], [0, 0]]), m([[0, 0], [0, 2]]), (3 / 4, (1 + 0) / 2, 0.75 / 2, 3 * 0.75 / 4)),
    # empty masks (all background on both sides) are perfect
    (m([[0, 0], [0, 0]]), m([[0, 0], [0, 0]]), (1.0, 1.0, 1.0, 1.0)),
    # 255 (ignore) counts as a class, as in the reference implementation
    (m([[0, 0]]), m([[255, 0]]), (1 / 2, 1 / 2, 0.5 / 2, 0.5 / 2)),
    # perfect three-class prediction
    (m([[0, 1, 2]]), m([[0, 1, 2]]), (1.0, 1.0, 1.0, 1.0)),
])
def test_hand_computed_cases(pred, gt, expected):
    got = pixel_metrics(pred, gt)
    assert list(got) == list(METRICS)
    assert [got[k] for k in METRICS] == pytest.approx(expected)
    assert got == pytest.approx(reference.reference_metrics(pred, gt))


@pytest.mark.parametrize("seed, shape, n_classes", [(0, (37, 53), 3), (1, (640, 256), 4),
                                                    (2, (5, 5), 2), (3, (300, 120), 256)])
def test_equal_to_the_per_class_mask_implementation(seed, shape, n_classes):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, n_classes, shape).astype(np.uint8)
    pred = np.where(rng.random(shape) < 0.7, gt, rng.integers(0, n_classes, shape)).astype(np.uint8)
    assert pixel_metrics(pred, gt) == pytest.approx(reference.reference_metrics(pred, gt), abs=1e-12)


def test_other_integer_dtypes_and_bad_masks():
    gt = np.array([[0, 1], [2, 2]], np.int32)
    assert pixel_metrics(gt.copy(), gt)["mean_iou"] == 1.0
    with pytest.raises(ShapeMismatchError, match="differ in shape"):
        pixel_metrics(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8), image="a.png")
    with pytest.raises(SpinepipeError, match="0..255"):
        pixel_metrics(np.full((2, 2), 300, np.int32), np.zeros((2, 2), np.int32))
    with pytest.raises(SpinepipeError, match="non-empty"):
        pixel_metrics(np.zeros((0, 4), np.uint8), np.zeros((0, 4), np.uint8))


def test_pooled_metrics_sum_confusion_matrices():
    a_pred, a_gt = m([[0, 1], [1, 1]]), m([[0, 0], [1, 1]])
    b_pred, b_gt = m([[2, 2], [0, 0]]), m([[2, 0], [0, 0]])
    pooled = pooled_metrics([confusion(a_pred, a_gt), confusion(b_pred, b_gt)],
                            {0: "background", 1: "lumbar", 2: "sacrum"})
    # totals: background t 5 p 3 n 3; lumbar t 2 p 3 n 2; sacrum t 1 p 2 n 1
    assert pooled["pixel_accuracy"] == pytest.approx(6 / 8)
    assert pooled["iou"] == pytest.approx({"background": 3 / 5, "lumbar": 2 / 3, "sacrum": 1 / 2})
    assert pooled["dice"] == pytest.approx({"background": 6 / 8, "lumbar": 4 / 5, "sacrum": 2 / 3})
    assert pooled["mean_iou"] == pytest.approx((3 / 5 + 2 / 3 + 1 / 2) / 3)
    assert pooled["confusion"]["matrix"] == [[3, 1, 1], [0, 2, 0], [0, 0, 1]]


def test_metrics_command_prints_the_four_keys(tmp_path):
    pred, gt = m([[0, 1], [1, 1]]), m([[0, 0], [1, 1]])
    cv2.imwrite(str(tmp_path / "pred.png"), pred)
    cv2.imwrite(str(tmp_path / "gt.png"), gt)
    proc = subprocess.run([SPINEPIPE, "metrics", "--pred", str(tmp_path / "pred.png"),
                           "--gt", str(tmp_path / "gt.png")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou"}
    assert out == pytest.approx(pixel_metrics(pred, gt))


@pytest.mark.parametrize("case", ["shape", "missing", "rgb"])
def test_metrics_command_bad_input(tmp_path, case):
    gt = tmp_path / "gt.png"
    cv2.imwrite(str(gt), np.zeros((4, 4), np.uint8))
    pred = tmp_path / "pred.png"
    if case == "shape":
        cv2.imwrite(str(pred), np.zeros((4, 5), np.uint8))
    elif case == "rgb":
        cv2.imwrite(str(pred), np.zeros((4, 4, 3), np.uint8))
    proc = subprocess.run([SPINEPIPE, "metrics", "--pred", str(pred), "--gt", str(gt)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "pred.png" in lines[0], proc.stderr
