"""Incremental, additive re-runs: what each input produced, and whether it is up to date.

One state file per stage output (anonymize keeps its own in the private folder, because input
paths can carry identifiers; export and convert keep theirs hidden in their output folder).
Entries are grouped by *input*: the input folder (anonymize, export) or the VIA file
(convert). Within a group, each entry is keyed by the item's name (a relative path, an image
stem) and records a signature (size, mtime, options...) and the outputs it produced.

The rules every stage follows (DESIGN.md, convention 11):

- an item whose signature is unchanged and whose outputs all exist is not redone;
- failures are never recorded, so they are retried on every run;
- an item that disappeared from a group processed now loses its own outputs, unless another
  entry (of any group) still claims them; groups not processed now (other batches, other
  annotation files) are left alone with their outputs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from converters.errors import SpinepipeError
from converters.io import write_json

VERSION = 2


def file_signature(path: Path, *extra: Any) -> list:
    """Size and modification time of ``path``, plus anything the output depends on."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, *extra]


class IncrementalState:
    """``groups[group][key] = {"sig": [...], "outputs": [...], **extra}`` in a JSON file."""

    def __init__(self, path: Path, *, loader: Callable[[Path], Any] | None = None,
                 writer: Callable[[Path, Any], None] | None = None):
        self.path = Path(path)
        self._writer = writer or (lambda p, obj: write_json(p, obj, indent=None))
        data: Any = None
        if self.path.is_file():
            try:
                data = loader(self.path) if loader else json.loads(self.path.read_text())
            except (ValueError, OSError, SpinepipeError):
                data = None  # a damaged state file only costs a full re-run
        if not isinstance(data, dict) or data.get("version") != VERSION:
            data = {"version": VERSION, "groups": {}}  # older layouts: everything redone once
        self.data = data

    def group(self, name: str) -> dict[str, dict]:
        return self.data["groups"].setdefault(name, {})

    def up_to_date(self, group: str, key: str, sig: list,
                   exists: Callable[[str], bool]) -> dict | None:
        """The entry when ``sig`` is unchanged and every output still ``exists``."""
        entry = self.group(group).get(key)
        if entry and entry["sig"] == sig and all(exists(o) for o in entry["outputs"]):
            return entry
        return None

    def record(self, group: str, key: str, sig: list, outputs: Iterable[str],
               **extra: Any) -> None:
        self.group(group)[key] = {"sig": sig, "outputs": list(outputs), **extra}

    def forget(self, group: str, key: str) -> None:
        """Drop an entry (a failure: it is retried next time)."""
        self.group(group).pop(key, None)

    def claimed(self) -> set[str]:
        return {o for g in self.data["groups"].values() for e in g.values() for o in e["outputs"]}

    def prune(self, group: str, present: Iterable[str]) -> list[str]:
        """Forget the entries of ``group`` not in ``present``; returns the outputs that no
        remaining entry (of any group) claims: the caller removes those files."""
        entries = self.group(group)
        gone = sorted(set(entries) - set(present))
        outputs = [o for k in gone for o in entries.pop(k)["outputs"]]
        still = self.claimed()
        return sorted({o for o in outputs if o not in still})

    def outputs(self) -> list[str]:
        return sorted(self.claimed())

    def save(self) -> None:
        self._writer(self.path, self.data)
