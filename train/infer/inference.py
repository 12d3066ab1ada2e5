"""Inference of a trained run (``models/<model>/fold<k>/``) through MMDetection's /
MMSegmentation's own APIs (``init_detector`` + ``inference_detector``, ``init_model`` +
``inference_model``), on the run's leaf config and ``best.pth``.

The test pipeline is the leaf config's (same scale as validation) without
``LoadAnnotations``. Outputs are at the original image size: instance models give masks,
classes and scores; semantic models a class mask (0 background, 1 lumbar, 2 sacrum).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from mmengine.config import Config

from converters.core.errors import MissingInputError
from train.fit.checkpoint import allow_mmengine_checkpoints, check_checkpoint
from train.models import family_of_scope


@dataclass
class RawPrediction:
    """One image's model output: a class mask (semantic) or instances (instance models)."""

    class_mask: np.ndarray | None = None
    classes: list[str] | None = None
    masks: np.ndarray | None = None      # (N, H, W) bool
    scores: list[float] | None = None


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def load_run(run_dir: str | Path) -> tuple[Config, Path, str]:
    """The leaf config, best checkpoint and family ("instance" / "semantic") of a run."""
    run_dir = Path(run_dir)
    cfg_path, ckpt = run_dir / "config.py", run_dir / "best.pth"
    for path in (cfg_path, ckpt):
        if not path.is_file():
            raise MissingInputError("trained run incomplete: file missing", produced_by="train", file=path)
    cfg = Config.fromfile(str(cfg_path), import_custom_modules=False)
    _import_custom_modules(cfg)
    family = family_of_scope(cfg.get("default_scope"))
    pipeline = [copy.deepcopy(t) for t in cfg.test_dataloader.dataset.pipeline
                if t.get("type") != "LoadAnnotations"]
    cfg.test_dataloader.dataset.pipeline = pipeline
    cfg.test_pipeline = pipeline
    cfg.visualizer.vis_backends = [dict(type="LocalVisBackend")]
    return cfg, ckpt, family


#: modules a run's leaf config imports that have moved since it was trained (runs are kept for
#: years: a study's trainings take hours each)
MOVED_MODULES = {"train.augment": "train.fit.augment"}


def _import_custom_modules(cfg: Config) -> None:
    """The config's ``custom_imports`` (the augmentation transforms), by their current names."""
    from mmengine.utils import import_modules_from_strings
    custom = cfg.get("custom_imports")
    if custom:
        names = [MOVED_MODULES.get(m, m) for m in custom.get("imports", [])]
        cfg.custom_imports = dict(custom, imports=names)
        import_modules_from_strings(names, custom.get("allow_failed_imports", False))


def predict(run_dir: str | Path, image_paths: Sequence[str | Path], *, device: str = "auto",
            batch_size: int = 4) -> Iterator[tuple[Path, RawPrediction]]:
    """Yield ``(image path, prediction)`` for each image, in order."""
    cfg, ckpt, family = load_run(run_dir)
    check_checkpoint(ckpt)
    allow_mmengine_checkpoints()
    dev = _device(device)
    paths = [Path(p) for p in image_paths]
    if family == "instance":
        from mmdet.apis import inference_detector, init_detector
        model = init_detector(cfg, str(ckpt), device=dev)
        names = list(model.dataset_meta["classes"])
        for i in range(0, len(paths), batch_size):
            chunk = paths[i:i + batch_size]
            for path, res in zip(chunk, inference_detector(model, [str(p) for p in chunk])):
                inst = res.pred_instances
                yield path, RawPrediction(
                    classes=[names[int(k)] for k in inst.labels.cpu().numpy()],
                    masks=inst.masks.cpu().numpy().astype(bool) if "masks" in inst
                    else np.zeros((0, *res.ori_shape), bool),
                    scores=[float(s) for s in inst.scores.cpu().numpy()])
    else:
        from mmseg.apis import inference_model, init_model
        model = init_model(cfg, str(ckpt), device=dev)
        for i in range(0, len(paths), batch_size):
            chunk = paths[i:i + batch_size]
            results = inference_model(model, [str(p) for p in chunk])
            for path, res in zip(chunk, results):
                mask = res.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)
                yield path, RawPrediction(class_mask=mask)
