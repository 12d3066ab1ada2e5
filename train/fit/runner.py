"""Training through MMEngine's Runner, exactly as MMDetection's / MMSegmentation's tools do.

The checkpoint allowlist (:mod:`train.fit.checkpoint`) is installed first, so ``resume`` and
``load_from`` work under torch >= 2.6.

A training that diverges stops at the first iteration whose loss is not a finite number (NaN or
infinite), and so does one that fails inside MMDetection / MMSegmentation once its weights are no
longer finite or its head says its scores are not (YOLACT's "classification scores become infinite
or NaN!"): :class:`converters.core.errors.TrainingDivergedError`, one line naming the run's
MMEngine log, not a model trained on NaN that reports a score.
"""
from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

from converters.annotations.split import fold_file, splits_file
from converters.core.errors import (InsufficientDataError, InvalidConfigError, MissingInputError,
                                    TrainingDivergedError)
from converters.core.files import (link_into_place, prepare_output, refuse_links_below, within,
                                   remove_output, write_json, write_text)
from converters.core.records import read_json
from train.fit.checkpoint import allow_mmengine_checkpoints
from train.fit.memory import refit_batch
from train.fit.precision import MIXED, settle_precision, to_full_precision
from train.models import BEST_METRIC, family, family_of_scope, names
from train.fit.run_config import build_leaf, nested_options, replace_type


def train(cfg: Config, *, resume: bool = False) -> Runner:
    """Train the model of a leaf config; checkpoints and logs go to ``cfg.work_dir``."""
    allow_mmengine_checkpoints()
    cfg.resume = resume
    # MMEngine keeps one visualizer per name for the whole process, and the mm configs name
    # theirs 'visualizer': a second run in one process (tests, a notebook) would get the first
    # one's, and write its logs and dvclive files into the first run's folder
    cfg.visualizer["name"] = f"spinepipe_{Path(cfg.work_dir).name}_{secrets.token_hex(4)}"
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    if cfg.get("launcher", "none") == "pytorch" and not _cuda():
        # MMEngine 0.10's init_dist calls torch.cuda.set_device unconditionally: on CPU the
        # process group (gloo, from torchrun's environment) is started here, and MMEngine
        # uses it as it finds it
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
    try:
        runner = Runner.from_cfg(cfg)   # builds the model: an override can break it here
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, AssertionError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InvalidConfigError(f"the model does not build from this config "
                                 f"({type(exc).__name__}: {first}); check --cfg-options and "
                                 "the preset's options", file=Path(cfg.work_dir) / "config.py"
                                 ) from None
    runner.register_hook(FiniteLoss(), priority="VERY_HIGH")
    try:
        runner.train()
    except TrainingDivergedError:
        raise
    except Exception as exc:
        # MMDetection's heads assert that their scores are finite ("... become infinite or
        # NaN!"): weights still finite but so large that the forward pass overflows
        said = isinstance(exc, AssertionError) and "nan" in str(exc).lower()
        if not said and _finite_weights(runner.model):
            raise      # a bug, with its traceback
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        raise TrainingDivergedError(
            f"training diverged at iteration {runner.iter + 1} ({type(exc).__name__}: "
            f"{first}); lower the learning rate (--cfg-options optim_wrapper.optimizer.lr=...)",
            file=_log(runner)) from None
    return runner


class FiniteLoss(Hook):
    """Stop at the first training iteration whose loss is NaN or infinite."""

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        loss = (outputs or {}).get("loss")
        if hasattr(loss, "detach"):   # AmpOptimWrapper's loss keeps its graph
            loss = loss.detach()
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDivergedError(
                f"training diverged at iteration {runner.iter + 1}: loss {float(loss)}; lower "
                "the learning rate (--cfg-options optim_wrapper.optimizer.lr=...)",
                file=_log(runner))


def _finite_weights(model) -> bool:
    """Every parameter and float buffer (batch-norm statistics) finite."""
    import torch

    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
               if torch.is_floating_point(t))


def _log(runner) -> Path:
    """The run's log (MMEngine writes it to a timestamped folder of the work dir)."""
    return Path(runner.log_dir) / f"{runner.timestamp}.log"


