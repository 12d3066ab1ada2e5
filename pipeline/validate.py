"""``spinepipe validate``: the annotators' check before handing a batch over.

The same validation as ``spinepipe convert`` (params.yaml section ``convert``: class attribute,
class map, shapes), nothing written: a table of the problems on the terminal, and exit status 1
when one of them loses an annotation (severity ``error``; with ``--strict``, any problem). Kinds
and severities: :mod:`converters.annotations.convert`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from converters.annotations.convert import ConvertConfig, validate
from converters.core.errors import IncompleteRunError
from converters.annotations.readers import reader_files
from pipeline.console import ParamsOption, QuietOption, console, say
from pipeline.params import stage_params

SHOWN = 40  # rows of the problems table; the counts cover every problem


def command(
    input: list[Path] = typer.Option(..., "--input", "-i", help="VIA export(s) to check (any format convert reads); a folder means its .json and .csv files and those of its reader sub-folders (data/annotations/<reader>/)."),
    annotator: Optional[str] = typer.Option(None, "--annotator", help="The reader of the files given by name (default: 'default')."),
    more: list[Path] = typer.Argument(None, hidden=True),
    images: Path = typer.Option(..., "--images", help="Folder of the annotated images (the exported PNGs)."),
    strict: bool = typer.Option(False, "--strict", help="Fail on warnings too."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Check VIA annotations against their images as convert would (classes, polygons,
    missing / unannotated / duplicate images, levels) and show every problem; writes nothing.
    Exit 1 when an annotation would be lost (or, with --strict, on any problem)."""
    cfg = stage_params(ConvertConfig, "convert", params)
    if strict:
        cfg = dataclasses.replace(cfg, strict=True)
    report = validate(reader_files([*input, *(more or [])], annotator), images, cfg)
    failing = report.problems if cfg.strict else report.errors
    if report.problems and not quiet:
        table = Table("severity", "problem", "file", "image", "region", "message",
                      title=f"{len(report.problems)} problem(s)", title_justify="left")
        for p in report.problems[:SHOWN]:
            table.add_row(p.severity, p.kind, Path(p.file).name if p.file else "", p.image,
                          "" if p.region is None else str(p.region), p.message)
        console.print(table)
        if len(report.problems) > SHOWN:
            console.print(f"... and {len(report.problems) - SHOWN} more")
    detected = (f", class attribute '{report.class_attribute}' (found by its values)"
                if report.class_attribute_detected else "")
    counts = ", ".join(f"{n} {k}" for k, n in report.counts().items()) or "no problem"
    say(f"validate: {report.images} images, {report.annotations} instances{detected}: "
        f"{counts}")
    if failing:
        raise IncompleteRunError(f"{len(failing)} problem(s) that "
                                 + ("--strict refuses" if cfg.strict else "lose annotations")
                                 + f" ({', '.join(sorted({p.kind for p in failing}))})",
                                 file=", ".join(map(str, input)))
