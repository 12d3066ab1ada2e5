"""Decoded training images kept on disk: each PNG decoded once per training run, not once per
epoch (issue 27; ``train.presets.<preset>.image_cache``).

A run's training and validation pipelines load their images with
:class:`CachedLoadImageFromFile` in place of MMCV's ``LoadImageFromFile``
(:func:`train.fit.run_config.build_leaf`): the first time an image is asked for it is decoded by
MMCV exactly as ``LoadImageFromFile`` would (same arguments), and the array is written to the
cache folder; every later epoch, every data-loading process and every model or fold trained
from the same files reads that array back instead of decoding the PNG again (a read from the
page cache, about 1 ms for a 1100x2870 radiograph, against 25-29 ms to decode it:
``benchmarks/bench_dataloader.py``).

Conventions:

- An entry holds what ``LoadImageFromFile`` returns: the decoded array as MMCV gives it
  (``color_type='grayscale'``: uint8, shape (rows, columns), row 0 the image's top; the
  exported PNG's 0-255 values, pixel centres at integer coordinates), in numpy's ``.npy``
  format (read without pickles).
- Entries are named by a SHA-1 of the file's resolved path, device, inode, size, modification
  and change times (ns), and of the step's arguments: a PNG exported again (even in place with
  its old modification time put back), or another colour type, makes a new entry; an old entry
  is never read again. The folder is a cache only: deleting it (or any file
  in it) at any time costs one decode per image on the next run, and results do not depend on
  it (not a DVC dependency of the train stages).
- Writes go through the one write path (:mod:`converters.core.files`): confined to the folder,
  never through a link, atomic (a process that dies leaves a temporary name, never half an
  entry; processes writing the same entry at once each rename a whole one); temporary names
  a killed process left are removed an hour later by the next process that writes. An entry
  is read only when it is a regular file (no link at its name or its folder's, no FIFO) of at
  most :data:`MAX_ENTRY_BYTES` holding one ``.npy`` array whose header's shape and plain dtype
  (uint8, uint16, float32) account for every byte and are what the step's arguments give
  (grayscale: two dimensions; ``to_float32``: float32); anything else (truncated, a pickle, a
  planted array) is decoded again and replaced. A folder that cannot be written (full,
  read-only, a link planted in it) is said once per process in the run's log, and the run goes
  on decoding as without a cache.
- Only local files are cached (a path ``os.stat`` answers); other backends load as before.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import stat
from typing import Any

import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log
from mmengine.registry import TRANSFORMS

from converters.core.errors import SpinepipeError
from converters.core.files import prepare_output, remove_stale_temps, write_bytes
from converters.core.paths import confined

#: the pipeline step that replaces ``LoadImageFromFile`` where a preset sets ``image_cache``
STEP = "CachedLoadImageFromFile"
#: the module a leaf config imports so MMEngine registers :data:`STEP` in every process
MODULE = "train.fit.image_cache"
#: the largest entry read back: 64 MP (export's pixel limit) x 4 channels x 4 bytes
MAX_ENTRY_BYTES = 64 * 2**20 * 4 * 4
#: what MMCV's loaders give: 8- and 16-bit images, float32 with ``to_float32``
DTYPES = frozenset(map(np.dtype, (np.uint8, np.uint16, np.float32)))
#: a temporary name older than this is a killed process's, removed when a process starts
STALE_AFTER_S = 3600


@TRANSFORMS.register_module()
class CachedLoadImageFromFile(LoadImageFromFile):
    """MMCV's ``LoadImageFromFile`` whose decoded arrays are kept in ``cache_dir`` (module
    docstring); every other argument is ``LoadImageFromFile``'s."""

    def __init__(self, cache_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cache_dir = str(cache_dir)
        self._args = json.dumps(kwargs, sort_keys=True, default=repr)
        self._ready_in: int | None = None       # the process that prepared the folder
        self._failed_in: int | None = None      # a process that could not write in it

    def transform(self, results: dict) -> dict | None:
        name = self._entry(results["img_path"])
        img = _read(self.cache_dir, name, self._fits) if name else None
        if img is None:
            results = super().transform(results)
            if name and results is not None:
                self._write(name, results["img"])
            return results
        results["img"] = img
        results["img_shape"] = results["ori_shape"] = img.shape[:2]
        return results

    def _entry(self, path: str) -> str | None:
        """The entry's name below the folder, or None for a file that is not local."""
        try:
            real = os.path.realpath(path)
            st = os.stat(real)
        except (OSError, TypeError, ValueError):
            return None
        # ctime too: an in-place rewrite may set the old mtime back (cp -p, rsync -t), never
        # the ctime
        key = (f"{real}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0"
               f"{st.st_ctime_ns}\0{self._args}")
        digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()
        return f"{digest[:2]}/{digest}.npy"

    def _fits(self, shape: tuple[int, ...], dtype: np.dtype) -> bool:
        """Whether an array of this shape and dtype is one this step's loading gives."""
        if (dtype == np.float32) != bool(self.to_float32):
            return False
        if self.color_type == "grayscale":
            return len(shape) == 2
        if self.color_type == "color":
            return len(shape) == 3 and shape[2] == 3
        return len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))

    def _write(self, name: str, img: np.ndarray) -> None:
        """Keep ``img`` as the entry ``name``; a cache that cannot be written (a full disk, a
        link planted in it, a read-only folder) is said once per process and then skipped: the
        training goes on, decoding as it would without one."""
        if self._failed_in == os.getpid():
            return
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(img), allow_pickle=False)
        try:
            if self._ready_in != os.getpid():   # each data-loading process: the folder is an
                prepare_output(self.cache_dir)  # output root of its own (converters.core.files)
                self._ready_in = os.getpid()
                remove_stale_temps(self.cache_dir, older_than_s=STALE_AFTER_S)
            write_bytes(confined(self.cache_dir, *name.split("/")), buf.getvalue())
        except (OSError, SpinepipeError) as exc:
            self._failed_in = os.getpid()
            print_log(f"image cache {self.cache_dir}: not written, images decoded every epoch "
                      f"in this process ({exc})", logger="current", level=logging.WARNING)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, cache_dir='{self.cache_dir}')"


def _read(folder: str, name: str, fits) -> np.ndarray | None:
    """The array of an entry, or None when there is none or it is not to be trusted: not a
    regular file (a link at its name or its folder's, a FIFO: never followed, never waited
    on), not a whole ``.npy`` array of a plain dtype whose size its header states, larger than
    :data:`MAX_ENTRY_BYTES`, or not what ``fits(shape, dtype)`` says the loader gives."""
    path = os.path.join(folder, name)
    try:
        if os.path.dirname(os.path.realpath(path)) != \
                os.path.join(os.path.realpath(folder), name.split("/")[0]):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:                             # none, a link, a file for a folder, no access
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            header = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if header is None:
                return None
            shape, fortran, dtype = header(f)
            size = math.prod(shape) * dtype.itemsize
            if fortran or dtype not in DTYPES or not fits(shape, dtype) or \
                    st.st_size - f.tell() != size or 0 in shape:
                return None
            data = bytearray(size)               # writable, as a decoded image is
            if f.readinto(data) != size:
                return None
        except (OSError, ValueError, EOFError):  # no .npy header, a pickle's dtype, cut short
            return None
    return np.frombuffer(data, dtype=dtype).reshape(shape)