def last_checkpoint(work_dir: str | Path) -> Path | None:
    """The checkpoint MMEngine recorded as its last one in ``work_dir`` (or None)."""
    marker = Path(work_dir) / "last_checkpoint"
    if not marker.is_file():
        return None
    path = Path(marker.read_text().strip())
    return path if path.is_file() else None


# --------------------------------------------------------------------------------------------
# one model x fold, as `spinepipe train` and dvc.yaml run it


@dataclass(frozen=True)
class ModelSettings:
    """One model's own block of a preset (``train.presets.<preset>.models.<model>``): each
    train stage depends on its own model's block only, so DVC re-trains only the model whose
    block changed."""

    #: its own (width, height) where it needs one: YOLACT's masks come from prototypes at 1/4
    #: of its input (Mask R-CNN's from a 28 x 28 grid per object, whatever the input)
    img_scale: list[int] | None = None
    #: MMEngine options of its config, nested as in the config (``model: {decode_head:
    #: {channels: 32}}``; list items by index, ``param_scheduler: {1: {end: 20}}``) or as dotted
    #: ``--cfg-options`` keys; ``_delete_: true`` replaces a whole dict
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Preset:
    """Image scale, crop, augmentation and each model's block of a training preset."""

    img_scale: list[int] = field(default_factory=lambda: [256, 640])   # width, height
    crop_size: list[int] = field(default_factory=lambda: [256, 256])   # height, width
    augment: list[dict[str, Any]] = field(default_factory=list)        # albumentations
    #: a folder keeping decoded training images, each PNG decoded once per run, not once per
    #: epoch (train/fit/image_cache.py); a cache: the same arrays, so not a DVC dependency
    image_cache: str | None = field(default=None, metadata={"not_a_dep": "a cache"})
    models: dict[str, ModelSettings] = field(default_factory=dict)     # model -> its block


@dataclass(frozen=True)
class TrainConfig:
    """params.yaml section ``train``."""

    preset: str = "demo"
    models: list[str] = field(default_factory=names)     # those dvc repro trains
    folds: list[int] = field(default_factory=lambda: [0])
    seed: int = 0
    pretrained: dict[str, str] = field(default_factory=dict)  # model -> local checkpoint
    #: GPU memory a run may use: its batch size fitted to it, the learning rate scaled
    #: (train/fit/memory.py); None: each config's own batch size
    gpu_memory_gb: float | None = field(default=None, metadata={"min": 1})  # (CUDA's context)
    images: str = "data/interim/png"
    masks: str = "data/processed/masks"
    splits: str = "data/splits"
    presets: dict[str, Preset] = field(default_factory=lambda: {"demo": Preset()})


