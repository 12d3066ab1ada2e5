"""Mixed precision: MMEngine's ``AmpOptimWrapper`` where a preset asks for it and it can run,
full precision (``OptimWrapper``) where it cannot, and again full precision for a model whose
training diverges under it.

A preset asks for mixed precision in a model's options, as MMDetection's and MMSegmentation's
own ``*_amp`` configs do: ``optim_wrapper: {type: AmpOptimWrapper, loss_scale: dynamic}``
(float16 autocast, loss scaled dynamically so small gradients survive float16). MMEngine runs it
on CUDA (and NPU / MLU / MUSA) devices only; elsewhere (this CPU, the tests) the leaf config is
built with ``OptimWrapper`` instead and says why in ``spinepipe_precision`` (the run's
``config.py``, ``metrics.json``, the command's line).

Float16 holds values up to 65504: activations of an unnormalized input or of a layer that grows
without bound overflow to infinity and the loss becomes NaN, which loss scaling cannot repair
(it guards the gradients, not the forward pass). Such a run stops at its first non-finite loss
(:class:`train.fit.runner.FiniteLoss`) and :func:`train.fit.runner.run` trains the model again
from its first iteration in float32, saying so (its earlier checkpoints removed: none is resumed
from); a ``--resume`` from a float32 checkpoint stays in float32. A distributed run stops
instead, naming the override: its ranks cannot start again one by one.
"""
from __future__ import annotations

from typing import Any

#: what a run's precision is called in its config.py, metrics.json and the command's line
MIXED, FULL = "mixed (float16 autocast, AmpOptimWrapper)", "full (float32)"
#: why a run asking for mixed precision trains in full precision on this machine
NO_DEVICE = ("the preset asks for mixed precision, which MMEngine runs on CUDA / NPU / MLU / MUSA "
             "devices only; none here")
#: the keys AmpOptimWrapper takes beyond OptimWrapper's
_AMP_ONLY = ("loss_scale", "dtype", "use_fsdp")


def mixed_precision_device() -> bool:
    """MMEngine's own test (``AmpOptimWrapper.__init__``): a CUDA, NPU, MLU or MUSA device."""
    from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                                 is_npu_available)

    return bool(is_cuda_available() or is_npu_available() or is_mlu_available()
                or is_musa_available())


def asks_mixed(cfg: Any) -> bool:
    """Whether a leaf config trains with ``AmpOptimWrapper``."""
    wrapper = cfg.get("optim_wrapper") or {}
    return isinstance(wrapper, dict) and \
        str(wrapper.get("type", "")).rsplit(".", 1)[-1] == "AmpOptimWrapper"


def to_full_precision(cfg: Any, why: str) -> None:
    """``AmpOptimWrapper`` -> ``OptimWrapper`` (its optimizer, gradient clipping and parameter-wise
    settings kept), with ``spinepipe_precision`` saying why."""
    wrapper = cfg["optim_wrapper"]
    wrapper["type"] = "OptimWrapper"
    for key in _AMP_ONLY:
        wrapper.pop(key, None)
    cfg.spinepipe_precision = f"{FULL}: {why}"


def settle_precision(cfg: Any) -> str:
    """The precision a leaf config trains with, set in it (``spinepipe_precision``): mixed where
    it asks for it and the device runs it, full otherwise."""
    wrapper = cfg.get("optim_wrapper") or {}
    kind = str(wrapper.get("type", "OptimWrapper")).rsplit(".", 1)[-1]
    if kind == "OptimWrapper":
        for key in _AMP_ONLY:   # a preset's AMP block switched off by type alone
            wrapper.pop(key, None)
        cfg.spinepipe_precision = FULL
    elif not asks_mixed(cfg):   # another wrapper (ApexOptimWrapper, ...): its own settings
        cfg.spinepipe_precision = f"as {kind} sets it"
    elif mixed_precision_device():
        cfg.spinepipe_precision = MIXED
    else:
        to_full_precision(cfg, NO_DEVICE)
    return cfg.spinepipe_precision
