"""The one write path and the one delete path of every stage (DESIGN.md, conventions 8 and 13).

A stage declares the folder it owns, its *output root*, with :func:`output_root`; every file it
writes or deletes goes through this module and stays inside that root:

- **Confined, never through a link.** A write walks from the root to the target folder one
  component at a time with ``O_NOFOLLOW | O_DIRECTORY`` (creating missing folders on the way), so a
  symbolic link planted at *any* level below the root (a folder, the temporary name, the final
  name) is refused with :class:`~converters.core.paths.UnsafePathError`, never followed. The root
  itself may be reached through links (a user's ``data -> /mnt/big``); what is below it may not.
  ``..``, absolute parts and empty parts are refused before anything is opened.
- **Atomic.** Content goes to an unpredictable temporary name in the target folder
  (``.<name>.<random>.sp-tmp<suffix>``, created with ``O_EXCL``), is flushed, then renamed over
  the final name in the same folder (a link at the final name is replaced, not followed). An
  interrupted run leaves only temporary names, which the next run removes
  (:func:`remove_stale_temps`).
- **Unchanged stays untouched.** When the final name already is a regular file with the same
  bytes, permissions, owner and group and no other name
  (:func:`converters.core.unchanged.keepable`), the temporary file is dropped and the existing
  one kept, inode and modification time and all (so an output is
  not always a new inode): a stage re-run that writes what is there (the phantom again, an object
  anonymized again) does not make the next stage redo its work, nor DVC retrain the models.
- **The user's umask.** Outputs are created with mode ``0o666`` less the umask (folders
  ``0o777`` less the umask); the private folder passes ``mode=0o600``
  (:mod:`converters.dicom.ledger`).
- **Deletes** (:func:`remove_output`) touch only *regular files* below the root, by a relative
  path checked like a write's; whatever a state file says (state files are input too), a link, a
  folder or anything outside is left alone.
- **One writer at a time.** The root is locked (``flock`` on the folder itself, so no lock file
  appears among the outputs) for as long as the ``with`` block runs; a second run on the same
  root waits, after one message through :data:`wait_notice`, and then sees the first run's
  results. The lock is released by the kernel when a process dies: never stale.
- **Inputs and outputs apart.** ``inputs=`` given to :func:`output_root` are refused when one
  contains the root or lies inside it (a run would re-read its own outputs, or write into the
  archive it reads).

A write to a path below no active root is a bug in the caller (:class:`RuntimeError`): every stage
opens its root first. Worker processes started by :mod:`converters.core.parallel` (fork) inherit
the roots of the stage that started them.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import stat
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from converters.core.errors import OutputFolderError, UnsafeLocationError
from converters.core.paths import UnsafePathError
from converters.core.unchanged import put_in_place

TEMP_MARK = ".sp-tmp"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

#: called with one line before a run waits for another run's lock (the CLI prints it)
wait_notice: Callable[[str], None] = lambda message: None


@dataclass(frozen=True)
class _Root:
    path: Path          # as the user gave it (for messages)
    real: Path          # resolved once, when the root was opened (a link *to* the root is fine)
    absolute: Path      # made absolute then: a later chdir does not move the root


#: the active output roots of this process, by resolved path
_ROOTS: dict[Path, _Root] = {}
#: the roots this process holds the lock of
_LOCKED: set[Path] = set()


# --------------------------------------------------------------------------------------------
# roots


def _resolved(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def within(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, links resolved on both."""
    return _inside(_resolved(path), _resolved(folder))


def check_apart(output: str | Path, inputs: Iterable[str | Path]) -> None:
    """:class:`UnsafeLocationError` when the output folder is an input, lies inside one, or
    holds one."""
    out = _resolved(output)
    for given in inputs:
        inp = _resolved(given)
        if _inside(out, inp):
            raise UnsafeLocationError(f"the output folder {output} is inside the input {given}: "
                                      "a run would read its own outputs; choose another output")
        if _inside(inp, out):
            raise UnsafeLocationError(f"the input {given} is inside the output folder {output}: "
                                      "choose an output folder apart from the inputs")


