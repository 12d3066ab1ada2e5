"""``spinepipe store``: send DICOM objects (spinepipe's SEG and SR results) to the PACS by C-STORE.

The connection is ``retrieve``'s (params.yaml section ``retrieve``: host, port, AE titles,
TLS); the flags override it. Resumable: ``<input>/.store_state.json`` records what each PACS
accepted, with the sha256 of each file's bytes, so a re-run sends only the rest and every file
whose content changed since it was stored (a SEG rewritten under the same SOP Instance UID is
sent again, never answered "already there"). Any SOP class the folder holds (SEG, SR). Every
instance is reported; any failure makes the command exit 1 after the others were sent.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from converters.core.errors import IncompleteRunError, MissingInputError
from converters.dicom.pacs import RetrieveConfig
from converters.dicom.store import store
from pipeline.console import ParamsOption, QuietOption, console, progress_bar, say
from pipeline.params import stage_params

STATE_FILE = ".store_state.json"


def command(
    input: Path = typer.Option(..., "--input", "-i", help="Folder of DICOM files to send (*.dcm), e.g. the output of to-seg or to-sr."),
    host: Optional[str] = typer.Option(None, "--host", help="PACS host [params: retrieve.host]."),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help="PACS DICOM port, 1-65535 [params: retrieve.port]."),
    called_aet: Optional[str] = typer.Option(None, "--called-aet", help="PACS AE title [params: retrieve.called_aet]."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """C-STORE every DICOM file of a folder to the PACS (TLS as configured), resumably,
    reporting each instance."""
    cfg = stage_params(RetrieveConfig, "retrieve", params)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in dict(
        host=host, port=port, called_aet=called_aet).items() if v is not None})
    if not input.is_dir():
        raise MissingInputError("folder not found", produced_by="to-seg", file=input)
    files = sorted(p for p in input.glob("*.dcm") if p.is_file())
    if not files:
        raise MissingInputError("no DICOM file (*.dcm) to send", produced_by="to-seg", file=input)
    with progress_bar("store", quiet=quiet) as update:
        report = store(cfg, files, input / STATE_FILE, progress=update)
    if not quiet:
        for r in report.instances:
            console.print(f"  {r['outcome']}: {Path(r['file']).name}"
                          + (f" ({r['reason']})" if r["reason"] else ""))
    failed = report.count("failed")
    say(f"store: {report.count('stored')} stored, {report.count('already')} already there, "
        f"{failed} failed -> {cfg.called_aet}@{cfg.host}:{cfg.port}")
    if failed:
        for r in [r for r in report.instances if r["outcome"] == "failed"][:5]:
            console.print(f"  failed: {r['file']}: {r['reason']}")
        raise IncompleteRunError(f"{failed} of {len(files)} instance(s) not stored; re-run to "
                                 "send them again", file=input / STATE_FILE)
