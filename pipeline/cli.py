"""The ``spinepipe`` command line: one subcommand per DVC stage.

Errors caused by the user (bad arguments, bad params, bad input files) print one line,
``Error: <what>, in <file>[, image X][, region N]``, and exit with status 1; so do errors of
the machine (``OSError``: permissions, a full disk). Anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import sys

import click
import typer

from converters.errors import SpinepipeError
from pipeline import (anonymize, convert, evaluate, export, metrics, phantom,
                      phantom_annotations, report, retrieve, split, train)

app = typer.Typer(
    name="spinepipe",
    help="Lumbar spine X-ray archive + VIA polygons -> trained, compared segmentation models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root() -> None:
    """Lumbar spine X-ray archive + VIA polygons -> trained, compared segmentation models.

    One subcommand per DVC stage (dvc.yaml calls them); each also works standalone on
    explicit paths. `spinepipe COMMAND --help` explains each.
    """


app.command("phantom")(phantom.command)
app.command("retrieve")(retrieve.command)
app.command("anonymize")(anonymize.command)
app.command("export")(export.command)
app.command("phantom-annotations")(phantom_annotations.command)
app.command("convert")(convert.command)
app.command("split")(split.command)
app.command("train")(train.command)
app.command("evaluate")(evaluate.command)
app.command("report")(report.command)
app.command("metrics")(metrics.command)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    try:
        app(args=argv, prog_name="spinepipe", standalone_mode=False)
    except SpinepipeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the machine's fault, not ours: permissions, a full disk, ...
        where = f", in {exc.filename}" if exc.filename else ""
        print(f"Error: {exc.strerror or type(exc).__name__}{where}", file=sys.stderr)
        return 1
    except click.exceptions.NoArgsIsHelpError:
        return 0
    except click.UsageError as exc:
        print(f"Error: {exc.format_message()}", file=sys.stderr)
        return 1
    except click.exceptions.Abort:
        print("Error: aborted", file=sys.stderr)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        print(f"Error: {exc.format_message()}", file=sys.stderr)
        return 1
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
