"""``spinepipe train``: one model on one fold, through MMEngine's Runner.

params.yaml section ``train`` (:class:`train.fit.runner.TrainConfig`): the preset (``demo`` for
CPU, ``study`` for GPUs), image scale, per-model MMEngine options, local pretrained weights. Writes
``models/<model>/fold<k>/``: ``config.py`` (the leaf config, runnable with MMDetection's /
MMSegmentation's own tools), checkpoints, ``best.pth``, logs, ``dvclive/`` (validation curves for
``dvc plots``) and ``metrics.json``.

``--estimate`` writes nothing: a few iterations of each model on this device, projected to the
whole study (:mod:`train.fit.estimate`).
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


def _waiting(params: Path) -> str | None:
    """Why split's output says there is nothing to train on yet (None: there is)."""
    splits = read_params_file(params).get("train", {}).get("splits") if params.exists() else None
    return waiting.reason_in_file(splits_file(splits or "data/splits"))


def command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=f"A model of train/configs/: {help_list()} (--estimate: default every model of train.models, each with the --cfg-options)."),
    fold: Optional[int] = typer.Option(None, "--fold", "-k", help="Fold index (0..k-1) of data/splits/splits.json (--estimate: fold 0)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Preset in params.yaml train.presets [params: train.preset]."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Output folder (default models/<model>/fold<k>)."),
    resume: bool = typer.Option(False, "--resume", help="Resume from the last checkpoint in the work dir."),
    launcher: str = typer.Option("none", "--launcher", help="none, pytorch (torchrun) or slurm: passed to MMEngine."),
    cfg_options: list[str] = typer.Option([], "--cfg-options", help="MMEngine config overrides, key=value (repeatable); values in YAML, 1e-4 a number."),
    estimate: bool = typer.Option(False, "--estimate", help="Train a few iterations of each model (or --model) on this device, print the projected time of the whole study (every fold) and its bottleneck; writes nothing."),
    iterations: int = typer.Option(20, "--iterations", min=1, help="--estimate: iterations timed per model (after a quarter as many, at least 1, not timed)."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Train one model on one fold (leaf config generated, kept as an artifact), validating
    every epoch; the best checkpoint and its score are kept. With --estimate: the projected
    time of the whole study on this device instead."""
    if launcher not in ("none", "pytorch", "slurm"):
        raise UsageError(f"--launcher must be none, pytorch or slurm, got {launcher!r}")
    if model is not None:
        get(model)   # a typo is an error, not an empty models/<typo>/ (nor a waiting one)
    if estimate:
        given = [flag for flag, on in (("--work-dir", work_dir), ("--resume", resume),
                                       ("--launcher", launcher != "none")) if on]
        if given:
            raise UsageError(f"--estimate writes nothing and runs in this process: it takes "
                             f"no {', '.join(given)}")
        return _estimate(model, fold or 0, preset, _options(cfg_options), iterations, params,
                         quiet)
    if model is None or fold is None:
        raise UsageError("train needs --model and --fold (or --estimate)")
    work = prepare_output(work_dir or run_dir(model, fold))  # not locked: torchrun's ranks share it
    why = _waiting(params)
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


def _estimate(model: str | None, fold: int, preset: str | None, cfg_options: dict,
              iterations: int, params: Path, quiet: bool) -> None:
    """``--estimate``: :mod:`train.fit.estimate` for each model, a table and one line. An
    error names the model, never the temporary folder it ran in (gone when it is printed)."""
    import tempfile

    from converters.core.errors import InvalidConfigError, SpinepipeError
    from converters.core.records import read_json

    why = _waiting(params)
    if why:
        say(f"train --estimate: waiting for annotations ({why}); nothing to time")
        return
    with tempfile.TemporaryDirectory(prefix="spinepipe-estimate-") as tmp:
        prepare_output(tmp, private=True)
        with library_output_to(Path(tmp) / "estimate.log" if quiet else None):
            from train.fit.estimate import cache_within, estimate_model, summary
            from train.fit.runner import TrainConfig, prepare_run

            cfg = cache_within(stage_params(TrainConfig, "train", params), preset,
                               Path(tmp) / "image-cache")
            names = [model] if model else cfg.models
            if not names:
                raise InvalidConfigError("train.models is empty: nothing to estimate",
                                         file=params)
            folds = len(read_json(splits_file(cfg.splits), what="splits", made_by="split",
                                  keys={"folds": list})["folds"])
            estimates = []
            for name in names:
                try:
                    leaf = prepare_run(name, fold, cfg, Path(tmp) / name, preset=preset,
                                       cfg_options=cfg_options)
                    estimates.append(estimate_model(name, leaf, runs=folds,
                                                    iterations=iterations,
                                                    warm_up=max(1, iterations // 4),
                                                    within=Path(tmp)))
                except SpinepipeError as exc:
                    if exc.file and Path(exc.file).resolve().is_relative_to(Path(tmp).resolve()):
                        exc.file = None      # the temporary run's: gone
                    exc.message = f"--estimate, {name}: {exc.message}"
                    raise
    if not quiet:
        _estimate_table(estimates)
    say(f"train --estimate: {summary(estimates)}")


def _estimate_table(estimates: list) -> None:
    from rich.table import Table

    from pipeline.console import console
    from train.fit.estimate import hours

    memory = any(e.memory_gb is not None for e in estimates)   # CUDA only
    table = Table("model", "s/iter", "data wait", "iters", "val", "one run", "runs", "all",
                  *(["memory"] if memory else []), "limit",
                  title="projected study (val: validations x images per run; data wait: "
                        "share of an iteration)", title_justify="left")
    for e in estimates:
        table.add_row(e.model, f"{e.seconds_per_iter:.3f}", f"{e.data_share:.0%}",
                      str(e.iterations), f"{e.validations}x{e.val_images}",
                      hours(e.run_seconds), str(e.runs), hours(e.total_seconds),
                      *([f"{e.memory_gb:.1f} GB"] if memory else []), e.bottleneck)
    console.print(table)
