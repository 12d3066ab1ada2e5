"""Per-run ("leaf") MMEngine configs: a model config from ``train/configs/`` plus this run's
data paths, image scale and schedule.

Model configs inherit MMDetection's / MMSegmentation's own base configs (``mmdet::``,
``mmseg::``) and override only what this data needs; a leaf config adds what differs per fold
and preset, and is written next to the run's outputs as an artifact (``config.py``), so the
exact configuration of every trained model can be re-run with MMDetection's or MMSegmentation's
own tools.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mmengine.config import Config

from converters.errors import UsageError

CONFIG_DIR = Path(__file__).parent / "configs"

#: model name -> task family ("instance": MMDetection + COCO; "semantic": MMSegmentation + masks)
MODELS: dict[str, str] = {
    "mask_rcnn": "instance",
    "unet": "semantic",
}


def family(model: str) -> str:
    if model not in MODELS:
        raise UsageError(f"unknown model '{model}' (known: {', '.join(sorted(MODELS))})")
    return MODELS[model]


def config_path(model: str) -> Path:
    family(model)
    return CONFIG_DIR / f"{model}.py"


def _pipelines(cfg: Config):
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        ds = cfg.get(loader, {}).get("dataset")
        if ds is not None and "pipeline" in ds:
            yield ds["pipeline"]


def set_transform(cfg: Config, transform: str, **kwargs: Any) -> None:
    """Set ``kwargs`` on every ``transform`` step of every data pipeline of ``cfg``."""
    for pipeline in _pipelines(cfg):
        for step in pipeline:
            if step.get("type") == transform:
                step.update(kwargs)


def build_leaf(model: str, *, data_root: str | Path, train_ann: str, val_ann: str,
               work_dir: str | Path, img_scale: tuple[int, int] | None = None,
               crop_size: tuple[int, int] | None = None,
               options: Mapping[str, Any] | None = None) -> Config:
    """The leaf config of one run.

    ``data_root`` holds ``images/`` (and ``masks/``); ``train_ann`` / ``val_ann`` are COCO
    files (instance models) or split lists of image stems (semantic models), relative to
    ``data_root``. ``img_scale`` is (width, height), ``crop_size`` (height, width);
    ``options`` are MMEngine ``--cfg-options`` (dotted keys), applied last.
    """
    fam = family(model)
    cfg = Config.fromfile(str(config_path(model)))
    root = str(Path(data_root).resolve()) + "/"
    for name, ann in (("train_dataloader", train_ann), ("val_dataloader", val_ann),
                      ("test_dataloader", val_ann)):
        cfg[name]["dataset"]["data_root"] = root
        cfg[name]["dataset"]["ann_file"] = ann
    if fam == "instance":
        cfg.val_evaluator["ann_file"] = root + val_ann
        cfg.test_evaluator["ann_file"] = root + val_ann
    if img_scale is not None:
        set_transform(cfg, "Resize", scale=tuple(img_scale))
    if crop_size is not None and fam == "semantic":
        set_transform(cfg, "RandomCrop", crop_size=tuple(crop_size))
        cfg.model.data_preprocessor["size"] = tuple(crop_size)
    cfg.work_dir = str(Path(work_dir).resolve())
    if options:
        cfg.merge_from_dict(dict(options))
    return cfg
