"""``spinepipe evaluate``: one trained model x fold on the fixed test set.

params.yaml section ``evaluate`` (:class:`train.evaluation.evaluate.EvaluateConfig`): the IoU at
which a vertebra counts as recognized, the device; section ``postprocess``
(:class:`train.evaluation.recognition.PostprocessConfig`, shared with ``propose``): score
threshold and same-class NMS of instance predictions, minimum instance area, the overlap
criterion of the composite recognition rate; section ``measures``
(:class:`converters.spine.refine.MeasuresConfig`): the refinement of the clinical measures'
endplates on the test images.
Writes ``reports/eval/<model>/fold<k>/`` (layout: :mod:`train.evaluation.evaluate`); the folder is
built under a temporary name and renamed when complete.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from converters.core import waiting
from converters.core.files import prepare_output, write_json
from pipeline.console import ParamsOption, QuietOption, library_output_to, progress_bar, say
from pipeline.params import stage_params
from converters.spine.refine import MeasuresConfig
from train.evaluation.evaluate import EvaluateConfig, evaluate_run
from train.evaluation.recognition import PostprocessConfig
from train.models import HEADLINE, eval_dir, eval_metrics_file, get, help_list
from train.models import run_dir as default_run_dir


def command(
    model: str = typer.Option(..., "--model", "-m", help=f"A model of train/configs/: {help_list()}."),
    fold: int = typer.Option(..., "--fold", "-k", help="Fold whose trained model is evaluated."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Trained run (default models/<model>/fold<k>: config.py + best.pth)."),
    test: Path = typer.Option(Path("data/splits/test/coco.json"), "--test", help="Test set COCO file from the split stage."),
    masks: Path = typer.Option(Path("data/processed/masks"), "--masks", help="Ground-truth class masks from the convert stage."),
    images: Path = typer.Option(Path("data/interim/png"), "--images", help="The exported PNGs (the models read them; the measures' endplates are refined on them)."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Score these predictions (predictions/<stem>.png, optional instances.json) instead of running the model."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default reports/eval/<model>/fold<k>)."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Predict the test set with a trained model, then score every image: the four pixel
    metrics, recognition and composite recognition, per-level results, pooled metrics."""
    cfg = stage_params(EvaluateConfig, "evaluate", params)
    post = stage_params(PostprocessConfig, "postprocess", params)
    measures = stage_params(MeasuresConfig, "measures", params)
    get(model)   # a typo is an error, not an empty reports/eval/<typo>/
    out = output or eval_dir(model, fold)
    why = waiting.reason_in_file((run_dir or default_run_dir(model, fold)) / "metrics.json")
    if why and predictions is None:  # the run trained nothing: nothing to score yet
        record = {"model": model, "fold": fold, waiting.KEY: why}
        prepare_output(out.parent)  # the walk below it refuses a link planted at out
        write_json(out / "summary.json", record)
        write_json(eval_metrics_file(out), {**record, **dict.fromkeys(HEADLINE)})
        say(f"evaluate: {model} fold {fold}: waiting for annotations ({why}) -> {out}")
        return
    summary = evaluate_run(model, fold, cfg, post=post, measures=measures, test=test,
                           masks=masks, images=images, out=out,
                           run=run_dir, predictions=predictions,
                           bar=lambda text: progress_bar(text, quiet=quiet),
                           capture=library_output_to if quiet else None)  # into evaluate.log
    miss = summary["missing_predictions"]
    say(f"evaluate: {model} fold {fold}: mIoU {summary['mean_iou']:.3f}, recognition "
        f"{summary['recognition_rate']:.2f}, composite {summary['composite_recognition_rate']:.2f}"
        f" on {summary['images']} test images"
        + (f"; {len(miss)} without a prediction (scored as misses)" if miss else "")
        + f" -> {out}")
