"""``spinepipe agreement``: the readers measured against each other, and a worklist for an expert.

Reads the annotations input as convert does (the readers' sub-folders,
:mod:`converters.annotations.readers`; the validation rules of params.yaml section ``convert``)
and writes, under ``--output`` (:mod:`converters.annotations.agreement`): ``pairs.csv``,
``measures_pairs.csv``, ``summary.json``, ``worklist.csv`` and ``adjudication_via.json``.
params.yaml section ``agreement`` (:class:`AgreementConfig`). The ``adjudicated`` reader is the
expert's, not a reader compared here.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from converters.annotations.agreement import (MEASURE_FIELDS, PAIR_FIELDS, WORKLIST_FIELDS,
                                              adjudication_project, agreement, csv_text)
from converters.annotations.convert import ConvertConfig, ConvertReport, IMAGE_SUFFIXES, check
from converters.annotations.readers import ADJUDICATED, CONSENSUS, ReaderFile, reader_files
from converters.core.errors import InvalidViaError
from converters.core.files import prepare_output, write_json, write_text
from converters.core.provenance import pixel_spacing, read_record
from pipeline.console import ParamsOption, QuietOption, say
from pipeline.params import stage_params


@dataclass(frozen=True)
class AgreementConfig:
    """params.yaml section ``agreement``."""

    #: where the expert's VIA finds the PNGs (the adjudication project's default_filepath; as
    #: export's ``via_image_path``)
    via_image_path: str = ""


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
    # the readers' outlines as convert validates them (the reference does not matter here)
    cfg = dataclasses.replace(stage_params(ConvertConfig, "convert", params), reference=CONSENSUS)
    opts = stage_params(AgreementConfig, "agreement", params)
    files = [f for f in reader_files(input, annotator) if f.reader != ADJUDICATED]
    report = ConvertReport()
    plan = check(files, images, Path("."), cfg, report, readers_only=True)
    readers = sorted({f.reader for f in files})
    truth_of = None
    if truth is not None:
        truth_report = ConvertReport()
        known = check([ReaderFile("truth", truth)], images, Path("."), cfg, truth_report,
                      readers_only=True)
        bad = [p for p in truth_report.problems if p.kind != "unannotated_image"]
        if bad:   # the yardstick itself must be clean
            raise InvalidViaError(f"the truth has {len(bad)} problem(s); first: {bad[0].kind}: "
                                  f"{bad[0].message}", file=truth, image=bad[0].image or None)
        truth_of = {name: outs["truth"] for name, outs in known.readers.items()
                    if outs["truth"]}
    result = agreement(plan.readers,
                       readers, lambda name: pixel_spacing(read_record(images, name)),
                       tuple(cfg.classes), truth_of=truth_of, workers=workers)
    sizes = {p.name: p.stat().st_size for p in images.iterdir()
             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()} if images.is_dir() else {}
    prepare_output(output)
    write_text(output / "pairs.csv", csv_text(result.pairs, PAIR_FIELDS))
    write_text(output / "measures_pairs.csv", csv_text(result.measures, MEASURE_FIELDS))
    write_text(output / "worklist.csv", csv_text(result.worklist, WORKLIST_FIELDS))
    write_json(output / "summary.json", result.summary)
    write_json(output / "adjudication_via.json",
               adjudication_project(result.worklist, plan.readers, sizes,
                                    class_attribute=report.class_attribute,
                                    default_filepath=opts.via_image_path), indent=None)
    summary = result.summary
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
    say(f"agreement: {len(readers)} reader(s), {summary['images_read_by_two_or_more']} image(s) "
        f"read by two or more{': ' + pairs if pairs else ''} -> {output}{os.sep}")
