"""A run's batch size fitted to the GPU memory it may use (``train.gpu_memory_gb``, in GiB), the
learning rate scaled with it by MMEngine's ``auto_scale_lr``.

The memory a training iteration needs is measured, not looked up: one forward pass of the run's
model on real training batches of 2 and of 4 images (its own data pipeline, on the device at
hand, in the precision the run trains with) records every tensor autograd saves for the backward
pass (``torch.autograd.graph.saved_tensors_hooks``; storages counted once, parameters apart).
The difference between the two, per image of difference, is one image's activations; the
parameters cost their weights, their gradients and the optimizer's state (Adam / AdamW two
tensors each, SGD with momentum one, plain SGD none, any other two).

    batch = (budget - parameters' share - activations' fixed share) / (one image x HEADROOM)

with ``budget`` = ``gpu_memory_gb`` less ``CONTEXT_GB`` (CUDA's context, cuDNN's workspaces),
``HEADROOM`` for what the saved tensors leave out (the backward pass's temporaries, allocator
fragmentation); at least 2 (batch-norm layers on pooled features need two images), at most
``MAX_BATCH`` and the training set. On CUDA the process is held to that memory
(``torch.cuda.set_per_process_memory_fraction``), so two runs can share a GPU; ``spinepipe train
--estimate`` prints the peak memory CUDA measured at the batch chosen. A batch size set in the
options (``train_dataloader.batch_size``) is kept: the fit is for runs that do not set one.

The schedule: the run sees as many images as before, so the iteration counts MMEngine's loops and
schedulers take (an iteration-based loop's length, validation interval and start, an
iteration-based checkpoint interval; ``by_epoch=False`` schedulers' ``begin``, ``end``,
``milestones``, ``T_max``, ``step_size``, ``total_steps``) are scaled by old batch / new batch;
epochs stay.

The learning rate: MMEngine multiplies it by ``batch x GPUs / base_batch_size`` (linearly, Adam's
as SGD's), where the base is the batch the rate was chosen for: the config's own batch where the
preset or ``--cfg-options`` set the optimizer, else the ``auto_scale_lr.base_batch_size`` the
config declares (the packages' GPUs x images per GPU: ``train/configs/_base_/``), else the
config's batch.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

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


def _optimizer_slots(leaf: Any) -> int:
    """Tensors the optimizer keeps per parameter."""
    optimizer = leaf.optim_wrapper.get("optimizer", {})
    if str(optimizer.get("type", "")).rsplit(".", 1)[-1] == "SGD":
        return 1 if optimizer.get("momentum") else 0
    return 2


def footprint(leaf: Any, model: str = "the model") -> Footprint:
    """One training iteration's memory of a leaf config's model at its training input, on this
    process's device (the module's docstring); the leaf is not changed."""
    import torch
    from mmengine.device import get_device
    from mmengine.registry import DefaultScope
    from mmengine.utils import import_modules_from_strings

    from train.fit.precision import MIXED

    if leaf.get("custom_imports"):
        import_modules_from_strings(**leaf.custom_imports)
    device = get_device()
    mixed = leaf.get("spinepipe_precision") == MIXED
    cuda = list(range(torch.cuda.device_count())) if device == "cuda" else []
    saved, images = [], []
    try:
        with _seeded(cuda), DefaultScope.overwrite_default_scope(leaf.default_scope):
            weights = _measure(leaf, device, mixed, saved, images)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, AssertionError,
            IndexError) as exc:           # the user's options: whatever the model raises
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InvalidConfigError(f"{model}: the model does not build or run from this config "
                                 f"({type(exc).__name__}: {first}); check --cfg-options and "
                                 "the preset's options") from None
    if cuda:
        torch.cuda.empty_cache()
    if images[1] <= images[0] or saved[1] <= saved[0]:
        raise InvalidConfigError(
            f"train.gpu_memory_gb: the activations of batches of {images[0]} and {images[1]} "
            "training images do not tell one image's memory apart; set the batch size "
            "(train_dataloader.batch_size) in the preset's options instead")
    per_image = (saved[1] - saved[0]) // (images[1] - images[0])
    return Footprint(weights * (2 + _optimizer_slots(leaf))
                     + max(saved[0] - images[0] * per_image, 0), per_image)


def _measure(leaf: Any, device: str, mixed: bool, saved: list[int], images: list[int]) -> int:
    """The saved bytes and image counts of batches of 2 and 4 (appended); the weights' bytes."""
    import copy

    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS
    from mmengine.runner import Runner

    # as MMEngine's Runner does outside a distributed run
    model = revert_sync_batchnorm(MODELS.build(copy.deepcopy(leaf.model))).to(device)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for n in (2, 4):
        _seed()                 # the same draws for both batches
        loader = Runner.build_dataloader({**copy.deepcopy(leaf.train_dataloader),
                                          "batch_size": n, "num_workers": 0,
                                          "persistent_workers": False,
                                          "pin_memory": False}, seed=0)
        batch = next(iter(loader))
        images.append(len(batch["inputs"]))
        saved.append(_saved_bytes(model, batch, params, mixed, device))
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _seed() -> None:
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@contextmanager
def _seeded(cuda: list[int]) -> Iterator[None]:
    """Seeded inside, the process's generators (Python's, NumPy's, torch's CPU and CUDA ones)
    as they were after: the same weights and batches on every call."""
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=cuda):
            _seed()
            yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])


