"""``spinepipe evaluate``: one trained model x fold on the fixed test set.

params.yaml section ``evaluate`` (:class:`train.evaluate.EvaluateConfig`): score threshold and
same-class NMS of instance predictions, minimum instance area, the IoU at which a vertebra
counts as recognized, the overlap criterion of the composite recognition rate, the device.
Writes ``reports/eval/<model>/fold<k>/`` (layout: :mod:`train.evaluate`); the folder is
built under a temporary name and renamed when complete.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Optional

import typer

from converters.errors import UsageError
from pipeline.console import ParamsOption, QuietOption, progress_bar, say
from pipeline.params import load_section
from train.evaluate import EvaluateConfig, TestSet, score, write_predictions, write_scores
from train.leaf import family


def command(
    model: str = typer.Option(..., "--model", "-m", help="mask_rcnn, yolact, unet, pspnet or deeplabv3."),
    fold: int = typer.Option(..., "--fold", "-k", help="Fold whose trained model is evaluated."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Trained run (default models/<model>/fold<k>: config.py + best.pth)."),
    test: Path = typer.Option(Path("data/splits/test/coco.json"), "--test", help="Test set COCO file from the split stage."),
    masks: Path = typer.Option(Path("data/processed/masks"), "--masks", help="Ground-truth class masks from the convert stage."),
    images: Path = typer.Option(Path("data/interim/png"), "--images", help="The exported PNGs."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Score these predictions (predictions/<stem>.png, optional instances.json) instead of running the model."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default reports/eval/<model>/fold<k>)."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Predict the test set with a trained model, then score every image: the four pixel
    metrics, recognition and composite recognition, per-level results, pooled metrics."""
    fam = family(model)
    cfg = load_section(EvaluateConfig, "evaluate", params) if params.exists() else EvaluateConfig()
    out = output or Path("reports/eval") / model / f"fold{fold}"
    gt = TestSet.load(test, masks)
    if predictions is not None and not predictions.is_dir():
        raise UsageError("predictions folder not found", file=predictions)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        src = predictions
        if src is None:
            with progress_bar(f"evaluate {model} fold {fold}: predict", quiet=quiet) as bar:
                write_predictions(run_dir or Path("models") / model / f"fold{fold}", gt, images,
                                  tmp, cfg, progress=bar)
            src = tmp
        with progress_bar(f"evaluate {model} fold {fold}: score", quiet=quiet) as bar:
            rows, summary = score(src, gt, cfg, model=model, fold=fold, family=fam,
                                  progress=bar)
        write_scores(tmp, rows, summary)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    miss = summary["missing_predictions"]
    say(f"evaluate: {model} fold {fold}: mIoU {summary['mean_iou']:.3f}, recognition "
        f"{summary['recognition_rate']:.2f}, composite {summary['composite_recognition_rate']:.2f}"
        f" on {summary['images']} test images"
        + (f"; {len(miss)} without a prediction (scored as misses)" if miss else "")
        + f" -> {out}", quiet=quiet)
