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
- a state file is input too: an entry whose outputs are not plain relative paths (absolute,
  ``..``, empty parts) makes the whole file count as damaged (everything redone, nothing deleted),
  and the caller deletes through :func:`converters.core.files.remove_output`, which touches only
  regular files below the output root.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from converters.core.errors import SpinepipeError
from converters.core.files import is_own_file, read_own, write_json

VERSION = 2


def file_signature(path: Path, *extra: Any) -> list:
    """Size and modification time of ``path``, plus anything the output depends on."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, *extra]


def _safe_relative(value: object) -> bool:
    if not isinstance(value, str) or not value or value.startswith("/") or "\x00" in value:
        return False
    return all(part not in ("", ".", "..") for part in value.split("/"))


def _well_formed(data: Any) -> bool:
    """The layout this version writes, every output a plain relative path."""
    if not isinstance(data, dict) or data.get("version") != VERSION \
            or not isinstance(data.get("groups"), dict):
        return False
    for group in data["groups"].values():
        if not isinstance(group, dict):
            return False
        for entry in group.values():
            if not (isinstance(entry, dict) and isinstance(entry.get("sig"), list)
                    and isinstance(entry.get("outputs"), list)
                    and all(_safe_relative(o) for o in entry["outputs"])):
                return False
    return True


class IncrementalState:
    """``groups[group][key] = {"sig": [...], "outputs": [...], **extra}`` in a JSON file."""

    def __init__(self, path: Path, *, loader: Callable[[Path], Any] | None = None,
                 writer: Callable[[Path, Any], None] | None = None):
        self.path = Path(path)
        self._writer = writer or (lambda p, obj: write_json(p, obj, indent=None))
        data: Any = None
        if loader is not None:
            try:
                data = loader(self.path)
            except (ValueError, OSError, SpinepipeError):
                data = None  # a damaged state file only costs a full re-run
        else:
            raw = read_own(self.path)  # a link planted at the state's name is refused
            try:
                data = json.loads(raw) if raw is not None else None
            except ValueError:
                data = None
        if not _well_formed(data):
            data = {"version": VERSION, "groups": {}}  # older layouts: everything redone once
        self.data = data

    def group(self, name: str) -> dict[str, dict]:
        return self.data["groups"].setdefault(name, {})

    def up_to_date(self, group: str, key: str, sig: list, root: Path) -> dict | None:
        """The entry when ``sig`` is unchanged and every output is still a regular file of
        its own under ``root`` (a link planted at an output's name makes the item redone)."""
        entry = self.group(group).get(key)
        if entry and entry["sig"] == sig and all(is_own_file(Path(root) / o)
                                                 for o in entry["outputs"]):
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
