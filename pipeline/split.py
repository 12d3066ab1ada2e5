"""``spinepipe split``: fixed test set + k patient-grouped, stratified folds.

params.yaml section ``split`` (:class:`converters.annotations.split.SplitConfig`).
"""
from __future__ import annotations

from pathlib import Path

import typer

from converters.core import waiting
from converters.core.records import read_json
from pipeline.console import ParamsOption, QuietOption, console, say
from pipeline.params import stage_params
from converters.annotations.split import SplitConfig, write_splits


def command(
    input: Path = typer.Option(..., "--input", "-i", help="The convert stage's output (images.csv, coco.json)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for splits.json, test/, fold<k>/, summary.json."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Split the converted images into a fixed test set and k folds, grouped by patient
    and stratified by implants and vertebral overlap; deterministic for a seed."""
    cfg = stage_params(SplitConfig, "split", params)
    summary = write_splits(input, output, cfg)
    why = waiting.reason_in_file(output / "splits.json")
    if why:
        say(f"split: waiting for annotations ({why}): empty splits -> {output}/splits.json")
        return
    say(f"split: test {summary['test']['images']} images ({summary['test']['patients']} "
        f"patients), {cfg.k} folds -> {output}/splits.json")
    strata = read_json(output / "splits.json", what="splits", keys={"strata": str})["strata"]
    if "coarser" in strata:
        say(f"split: note: stratified by {strata}")
    if not quiet:
        for name, part in summary.items():
            if name.startswith("fold"):
                v = part["val"]
                console.print(f"  {name}: train {part['train']['images']}, val {v['images']} "
                              f"({', '.join(f'{n} {s}' for s, n in v['strata'].items() if n)})")
