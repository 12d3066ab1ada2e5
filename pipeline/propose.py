"""``spinepipe propose``: a trained model outlines new images for the annotators in VIA.

params.yaml section ``propose`` (:class:`train.infer.propose.ProposeConfig`): whether the DVC stage
proposes (``enabled``), the run that proposes (``model``, ``fold``; on the command line, further
``--model`` / ``--fold`` runs measure disagreement), the polygons' vertex budget, the project's
default file path (``via_image_path``: where the annotators' VIA finds the PNGs), the device;
section ``postprocess`` (shared with ``evaluate``): which instances are kept; section ``measures``
(:class:`converters.spine.refine.MeasuresConfig`): ``refine_predictions`` puts endplate corners
refined on the image into the polygons. Outputs: the VIA project, ``worklist.csv`` and
``proposals_summary.json`` beside it (:mod:`train.infer.propose`).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from converters.core.errors import InsufficientDataError, ParamsError
from converters.core.files import prepare_output
from converters.annotations.via import read_via
from converters.annotations.via_project import via_filepath
from converters.core import waiting
from pipeline.console import ParamsOption, QuietOption, library_output_to, progress_bar, say
from pipeline.params import read_params_file, stage_params
from train.models import known, run_dir
from train.evaluation.recognition import PostprocessConfig
from converters.spine.refine import MeasuresConfig
from train.infer.propose import (ProposeConfig, image_paths, propose_images, truth_iou,
                                 unannotated, write_proposals)


def command(
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="Model of the runs (repeatable): the first model's first fold proposes, every other run measures disagreement [params: propose.model]."),
    fold: Optional[List[int]] = typer.Option(None, "--fold", "-k", help="Fold of the runs (repeatable) [params: propose.fold]."),
    images: Path = typer.Option(Path("data/interim/png"), "--images", help="Folder of PNGs to outline."),
    output: Path = typer.Option(..., "--output", "-o", help="VIA project to write (.json); worklist.csv and proposals_summary.json go beside it."),
    only_unannotated: Optional[List[Path]] = typer.Option(None, "--only-unannotated", help="VIA file(s) or folder(s): skip images that already have regions there."),
    truth: Optional[Path] = typer.Option(None, "--truth", help="VIA file with the true polygons of (some of) these images: report the proposals' mean IoU with them."),
    via_image_path: Optional[str] = typer.Option(None, "--via-image-path", help="Where annotators' VIA finds the PNGs (the project's default_filepath) [params: propose.via_image_path]."),
    models_root: Path = typer.Option(Path("models"), "--models-root", help="Folder of the trained runs (<model>/fold<k>)."),
    force: bool = typer.Option(False, "--force", help="Run even if propose.enabled is false."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Outline each vertebra of new images with a trained model, as a VIA project whose
    images come in review order (the most doubtful first), with a worklist of why."""
    cfg = stage_params(ProposeConfig, "propose", params)
    post = stage_params(PostprocessConfig, "postprocess", params)
    measures = stage_params(MeasuresConfig, "measures", params)
    if not cfg.enabled and not force:
        write_proposals([], output, model="", class_attribute=cfg.class_attribute,
                        class_options=None, default_filepath="", truth=None, runs=[])
        say(f"propose: disabled (propose.enabled is false); empty project written -> {output}")
        return
    _check_image_path(cfg, params, via_image_path)
    models = list(model or [cfg.model])
    folds = list(fold or [cfg.fold])
    known(models)
    runs = [run_dir(m, f, models_root) for m in models for f in folds]
    names = [f"{m} fold {f}" for m in models for f in folds]
    why = next(filter(None, (waiting.reason_in_file(r / "metrics.json") for r in runs)), None)
    if why:  # a run trained nothing yet: no model to propose with
        write_proposals([], output, model=names[0], class_attribute=cfg.class_attribute,
                        class_options=None, default_filepath="", truth=None, runs=names)
        say(f"propose: waiting for annotations ({why}); empty project written -> {output}")
        return
    paths = image_paths(images)
    if not paths:
        raise InsufficientDataError("no PNG found", file=images)
    if only_unannotated:
        paths = unannotated(paths, only_unannotated)
    if not paths:  # a stage re-run once everything is annotated: nothing to do, not a failure
        write_proposals([], output, model=names[0], class_attribute=cfg.class_attribute,
                        class_options=None, default_filepath="", truth=None, runs=names)
        say(f"propose: no image to propose for (every PNG is annotated already); empty "
            f"project written -> {output}")
        return
    log = output.parent / f"{output.stem}.log" if quiet else None
    prepare_output(output.parent)
    with library_output_to(log), progress_bar("propose", quiet=quiet) as update:
        proposals = propose_images(runs, paths, cfg, post, progress=update, measures=measures)
    scores = truth_iou(proposals, read_via(truth)[1], cfg.class_attribute) if truth else None
    summary = write_proposals(
        proposals, output, model=names[0], class_attribute=cfg.class_attribute,
        class_options=None, runs=names, truth=scores,
        default_filepath=via_filepath(via_image_path if via_image_path is not None
                                      else cfg.via_image_path))
    extra = (f"; mean IoU with the truth {summary['truth_mean_iou']:.3f} on "
             f"{summary['truth_images']} images" if scores else "")
    say(f"propose: {summary['images']} images, {summary['regions']} polygons from {names[0]}"
        f" ({summary['needs_review']} to review first){extra} -> {output}")


def _check_image_path(cfg: ProposeConfig, params: Path, given: str | None) -> None:
    """A params file that tells export where VIA finds the PNGs but not propose (propose read
    export's key before it had its own): one line, never proposals VIA cannot open."""
    if given is not None or cfg.via_image_path or not Path(params).exists():
        return
    export = read_params_file(params).get("export") or {}
    if isinstance(export, dict) and export.get("via_image_path"):
        raise ParamsError("key 'export.via_image_path' is set but 'propose.via_image_path' is "
                          "not: set it too (propose has its own since export's params no "
                          "longer re-run it)", file=params)
