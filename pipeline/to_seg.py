"""``spinepipe to-seg``: an evaluation's predictions as DICOM Segmentation objects on the
radiographs they were made on (:mod:`train.infer.to_seg`, :mod:`converters.dicom.seg`).

params.yaml section ``to_seg`` (:class:`train.infer.to_seg.ToSegConfig`): whether the DVC stage
writes (``enabled``) and which run (``model``, ``fold``). The DVC stage writes only the
*pseudonymized* objects (safe to share, under ``data/``); ``--reidentify`` (by hand, never in a DVC
stage) writes objects that point to the original study, and only under ``--private``, after every
source's identity has been checked against the ledger
(:func:`converters.dicom.ledger.verified_identity`): a mismatch writes nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from converters.core.files import write_json
from converters.core import waiting
from pipeline.console import ParamsOption, QuietOption, progress_bar, say
from pipeline.params import stage_params
from train.models import eval_dir, known, run_dir
from train.infer.to_seg import ToSegConfig, check_private_output, write_segs


def command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The evaluated model [params: to_seg.model]."),
    fold: Optional[int] = typer.Option(None, "--fold", "-k", help="Its fold [params: to_seg.fold]."),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Evaluation folder (default reports/eval/<model>/fold<k>)."),
    dicom: Path = typer.Option(Path("data/interim/anon"), "--dicom", help="The anonymized DICOM tree the PNGs were exported from."),
    images: Path = typer.Option(Path("data/interim/png"), "--images", help="The exported PNG folder: its provenance records name each image's DICOM."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the SEG objects (<SOP Instance UID>.dcm) and to_seg.json."),
    run: Optional[Path] = typer.Option(None, "--run-dir", help="The trained run, for the checkpoint's hash (default models/<model>/fold<k>)."),
    reidentify: bool = typer.Option(False, "--reidentify", help="Point the objects to the original patient and study (from the private ledger); --output must lie inside --private."),
    private: Optional[Path] = typer.Option(None, "--private", help="The private folder (ledger) for --reidentify."),
    force: bool = typer.Option(False, "--force", help="Run even if to_seg.enabled is false."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Write one DICOM Segmentation per evaluated image: one segment per predicted vertebra
    (labelled L1-L5 / S1) or per class, on the source radiograph's own pixel grid."""
    if reidentify:      # nothing, not even a record, outside the private folder
        check_private_output(private, output)
    cfg = stage_params(ToSegConfig, "to_seg", params)
    if not cfg.enabled and not force and not reidentify:
        write_json(output / "to_seg.json", {"enabled": False, "images": []})
        say(f"to-seg: disabled (to_seg.enabled is false); nothing written -> {output}")
        return
    model = model or cfg.model
    fold = cfg.fold if fold is None else fold
    known([model])
    why = waiting.reason_in_file((input or eval_dir(model, fold)) / "summary.json")
    if why:  # the evaluation scored nothing yet: no prediction to send
        write_json(output / "to_seg.json", {"enabled": True, "images": [], waiting.KEY: why})
        say(f"to-seg: waiting for annotations ({why}); nothing written -> {output}")
        return
    with progress_bar("to-seg", quiet=quiet) as update:
        record = write_segs(input or eval_dir(model, fold), dicom, images, output, model=model,
                            fold=fold, run=run or run_dir(model, fold), private=private,
                            reidentify=reidentify, progress=update)
    written = sum(1 for r in record["images"] if r["seg"])
    mode = "re-identified" if reidentify else "pseudonymized"
    say(f"to-seg: {written} {mode} DICOM SEG of {model} fold {fold} ({len(record['images'])}"
        f" images) -> {output}")
