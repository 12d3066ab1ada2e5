"""Loading mmengine checkpoints under torch >= 2.6's ``weights_only=True`` default.

mmengine saves, next to the weights, its message hub (``HistoryBuffer`` objects holding numpy
arrays) and numpy scalars in ``meta``. torch >= 2.6 refuses to unpickle those by default ("Weights
only load failed ... numpy._core.multiarray._reconstruct"), which breaks resuming, testing and
``load_from``. Rather than switching the check off, :func:`allow_mmengine_checkpoints` adds exactly
the few types mmengine writes to torch's safe-globals allowlist (and a ``getattr`` that resolves
only HistoryBuffer's statistics methods, which mmengine pickles); every other global in a
checkpoint is still refused, and :func:`check_checkpoint` names the file and the global before
MMDetection / MMSegmentation load it (inference).
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

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


def check_checkpoint(path: str | Path) -> Path:
    """Load ``path`` as MMDetection / MMSegmentation will (weights only, mmengine's types
    allowed: :func:`allow_mmengine_checkpoints`) and refuse it, in one line naming the file,
    when that fails: :class:`CheckpointError` with the first global not on the allowlist (or
    a ``getattr`` other than HistoryBuffer's), rather than the unpickler's traceback from
    inside the model libraries. Also missing or unreadable. The file is read twice by
    inference (here, then by the library): a fraction of a second for these models."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", file=path)
    allow_mmengine_checkpoints()
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return path
    except Exception as exc:  # torch wraps every refusal in UnpicklingError; damage varies
        reason = str(exc)
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # torch's reader on a damaged or foreign file
        raise CheckpointError(f"unreadable checkpoint ({type(exc).__name__})",
                              file=path) from None
    allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"
               for g in safe_globals()}
    refused = [g for g in unsafe if g not in allowed]
    gadget = re.search(r"getattr\([^)]*\)", reason)
    what = f"'{refused[0]}'" if refused else gadget.group(0) if gadget else "an object"
    raise CheckpointError(f"refused to unpickle {what} (not on the allowlist of safe types)",
                          file=path)
