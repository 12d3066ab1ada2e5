"""``spinepipe phantom-annotations``: the demo's annotator (phantom only).

In real use annotators draw on the exported, pseudonymized PNGs and save their VIA project
into ``data/annotations/``. In the demo the phantom already knows the polygons, keyed by the
*original* SOP Instance UID (in ``data/raw/``, the identifiable archive). This step maps them
to the exported PNG names through the private ledger (original -> new SOP Instance UID) and
the export provenance (new SOP Instance UID -> PNG), and writes a VIA project that names only
pseudonymized PNGs. The ledger is read here and never copied.
"""
from __future__ import annotations

from pathlib import Path

import typer

from converters.errors import UsageError
from converters.io import write_json
from converters.ledger import load_ledger
from converters.phantom import annotations_for_export, exported_pngs
from pipeline.console import QuietOption, say


def command(
    via: Path = typer.Option(..., "--via", help="The phantom's VIA project (annotations/via_project.json)."),
    png: Path = typer.Option(..., "--png", help="The export folder (PNGs and provenance/)."),
    private: Path = typer.Option(..., "--private", help="The private folder holding the ledger."),
    output: Path = typer.Option(..., "--output", "-o", help="VIA project to write, naming the exported PNGs."),
    quiet: bool = QuietOption,
) -> None:
    """Demo only: hand the phantom's polygons to the pipeline as an annotator's VIA export of
    the exported PNGs (mapped through the private ledger; no original identifier written)."""
    if not via.is_file():
        raise UsageError("VIA project not found", file=via)
    if not (private / "ledger.json").is_file():
        raise UsageError("no ledger: run spinepipe anonymize first", file=private / "ledger.json")
    exported = exported_pngs(png, load_ledger(private)["instances"])
    project = annotations_for_export(via, exported)
    write_json(output, project, indent=None)
    say(f"phantom-annotations: {len(project['_via_img_metadata'])} annotated PNGs -> {output}",
        quiet=quiet)
