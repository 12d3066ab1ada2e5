"""``spinepipe retrieve``: pull studies from a PACS (C-FIND + C-GET / C-MOVE), resumably.

params.yaml section ``retrieve`` (:class:`converters.dicom.pacs.RetrieveConfig`). With
``retrieve.enabled: false`` (the demo, where the phantom is the archive) the command only makes
sure the output folder exists.

What the PACS sends is verified (:mod:`converters.dicom.retrieve`): an object whose study, series,
instance or patient is not what was asked is refused and listed ("refused: ..."); each study and
each study-level query has a deadline of 10 x ``retrieve.timeout_s``
(:data:`converters.dicom.pacs.DEADLINE_FACTOR`), after which its association is aborted and it is
listed incomplete / unanswered; a PACS failure status is shown in words. Any of these makes the
command exit 1 after the rest was fetched; a re-run resumes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from converters.core.errors import IncompleteRunError, UsageError
from converters.core.files import prepare_output, write_json
from converters.dicom.pacs import RetrieveConfig
from converters.dicom.retrieve import read_manifest, retrieve
from pipeline.console import ParamsOption, QuietOption, console, progress_bar, say
from pipeline.params import stage_params


def command(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the retrieved DICOM files (<study>/<series>/<sop>.dcm)."),
    state: Optional[Path] = typer.Option(None, "--state", help="Resume state (JSON); default: <output>.state.json next to the output."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="CSV with an AccessionNumber or PatientID column [params: retrieve.manifest]."),
    host: Optional[str] = typer.Option(None, "--host", help="PACS host [params: retrieve.host]."),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help="PACS DICOM port, 1-65535 [params: retrieve.port]."),
    called_aet: Optional[str] = typer.Option(None, "--called-aet", help="PACS AE title [params: retrieve.called_aet]."),
    method: Optional[str] = typer.Option(None, "--method", help="c-get or c-move [params: retrieve.method]."),
    force: bool = typer.Option(False, "--force", help="Run even if retrieve.enabled is false."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Find studies on a PACS (by manifest, or by date range + modality + body part / series
    description) and fetch what is still missing; retries with backoff, reports failures."""
    cfg = stage_params(RetrieveConfig, "retrieve", params)
    overrides = {k: v for k, v in dict(host=host, port=port, called_aet=called_aet,
                                       method=method).items() if v is not None}
    if method is not None and method not in ("c-get", "c-move"):
        raise UsageError(f"--method must be c-get or c-move, got {method!r}")
    cfg = dataclasses.replace(cfg, **overrides)
    state = state or output.with_name(output.name + ".state.json")
    if not cfg.enabled and not force:
        prepare_output(output)
        prepare_output(state.parent)  # the state lies beside the output folder
        write_json(state, {"enabled": False})
        say("retrieve: disabled (retrieve.enabled is false); nothing fetched")
        return
    rows = read_manifest(manifest or cfg.manifest) if (manifest or cfg.manifest) else None
    if rows is None and not (cfg.study_date_from or cfg.study_date_to or cfg.modalities):
        raise UsageError("nothing to query: give a manifest, or a date range / modalities")
    with progress_bar("retrieve", quiet=quiet) as update:
        report = retrieve(cfg, output, state, rows, progress=update)
    done = len(report.studies) - len(report.failed)
    say(f"retrieve: {done}/{len(report.studies)} studies complete, {report.fetched} instances "
        f"fetched -> {output}")
    lines = report.problem_lines()
    if lines:
        console.print("\n".join(lines))
    if report.failed or report.not_found or report.invalid or report.unanswered \
            or report.mismatched:
        extra = "".join(f", {n} {what}" for n, what in (
            (len(report.unanswered), "query(ies) unanswered within the deadline"),
            (len(report.mismatched), "object(s) refused (not what was asked)")) if n)
        raise IncompleteRunError(f"{len(report.failed)} stud(ies) incomplete, {len(report.not_found)} "
                         f"query(ies) without a match, {len(report.invalid)} invalid study "
                         f"UID(s){extra}; re-run to resume", file=state)
