"""Time the phantom: 100 images at 1024x2560 on all cores (target: under 60 s on 2 cores).

Peer / floor: writing the same number of same-size 12-bit DICOM files with pydicom alone
(no rendering), on the same number of processes. Prints both times and their ratio.

    .venv/bin/python benchmarks/bench_phantom.py [--n 100] [--height 2560] [--width 1024]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from converters.phantom.writing import PhantomConfig, generate


def _write_plain(args: tuple[str, int, int, int]) -> None:
    out, i, h, w = args
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = h, w, 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.PixelData = np.full((h, w), i % 4096, np.uint16).tobytes()
    ds.save_as(Path(out) / f"{i}.dcm", enforce_file_format=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--height", type=int, default=2560)
    ap.add_argument("--width", type=int, default=1024)
    args = ap.parse_args()
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate(PhantomConfig(n=args.n, seed=0, height=args.height, width=args.width),
                 Path(tmp) / "phantom", workers=workers)
        t_phantom = time.perf_counter() - t0
        floor_dir = Path(tmp) / "floor"
        floor_dir.mkdir()
        t0 = time.perf_counter()
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_plain, [(str(floor_dir), i, args.height, args.width)
                                         for i in range(args.n)]))
        t_floor = time.perf_counter() - t0
    print(f"phantom: {args.n} images {args.width}x{args.height} on {workers} cores: "
          f"{t_phantom:.1f} s ({args.n / t_phantom:.1f} images/s); target < 60 s: "
          f"{'met' if t_phantom < 60 else 'MISSED'}")
    print(f"floor (pydicom writing the same files, no rendering): {t_floor:.1f} s; "
          f"phantom / floor = {t_phantom / t_floor:.2f}x")


if __name__ == "__main__":
    main()
