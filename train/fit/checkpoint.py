"""Loading mmengine checkpoints under torch >= 2.6's ``weights_only=True`` default.

mmengine saves, next to the weights, its message hub (``HistoryBuffer`` objects holding numpy
arrays) and numpy scalars in ``meta``. torch >= 2.6 refuses to unpickle those by default ("Weights
only load failed ... numpy._core.multiarray._reconstruct"), which breaks resuming, testing and
``load_from``. Rather than switching the check off, :func:`allow_mmengine_checkpoints` adds exactly
the few types mmengine writes to torch's safe-globals allowlist (and a ``getattr`` that resolves
only HistoryBuffer's statistics methods, which mmengine pickles); every other global in a
checkpoint is still refused. A checkpoint from elsewhere that needs more can be loaded with
``trusted=True``, an explicit opt-in for a file the user vouches for.
"""
from __future__ import annotations

import os
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from converters.core.errors import CheckpointError


def _numpy_globals() -> list[Any]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    dtype_classes = [type(np.dtype(t)) for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
        np.uint64, np.float16, np.float32, np.float64)]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype,
            *dtype_classes]


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """Stands in for ``builtins.getattr`` while unpickling, for the one use mmengine makes of it.

    ``HistoryBuffer.__getstate__`` stores its statistics functions, which pickle as
    ``getattr(HistoryBuffer, 'mean')``. Only that is resolved; any other attribute lookup in a
    checkpoint is refused, so ``getattr`` never becomes a general gadget.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and name in HistoryBuffer._statistics_methods:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f"getattr({getattr(obj, '__name__', type(obj).__name__)}, {name!r}) is not allowed")


def safe_globals() -> list[Any]:
    """What an mmengine checkpoint may contain besides tensors and builtins."""
    from mmengine.logging.history_buffer import HistoryBuffer
    HistoryBuffer()  # registers the default statistics methods (min, max, mean, current)
    return [HistoryBuffer, *_numpy_globals(), (_history_buffer_getattr, "builtins.getattr")]


def allow_mmengine_checkpoints() -> None:
    """Allowlist mmengine's checkpoint types for ``torch.load(weights_only=True)`` (idempotent).

    Called before any mmengine Runner is built, so ``resume``, ``load_from`` and testing load
    the checkpoints mmengine itself saved.
    """
    torch.serialization.add_safe_globals(safe_globals())


@contextmanager
def _trust_all() -> Iterator[None]:
    old = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = old


def load_checkpoint(path: str | Path, *, trusted: bool = False) -> dict:
    """Load a checkpoint file on the CPU.

    With ``trusted=False`` (the default) only tensors, builtins and :func:`safe_globals` are
    accepted; anything else raises :class:`CheckpointError` naming the file and the first
    refused global. ``trusted=True`` unpickles everything: only for files the user vouches for.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", file=path)
    if trusted:
        with _trust_all():
            return torch.load(path, map_location="cpu", weights_only=False)
    allow_mmengine_checkpoints()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError (wrapped) for refused globals
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:
            raise CheckpointError(f"unreadable checkpoint ({type(exc).__name__})",
                                  file=path) from None
        allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"
                   for g in safe_globals()}
        refused = [g for g in unsafe if g not in allowed]
        what = refused[0] if refused else type(exc).__name__
        raise CheckpointError(
            f"refused to unpickle '{what}' (not on the allowlist of safe types); "
            "load it as trusted only if you vouch for the file", file=path) from None
