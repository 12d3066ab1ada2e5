"""A run's batch size fitted to the GPU memory it may use (``train.gpu_memory_gb``), the learning
rate scaled with it by MMEngine's ``auto_scale_lr``.

The memory a training iteration needs is measured, not looked up: one forward pass of the run's
model on real training batches of 2 and of 4 images (its own data pipeline, on the device at
hand, in the precision the run trains with) records every tensor autograd saves for the backward
pass (``torch.autograd.graph.saved_tensors_hooks``; storages counted once, parameters apart).
Half the difference between the two is one image's activations (batch-norm layers need two
images or more); the parameters cost their weights,
their gradients and the optimizer's state (AdamW two tensors each, SGD with momentum one).

    batch = (budget - parameters' share - activations' fixed share) / (one image x HEADROOM)

with ``budget`` = ``gpu_memory_gb`` less ``CONTEXT_GB`` (CUDA's context, cuDNN's workspaces),
``HEADROOM`` for what the saved tensors leave out (the backward pass's temporaries, allocator
fragmentation); at least 1, at most the training set. ``spinepipe train --estimate`` prints the
peak memory CUDA measured at the batch chosen.

The schedule: the run sees as many images as before, so every count of iterations (an
iteration-based loop's length and intervals, iteration-based schedules such as a warm-up) is
scaled by old batch / new batch; epochs stay.

The learning rate: MMEngine multiplies it by ``batch x GPUs / base_batch_size``, where the base
is the batch the config's learning rate was set for: MMDetection's own ``auto_scale_lr.
base_batch_size`` (its configs' GPUs x images per GPU) where the config has one, else the config's
batch size before the change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from converters.core.errors import InvalidConfigError

CONTEXT_GB = 1.0
HEADROOM = 1.5
MAX_BATCH = 64


@dataclass(frozen=True)
class Footprint:
    """Bytes of one training iteration: fixed (parameters, gradients, optimizer state, the
    activations' share that does not grow with the batch) and per image."""

    fixed: int
    per_image: int

    def batch(self, gpu_memory_gb: float) -> int:
        """The largest batch that fits (0: not even one image)."""
        budget = (gpu_memory_gb - CONTEXT_GB) * 2 ** 30 - self.fixed
        return max(0, int(budget // (self.per_image * HEADROOM)))


def _saved_bytes(model: Any, batch: dict, params: set[int], mixed: bool, device: str) -> int:
    """Bytes of the tensors autograd saves in one forward pass computing the losses."""
    import torch

    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    data = model.data_preprocessor(batch, training=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(device_type=device, enabled=mixed):
        losses = model(**data, mode="loss")
    del losses
    return sum(storages.values())


def footprint(leaf: Any) -> Footprint:
    """One training iteration's memory of a leaf config's model at its training input, on this
    process's device (:mod:`module docstring <train.fit.memory>`)."""
    import random

    import numpy as np
    import torch
    from mmengine.device import get_device
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, DefaultScope
    from mmengine.runner import Runner
    from mmengine.utils import import_modules_from_strings

    from train.fit.precision import MIXED

    if leaf.get("custom_imports"):
        import_modules_from_strings(**leaf.custom_imports)
    device = get_device()
    mixed = leaf.get("spinepipe_precision") == MIXED
    # seeded (and the process's generators left as they were): the same weights and batches,
    # so the same regions sampled and the same figure on every call
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]), \
            DefaultScope.overwrite_default_scope(leaf.default_scope):
        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)
        # as MMEngine's Runner does outside a distributed run
        model = revert_sync_batchnorm(MODELS.build(leaf.model)).to(device).train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved = []
        for n in (2, 4):
            loader = Runner.build_dataloader({**leaf.train_dataloader, "batch_size": n,
                                              "num_workers": 0, "persistent_workers": False,
                                              "pin_memory": False}, seed=0)
            saved.append(_saved_bytes(model, next(iter(loader)), params, mixed, device))
    random.setstate(states[0])
    np.random.set_state(states[1])
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    optimizer = str(leaf.optim_wrapper.get("optimizer", {}).get("type", ""))
    slots = 1 if optimizer == "SGD" else 2
    per_image = max((saved[1] - saved[0]) // 2, 1)
    return Footprint(weights * (2 + slots) + max(saved[0] - 2 * per_image, 0), per_image)


def fit_batch(leaf: Any, model: str, gpu_memory_gb: float, train_images: int) -> str:
    """Set the leaf's batch size to what fits ``gpu_memory_gb`` and MMEngine's ``auto_scale_lr``
    to scale its learning rate; return what was chosen (``spinepipe_batch`` in config.py)."""
    base = int((leaf.get("auto_scale_lr") or {}).get("base_batch_size")
               or leaf.train_dataloader.batch_size)
    need = footprint(leaf)
    batch = min(need.batch(gpu_memory_gb), MAX_BATCH, max(train_images, 1))
    if batch < 1:
        one = (need.fixed + need.per_image * HEADROOM) / 2 ** 30 + CONTEXT_GB
        raise InvalidConfigError(
            f"train.gpu_memory_gb is {gpu_memory_gb:g}: {model} needs about {one:.1f} GB for "
            "one image at this preset's input size; raise it or lower the preset's img_scale")
    before = int(leaf.train_dataloader.batch_size)
    leaf.train_dataloader.batch_size = batch
    leaf.auto_scale_lr = dict(enable=True, base_batch_size=base)
    same_images_seen(leaf, before / batch)
    leaf.spinepipe_batch = (
        f"{batch} images: fitted to {gpu_memory_gb:g} GB (about {need.per_image / 2 ** 20:.0f} "
        f"MB of activations per image, {need.fixed / 2 ** 20:.0f} MB fixed); learning rate x "
        f"{batch}/{base} (auto_scale_lr); iteration counts x {before}/{batch}")
    return leaf.spinepipe_batch


def _scaled(value: int, factor: float, least: int = 1) -> int:
    return max(least, round(value * factor))


def same_images_seen(leaf: Any, factor: float) -> None:
    """Every count of iterations in a leaf config times ``factor`` (old batch / new batch), so
    the run sees as many images as before: an iteration-based loop's length, validation and
    checkpoint intervals, and the iteration-based schedules (MMDetection's 500-iteration warm-up,
    MMSegmentation's polynomial decay); epochs stay as they are."""
    from train.fit.run_config import by_iterations

    loop = leaf.train_cfg
    if by_iterations(loop):
        for key in ("max_iters", "val_interval"):
            if key in loop:
                loop[key] = _scaled(loop[key], factor)
        if loop.get("val_begin"):
            loop["val_begin"] = _scaled(loop["val_begin"], factor, least=0)
        checkpoint = leaf.default_hooks.get("checkpoint") or {}
        if not checkpoint.get("by_epoch", True) and "interval" in checkpoint:
            checkpoint["interval"] = _scaled(checkpoint["interval"], factor)
    schedulers = leaf.get("param_scheduler") or []
    for step in [schedulers] if isinstance(schedulers, dict) else schedulers:
        if step.get("by_epoch", True):
            continue
        for key in ("begin", "end", "T_max"):
            if isinstance(step.get(key), int):
                step[key] = _scaled(step[key], factor, least=0 if key == "begin" else 1)
        if isinstance(step.get("milestones"), list):
            step["milestones"] = [_scaled(m, factor) for m in step["milestones"]]
