"""``spinepipe export``: anonymized DICOM -> histogram-equalized PNG + provenance + VIA stub.

params.yaml section ``export`` (:class:`converters.dicom.export.ExportConfig`).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import typer

from converters.core.errors import IncompleteRunError, UsageError
from converters.dicom.export import ExportConfig, export_tree
from pipeline.console import ParamsOption, QuietOption, console, progress_bar, say
from pipeline.params import stage_params


def command(
    input: Path = typer.Option(..., "--input", "-i", help="Anonymized DICOM tree (output of spinepipe anonymize)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for PNGs, provenance/, via_project.json, report.json."),
    via_image_path: Optional[str] = typer.Option(None, "--via-image-path", help="Where the annotators' VIA will find the PNGs: a folder path as their machine sees it, or an http(s) URL prefix; written as the VIA project's default_filepath [params: export.via_image_path]."),
    workers: int = typer.Option(os.cpu_count() or 1, "--workers", help="Worker processes."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Export anonymized radiographs as lossless grayscale PNG (full-bit-depth histogram
    equalization), with a provenance record per image and a VIA project for annotators."""
    options = stage_params(ExportConfig, "export", params)
    if via_image_path is not None:
        options = dataclasses.replace(options, via_image_path=via_image_path)
    if not input.is_dir():
        raise UsageError("input folder not found", file=input)
    with progress_bar("export", quiet=quiet) as update:
        report = export_tree(input, output, options, workers=workers, progress=update)
    say(f"export: {len(report.exported)} PNG ({report.reused} unchanged), "
        f"{len(report.failed)} failed -> {output}")
    if report.removed:  # said even with --quiet
        say(f"export: removed {report.removed} PNG(s) whose source is gone from {input}")
    if report.failed:
        console.print("\n".join(report.failure_lines()))
    if report.failed and options.fail_on_error:
        raise IncompleteRunError(f"{len(report.failed)} file(s) failed to export "
                         f"(details: {output / 'report.json'})", file=input)
