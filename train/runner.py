"""Training through MMEngine's Runner, exactly as MMDetection's / MMSegmentation's tools do.

The checkpoint allowlist (:mod:`train.checkpoint`) is installed first, so ``resume`` and
``load_from`` work under torch >= 2.6.
"""
from __future__ import annotations

from pathlib import Path

from mmengine.config import Config
from mmengine.runner import Runner

from train.checkpoint import allow_mmengine_checkpoints


def train(cfg: Config, *, resume: bool = False) -> Runner:
    """Train the model of a leaf config; checkpoints and logs go to ``cfg.work_dir``."""
    allow_mmengine_checkpoints()
    cfg.resume = resume
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def last_checkpoint(work_dir: str | Path) -> Path | None:
    """The checkpoint MMEngine recorded as its last one in ``work_dir`` (or None)."""
    marker = Path(work_dir) / "last_checkpoint"
    if not marker.is_file():
        return None
    path = Path(marker.read_text().strip())
    return path if path.is_file() else None
