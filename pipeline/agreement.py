"""``spinepipe agreement``: the readers measured against each other, and a worklist for an expert.

Reads the annotations input as convert does (the readers' sub-folders,
:mod:`converters.annotations.readers`; the validation rules of params.yaml section ``convert``)
and writes, under ``--output`` (:mod:`converters.annotations.agreement`): ``pairs.csv``,
``measures_pairs.csv``, ``summary.json``, ``worklist.csv`` and ``adjudication_via.json``.
params.yaml section ``agreement``
(:class:`~converters.annotations.agreement.AgreementConfig`). The ``adjudicated`` reader is the
expert's, not a reader compared here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from converters.annotations.agreement import AgreementConfig, write_agreement
from converters.annotations.convert import ConvertConfig
from converters.annotations.readers import reader_files
from converters.spine.refine import MeasuresConfig
from pipeline.console import ParamsOption, QuietOption, say
from pipeline.params import stage_params


def command(
    input: list[Path] = typer.Option(..., "--input", "-i", help="The annotations input: a folder of reader sub-folders (data/annotations/<reader>/*.json), or VIA files (reader 'default', or --annotator)."),
    images: Path = typer.Option(..., "--images", help="Folder of the annotated images (the exported PNGs, with provenance/ for the pixel spacing)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for pairs.csv, measures_pairs.csv, summary.json, worklist.csv, adjudication_via.json."),
    annotator: Optional[str] = typer.Option(None, "--annotator", help="The reader of the files given by name."),
    truth: Optional[Path] = typer.Option(None, "--truth", help="A VIA project of the true polygons of some images (the demo: the phantom's): every reader and the consensus measured against it too (summary.json 'against_truth'); an empty project adds nothing."),
    workers: int = typer.Option(os.cpu_count() or 1, "--workers", help="Worker processes."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Inter-reader agreement on the images two or more readers read: IoU, Dice, boundary
    distances per level, the clinical measures per reader pair with ICC(2,1) and Bland-Altman,
    each reader against the consensus, and an adjudication worklist with a VIA project."""
    summary = write_agreement(reader_files(input, annotator), images, output,
                              stage_params(ConvertConfig, "convert", params),
                              stage_params(AgreementConfig, "agreement", params), truth=truth,
                              measures=stage_params(MeasuresConfig, "measures", params),
                              workers=workers)
    lonely = summary["readers_without_overlap"]
    if lonely:  # said even with --quiet: agreement needs two readers on one image
        say(f"agreement: reader(s) {', '.join(lonely)} share no image with another reader "
            "(agreement needs two readers on one image)")
    if "against_truth" in summary:
        cons = summary["against_truth"].get("consensus", {})
        say(f"agreement: against the truth, the consensus: IoU {cons.get('mean_iou')}, "
            f"lordosis MAE {cons.get('lordosis_mae_deg')} deg; " + ", ".join(
                f"{w} {v['mean_iou']} / {v['lordosis_mae_deg']}"
                for w, v in summary["against_truth"].items() if w != "consensus"))
    pairs = "; ".join(f"{k}: IoU {v['mean_iou']}, lordosis MAE {v['lordosis_mae_deg']} deg"
                      for k, v in summary["pairs"].items())
    say(f"agreement: {len(summary['readers'])} reader(s), "
        f"{summary['images_read_by_two_or_more']} image(s) read by two or more{': ' + pairs if pairs else ''} -> {output}{os.sep}")
