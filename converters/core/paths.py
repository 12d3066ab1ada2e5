"""Safe output paths from untrusted parts (DESIGN.md, convention 11).

Every file name that comes from data (a UID sent by a PACS or read from a DICOM file, a
Patient ID, a VIA file name) is validated here before it becomes part of a path, and the
final path is refused when it resolves outside the output root (``..``, absolute parts,
symbolic links pointing elsewhere). Used by retrieve, anonymize, export and convert, and by
every later writer.

- UIDs follow the grammar of DICOM PS3.5 section 9.1: digits and dots, at most 64 characters,
  no empty component (``1..2``, ``.1``, ``1.`` are invalid). Leading zeros inside a component
  are tolerated, as real archives carry them.
- Names (pseudonyms, image stems) must consist of ``A-Z a-z 0-9 . _ -``, must not start with a
  dot and are at most 128 characters long.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from converters.core.errors import SpinepipeError

UID_MAX = 64
NAME_MAX = 128
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class UnsafePathError(SpinepipeError):
    """A value from data would become a path outside the output folder, or is no valid name."""


def is_uid(value: object) -> bool:
    """True when ``value`` is a syntactically valid DICOM UID (PS3.5 9.1)."""
    return isinstance(value, str) and len(value) <= UID_MAX and _UID.fullmatch(value) is not None


def is_safe_name(value: object) -> bool:
    """True when ``value`` can be one path component as it is (see the module docstring)."""
    return isinstance(value, str) and len(value) <= NAME_MAX and _NAME.fullmatch(value) is not None


def check_uid(value: object, what: str, **where) -> str:
    """``value`` if it is a valid UID, else :class:`UnsafePathError` naming ``what``."""
    if not is_uid(value):
        raise UnsafePathError(f"{what} {str(value)[:80]!r} is not a valid DICOM UID "
                              "(digits and dots, at most 64 characters)", **where)
    return str(value)


def check_name(value: object, what: str, **where) -> str:
    """``value`` if it is a safe path component, else :class:`UnsafePathError`."""
    if not is_safe_name(value):
        raise UnsafePathError(f"{what} {str(value)[:80]!r} is not a safe file name "
                              "(letters, digits, '.', '_', '-'; no leading dot)", **where)
    return str(value)


def confined(root: str | Path, *parts: str, **where) -> Path:
    """``root / parts...``, refused with :class:`UnsafePathError` unless it stays inside
    ``root`` once its folder is resolved (``..``, absolute parts and linked folders are all caught;
    the write itself goes through :mod:`converters.core.files`, which refuses any link below
    the root)."""
    root = Path(root)
    base = Path(os.path.realpath(root))
    path = root.joinpath(*parts)
    # a link at the final name is replaced by the write path (converters.core.files), never
    # followed: only the folders above it are resolved
    real = Path(os.path.realpath(path)) if path.name in ("", ".", "..") \
        else Path(os.path.realpath(path.parent)) / path.name
    if real != base and base not in real.parents:
        raise UnsafePathError(f"refused to write {'/'.join(parts)[:120]!r} outside the output "
                              f"folder {root}", **where)
    return path
