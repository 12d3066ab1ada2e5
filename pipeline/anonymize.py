"""``spinepipe anonymize``: allowlist de-identification of a DICOM tree.

Every element gets an explicit action from one versioned table built from PS3.15 Annex E and what a
radiograph needs (``converters/dicom/deid_actions.tsv``); what no row keeps is removed
(:mod:`converters.dicom.anonymize`). Patients are keyed by issuer + Patient ID, without an ID by
study, and the ledger refuses to merge two of them (:mod:`converters.dicom.ledger`).

params.yaml section ``anonymize`` (:class:`converters.dicom.deid_table.AnonymizeConfig`).
"""
from __future__ import annotations

import os
from pathlib import Path

import typer

from converters.dicom.deid_table import AnonymizeConfig

from converters.dicom.anonymize import anonymize_tree, check_input_folders
from converters.core.errors import IncompleteRunError
from converters.dicom.ledger import load_or_create_salt, prepare_private
from pipeline.console import ParamsOption, QuietOption, console, progress_bar, say
from pipeline.params import stage_params


def command(
    input: list[Path] = typer.Option(..., "--input", "-i", help="DICOM tree to read (walked recursively; never modified); repeat for several."),
    output: Path = typer.Option(..., "--output", "-o", help="Where de-identified objects, audit/ and report.json go."),
    private: Path = typer.Option(..., "--private", help="Private folder for the salt and the pseudonym ledger (git-ignored, never under data/)."),
    workers: int = typer.Option(os.cpu_count() or 1, "--workers", help="Worker processes."),
    params: Path = ParamsOption,
    quiet: bool = QuietOption,
) -> None:
    """De-identify every DICOM file under INPUT: an allowlist built from PS3.15 Annex E (what
    no rule keeps is removed; modified dates); quarantine burned-in images, skip non-image
    objects, report failures and identities the ledger refuses to merge."""
    options = stage_params(AnonymizeConfig, "anonymize", params)
    check_input_folders(input)
    priv = prepare_private(private, forbidden=[output, *input])
    salt = load_or_create_salt(priv)
    with progress_bar("anonymize", quiet=quiet) as update:
        report = anonymize_tree(input, output, priv, salt, options, workers=workers,
                                progress=update)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts.items())) or "no files"
    say(f"anonymize: {counts} -> {output}")
    for folder in report.switched_off:  # said even with --quiet
        say(f"anonymize: left out {folder}: its source is switched off ({folder}.state.json; "
            "its files stay, and are read again once it is on)")
    for folder, n in sorted(report.removed.items()):
        say(f"anonymize: removed {n} output(s) whose input is gone from {folder}")
    lines = report.detail_lines(failures_only=quiet)
    if lines:
        console.print("\n".join(lines))
    if report.failed and options.fail_on_error:
        names = report.failed_inputs
        listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise IncompleteRunError(f"{len(names)} file(s) failed to anonymize: {listed} "
                         f"(details: {priv / 'anonymize_report.json'})",
                         file=", ".join(map(str, input)))