def prepare_output(path: str | Path, *, private: bool = False) -> Path:
    """Create the output folder (``private``: mode 700), check that files can be written in
    it (:class:`OutputFolderError` naming the folder otherwise) and make it an output root of
    this process: every later write below it is confined to it. No lock: a command takes one
    with :func:`output_root`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputFolderError("the output folder is a file", file=path)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o777)
        if private:
            os.chmod(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            probe = f".write-check.{secrets.token_hex(6)}{TEMP_MARK}"
            os.close(os.open(probe, _NEW_FILE_FLAGS, 0o600, dir_fd=fd))
            os.unlink(probe, dir_fd=fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputFolderError(f"cannot write into the output folder "
                                f"({exc.strerror or type(exc).__name__})", file=path) from None
    real = _resolved(path)
    _ROOTS.setdefault(real, _Root(path, real, Path(os.path.abspath(path))))
    return path


@contextmanager
def output_root(path: str | Path, *, inputs: Iterable[str | Path] = (),
                private: bool = False) -> Iterator[Path]:
    """:func:`prepare_output`, locked for the ``with`` block: a second run on the same folder
    (another process) waits for the lock, after one line through :data:`wait_notice`."""
    path = Path(path)
    check_apart(path, list(inputs))
    prepare_output(path, private=private)
    real = _resolved(path)
    if real in _LOCKED:  # re-entrant within one process
        yield path
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            wait_notice(f"waiting for another spinepipe run that is writing to {path}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _LOCKED.add(real)
        yield path
    finally:
        _LOCKED.discard(real)
        os.close(fd)  # releases the lock


def _root_of(path: Path) -> tuple[_Root, list[str]]:
    """The innermost active root holding ``path`` (as given or resolved) and the parts below
    it. Links between the root and the file are not resolved here: the walk refuses them."""
    here = Path.cwd().joinpath(path).parts  # ".." kept: the walk refuses it
    best: tuple[_Root, list[str]] | None = None
    for root in _ROOTS.values():
        for base in (root.absolute.parts, root.real.parts):
            if len(here) > len(base) and here[:len(base)] == base:
                parts = list(here[len(base):])
                if best is None or len(parts) < len(best[1]):
                    best = (root, parts)
    if best is None:
        raise RuntimeError(f"bug: {path} is written outside every output root "
                           "(open one with converters.core.files.output_root)")
    return best


def _check_parts(parts: list[str], shown: str) -> None:
    if not parts or any(p in ("", ".", "..") or "/" in p or "\x00" in p for p in parts):
        raise UnsafePathError(f"refused the output path {shown[:160]!r}")


@contextmanager
def _folder(root: _Root, parts: list[str], *, create: bool) -> Iterator[int]:
    """A descriptor of ``root / parts``, walked without following any link."""
    fd = os.open(root.real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = root.path.joinpath(*parts[:i + 1])
                    raise UnsafePathError(f"refused to write through {where}: it is a symbolic "
                                          "link or not a folder") from None
                raise
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# the write path


@contextmanager
def atomic_path(path: str | Path, *, mode: int = 0o666) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (inside its output root, reached without links);
    rename it to ``path`` if the block succeeds. ``mode`` is less the umask."""
    path = Path(path)
    root, parts = _root_of(path)
    _check_parts(parts, str(path))
    with _folder(root, parts[:-1], create=True) as dfd:
        name = parts[-1]
        tmp = f".{name[:100]}.{secrets.token_hex(6)}{TEMP_MARK}{path.suffix}"
        os.close(os.open(tmp, _NEW_FILE_FLAGS, mode, dir_fd=dfd))
        try:
            yield Path(f"/proc/self/fd/{dfd}/{tmp}")
            try:
                put_in_place(dfd, tmp, name)
            except IsADirectoryError:
                raise UnsafePathError(f"refused to replace the folder {path} by a file") from None
        finally:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except FileNotFoundError:
                pass


def write_bytes(path: str | Path, data: bytes, *, mode: int = 0o666) -> None:
    with atomic_path(path, mode=mode) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()


def write_text(path: str | Path, text: str, *, mode: int = 0o666) -> None:
    write_bytes(path, text.encode("utf-8"), mode=mode)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 1, mode: int = 0o666) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", mode=mode)


@contextmanager
def open_append(path: str | Path) -> Iterator[int]:
    """A log file below an active output root, open for appending (created with the umask if
    missing): yields its file descriptor. Reached like a write (no link at any level); a link
    planted at its name is :class:`~converters.core.paths.UnsafePathError`, a FIFO or device there
    is refused without blocking."""
    path = Path(path)
    root, parts = _root_of(path)
    _check_parts(parts, str(path))
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with _folder(root, parts[:-1], create=True) as dfd:
        try:
            fd = os.open(parts[-1], flags, 0o666, dir_fd=dfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):
                raise UnsafePathError(f"refused to write {path}: a symbolic link or a FIFO, "
                                      "not a log file spinepipe writes") from None
            raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"refused to write {path}: not a regular file")
        os.set_blocking(fd, True)
        yield fd
    finally:
        os.close(fd)


