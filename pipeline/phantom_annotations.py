"""``spinepipe phantom-annotations``: the demo's annotator (phantom only).

In real use annotators draw on the exported, pseudonymized PNGs and save their VIA project
into ``data/annotations/``. In the demo the phantom already knows the polygons, keyed by the
*original* SOP Instance UID (in ``data/raw/``, the identifiable archive). This step maps them
to the exported PNG names through the private ledger (original -> new SOP Instance UID) and
the export provenance (new SOP Instance UID -> PNG), and writes a VIA project that names only
pseudonymized PNGs. The ledger is read here and never copied.

The readers (``annotator.readers``, :mod:`converters.phantom.readers`) redraw the phantom's
polygons each in their own way; ``annotator.double_read_share`` of the images are read by every
reader (what ``spinepipe agreement`` compares), the rest by one. Their projects go to
``<output>/<reader>/phantom_via.json``, the layout real readers use (:mod:`converters.annotations.readers`).

``annotator.holdout`` images (:func:`converters.phantom.annotator.held_out`) are left unannotated, as
a new batch would be: ``spinepipe propose`` outlines them, and their true polygons go to
``--holdout-output`` (never into ``data/annotations/``) to measure the proposals.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from converters.core.errors import UsageError
from converters.core.files import write_json
from converters.core.paths import confined
from converters.phantom.readers import (PROFILES, AnnotatorConfig, png_spacing, profiles_record,
                                        readers_of, readers_record, redraw)
from converters.dicom.ledger import load_ledger
from converters.phantom.annotator import annotations_for_export, exported_pngs, held_out
from converters.phantom.plan import PhantomConfig
from pipeline.console import ParamsOption, QuietOption, say
from pipeline.params import stage_params

FILE_NAME = "phantom_via.json"


def command(
    via: Path = typer.Option(..., "--via", help="The phantom's VIA project (annotations/via_project.json)."),
    png: Path = typer.Option(..., "--png", help="The export folder (PNGs and provenance/)."),
    private: Path = typer.Option(..., "--private", help="The private folder holding the ledger."),
    output: Path = typer.Option(..., "--output", "-o", help="The annotations folder: each reader's VIA project goes to <output>/<reader>/phantom_via.json (reader1..reader3; readers beyond annotator.readers get an empty project)."),
    holdout: Optional[int] = typer.Option(None, "--holdout", min=0, help="Images to leave unannotated [params: annotator.holdout]."),
    holdout_output: Optional[Path] = typer.Option(None, "--holdout-output", help="VIA project of the held-out images' true polygons (needed with --holdout > 0)."),
    readers_truth: Optional[Path] = typer.Option(None, "--readers-truth", help="JSON recording the readers' drawn behaviour and who read which image (for checking agreement)."),
    double_read_output: Optional[Path] = typer.Option(None, "--double-read-output", help="VIA project of the true polygons of the images two or more readers read (agreement --truth: readers and consensus against the truth)."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Demo only: hand the phantom's polygons to the pipeline as its readers' VIA exports of
    the exported PNGs (mapped through the private ledger; no original identifier written),
    each reader drawing in their own way, leaving some images unannotated for model
    proposals."""
    cfg = stage_params(AnnotatorConfig, "annotator", params)
    n_held = holdout if holdout is not None else cfg.holdout
    if not via.is_file():
        raise UsageError("VIA project not found", file=via)
    if n_held and holdout_output is None:
        raise UsageError(f"{n_held} held-out image(s) need --holdout-output")
    targets = {p.name: confined(output, p.name, FILE_NAME) for p in PROFILES}
    if not stage_params(PhantomConfig, "phantom", params).enabled:
        # a real archive is the source: no demo annotations, nothing held out (the stage's
        # outputs exist, empty, so that DVC's graph stays whole)
        empty = annotations_for_export(via, {})
        for path in [*targets.values(), *filter(None, [holdout_output, double_read_output])]:
            write_json(path, empty, indent=None)
        if readers_truth is not None:
            write_json(readers_truth, {**profiles_record(0, 0.0), "images": {}})
        say(f"phantom-annotations: skipped (phantom.enabled is false): {output} lists no image")
        return
    exported = exported_pngs(png, load_ledger(private, must_exist=True)["instances"])
    # held out among the images the phantom annotated, never among another source's
    annotated = [im["filename"] for im in
                 annotations_for_export(via, exported)["_via_img_metadata"].values()]
    # every choice keyed on the phantom's own UID, not the pseudonym: salt-free
    uid_of = {name: uid for uid, (name, _) in exported.items()}
    held = held_out(annotated, n_held, key=uid_of.__getitem__)
    who = {name: readers_of(uid_of[name], cfg.readers, cfg.double_read_share)
           for name in annotated if name not in held}
    projects = {p.name: annotations_for_export(
        via, exported, keep=lambda name, p=p: p.name in who.get(name, ()),
        redraw=lambda name, regions, p=p: redraw(uid_of[name], regions, p,
                                                 png_spacing(png, name)))
        for p in PROFILES}
    if holdout_output is not None:
        write_json(holdout_output, annotations_for_export(via, exported, keep=held.__contains__),
                   indent=None)
    for name, project in projects.items():
        write_json(targets[name], project, indent=None)
    if double_read_output is not None:
        write_json(double_read_output, annotations_for_export(
            via, exported, keep=lambda name: len(who.get(name, ())) > 1), indent=None)
    if readers_truth is not None:
        write_json(readers_truth, readers_record(cfg, who, key=uid_of.__getitem__))
    kept = f", {len(held)} held out (truth: {holdout_output})" if held else ""
    double = sum(len(r) > 1 for r in who.values())
    say(f"phantom-annotations: {len(who)} annotated PNGs by {cfg.readers} reader(s), {double} "
        f"read by all{kept} -> {output}/<reader>/{FILE_NAME}")
