"""Atomic file writing and output folders (DESIGN.md, convention 8).

Every output is written to a temporary name in the destination folder, flushed, then renamed
over the final name, so an interrupted run never leaves a half-written file that looks done.
Temporary names are ``.<final name>.<random>.sp-tmp<suffix>``: hidden, and recognisable, so a
re-run removes what an interrupted run left (:func:`remove_stale_temps`) and nothing else.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from converters.errors import OutputFolderError

TEMP_MARK = ".sp-tmp"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_MARK + path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def temp_name(path: str | Path) -> Path:
    """A temporary sibling of ``path`` that :func:`remove_stale_temps` recognises (for
    outputs written now and moved into place later, all together)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_MARK}{path.suffix}")


def remove_stale_temps(root: str | Path) -> int:
    """Delete the temporary files an interrupted run left under ``root``; returns how many."""
    n = 0
    root = Path(root)
    if not root.is_dir():
        return 0
    for p in root.rglob(f".*{TEMP_MARK}*"):
        if p.is_file() and not p.is_symlink():
            p.unlink()
            n += 1
    return n


def prepare_output(path: str | Path) -> Path:
    """Create the output folder (and parents) and check that files can be written in it;
    :class:`OutputFolderError` naming the folder otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputFolderError("the output folder is a file", file=path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=TEMP_MARK, dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputFolderError(f"cannot write into the output folder "
                                f"({exc.strerror or type(exc).__name__})", file=path) from None
    return path


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, *, indent: int | None = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")
