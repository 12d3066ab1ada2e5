"""``spinepipe train``: one model on one fold, through MMEngine's Runner.

params.yaml section ``train`` (:class:`train.fit.runner.TrainConfig`): the preset (``demo`` for
CPU, ``study`` for GPUs), image scale, per-model MMEngine options, local pretrained weights. Writes
``models/<model>/fold<k>/``: ``config.py`` (the leaf config, runnable with MMDetection's /
MMSegmentation's own tools), checkpoints, ``best.pth``, logs, ``dvclive/`` (validation curves for
``dvc plots``) and ``metrics.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
import yaml

from converters.annotations.split import splits_file
from converters.core import waiting
from converters.core.errors import UsageError
from converters.core.files import prepare_output, write_json
from pipeline.console import ParamsOption, QuietOption, library_output_to, say
from pipeline.params import load_yaml, read_params_file, stage_params
from train.fit.precision import FULL
from train.models import get, help_list, run_dir


def _options(pairs: list[str]) -> dict:
    """``key=value`` pairs (keys dotted into the leaf config, as MMEngine's ``--cfg-options``):
    values in YAML (numbers, true / false, null, lists, dicts), scientific notation such as
    ``1e-4`` a number too."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--cfg-options takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = load_yaml(value)
        except yaml.YAMLError:
            raise UsageError(f"--cfg-options {key}: not a YAML value: {value!r}") from None
    return out


def command(
    model: str = typer.Option(..., "--model", "-m", help=f"A model of train/configs/: {help_list()}."),
    fold: int = typer.Option(..., "--fold", "-k", help="Fold index (0..k-1) of data/splits/splits.json."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Preset in params.yaml train.presets [params: train.preset]."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Output folder (default models/<model>/fold<k>)."),
    resume: bool = typer.Option(False, "--resume", help="Resume from the last checkpoint in the work dir."),
    launcher: str = typer.Option("none", "--launcher", help="none, pytorch (torchrun) or slurm: passed to MMEngine."),
    cfg_options: list[str] = typer.Option([], "--cfg-options", help="MMEngine config overrides, key=value (repeatable); values in YAML, 1e-4 a number."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Train one model on one fold (leaf config generated, kept as an artifact), validating
    every epoch; the best checkpoint and its score are kept."""
    if launcher not in ("none", "pytorch", "slurm"):
        raise UsageError(f"--launcher must be none, pytorch or slurm, got {launcher!r}")
    get(model)   # a typo is an error, not an empty models/<typo>/ (nor a waiting one)
    work = prepare_output(work_dir or run_dir(model, fold))  # not locked: torchrun's ranks share it
    splits = read_params_file(params).get("train", {}).get("splits") if params.exists() else None
    why = waiting.reason_in_file(splits_file(splits or "data/splits"))
    if why:  # before torch and mmlab are imported: nothing to train on yet
        write_json(work / "metrics.json", {"metric": None, "best": None, "iterations": 0,
                                           waiting.KEY: why})
        say(f"train: {model} fold {fold}: waiting for annotations ({why}); nothing trained "
            f"-> {work}")
        return
    with library_output_to(work / "train.log" if quiet else None):
        from train.fit.runner import TrainConfig, prepare_run, run  # torch + mmlab: only here

        cfg = stage_params(TrainConfig, "train", params)
        leaf = prepare_run(model, fold, cfg, work, preset=preset,
                           cfg_options=_options(cfg_options), launcher=launcher)
        metrics = run(leaf, resume=resume)
    rank = f" (rank {metrics['rank']} of {metrics['world_size']})" \
        if metrics["world_size"] > 1 else ""
    best = "none" if metrics["best"] is None else f"{metrics['best']:.4g}"
    precision = metrics.get("precision") or FULL
    said = "" if precision == FULL else f"; precision {precision}"  # mixed, or full for a reason
    say(f"train: {model} fold {fold}{rank}: best {metrics['metric']} = {best} "
        f"after {metrics['iterations']} iterations -> {work}{said}")
