"""``spinepipe to-sr``: an evaluation's clinical measures as DICOM Measurement Reports
(Comprehensive SR, TID 1500) on the radiographs they were measured on (:mod:`train.infer.to_sr`,
:mod:`converters.dicom.sr`).

params.yaml section ``to_sr`` (:class:`train.infer.to_sr.ToSrConfig`): whether the DVC stage
writes (``enabled``); the run is ``to_seg``'s (``to_seg.model``, ``to_seg.fold``), so that the
reports point to its SEG's segments. As for to-seg, the DVC stage writes only the
*pseudonymized* reports (under ``data/``); ``--reidentify`` (by hand) writes reports that point to
the original study, only under ``--private``, after every source's identity has been checked
against the ledger; give it the re-identified SEG folder as ``--seg``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from converters.core import waiting
from converters.core.files import write_json
from pipeline.console import ParamsOption, QuietOption, progress_bar, say
from pipeline.params import stage_params
from train.infer.to_seg import ToSegConfig, check_private_output
from train.infer.to_sr import ToSrConfig, write_srs
from train.models import eval_dir, known, run_dir


def command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The evaluated model [params: to_seg.model]."),
    fold: Optional[int] = typer.Option(None, "--fold", "-k", help="Its fold [params: to_seg.fold]."),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Evaluation folder with measures.csv and endplates.json (default reports/eval/<model>/fold<k>)."),
    dicom: Path = typer.Option(Path("data/interim/anon"), "--dicom", help="The anonymized DICOM tree the PNGs were exported from."),
    images: Path = typer.Option(Path("data/interim/png"), "--images", help="The exported PNG folder: its provenance records name each image's DICOM."),
    seg: Optional[Path] = typer.Option(None, "--seg", help="to-seg's folder (to_seg.json): measurements then point to the levels' segments of each image's SEG."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the SR objects (<SOP Instance UID>.dcm) and to_sr.json."),
    run: Optional[Path] = typer.Option(None, "--run-dir", help="The trained run, for the checkpoint's hash (default models/<model>/fold<k>)."),
    reidentify: bool = typer.Option(False, "--reidentify", help="Point the reports to the original patient and study (from the private ledger); --output must lie inside --private."),
    private: Optional[Path] = typer.Option(None, "--private", help="The private folder (ledger) for --reidentify."),
    force: bool = typer.Option(False, "--force", help="Run even if to_sr.enabled is false."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Write one DICOM Measurement Report per evaluated image: lordosis, segmental angles, disc
    and body heights, slips with their Meyerding grade, each on the endplate lines it was
    measured between (withheld measures: the reason, never a number)."""
    if reidentify:      # nothing, not even a record, outside the private folder
        check_private_output(private, output)
    cfg = stage_params(ToSrConfig, "to_sr", params)
    if not cfg.enabled and not force and not reidentify:
        write_json(output / "to_sr.json", {"enabled": False, "images": []})
        say(f"to-sr: disabled (to_sr.enabled is false); nothing written -> {output}")
        return
    run_cfg = stage_params(ToSegConfig, "to_seg", params)
    model = model or run_cfg.model
    fold = run_cfg.fold if fold is None else fold
    known([model])
    folder = input or eval_dir(model, fold)
    why = waiting.reason_in_file(folder / "summary.json")
    if why:  # the evaluation measured nothing yet: no report to write
        write_json(output / "to_sr.json", {"enabled": True, "images": [], waiting.KEY: why})
        say(f"to-sr: waiting for annotations ({why}); nothing written -> {output}")
        return
    with progress_bar("to-sr", quiet=quiet) as update:
        record = write_srs(folder, dicom, images, output, model=model, fold=fold,
                           run=run or run_dir(model, fold), seg_dir=seg, private=private,
                           reidentify=reidentify, progress=update)
    n = len(record["images"])
    reported = sum(r["measures"] for r in record["images"])
    withheld = sum(r["withheld"] for r in record["images"])
    linked = sum(1 for r in record["images"] if r["seg"])
    mode = "re-identified" if reidentify else "pseudonymized"
    say(f"to-sr: {n} {mode} DICOM SR of {model} fold {fold} ({reported} measures, {withheld} "
        f"withheld; {linked} pointing to a SEG) -> {output}")
