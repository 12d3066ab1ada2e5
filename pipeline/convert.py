"""``spinepipe convert``: VIA exports -> COCO instances, class masks, overlap maps, QA.

params.yaml section ``convert`` (:class:`converters.annotations.convert.ConvertConfig`);
``--strict`` overrides ``convert.strict``; section ``measures``
(:class:`converters.spine.refine.MeasuresConfig`): ``measures.refine`` refines the endplates of
the readers' polygons on the images before ``measures.csv`` is measured (off by default).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import typer

from converters.annotations.convert import ConvertConfig, convert
from converters.spine.refine import MeasuresConfig
from converters.annotations.readers import reader_files
from pipeline.console import ParamsOption, QuietOption, console, progress_bar, say
from pipeline.params import stage_params


def command(
    input: list[Path] = typer.Option(..., "--input", "-i", help="VIA export(s): 1.x, 2.x project or annotations JSON, 3.x project, CSV, or COCO (VIA's COCO export included); several may follow (--input a.json b.json). A folder means its .json and .csv files (reader 'default') and those of each sub-folder (the reader named by the folder: data/annotations/<reader>/)."),
    annotator: Optional[str] = typer.Option(None, "--annotator", help="The reader of the files given by name (default: 'default'); folders name their readers."),
    more: list[Path] = typer.Argument(None, hidden=True),
    images: Path = typer.Option(..., "--images", help="Folder of the annotated images (the exported PNGs)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for coco.json, masks/, overlaps/, images.csv, qa/, report.json, correction.csv."),
    strict: bool = typer.Option(False, "--strict", help="Every problem is an error: exit 1, nothing written but the full problem list (see --problems-file)."),
    problems_file: Optional[Path] = typer.Option(None, "--problems-file", help="Where --strict writes every problem (default: <output>.problems.json beside the output folder)."),
    workers: int = typer.Option(os.cpu_count() or 1, "--workers", help="Worker processes."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Validate and repair the annotators' polygons and write COCO instances (with levels
    L1-L5 / S1), two-class masks, overlap maps, a per-image table and QA overlays. An image
    several readers read gets the consensus (or convert.reference's reader) as ground truth."""
    cfg = stage_params(ConvertConfig, "convert", params)
    measures = stage_params(MeasuresConfig, "measures", params)
    via_files = reader_files([*input, *(more or [])], annotator)
    if strict:
        cfg = dataclasses.replace(cfg, strict=True)
    with progress_bar("convert", quiet=quiet) as update:
        report = convert(via_files, images, output, cfg, workers=workers, progress=update,
                         problems_file=problems_file, measures=measures)
    counts = report.counts()
    fixed = report.corrections
    corrected = (f"; proposals: {fixed.get('unchanged', 0)} unchanged, {fixed.get('edited', 0)}"
                 f" edited, {fixed.get('added', 0)} added, {fixed.get('deleted', 0)} deleted "
                 f"(correction.csv)" if fixed else "")
    say(f"convert: {report.images} images, {report.annotations} instances "
        f"({report.rendered} re-rasterized){corrected} -> {output}")
    if not report.images:  # the stages after it wait (converters.core.waiting)
        given = ", ".join(f"{p}/" if p.is_dir() else str(p) for p in input)
        say(f"convert: waiting for annotations in {given} (no annotated image yet: the "
            "annotators' VIA exports go there); the stages after it wait too")
    if report.removed:  # said even with --quiet
        say(f"convert: removed the masks of {report.removed} image(s) no longer annotated in "
            "the VIA files given")
    if report.class_attribute_detected:  # said even with --quiet: it changes what was read
        console.print(f"  class attribute: '{report.class_attribute}' (no region carries "
                      f"'{cfg.class_attribute}'; found by its values)")
    if counts and not quiet:
        console.print("  problems: " + ", ".join(f"{n} {k}" for k, n in counts.items())
                      + f" (details: {output / 'report.json'}, overlays: {output / 'qa'})")
