"""``spinepipe metrics``: the study's four per-image pixel metrics of one prediction /
ground-truth pair of label PNGs, as JSON (definitions and conventions:
:mod:`train.evaluation.metrics`).
"""
from __future__ import annotations

import json
from pathlib import Path

import typer

from train.evaluation.test_set import read_mask
from train.evaluation.metrics import pixel_metrics


def command(
    pred: Path = typer.Option(..., "--pred", help="Predicted label PNG (one channel: 0 background, 1 lumbar, 2 sacrum)."),
    gt: Path = typer.Option(..., "--gt", help="Ground-truth label PNG of the same size."),
) -> None:
    """Print pixel_accuracy, mean_accuracy, mean_iou and frequency_weighted_iou of one pair
    as JSON (fractions; background counts as a class)."""
    p = read_mask(pred, what="prediction")
    g = read_mask(gt, what="ground-truth")
    typer.echo(json.dumps(pixel_metrics(p, g, image=pred.name), indent=1))