def refuse_links_below(folder: str | Path) -> None:
    """:class:`~converters.core.paths.UnsafePathError` naming the first symbolic link anywhere
    below ``folder`` (not followed). For an output folder a foreign library writes into with
    plain ``open`` (MMEngine's checkpoints, logs and clock-named folders): a link planted
    there before the run is refused instead of written through."""
    todo = [Path(folder)]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_symlink():
                raise UnsafePathError(f"refused to write below {folder}: {entry.path} is a "
                                      "symbolic link, not a file spinepipe wrote")
            if entry.is_dir(follow_symlinks=False):
                todo.append(Path(entry.path))


def temp_name(path: str | Path) -> Path:
    """A temporary sibling of ``path`` that :func:`remove_stale_temps` recognises (for
    outputs written now and moved into place later with :func:`move_into_place`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_MARK}"
                          f"{path.suffix}")


@contextmanager
def _shared_folder(src: Path, path: Path) -> Iterator[int]:
    """The folder of ``src`` and ``path`` (one folder of an output root), opened without
    following links."""
    root, parts = _root_of(path)
    _check_parts(parts, str(path))
    if src.parent != path.parent:
        raise RuntimeError(f"bug: {src} and {path} are in different folders")
    with _folder(root, parts[:-1], create=False) as dfd:
        yield dfd


def move_into_place(tmp: str | Path, path: str | Path) -> None:
    """Rename ``tmp`` (written with :func:`write_bytes`) to ``path``, both in one folder of
    an output root, without following links."""
    tmp, path = Path(tmp), Path(path)
    with _shared_folder(tmp, path) as dfd:
        put_in_place(dfd, tmp.name, path.name)


def link_into_place(src: str | Path, path: str | Path) -> None:
    """Give the regular file ``src`` a second name ``path`` in the same folder of an output
    root (a hard link: no copy, no space; a checkpoint named twice), replacing what was at
    ``path`` atomically; a link or anything but a regular file at ``src`` is refused. Where
    the file system has no hard links, the bytes are copied instead."""
    src, path = Path(src), Path(path)
    with _shared_folder(src, path) as dfd:
        if not stat.S_ISREG(os.stat(src.name, dir_fd=dfd, follow_symlinks=False).st_mode):
            raise UnsafePathError(f"refused to name {src} again: not a regular file")
        tmp = f".{path.name[:100]}.{secrets.token_hex(6)}{TEMP_MARK}{path.suffix}"
        try:
            os.link(src.name, tmp, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            with open(os.open(src.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=dfd), "rb") as fh:
                data = fh.read()
        else:
            try:
                os.rename(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            finally:
                with suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dfd)
            return
    write_bytes(path, data)  # no hard links here: a copy, written as every output is


def is_own_file(path: str | Path) -> bool:
    """True for a regular file at ``path`` itself (a link planted at an output's name is not
    the output: the stage writes it anew)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def read_own(path: str | Path) -> bytes | None:
    """The bytes of a file a stage wrote earlier and reads back (its state, the ledger),
    opened without following a link at its name: ``None`` when it does not exist,
    :class:`UnsafePathError` when a link was planted there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"refused to read {path}: it is a symbolic link, not the "
                                  "file spinepipe wrote") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


# --------------------------------------------------------------------------------------------
# the delete path


def remove_output(root: str | Path, relative: str) -> bool:
    """Delete ``root / relative`` if it is a regular file below the active output ``root``,
    reached without links; returns whether a file was removed. Anything else (a link, a
    folder, a path with ``..`` or absolute, a file outside) is left alone."""
    parts = [p for p in str(relative).split("/")]
    if str(relative).startswith("/") or not relative:
        return False
    try:
        _check_parts(parts, str(relative))
        active, below = _root_of(Path(root).joinpath(*parts))
        with _folder(active, below[:-1], create=False) as dfd:
            st = os.stat(below[-1], dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                return False
            os.unlink(below[-1], dir_fd=dfd)
            return True
    except (UnsafePathError, FileNotFoundError, NotADirectoryError):
        return False


def remove_stale_temps(root: str | Path, *, older_than_s: float | None = None) -> int:
    """Delete the temporary files an interrupted run left under the active output ``root``
    (links are not followed); returns how many. ``older_than_s``: only those last modified
    longer ago than that (where other processes may be writing below the root: a write in
    progress is never that old)."""
    root = Path(root)
    now = time.time()
    n = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        rel = Path(folder).relative_to(root)
        for name in files:
            if not (name.startswith(".") and TEMP_MARK in name):
                continue
            if older_than_s is not None:
                try:
                    if now - os.lstat(os.path.join(folder, name)).st_mtime <= older_than_s:
                        continue
                except OSError:          # gone meanwhile: another process removed it
                    continue
            n += remove_output(root, str(rel / name) if rel.parts else name)
    return n
