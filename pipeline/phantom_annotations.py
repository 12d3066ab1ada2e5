"""``spinepipe phantom-annotations``: the demo's annotator (phantom only).

In real use annotators draw on the exported, pseudonymized PNGs and save their VIA project
into ``data/annotations/``. In the demo the phantom already knows the polygons, keyed by the
*original* SOP Instance UID (in ``data/raw/``, the identifiable archive). This step maps them
to the exported PNG names through the private ledger (original -> new SOP Instance UID) and
the export provenance (new SOP Instance UID -> PNG), and writes a VIA project that names only
pseudonymized PNGs. The ledger is read here and never copied.

``annotator.holdout`` images (:func:`converters.phantom.writing.held_out`) are left unannotated, as
a new batch would be: ``spinepipe propose`` outlines them, and their true polygons go to
``--holdout-output`` (never into ``data/annotations/``) to measure the proposals.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from converters.core.errors import UsageError
from converters.core.files import write_json
from converters.dicom.ledger import load_ledger
from converters.phantom.writing import (AnnotatorConfig, PhantomConfig, annotations_for_export,
                                        exported_pngs, held_out)
from pipeline.console import ParamsOption, QuietOption, say
from pipeline.params import stage_params


def command(
    via: Path = typer.Option(..., "--via", help="The phantom's VIA project (annotations/via_project.json)."),
    png: Path = typer.Option(..., "--png", help="The export folder (PNGs and provenance/)."),
    private: Path = typer.Option(..., "--private", help="The private folder holding the ledger."),
    output: Path = typer.Option(..., "--output", "-o", help="VIA project to write, naming the exported PNGs."),
    holdout: Optional[int] = typer.Option(None, "--holdout", min=0, help="Images to leave unannotated [params: annotator.holdout]."),
    holdout_output: Optional[Path] = typer.Option(None, "--holdout-output", help="VIA project of the held-out images' true polygons (needed with --holdout > 0)."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Demo only: hand the phantom's polygons to the pipeline as an annotator's VIA export of
    the exported PNGs (mapped through the private ledger; no original identifier written),
    leaving some images unannotated for model proposals."""
    n_held = holdout if holdout is not None else stage_params(AnnotatorConfig, "annotator",
                                                               params).holdout
    if not via.is_file():
        raise UsageError("VIA project not found", file=via)
    if n_held and holdout_output is None:
        raise UsageError(f"{n_held} held-out image(s) need --holdout-output")
    if not stage_params(PhantomConfig, "phantom", params).enabled:
        # a real archive is the source: no demo annotations, nothing held out (the stage's
        # outputs exist, empty, so that DVC's graph stays whole)
        empty = annotations_for_export(via, {})
        if holdout_output is not None:
            write_json(holdout_output, empty, indent=None)
        write_json(output, empty, indent=None)
        say(f"phantom-annotations: skipped (phantom.enabled is false): {output} lists no image")
        return
    exported = exported_pngs(png, load_ledger(private, must_exist=True)["instances"])
    # held out among the images the phantom annotated, never among another source's
    annotated = [im["filename"] for im in
                 annotations_for_export(via, exported)["_via_img_metadata"].values()]
    held = held_out(annotated, n_held)
    project = annotations_for_export(via, exported, keep=lambda name: name not in held)
    if holdout_output is not None:
        write_json(holdout_output, annotations_for_export(via, exported, keep=held.__contains__),
                   indent=None)
    write_json(output, project, indent=None)
    kept = f", {len(held)} held out (truth: {holdout_output})" if held else ""
    say(f"phantom-annotations: {len(project['_via_img_metadata'])} annotated PNGs{kept} -> "
        f"{output}")
