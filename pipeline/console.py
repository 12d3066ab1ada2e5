"""Shared console, progress bars and params-file option for the stage modules.

Logs and progress bars go through one rich console on stderr so bars stay intact
(DESIGN.md, convention 9). Every stage ends with one summary line (:func:`say`), printed even
with ``--quiet``; ``--quiet`` turns off progress bars, detail lines and, for the stages that
train or infer, the libraries' own console output (mmengine's hook tables and iteration
logs, deprecation warnings), which goes to a log file instead (:func:`library_output_to`).
So ``dvc repro -q`` (``make demo``) prints one line per stage.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import typer


_RICH = None


def rich_console():
    """rich's console on stderr, made on first use: importing rich costs a tenth of the start
    of a quick command (anonymize on a few files), and a ``--quiet`` run that prints only its
    summary line never needs it. Markup, highlighting and emoji codes off: messages quote
    values from data (file names, VIA values) that may hold ``[...]`` or ``:name:``."""
    global _RICH
    if _RICH is None:
        from rich.console import Console

        _RICH = Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)
    return _RICH


class _Console:
    """``console.print(...)`` and the rest, on :func:`rich_console`, made when first used."""

    def __getattr__(self, name: str):
        return getattr(rich_console(), name)


console = _Console()

QuietOption = typer.Option(False, "--quiet", "-q", help="Only the one-line summary: no progress bars, no details, no library logs (those go to the run's log file).")
ParamsOption = typer.Option(
    Path("params.yaml"), "--params",
    help="params.yaml to read this stage's section from (skipped if the file does not exist).")


@contextmanager
def progress_bar(description: str, *, quiet: bool = False) -> Iterator[Callable[[int, int], None]]:
    """Yield a ``callback(done, total)`` that drives a rich progress bar (or nothing if quiet)."""
    if quiet:
        yield lambda done, total: None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=rich_console(), transient=False) as prog:
        task = prog.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield update


def say(message: str) -> None:
    """The stage's one-line summary on stderr, printed with or without ``--quiet`` (as is:
    no markup, no wrapping)."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def library_output_to(log: Path | None) -> Iterator[None]:
    """With ``log`` (a file below the stage's output root), everything written to this
    process's stdout and stderr, at the file descriptor level (mmengine's logger, C
    extensions, warnings), is appended to ``log`` instead of reaching the terminal; without,
    nothing changes."""
    if log is None:
        yield
        return
    from converters.core.files import open_append

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open_append(log) as fd:  # below the stage's output root, never through a link
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