def _whole(leaf: Any, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidConfigError(f"{key} is {value!r}: a whole number of images, at least 1 "
                                 "(train.gpu_memory_gb fits the batch from it)")
    return value


def fit_batch(leaf: Any, model: str, gpu_memory_gb: float, train_images: int, *,
              lr_set_here: bool = False) -> str:
    """Set the leaf's batch size to what fits ``gpu_memory_gb`` and MMEngine's ``auto_scale_lr``
    to scale its learning rate (``lr_set_here``: the preset or --cfg-options set the optimizer,
    so its rate is for the config's own batch); return what was chosen (``spinepipe_batch`` in
    config.py)."""
    before = _whole(leaf, "train_dataloader.batch_size", leaf.train_dataloader.get("batch_size"))
    declared = (leaf.get("auto_scale_lr") or {}).get("base_batch_size")
    base = before if lr_set_here or declared is None else \
        _whole(leaf, "auto_scale_lr.base_batch_size", declared)
    need = footprint(leaf, model)
    most = min(MAX_BATCH, max(train_images, 1))
    batch = min(need.batch(gpu_memory_gb), most)
    if batch < min(2, most):
        two = (need.fixed + 2 * need.per_image * HEADROOM) / 2 ** 30 + CONTEXT_GB
        raise InvalidConfigError(
            f"train.gpu_memory_gb is {gpu_memory_gb:g}: {model} needs about {two:.1f} GiB for "
            "two images at this preset's input size; raise it or lower the preset's img_scale")
    leaf.train_dataloader.batch_size = batch
    leaf.auto_scale_lr = dict(enable=True, base_batch_size=base)
    same_images_seen(leaf, before / batch)
    leaf.spinepipe_batch = (
        f"{batch} images: fitted to {gpu_memory_gb:g} GiB (about {need.per_image / 2 ** 20:.0f} "
        f"MB of activations per image, {need.fixed / 2 ** 20:.0f} MB fixed); learning rate x "
        f"{batch}/{base} (auto_scale_lr); iteration counts x {before}/{batch}")
    leaf.spinepipe_fit = dict(model=model, gpu_memory_gb=gpu_memory_gb,
                              train_images=train_images)
    return leaf.spinepipe_batch


def refit_batch(leaf: Any) -> None:
    """Fit a leaf's batch again after its precision changed (float32 needs about twice the
    activations of float16); nothing where no batch was fitted."""
    fit = leaf.get("spinepipe_fit")
    if fit:
        fit_batch(leaf, fit["model"], fit["gpu_memory_gb"], fit["train_images"])


def _scaled(value: Any, factor: float, least: int = 1) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value >= 2 ** 62:
        return value                       # not a count (or MMEngine's "until the end")
    return max(least, round(value * factor))


def same_images_seen(leaf: Any, factor: float) -> None:
    """Every count of iterations in a leaf config times ``factor`` (old batch / new batch), so
    the run sees as many images as before (the module's docstring); epochs stay as they are."""
    from train.fit.run_config import by_iterations

    loop = leaf.train_cfg
    if by_iterations(loop):
        loop["max_iters"] = _scaled(loop["max_iters"], factor)
        loop["val_interval"] = _scaled(loop.get("val_interval", 1000), factor)  # MMEngine's
        if loop.get("val_begin"):
            loop["val_begin"] = _scaled(loop["val_begin"], factor, least=0)
        checkpoint = leaf.default_hooks.get("checkpoint") or {}
        if not checkpoint.get("by_epoch", True) and "interval" in checkpoint:
            checkpoint["interval"] = _scaled(checkpoint["interval"], factor)
    schedulers = leaf.get("param_scheduler") or []
    for step in [schedulers] if isinstance(schedulers, dict) else schedulers:
        if step.get("by_epoch", True):
            continue
        for key in ("begin", "T_max", "step_size", "total_steps"):
            if key in step:
                step[key] = _scaled(step[key], factor, least=0 if key == "begin" else 1)
        if "end" in step:     # after its begin, as MMEngine requires
            step["end"] = max(_scaled(step["end"], factor), step.get("begin", 0) + 1) \
                if isinstance(step["end"], (int, float)) and step["end"] < 2 ** 62 \
                else step["end"]
        if isinstance(step.get("milestones"), list):
            step["milestones"] = [_scaled(m, factor) for m in step["milestones"]]
