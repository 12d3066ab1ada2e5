"""The ``spinepipe`` command line: one subcommand per DVC stage, plus small tools.

Subcommands load lazily: :data:`COMMANDS` names the module of each, and only the module of
the subcommand that runs (or whose ``--help`` is asked for) is imported. ``spinepipe --help``
imports no stage at all, and no stage that does not train or infer imports torch or the
mmlab packages (DESIGN.md, convention 12), so every command starts in well under a second.

Errors caused by the user (bad arguments, bad params, bad input files) print one line,
``Error: <what>, in <file>[, image X][, region N]``, and exit with status 1; so do errors of
the machine (``OSError``: permissions, a full disk). An input that a stage needs and that an
earlier stage makes gets the hint ``(run spinepipe <stage> first)`` here, at the boundary:
the library names the missing input, the command line names the command. Anything else is a
bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

import click

from converters.core.errors import MissingInputError, SpinepipeError

HELP = """Lumbar spine X-ray archive + VIA polygons -> trained, compared segmentation models.

One subcommand per DVC stage (dvc.yaml calls them); each also works standalone on explicit
paths. `spinepipe COMMAND --help` explains each."""

#: subcommand -> (module holding its ``command`` function, one line for ``spinepipe --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("pipeline.phantom", "Write the synthetic lumbar X-ray phantom (DICOM + VIA)."),
    "retrieve": ("pipeline.retrieve", "Fetch studies from a PACS (C-FIND + C-GET / C-MOVE)."),
    "anonymize": ("pipeline.anonymize", "De-identify a DICOM tree (PS3.15 Basic Profile)."),
    "export": ("pipeline.export", "Anonymized DICOM -> equalized PNG, provenance, VIA project."),
    "phantom-annotations": ("pipeline.phantom_annotations",
                            "Demo only: the phantom's polygons as an annotator's VIA export."),
    "convert": ("pipeline.convert", "VIA polygons -> COCO, class masks, overlaps, QA."),
    "agreement": ("pipeline.agreement", "Inter-reader agreement, consensus and an adjudication worklist."),
    "split": ("pipeline.split", "Fixed test set + k patient-grouped, stratified folds."),
    "train": ("pipeline.train", "Train one model on one fold (MMDetection / MMSegmentation)."),
    "evaluate": ("pipeline.evaluate", "Predict and score the test set with a trained model."),
    "propose": ("pipeline.propose", "Outline new images with a trained model, as a VIA project in review order."),
    "report": ("pipeline.report", "Tables, statistics and figures of every evaluation."),
    "to-seg": ("pipeline.to_seg", "Predictions as DICOM SEG on the radiographs (pseudonymized or re-identified)."),
    "to-sr": ("pipeline.to_sr", "Clinical measures as DICOM SR measurement reports (TID 1500) on the radiographs."),
    "store": ("pipeline.store", "Send DICOM objects (SEG and SR results) to the PACS by C-STORE."),
    "validate": ("pipeline.validate", "Check VIA annotations as convert would; write nothing."),
    "metrics": ("pipeline.metrics", "The four pixel metrics of one prediction / truth pair."),
}


#: subcommand -> (options naming the folders it writes, "name:file" for a file whose folder it
#: writes; options it reads that must lie apart from those folders). Every folder written is
#: an output root: locked for the run (a second run waits), every write and delete confined to
#: it (:mod:`converters.core.files`). The private folder is locked like an output, kept mode 700.
ROOTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "phantom": (("output",), ()),
    "retrieve": (("output", "state:file"), ()),
    "anonymize": (("output", "private"), ("input",)),
    "export": (("output",), ("input",)),
    "phantom-annotations": (("output", "holdout_output:file", "readers_truth:file",
                             "double_read_output:file"), ()),
    # convert --strict's problem list goes beside the output (or to --problems-file), a
    # folder that may hold the inputs: confined (converters/annotations/convert.py), not locked
    "convert": (("output",), ("input", "more", "images")),
    "agreement": (("output",), ("input", "images", "truth")),
    "split": (("output",), ("input",)),
    # train: no lock: under torchrun every rank runs this command on one work dir (rank 0
    # writes); its writes are still confined (train/fit/runner.py opens the work dir as a root)
    "evaluate": (("output",), ()),
    "propose": (("output:file",), ()),
    "report": (("output",), ()),
    "to-seg": (("output",), ("dicom", "images", "input")),
    "to-sr": (("output",), ("dicom", "images", "input", "seg")),
    "store": (("input",), ()),  # its resume state lives in the folder it sends
}


def _folders(kwargs: dict, names: tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    for spec in names:
        key, _, kind = spec.partition(":")
        value = kwargs.get(key)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None:
                out.append(Path(v).parent if kind == "file" else Path(v))
    return out


def _guarded(name: str, command: Callable) -> Callable:
    """``command`` run inside its output roots (:data:`ROOTS`), with library warnings
    silenced under ``--quiet``."""
    writes, apart = ROOTS.get(name, ((), ()))

    @functools.wraps(command)
    def run(**kwargs):
        from converters.core import files as io
        from pipeline.console import console

        io.wait_notice = lambda message: console.print(message)  # rich only if needed
        if kwargs.get("quiet"):
            warnings.simplefilter("ignore")  # pydicom's and numpy's notes: not for -q
        inputs = _folders(kwargs, apart)
        roots = {os.path.realpath(p): p for p in _folders(kwargs, writes)}
        created = [f for p in roots.values() for f in _missing_folders(p)]
        try:
            with contextlib.ExitStack() as stack:
                for real in sorted(roots):  # one order everywhere: never a deadlock
                    stack.enter_context(io.output_root(
                        roots[real], inputs=inputs,
                        private=roots[real] == kwargs.get("private") and name == "anonymize"))
                return command(**kwargs)
        except BaseException:
            for folder in sorted(set(created), key=lambda f: -len(f.parts)):
                _remove_if_empty(folder)  # a folder this failed run created: not kept
            raise

    return run


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` when nothing but empty folders lies below it (no file, no link)."""
    for here, dirs, files in os.walk(folder):
        if files or any(os.path.islink(os.path.join(here, d)) for d in dirs):
            return
    for here, dirs, _ in sorted(os.walk(folder), key=lambda t: -len(t[0])):
        with contextlib.suppress(OSError):
            os.rmdir(here)


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet (the lock will create them)."""
    out = []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def _load(name: str) -> click.Command:
    import typer
    import typer.main

    module = importlib.import_module(COMMANDS[name][0])
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                      context_settings={"help_option_names": ["-h", "--help"]})
    app.command(name)(_guarded(name, module.command))
    cmd = typer.main.get_command(app)
    cmd.name = name
    return cmd


class _LazyGroup(click.Group):
    """A click group whose commands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return _load(name) if name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in COMMANDS.items()])


app = _LazyGroup(name="spinepipe", help=HELP, no_args_is_help=True,
                 context_settings={"help_option_names": ["-h", "--help"]})


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    try:
        app.main(args=argv, prog_name="spinepipe", standalone_mode=False)
    except MissingInputError as exc:
        hint = f" (run spinepipe {exc.produced_by} first)" if exc.produced_by else ""
        print(f"Error: {exc}{hint}", file=sys.stderr)
        return 1
    except SpinepipeError as exc:
        for line in exc.details:
            print(line, file=sys.stderr)
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