def prepare_run(model: str, fold: int, cfg: TrainConfig, work_dir: str | Path, *,
                preset: str | None = None, cfg_options: Mapping[str, Any] | None = None,
                launcher: str = "none") -> Config:
    """Check everything a run needs and return its leaf config (nothing trained yet)."""
    fam = family(model)
    name = preset or cfg.preset
    if name not in cfg.presets:
        raise InvalidConfigError(f"unknown preset '{name}' (known: {', '.join(sorted(cfg.presets))})")
    p = cfg.presets[name]
    splits_path = splits_file(cfg.splits)
    splits = read_json(splits_path, what="splits", made_by="split", keys={"folds": list})
    if not 0 <= fold < len(splits["folds"]):
        raise InvalidConfigError(f"fold {fold} out of range (0..{len(splits['folds']) - 1})",
                         file=splits_path)
    for part in ("train", "val"):
        if not splits["folds"][fold][part]:
            raise InsufficientDataError(f"fold {fold} has an empty {part} split", file=splits_path)
    suffix = "json" if fam == "instance" else "txt"
    anns = {part: fold_file(cfg.splits, fold, part, suffix) for part in ("train", "val")}
    for path in (*anns.values(), Path(cfg.images), *([Path(cfg.masks)] if fam == "semantic" else [])):
        if not path.exists():
            raise MissingInputError("missing", produced_by="split", file=path)
    pretrained = cfg.pretrained.get(model)
    if pretrained and not Path(pretrained).is_file():
        raise MissingInputError("pretrained checkpoint not found", file=pretrained)
    unknown = sorted(set(p.models) - set(names()))   # file names: a sibling's broken file
    if unknown:                                      # is that model's error, not this one's
        raise InvalidConfigError(f"train.presets.{name}.models: unknown model '{unknown[0]}' "
                                 f"(known: {', '.join(names())}; a model is a config file in "
                                 "train/configs/)")
    if p.image_cache is not None:
        p = replace(p, image_cache=str(Path(p.image_cache).expanduser()))
        _check_cache_apart(p.image_cache, name, [cfg.images, cfg.masks, cfg.splits, work_dir])
    own = p.models.get(model, ModelSettings())
    options = nested_options(own.options, cfg_options or {})
    img_scale = own.img_scale or p.img_scale
    leaf = build_leaf(model, images=cfg.images, masks=cfg.masks, train_ann=anns["train"],
                      val_ann=anns["val"], work_dir=work_dir, img_scale=tuple(img_scale),
                      crop_size=tuple(p.crop_size), seed=cfg.seed, pretrained=pretrained,
                      augment=p.augment, image_cache=p.image_cache, options=options)
    leaf.launcher = launcher
    if launcher != "none" and not _cuda():
        # torch's SyncBatchNorm runs on accelerators only: CPU processes (gloo) use plain BN
        for key in list(leaf.keys()):
            replace_type(leaf[key], "SyncBN", "BN")
        leaf.env_cfg = {**leaf.get("env_cfg", {}), "dist_cfg": {"backend": "gloo"}}
        # MMEngine's default wrapper passes device_ids=[LOCAL_RANK], which means a GPU
        leaf.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None,
                                      broadcast_buffers=False,
                                      find_unused_parameters=leaf.get("find_unused_parameters",
                                                                      False))
    settle_precision(leaf)
    if cfg.gpu_memory_gb is not None:
        _fit_to_memory(leaf, model, cfg.gpu_memory_gb, len(splits["folds"][fold]["train"]),
                       options)
    return leaf


#: the project's folders DVC's stages write (DESIGN.md's layout), where a cache must not go
DVC_FOLDERS = ("data", "models", "reports")


def _check_cache_apart(cache: str, preset: str, folders: list) -> None:
    """The image cache (train/fit/image_cache.py) a folder, neither inside nor around the
    run's data, its run folder or, in a project (a dvc.yaml here), the folders DVC's stages
    write: entries among the PNGs or in convert's output would change a stage's output, in the
    run folder they would be stored with the model."""
    key = f"train.presets.{preset}.image_cache {cache}"
    if Path(cache).exists() and not Path(cache).is_dir():
        raise InvalidConfigError(f"{key} is a file, not a folder")
    if Path("dvc.yaml").is_file():
        folders = [*folders, *DVC_FOLDERS]
    for folder in map(str, folders):
        if within(cache, folder) or within(folder, cache):
            where = "is inside" if within(cache, folder) else "holds"
            raise InvalidConfigError(f"{key} {where} {folder}: keep the cache apart from the "
                                     "data, the run folders and DVC's outputs (data/, models/, "
                                     "reports/)")


def _fit_to_memory(leaf: Config, model: str, gb: float, train_images: int,
                   options: Mapping[str, Any]) -> None:
    """``train.gpu_memory_gb`` (:mod:`train.fit.memory`): the batch fitted where the options do
    not set one, and on CUDA this process held to that memory."""
    if not gb > 0:     # a number: the params loader checked its type
        raise InvalidConfigError(f"train.gpu_memory_gb is {gb:g}: a number of gibibytes above "
                                 "0, or null")
    from train.fit.memory import fit_batch

    if _cuda():
        import torch

        # each torchrun process on its own GPU before it measures (MMEngine sets it later)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gb * 2 ** 30 / total))
    if "batch_size" in (options.get("train_dataloader") or {}):
        leaf.spinepipe_batch = (f"{leaf.train_dataloader.batch_size} images: set by the options "
                                "(train.gpu_memory_gb fits runs that do not set one)")
        return
    fit_batch(leaf, model, float(gb), train_images,
              lr_set_here="optimizer" in (options.get("optim_wrapper") or {}))


