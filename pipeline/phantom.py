"""``spinepipe phantom``: write the synthetic lumbar X-ray phantom (DICOM + VIA annotations).

params.yaml section ``phantom`` (all keys of :class:`converters.phantom.plan.PhantomConfig`);
command-line flags override it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from converters.core.files import prepare_output, write_json
from converters.phantom.writing import PhantomConfig, generate
from converters.annotations.via_project import via2_project
from pipeline.console import ParamsOption, QuietOption, progress_bar, say
from pipeline.params import stage_params


def command(
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write dicom/, annotations/ and truth.json into."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of images [params: phantom.n]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed; same seed, same files [params: phantom.seed]."),
    height: Optional[int] = typer.Option(None, "--height", help="Image height in pixels [params: phantom.height]."),
    width: Optional[int] = typer.Option(None, "--width", help="Image width in pixels [params: phantom.width]."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (default: all cores)."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Write N synthetic lateral lumbar spine radiographs as 12-bit DICOM (with the identifying
    tags a real archive has) and the VIA 2.x project an annotator would export for them."""
    cfg = stage_params(PhantomConfig, "phantom", params)
    overrides = {k: v for k, v in dict(n=n, seed=seed, height=height, width=width).items()
                 if v is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    if cfg.enabled:
        cfg.validate()
    prepare_output(output)
    if not cfg.enabled:
        # a real archive is the source: leave empty outputs so downstream stages still run
        (output / "dicom").mkdir(parents=True, exist_ok=True)
        write_json(output / "annotations" / "via_project.json", via2_project([]), indent=None)
        write_json(output / "truth.json", {})
        say("phantom: disabled (phantom.enabled is false); empty outputs written")
        return
    with progress_bar("phantom", quiet=quiet) as update:
        results = generate(cfg, output, workers=workers, progress=update)
    patients = len({r.patient_id for r in results})
    say(f"phantom: {len(results)} images of {patients} patients "
        f"({cfg.width}x{cfg.height}) -> {output}/dicom, {output}/annotations/via_project.json")
