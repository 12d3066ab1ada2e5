"""The study's time before the night: a few training iterations of each model on the device at
hand, projected to its whole schedule, every fold (``spinepipe train --estimate``).

Each model's leaf config for fold 0 is built as ``spinepipe train`` builds it (preset, options,
precision, data loader workers) and trained for ``warm_up + iterations`` iterations by MMEngine's
Runner (an ``IterBasedTrainLoop`` over the same data loader; no checkpoints, no schedules, in a
temporary work dir). MMEngine's ``IterTimerHook`` measures each iteration's time and, within it,
the time spent waiting for the data loader (``data_time``); the first ``warm_up`` iterations
(workers starting, cuDNN choosing kernels) are not counted. Validation is timed on up to
``val_images`` images of the fold's validation set, per image.

Projection of one run: its start (the timed run's wall time less its iterations: model, data
sets, workers), the schedule's iterations (epochs x batches per epoch as MMEngine's data
loader counts them, or ``max_iters``) x seconds per iteration, plus its validations (one per
``val_interval``) x validation images x seconds per image. The study: that x the folds of
``splits.json``, summed over the models. The bottleneck is the data pipeline when the device
waits for data for a quarter of an iteration or more, the device otherwise. The data loader's
workers prefetch two batches each during the start and the warm-up: time more iterations than
that (``--iterations`` above twice ``num_workers``) or the wait is hidden.
"""
from __future__ import annotations

import copy
import gc
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

#: the device waits for data this share of an iteration or more: the data pipeline is the limit
DATA_BOUND = 0.25


def cache_within(cfg: Any, preset: str | None, folder: Path) -> Any:
    """``cfg`` (a TrainConfig) with its preset's image cache (:mod:`train.fit.image_cache`)
    moved to ``folder``, the estimate's temporary one: the estimate writes nothing in the
    project, and its timed iterations read their images for the first time (decoded and
    kept: the first epoch's data wait, an upper bound for the epochs after)."""
    name = preset or cfg.preset
    p = cfg.presets.get(name)
    if p is None or p.image_cache is None:
        return cfg
    return replace(cfg, presets={**cfg.presets, name: replace(p, image_cache=str(folder))})


@dataclass(frozen=True)
class Estimate:
    """One model's measured iterations and its projected study time."""

    model: str
    seconds_per_iter: float        # mean over the timed iterations, data wait included
    data_seconds_per_iter: float   # of which waiting for the data loader
    val_seconds_per_image: float
    start_seconds: float           # a run's start: building the model, data sets, workers
    iterations: int                # of one run's whole schedule
    validations: int               # of one run
    val_images: int                # of the fold's validation set
    runs: int                      # folds
    memory_gb: float | None        # peak CUDA memory of training (None: not a CUDA device)

    @property
    def run_seconds(self) -> float:
        return (self.start_seconds + self.iterations * self.seconds_per_iter
                + self.validations * self.val_images * self.val_seconds_per_image)

    @property
    def total_seconds(self) -> float:
        return self.runs * self.run_seconds

    @property
    def data_share(self) -> float:
        return self.data_seconds_per_iter / self.seconds_per_iter if self.seconds_per_iter else 0

    @property
    def bottleneck(self) -> str:
        return "data pipeline" if self.data_share >= DATA_BOUND else "device"


def device_name() -> str:
    import os

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (1 of {torch.cuda.device_count()} GPUs)"
    return f"CPU ({os.cpu_count()} cores)"


def schedule(cfg: Any, batches_per_epoch: int) -> tuple[int, int]:
    """(iterations, validations) of one run of a leaf config's training loop."""
    from train.fit.run_config import by_iterations

    loop = cfg.train_cfg
    by_epoch = not by_iterations(loop)
    length = loop["max_epochs"] if by_epoch else loop["max_iters"]
    # MMEngine's defaults: every epoch, every 1000 iterations
    every, begin = loop.get("val_interval", 1 if by_epoch else 1000), loop.get("val_begin", 1)
    # MMEngine's loops validate after epoch / iteration n when n >= val_begin and n is a
    # multiple of val_interval or the last one
    validations = sum(1 for n in range(max(begin, 1), length + 1)
                      if n % every == 0 or n == length)
    return (length * batches_per_epoch if by_epoch else length), validations


def _timing_config(leaf: Any, work: Path, steps: int, val_images: int) -> Any:
    """The leaf with a bounded iteration loop, nothing saved, nothing scheduled."""
    cfg = copy.deepcopy(leaf)
    cfg.work_dir = str(work)
    # no validation inside (MMEngine would validate after the last iteration): timed apart
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=steps, val_interval=10 ** 9,
                         val_begin=steps + 1)
    cfg.param_scheduler = None
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=10 ** 9,
                                        save_last=False)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=max(1, steps))
    cfg.visualizer.vis_backends = [b for b in cfg.visualizer.get("vis_backends", [])
                                   if b.get("type") != "DVCLiveVisBackend"]
    cfg.val_dataloader.dataset.indices = val_images
    return cfg


def estimate_model(model: str, leaf: Any, *, runs: int, iterations: int = 20,
                   warm_up: int = 5, val_images: int = 10,
                   within: Path | None = None) -> Estimate:
    """Train ``warm_up + iterations`` iterations of ``leaf`` (fold 0's), time them and
    ``val_images`` validation images, and project the whole schedule x ``runs`` folds. The
    timed run's files go to a temporary folder (in ``within``), removed at the end."""
    import torch

    from train.fit.runner import train

    with tempfile.TemporaryDirectory(prefix=f"spinepipe-estimate-{model}-", dir=within) as tmp:
        cfg = _timing_config(leaf, Path(tmp), warm_up + iterations, val_images)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        runner = train(cfg)
        elapsed = time.perf_counter() - started
        memory = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() \
            else None
        hub = runner.message_hub
        every = hub.get_scalar("train/time").data[0]
        times = every[warm_up:]
        waits = hub.get_scalar("train/data_time").data[0][warm_up:]
        batches = len(runner.train_loop.dataloader)
        val_set = len(runner.build_dataloader(leaf.val_dataloader).dataset)
        started = time.perf_counter()
        runner.val()
        shown = len(runner.val_loop.dataloader.dataset)
        per_image = (time.perf_counter() - started) / max(shown, 1)
        del runner                  # the next model's peak memory is its own
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    total, validations = schedule(leaf, batches)
    return Estimate(model, float(times.mean()), float(waits.mean()), per_image,
                    max(0.0, elapsed - float(every.sum())), total, validations, val_set, runs,
                    memory)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def summary(estimates: list[Estimate]) -> str:
    """The projected study in one line: runs, total time, each model's bottleneck."""
    runs = sum(e.runs for e in estimates)
    total = sum(e.total_seconds for e in estimates)
    limits = {e.bottleneck for e in estimates}
    folds = sorted({e.runs for e in estimates})
    models = f"{len(estimates)} model{'s' if len(estimates) > 1 else ''}"
    shape = f"{models} x {folds[0]} folds" if len(folds) == 1 else models
    limit = (f"the {limits.pop()}" if len(limits) == 1 else
             ", ".join(f"{e.model}: the {e.bottleneck}" for e in estimates))
    return (f"{runs} runs ({shape}) projected at {hours(total)} on {device_name()}; "
            f"bottleneck: {limit}")