def _train_in_either_precision(leaf: Config, work: Path, resume: bool) -> Runner:
    """Train as the leaf config says; a run in mixed precision whose loss stops being finite
    is trained again from its first iteration in full precision (:mod:`train.fit.precision`),
    its config.py rewritten to say so and its checkpoints removed."""
    if resume and leaf.get("spinepipe_precision") == MIXED and _resumes_full_precision(work):
        to_full_precision(leaf, "resumed from a float32 checkpoint")
        refit_batch(leaf)
    if int(os.environ.get("RANK", "0")) == 0:  # before the process group exists
        write_text(work / "config.py", leaf.pretty_text)  # what Config.dump writes, confined
    try:
        return train(leaf, resume=resume)
    except TrainingDivergedError as exc:
        if leaf.get("spinepipe_precision") != MIXED:
            raise
        what = exc.message.split(";")[0]
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise TrainingDivergedError(
                f"{what} in mixed precision; train again in float32 (--cfg-options "
                "optim_wrapper.type=OptimWrapper) or lower the learning rate",
                file=exc.file) from None
        from mmengine.logging import print_log

        print_log(f"{what} in mixed precision: training again from iteration 1 in float32",
                  logger="current")
        to_full_precision(leaf, f"{what} in mixed precision, trained again from the first "
                                "iteration")
        refit_batch(leaf)        # float32's activations: about twice float16's
    drop_checkpoints(work)
    write_text(work / "config.py", leaf.pretty_text)
    return train(leaf, resume=False)


def drop_checkpoints(work: Path) -> None:
    """The checkpoints of a run that starts again from its first iteration (MMEngine's
    ``*.pth`` and ``last_checkpoint`` in the work dir; links left alone, none below)."""
    for path in [*work.glob("*.pth"), work / "last_checkpoint"]:
        remove_output(work, path.name)   # regular files only, confined to the run's folder


def _resumes_full_precision(work: Path) -> bool:
    """Whether ``--resume`` would continue a float32 checkpoint (no AmpOptimWrapper loss
    scaler in its optimizer state)."""
    import torch

    path = last_checkpoint(work)
    if path is None:
        return False
    allow_mmengine_checkpoints()
    state = torch.load(path, map_location="cpu", mmap=True)
    optimizer = state.get("optimizer") if isinstance(state, dict) else None
    return isinstance(optimizer, dict) and "loss_scaler" not in optimizer


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def trained_with(model, scope: str | None) -> dict:
    """What the study's write-up reports of a run (:mod:`train.report.study_runs`): the model's
    parameter count (every parameter, trainable or frozen; a distributed wrapper's module
    counted once) and the versions of the stack it trained with."""
    import importlib

    import mmcv
    import mmengine
    import torch

    software = {"torch": torch.__version__, "mmengine": mmengine.__version__,
                "mmcv": mmcv.__version__}
    if scope:
        software[scope] = importlib.import_module(scope).__version__
    inner = getattr(model, "module", model)
    return {"parameters": int(sum(p.numel() for p in inner.parameters())), "software": software}


def run(leaf: Config, *, resume: bool = False) -> dict:
    """Train; write the leaf config and ``metrics.json`` (best validation score) to the
    work dir, keep the best checkpoint as ``best.pth``; return the metrics (with this
    process's ``rank`` and the ``world_size``).

    Distributed (``launcher`` pytorch / slurm, one process per rank): every rank trains, and
    rank 0 alone writes files (MMEngine saves checkpoints and logs from rank 0 as well)."""
    from mmengine.dist import get_dist_info

    work = Path(leaf.work_dir)
    prepare_output(work)
    refuse_links_below(work)  # MMEngine opens its files with plain open(): links are followed
    runner = _train_in_either_precision(leaf, work, resume)
    rank, world_size = get_dist_info()
    fam = family_of_scope(leaf.default_scope)
    best_ckpt = runner.message_hub.get_info("best_ckpt")
    best_score = runner.message_hub.get_info("best_score")
    metrics = {"metric": BEST_METRIC[fam], "best": float(best_score) if best_score is not None
               else None, "iterations": int(runner.iter), "epochs": int(runner.epoch),
               "world_size": world_size, "precision": leaf.get("spinepipe_precision"),
               **trained_with(runner.model, leaf.default_scope)}
    if rank == 0:
        if best_ckpt and Path(best_ckpt).is_file():
            # a second name, not a copy: a Mask R-CNN checkpoint is 170 MB
            link_into_place(best_ckpt, work / "best.pth")
        write_json(work / "metrics.json", metrics)
    return {**metrics, "rank": rank}
