"""Shared console, progress bars and params-file option for the stage modules.

Logs and progress bars go through one rich console on stderr so bars stay intact
(DESIGN.md, convention 9); ``--quiet`` turns bars and chatter off.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# markup off: messages quote values from data (file names, VIA values) that may hold "[...]"
console = Console(stderr=True, highlight=False, markup=False)

QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bars or summaries.")
ParamsOption = typer.Option(
    Path("params.yaml"), "--params",
    help="params.yaml to read this stage's section from (skipped if the file does not exist).")


@contextmanager
def progress_bar(description: str, *, quiet: bool = False) -> Iterator[Callable[[int, int], None]]:
    """Yield a ``callback(done, total)`` that drives a rich progress bar (or nothing if quiet)."""
    if quiet:
        yield lambda done, total: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as prog:
        task = prog.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield update


def say(message: str, *, quiet: bool = False) -> None:
    if not quiet:
        console.print(message)
