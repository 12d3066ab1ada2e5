"""``spinepipe retrieve``: pull studies from a PACS (C-FIND + C-GET / C-MOVE), resumably.

params.yaml section ``retrieve`` (:class:`converters.dicom.pacs.RetrieveConfig`). With
``retrieve.enabled: false`` (the demo, where the phantom is the archive) the command only makes
sure the output folder exists.

What the PACS sends is verified (:mod:`converters.dicom.retrieve`): an object whose study, series,
instance or patient is not what was asked is refused and listed ("refused: ..."); each study and
each study-level query has a deadline of 10 x ``retrieve.timeout_s``
(:data:`converters.dicom.pacs.DEADLINE_FACTOR`), after which its association is aborted and it is
listed incomplete / unanswered; a PACS failure status is shown in words. Any of these makes the
command exit 1 after the rest was fetched; a re-run resumes. A manifest row the PACS does not
know is listed, and with ``retrieve.missing: warn`` (the default) the batch goes on and the
command exits 0; ``fail`` makes it exit 1 (after the rest was fetched).

In dvc.yaml the stage is ``always_changed``: the PACS and the manifest (identifying, kept in
``private/``, so its hash is never written to dvc.lock) are outside what DVC can hash, so every
``dvc repro`` asks again; what was received before is not fetched again, and the stages after
it run only when something new arrived.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from converters.core.errors import IncompleteRunError, UsageError
from converters.core.records import source_state_file
from converters.dicom.pacs import RetrieveConfig
from converters.dicom.retrieve import read_manifest, retrieve, switch_off
from pipeline.console import ParamsOption, QuietOption, console, progress_bar, say
from pipeline.params import stage_params


def command(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the retrieved DICOM files (<study>/<series>/<sop>.dcm)."),
    state: Optional[Path] = typer.Option(None, "--state", help="Resume state (JSON); default: <output>.state.json next to the output."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="CSV with an AccessionNumber or PatientID column [params: retrieve.manifest]."),
    host: Optional[str] = typer.Option(None, "--host", help="PACS host [params: retrieve.host]."),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help="PACS DICOM port, 1-65535 [params: retrieve.port]."),
    called_aet: Optional[str] = typer.Option(None, "--called-aet", help="PACS AE title [params: retrieve.called_aet]."),
    calling_aet: Optional[str] = typer.Option(None, "--calling-aet", help="Our AE title, as the PACS knows it [params: retrieve.calling_aet]."),
    missing: Optional[str] = typer.Option(None, "--missing", help="A manifest row the PACS does not know: warn (listed, exit 0) or fail (exit 1) [params: retrieve.missing]."),
    method: Optional[str] = typer.Option(None, "--method", help="c-get or c-move [params: retrieve.method]."),
    force: bool = typer.Option(False, "--force", help="Run even if retrieve.enabled is false."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """Find studies on a PACS (by manifest, or by date range + modality + body part / series
    description) and fetch what is still missing; retries with backoff, reports failures."""
    cfg = stage_params(RetrieveConfig, "retrieve", params)
    overrides = {k: v for k, v in dict(host=host, port=port, called_aet=called_aet,
                                       calling_aet=calling_aet, method=method,
                                       missing=missing).items() if v is not None}
    if method is not None and method not in ("c-get", "c-move"):
        raise UsageError(f"--method must be c-get or c-move, got {method!r}")
    if missing is not None and missing not in ("fail", "warn"):
        raise UsageError(f"--missing must be fail or warn, got {missing!r}")
    for flag, title in (("--called-aet", called_aet), ("--calling-aet", calling_aet)):
        if title is not None and not 0 < len(title.strip()) <= 16:
            raise UsageError(f"{flag} must be an AE title of 1-16 characters, got {title!r}")
    cfg = dataclasses.replace(cfg, **overrides)
    state = state or source_state_file(output)
    if not cfg.enabled and not force:
        kept = switch_off(output, state)
        say("retrieve: disabled (retrieve.enabled is false); nothing fetched"
            + ("; the batch received before stays in place, left out of anonymize"
               if kept else ""))
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
    if report.not_found and cfg.missing == "warn":
        say(f"retrieve: warning: {len(report.not_found)} manifest row(s) not found on the PACS "
            "(listed above; retrieve.missing: warn); the rest of the batch is fetched")
    unfinished = [(len(report.failed), "stud(ies) incomplete"),
                  (len(report.unanswered), "query(ies) unanswered within the deadline"),
                  (len(report.mismatched), "object(s) refused (not what was asked)"),
                  (len(report.invalid), "invalid study UID(s)")]
    if any(n for n, _ in unfinished):  # a re-run can finish these
        raise IncompleteRunError(", ".join(f"{n} {what}" for n, what in unfinished if n)
                                 + "; re-run to resume", file=state)
    if report.not_found and cfg.missing == "fail":  # a re-run cannot find them
        raise IncompleteRunError(f"{len(report.not_found)} manifest row(s) not found on the "
                                 "PACS (listed above; retrieve.missing: fail): correct the "
                                 "manifest, or set retrieve.missing: warn", file=state)
