"""Readers: who drew each VIA file, and which polygons are an image's ground truth.

Layout of the annotations input (``data/annotations``):

- ``<input>/<reader>/*.json|*.csv``: the files of one reader, named by the sub-folder (letters,
  digits, ``.``, ``_``, ``-``; no leading dot; folders starting with a dot are skipped, as
  editors and notebooks leave them; a linked folder is read like any other). One level only:
  folders inside a reader's folder are not read (keep old batches there, out of the way);
- ``<input>/*.json|*.csv``: files of the reader :data:`DEFAULT_READER` (``default``); a file given
  by name belongs to ``default`` unless ``spinepipe convert --annotator NAME`` names its reader;
- ``<input>/adjudicated/``: the reader :data:`ADJUDICATED`: an expert's settled polygons (the VIA
  project ``spinepipe agreement`` writes, saved back here) are the ground truth of every image
  they cover whose file attribute ``settled`` is ``yes``, whatever ``convert.reference`` says
  (an image not settled yet is skipped, a ``not_settled`` warning).

The same image read by two readers is expected (agreement needs it); one reader annotating an
image twice is still a ``duplicate_image`` problem. :data:`CONSENSUS` (``consensus``) is reserved:
it names the instances built from several readers (:mod:`converters.annotations.consensus`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from converters.core.errors import InvalidConfigError, UsageError
from converters.core.paths import is_safe_name
from converters.annotations.via import expand_inputs

DEFAULT_READER = "default"
CONSENSUS = "consensus"
ADJUDICATED = "adjudicated"
#: the file attribute an expert sets to ``yes`` in the adjudication project: only settled
#: images of the ``adjudicated`` reader count (the rest of the project still holds every
#: reader's polygons)
SETTLED = "settled"
#: the files a reader folder contributes
SUFFIXES = (".json", ".csv")
READER_MAX = 64


@dataclass(frozen=True)
class ReaderFile:
    reader: str
    path: Path


def check_reader(name: str, *, file: str | Path | None = None) -> str:
    """``name`` when it can be a reader (a safe folder name, not ``consensus``); else a one-line
    :class:`~converters.core.errors.UsageError` naming ``file``."""
    if not (is_safe_name(name) and len(name) <= READER_MAX):
        raise UsageError(f"reader name {str(name)[:80]!r} is not a safe folder name (letters, "
                         f"digits, '.', '_', '-'; no leading dot; at most {READER_MAX} "
                         "characters)", file=file)
    if name.lower() == CONSENSUS:
        raise UsageError(f"'{CONSENSUS}' is reserved for the readers' consensus; rename the "
                         "reader", file=file)
    if name.lower() == ADJUDICATED and name != ADJUDICATED:
        raise UsageError(f"the expert's folder is spelled '{ADJUDICATED}' (lower case): "
                         f"rename {name!r}", file=file)
    return name


def reader_files(paths: Iterable[str | Path], annotator: str | None = None) -> list[ReaderFile]:
    """Every VIA file under ``paths`` with its reader (module docstring), sorted by reader then
    file. ``annotator`` names the reader of the files given by name (not of folders)."""
    out: list[ReaderFile] = []
    if annotator is not None:
        check_reader(annotator)
    for path in map(Path, paths):
        if not path.is_dir():
            out.append(ReaderFile(annotator or DEFAULT_READER, path))
            continue
        for child in sorted(path.iterdir()):
            if child.name.startswith("."):
                continue
            if child.is_dir():   # a linked folder too: read, never written
                check_reader(child.name, file=child)
                out += [ReaderFile(child.name, p) for p in sorted(child.iterdir())
                        if p.suffix.lower() in SUFFIXES and not p.name.startswith(".")]
            elif child.suffix.lower() in SUFFIXES:
                out.append(ReaderFile(DEFAULT_READER, child))
    # one reader per file, checked as every VIA input is (regular files only, at least one)
    expand_inputs([f.path for f in out] or list(map(Path, paths)))
    return sorted(out, key=lambda f: (f.reader, str(f.path)))


def check_reference(reference: str, readers: Iterable[str], *, file: str | Path) -> str:
    """``convert.reference``: ``consensus`` or one of the readers found; else a one-line
    :class:`~converters.core.errors.InvalidConfigError` (``file`` is the annotations input)."""
    found = sorted(set(readers))
    if reference != CONSENSUS and reference not in found:
        raise InvalidConfigError(
            f"convert.reference: reader {reference!r} has no VIA file (readers: "
            f"{', '.join(found) or 'none'}; or '{CONSENSUS}')", file=file)
    return reference


def ground_truth_reader(readers: Iterable[str], reference: str) -> str:
    """Whose polygons are an image's ground truth, given the readers who read it:
    ``adjudicated`` when an expert settled it; the only reader; the reference reader when they
    read it; else ``consensus`` (of the readers who did)."""
    readers = sorted(set(readers))
    if ADJUDICATED in readers:
        return ADJUDICATED
    if len(readers) == 1:
        return readers[0]
    if reference in readers:
        return reference
    return CONSENSUS
