"""``spinepipe report``: the study's tables, statistics and figures from every evaluation.

params.yaml section ``report`` (:class:`train.report.build.ReportConfig`): the significance level
and the number of example overlays. Reads ``reports/eval/<model>/fold<k>/``; writes
``reports/report.html``, ``reports/tables/``, ``reports/figures/``, ``reports/plots/`` and
``reports/metrics.json`` (layout: :mod:`train.report.build`), and the study's drafts
``reports/study/`` (methods, dataset card, model cards) from the pipeline's records
(:mod:`train.report.study`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.console import ParamsOption, QuietOption, console, say
from pipeline.params import read_params_file, stage_params
from train.report.build import (ReportConfig, build_report, waiting_reason,
                                write_waiting_report)
from train.report.study import Sources


def command(
    input: Path = typer.Option(Path("reports/eval"), "--input", "-i", help="Evaluations: <model>/fold<k>/per_image.csv + summary.json."),
    output: Path = typer.Option(Path("reports"), "--output", "-o", help="Report folder."),
    images: Path = typer.Option(Path("data/interim/png"), "--images", help="The exported PNGs (for the example overlays)."),
    masks: Path = typer.Option(Path("data/processed/masks"), "--masks", help="Ground-truth class masks (for the overlays)."),
    models: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Only these models, in this order (repeatable; default: params train.models, else every evaluated model)."),
    anon: Path = typer.Option(Path("data/interim/anon"), "--anon", help="The de-identified tree (its report.json and headers: the methods' material and de-identification)."),
    processed: Path = typer.Option(Path("data/processed"), "--processed", help="convert's folder (report.json, images.csv, coco.json: the annotation)."),
    splits: Path = typer.Option(Path("data/splits"), "--splits", help="split's folder (splits.json, summary.json: the partition)."),
    models_root: Path = typer.Option(Path("models"), "--models-root", help="The trained runs (<model>/fold<k>/config.py, metrics.json, train.log: the models' facts)."),
    agreement: Path = typer.Option(Path("reports/agreement"), "--agreement", help="spinepipe agreement's folder: the readers beside the models (humans vs models, the readers' tables and Bland-Altman); absent: left out."),
    phantom_truth: Path = typer.Option(Path("data/raw/truth.json"), "--phantom-truth", help="The phantom's truth: when it lists cases, the texts say the data is synthetic."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Tables 1-4 (means, Kruskal-Wallis, Holm-corrected pairwise tests), Shapiro-Wilk, Tukey
    HSD, density and box plots, example overlays; report.html and metrics.json; the study's
    methods draft, dataset card and model cards (reports/study/) from the records."""
    cfg = stage_params(ReportConfig, "report", params)
    if not models and params.exists():
        # the models the pipeline trains, in params order (stale evaluations are left out)
        models = read_params_file(params).get("train", {}).get("models") or None
    why = waiting_reason(input, models or None)
    if why:
        write_waiting_report(output, why)
        say(f"report: waiting for annotations ({why}) -> {output}/report.html")
        return
    metrics = build_report(input, output, images=images, masks=masks, cfg=cfg,
                           models=models or None,
                           sources=Sources(anon=anon, png=images, processed=processed,
                                           splits=splits, models=models_root,
                                           phantom_truth=phantom_truth),
                           agreement_dir=agreement)
    say(f"report: {len(metrics)} models -> {output}/report.html, {output}/metrics.json")
    if not quiet:
        for model, m in metrics.items():
            console.print(f"  {model:10} mIoU {100 * m['mean_iou']:6.2f} %  recognition "
                          f"{100 * m['recognition_rate']:6.2f} %  composite "
                          f"{100 * m['composite_recognition_rate']:6.2f} %")
