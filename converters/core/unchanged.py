"""Unchanged stays untouched: the last step of the one write path (:mod:`converters.core.files`).

A stage that writes an output whose very bytes are already there (a re-run: the phantom generated
again, an object anonymized again) leaves the existing file in place, inode and modification time
and all, and drops its temporary file. What a later stage looks at then does not change: its size
+ mtime signatures (:mod:`converters.core.incremental`), and DVC's hash of a folder that holds
those signatures, so nothing downstream is redone (the five models are not retrained) for a run
that changed nothing.

Kept only when the existing file may stand for the new one (:func:`keepable`): a regular file
(never a link or a FIFO: opened with ``O_NOFOLLOW | O_NONBLOCK``) with the same size,
permissions, owner and group, no other name (a hard link planted to a file elsewhere), and the
same bytes. So an output is not always a new inode: a process holding the old file open for
writing would write into the "new" one (no stage does).
"""
from __future__ import annotations

import os
import stat


def _regular_fd(dfd: int, name: str) -> int | None:
    """``name`` in the folder ``dfd`` opened for reading if it is a regular file (never through
    a link, never blocking on a FIFO); None otherwise."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dfd)
    except OSError:
        return None
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    return None


def keepable(old: os.stat_result, new: os.stat_result) -> bool:
    """Whether an existing output (``old``) may stand for a new one (``new``, just written) whose
    bytes it holds: the same size, permissions, owner and group (a file someone else created
    there, predicting the bytes, could be changed by them later), and no other name (a hard link
    planted to a file elsewhere)."""
    return (old.st_size == new.st_size and old.st_nlink == 1
            and stat.S_IMODE(old.st_mode) == stat.S_IMODE(new.st_mode)
            and (old.st_uid, old.st_gid) == (new.st_uid, new.st_gid))


def same_file(dfd: int, a: str, b: str) -> bool:
    """Whether the existing file ``a`` may stay for the new file ``b`` (both in the folder
    ``dfd``, regular files): :func:`keepable`, and the same bytes (compared a MiB at a time)."""
    fa = _regular_fd(dfd, a)
    if fa is None:
        return False
    fb = _regular_fd(dfd, b)
    try:
        if fb is None or not keepable(os.fstat(fa), os.fstat(fb)):
            return False
        while True:
            ca, cb = os.read(fa, 1 << 20), os.read(fb, 1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True
    finally:
        os.close(fa)
        if fb is not None:
            os.close(fb)


def put_in_place(dfd: int, tmp: str, name: str) -> None:
    """Rename ``tmp`` over ``name`` (both in the folder ``dfd``), unless ``name`` may stay for it
    (:func:`same_file`): then ``tmp`` goes and ``name`` stays untouched (module docstring)."""
    if same_file(dfd, name, tmp):
        os.unlink(tmp, dir_fd=dfd)
    else:
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
