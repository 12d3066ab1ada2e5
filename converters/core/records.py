"""Pipeline records: the JSON files one stage writes and another reads, read in one place.

``splits.json`` (split -> train), the COCO files of the splits (split -> evaluate), an
evaluation's ``summary.json`` and ``instances.json`` (evaluate -> report, to-seg) are input
to the stage that reads them: a user may have edited, truncated or replaced them. Every such
read goes through :func:`read_json`, which gives exactly one of:

- the value, whose top level is the expected JSON type and holds the expected keys, each of
  its expected type (only what the reader names is checked; the rest is the caller's);
- :class:`~converters.core.errors.MissingInputError` naming the file and the stage that makes it;
- the caller's error class (default :class:`~converters.core.errors.InvalidTableError`) naming the
  file and what is wrong with it in words: not a regular file, unreadable, not UTF-8,
  malformed JSON (line and column), nested deeper than :data:`MAX_JSON_DEPTH`,
  a top level or a key of the wrong type.

Never a traceback, never a silently empty value. Files are opened as regular files only (a
FIFO or device put in a record's place is refused, not waited on): :func:`open_input`, which
every reader of an input file uses (VIA files, provenance records, images to convert or
export); and JSON from anyone is parsed with its nesting bounded (:func:`json_value`).
"""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from converters.core.errors import InvalidTableError, MissingInputError, SpinepipeError

_JSON_TYPES = {object: "JSON", dict: "an object", list: "an array", str: "a string",
               int: "a number", float: "a number", bool: "true or false"}


def read_json(path: str | Path, *, what: str, made_by: str | None = None,
              shape: type = dict, keys: dict[str, type] | None = None,
              error: type[SpinepipeError] = InvalidTableError) -> Any:
    """The JSON value of the record ``path`` (``what`` it is, in words, for messages).

    ``shape``: the top level's type (``dict`` or ``list``); ``keys``: for an object, keys
    that must be present with the type given (``{"images": list}``)."""
    path = Path(path)
    text = _text(path, what, made_by, error)
    try:
        value = json_value(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what}: malformed JSON at line {exc.lineno}, column {exc.colno}: "
                    f"{exc.msg}", file=path) from None
    except JsonTooDeep:
        raise error(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels",
                    file=path) from None
    except ValueError as exc:   # e.g. an integer beyond Python's 4300-digit conversion limit
        raise error(f"{what}: unreadable JSON ({str(exc)[:80]})", file=path) from None
    if not isinstance(value, shape):
        raise error(f"{what}: the top level is {_json_kind(value)}, not {_JSON_TYPES[shape]}",
                    file=path)
    for key, kind in (keys or {}).items():
        if key not in value:
            raise error(f"{what}: no '{key}' key", file=path)
        if not isinstance(value[key], kind):
            raise error(f"{what}: '{key}' is {_json_kind(value[key])}, not {_JSON_TYPES[kind]}",
                        file=path)
    return value


def _text(path: Path, what: str, made_by: str | None, error: type[SpinepipeError]) -> str:
    try:
        with open_input(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise MissingInputError(f"{what} not found", produced_by=made_by, file=path) from None
    except NotRegularFile as exc:
        raise error(f"{what}: {exc.strerror}", file=path) from None
    except OSError as exc:
        raise error(f"{what}: cannot be read ({exc.strerror})", file=path) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{what}: not UTF-8 text (byte {exc.start})", file=path) from None


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------------------------
# inputs are regular files; JSON is bounded


class NotRegularFile(OSError):
    """An input that is not a regular file (FIFO, socket, device, folder, broken link)."""


_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character "
          "device"), (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "special file")


def special_kind(path: str | Path) -> str | None:
    """None for a regular file (a symbolic link is followed); else what it is, in words
    (``FIFO``, ``socket``, ``folder``, ``broken link``...). Nothing is opened."""
    try:
        return _kind(os.stat(path).st_mode)
    except FileNotFoundError:
        return "broken link" if os.path.islink(path) else "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def open_input(path: str | Path, mode: str = "rb", **kw):
    """Open an input file for reading, refusing anything but a regular file with
    :class:`NotRegularFile` (checked before opening, and again on the open descriptor, which is
    opened non-blocking so that a FIFO put there meanwhile cannot block)."""
    kind = special_kind(path)
    if kind == "missing":
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if kind:
        raise NotRegularFile(errno.EINVAL, f"not a regular file ({kind})", str(path))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind:
            raise NotRegularFile(errno.EINVAL, f"not a regular file ({kind})", str(path))
        os.set_blocking(fd, True)
        return open(fd, mode, **kw)
    except BaseException:
        os.close(fd)
        raise




#: JSON nesting accepted in any input (VIA writes at most 8 levels; pipeline records fewer)
MAX_JSON_DEPTH = 64


class JsonTooDeep(ValueError):
    """JSON nested deeper than :data:`MAX_JSON_DEPTH`."""


def json_value(text: str) -> object:
    """``json.loads`` with the nesting bounded (:data:`MAX_JSON_DEPTH`): :class:`JsonTooDeep`
    (a ValueError) instead of a RecursionError, or of a value too deep for a later ``repr``.
    For every JSON text that comes from a user (VIA files, their CSV cells, file attributes)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonTooDeep() from None
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise JsonTooDeep()
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return value


def source_state_file(folder: str | Path) -> Path:
    """``<folder>.state.json``: the state a source stage keeps beside the folder it fills
    (``spinepipe retrieve``: ``data/raw/pacs`` and ``data/raw/pacs.state.json``)."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".state.json")


def source_switched_off(folder: str | Path) -> bool:
    """True when the source filling ``folder`` says it is switched off (its state file holds
    ``"enabled": false``: ``retrieve.enabled`` off). Its files stay where they are; the stages
    that read the folder leave it out, so a switched-off source never mixes with the active
    one. A missing or unreadable state means on (the folder is read as it is)."""
    path = source_state_file(folder)
    if not path.is_file():
        return False
    try:
        state = read_json(path, what="source state")
    except SpinepipeError:
        return False
    return state.get("enabled") is False
