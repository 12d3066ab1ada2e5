"""Export speed: spinepipe vs dcmtk's dcmj2pnm, vs the PNG-encoding floor, and 1 vs 2 cores.

Same 12-bit phantom radiographs (default 20 at 1100x2870), anonymized first, to 8-bit PNG.
- spinepipe, one core: decode + full-depth histogram equalization + PNG + provenance
- dcmj2pnm (Debian dcmtk), one core, one call per file: +on PNG output, +Wh 0 histogram VOI
- floor: OpenCV PNG-encoding the same 8-bit images alone, same compression level
- spinepipe on all cores (export_tree with workers=cpu_count)
Targets (issue 3): >= 3x faster than dcmj2pnm, <= 1.3x the floor, >= 1.8x on 2 cores.

    .venv/bin/python benchmarks/bench_export.py [--n 20]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import pydicom

from converters.core.files import prepare_output
from converters.dicom.deid_table import AnonymizeConfig

from converters.dicom.anonymize import anonymize_tree
from converters.dicom.export import ExportConfig, export_file, export_tree
from converters.dicom.ledger import load_or_create_salt, prepare_private
from converters.phantom.writing import PhantomConfig, generate
from converters.dicom.pixels import to_display


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--height", type=int, default=2870)
    ap.add_argument("--width", type=int, default=1100)
    args = ap.parse_args()
    opts = ExportConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(PhantomConfig(n=args.n, seed=1, height=args.height, width=args.width,
                               burned_in_share=0), tmp / "raw")
        priv = prepare_private(tmp / "private")
        anonymize_tree(tmp / "raw" / "dicom", tmp / "anon", priv, load_or_create_salt(priv),
                       AnonymizeConfig(), workers=os.cpu_count() or 1)
        files = sorted((tmp / "anon").rglob("*.dcm"))
        files = [f for f in files if "audit" not in f.parts]
        for f in files:  # warm the page cache for everyone
            f.read_bytes()

        prepare_output(tmp / "one")         # export_file writes only inside an output root
        t0 = time.perf_counter()
        for f in files:
            export_file(f, tmp / "one", opts)
        t_ours = time.perf_counter() - t0

        images = [to_display(pydicom.dcmread(f))[0] for f in files]
        t0 = time.perf_counter()
        for i, img in enumerate(images):
            ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, opts.png_compression])
            (tmp / f"floor{i}.png").write_bytes(buf.tobytes())
        t_floor = time.perf_counter() - t0

        t_dcmtk = None
        if shutil.which("dcmj2pnm"):
            t0 = time.perf_counter()
            for i, f in enumerate(files):
                subprocess.run(["dcmj2pnm", "+on", "+Wh", "0", str(f), str(tmp / f"dcmtk{i}.png")],
                               check=True, capture_output=True)
            t_dcmtk = time.perf_counter() - t0

        workers = os.cpu_count() or 1

        def timed(w: int, name: str) -> float:
            best = float("inf")
            for k in range(2):  # best of two: the first run also pays for cold caches
                t0 = time.perf_counter()
                export_tree(tmp / "anon", tmp / f"{name}{k}", opts, workers=w)
                best = min(best, time.perf_counter() - t0)
            return best

        t_seq, t_par = timed(1, "seq"), timed(workers, "par")

    n = len(files)
    print(f"export of {n} images {args.width}x{args.height}, 12-bit -> 8-bit PNG")
    print(f"  spinepipe, 1 core:          {t_ours:6.2f} s  ({1000 * t_ours / n:.0f} ms/image)")
    print(f"  PNG-encoding floor, 1 core: {t_floor:6.2f} s  -> spinepipe / floor = {t_ours / t_floor:.2f}x (target <= 1.3x)")
    if t_dcmtk is not None:
        print(f"  dcmj2pnm, 1 core:           {t_dcmtk:6.2f} s  -> dcmj2pnm / spinepipe = {t_dcmtk / t_ours:.2f}x (target >= 3x)")
    else:
        print("  dcmj2pnm not installed (apt-get install dcmtk)")
    print(f"  export_tree 1 worker {t_seq:.2f} s, {workers} workers {t_par:.2f} s -> "
          f"speed-up {t_seq / t_par:.2f}x (target >= 1.8x on 2 cores)")


if __name__ == "__main__":
    main()
