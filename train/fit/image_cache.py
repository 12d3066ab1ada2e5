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
- Entries are named by a SHA-1 of the file's resolved path, size, modification time (ns) and
  inode, and of the step's arguments: a PNG exported again, or another colour type, makes a new
  entry; an old entry is never read again. The folder is a cache only: deleting it (or any file
  in it) at any time costs one decode per image on the next run, and results do not depend on
  it (not a DVC dependency of the train stages).
- Writes go through the one write path (:mod:`converters.core.files`): confined to the folder,
  never through a link, atomic (a process that dies leaves a temporary name, never half an
  entry; processes writing the same entry at once each rename a whole one). An entry that
  cannot be read back as an array (truncated, not ``.npy``, a pickle) or that a link stands in
  for (at its name or its folder's) is not trusted: the image is decoded again and the entry
  replaced. A folder that cannot be written (full, read-only, a link planted in it) is said
  once per process in the run's log, and the run goes on decoding as without a cache.
- Only local files are cached (a path ``os.stat`` answers); other backends load as before.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from typing import Any

import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log
from mmengine.registry import TRANSFORMS

from converters.core.errors import SpinepipeError
from converters.core.files import prepare_output, read_own, write_bytes
from converters.core.paths import UnsafePathError, confined

#: the pipeline step that replaces ``LoadImageFromFile`` where a preset sets ``image_cache``
STEP = "CachedLoadImageFromFile"
#: the module a leaf config imports so MMEngine registers :data:`STEP` in every process
MODULE = "train.fit.image_cache"


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
        img = _read(self.cache_dir, name) if name else None
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
        key = f"{real}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{self._args}"
        digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()
        return f"{digest[:2]}/{digest}.npy"

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
            write_bytes(confined(self.cache_dir, *name.split("/")), buf.getvalue())
        except (OSError, SpinepipeError) as exc:
            self._failed_in = os.getpid()
            print_log(f"image cache {self.cache_dir}: not written, images decoded every epoch "
                      f"in this process ({exc})", logger="current", level=logging.WARNING)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, cache_dir='{self.cache_dir}')"


def _read(folder: str, name: str) -> np.ndarray | None:
    """The array of an entry, or None when there is none, it is not a whole array, or a link
    stands at its name or at its folder's (never followed: decoded again instead)."""
    path = os.path.join(folder, name)
    if os.path.dirname(os.path.realpath(path)) != os.path.join(os.path.realpath(folder),
                                                               name.split("/")[0]):
        return None
    try:
        data = read_own(path)
    except UnsafePathError:
        return None
    if data is None:
        return None
    try:
        img = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    return img if isinstance(img, np.ndarray) and img.ndim in (2, 3) else None
