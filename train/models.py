"""The model registry and where each run lives: light (no torch, no mmlab), so the command
line, evaluation and the report use it without importing a training stack.

A sixth model: its config file in ``train/configs/``, one entry in :data:`MODELS` and one in
:data:`DISPLAY_NAMES`, its name in ``params.yaml`` ``train.models`` (with its block in each
preset) and a ``plots`` entry in ``dvc.yaml`` (README, "Layout and code map").
"""
from __future__ import annotations

from pathlib import Path

from converters.core.errors import InvalidConfigError

#: model name -> task family ("instance": MMDetection + COCO; "semantic": MMSegmentation + masks).
#: A sixth model: see the module docstring.
MODELS: dict[str, str] = {
    "mask_rcnn": "instance",
    "yolact": "instance",
    "unet": "semantic",
    "pspnet": "semantic",
    "deeplabv3": "semantic",
}
#: how the report, the help texts and the model cards name each model
DISPLAY_NAMES = {"mask_rcnn": "Mask R-CNN", "yolact": "YOLACT", "unet": "U-Net",
                 "pspnet": "PSPNet", "deeplabv3": "DeepLabv3"}
#: the validation metric that picks the best checkpoint, per family. Instance models: COCO's
#: mask AP averaged over IoU 0.50-0.95, not AP50, which saturates on the phantom (Mask R-CNN
#: 1.000 at epochs 16 and 20; the tie kept epoch 16, whose masks were worse: mask AP 0.78
#: against 0.83, test mean IoU 0.861 against 0.915, proposals' IoU 0.837 against 0.877)
BEST_METRIC = {"instance": "coco/segm_mAP", "semantic": "mIoU"}


def family(model: str) -> str:
    if model not in MODELS:
        raise InvalidConfigError(f"unknown model '{model}' (known: {', '.join(sorted(MODELS))})")
    return MODELS[model]


def display_name(model: str) -> str:
    """The model's name as people write it (``Mask R-CNN``); an unknown one as given."""
    return DISPLAY_NAMES.get(model, model)


def family_of_scope(default_scope: str) -> str:
    """The family of a leaf config, from its MMEngine ``default_scope``."""
    return "instance" if default_scope == "mmdet" else "semantic"


def run_dir(model: str, fold: int, root: str | Path = "models") -> Path:
    """``models/<model>/fold<k>``: a trained run (leaf config, checkpoints, metrics)."""
    return Path(root) / model / f"fold{fold}"


def eval_dir(model: str, fold: int, root: str | Path = "reports/eval") -> Path:
    """``reports/eval/<model>/fold<k>``: an evaluation (predictions, per-image scores)."""
    return Path(root) / model / f"fold{fold}"


def eval_metrics_file(evaluation: str | Path) -> Path:
    """``reports/eval/<model>/fold<k>.json`` beside an evaluation folder: its headline numbers
    (:data:`HEADLINE`), flat, as DVC metrics: ``dvc metrics show`` and ``dvc exp show`` give one
    row per model and fold, from the experiment that made them."""
    evaluation = Path(evaluation)
    return evaluation.with_name(evaluation.name + ".json")


#: the numbers of an evaluation's summary that its metrics file carries (evaluate's summary.json
#: keeps everything: per-level recognition, pooled metrics, measures' agreement)
HEADLINE = ("images", "pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou",
            "recognition_rate", "composite_recognition_rate", "lordosis_mae_deg",
            "measurable_rate")
