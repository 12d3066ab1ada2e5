"""Whole commands as a user runs them: process start-up included, each against its peer.

- `spinepipe --help` and `spinepipe anonymize --help` (target < 0.5 s);
- `spinepipe anonymize` vs `python -m dicognito` over the same files (target: at least as
  fast);
- `spinepipe export` vs dcmtk's `dcmj2pnm` (one process per file, as a shell loop runs it)
  over the same anonymized files (target: >= 3x faster).

Inputs: 30 phantom radiographs at the study's size (1100x2870, 12-bit). Every command runs
as a separate process, timed from start to exit; best of two runs each.

    .venv/bin/python benchmarks/bench_commands.py [--n 30]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from converters.phantom.writing import PhantomConfig, generate

BIN = Path(sys.executable).parent
SPINEPIPE = str(BIN / "spinepipe")


def timed(commands: list[list[str]], reset=None, runs: int = 2) -> float:
    """Best wall time of running ``commands`` one after another (``reset()`` before each)."""
    best = float("inf")
    for _ in range(runs):
        if reset:
            reset()
        t0 = time.perf_counter()
        for cmd in commands:
            subprocess.run(cmd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--height", type=int, default=2870)
    ap.add_argument("--width", type=int, default=1100)
    args = ap.parse_args()
    none = ["--params", "/nonexistent/params.yaml", "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(PhantomConfig(n=args.n, seed=5, height=args.height, width=args.width,
                               burned_in_share=0), tmp / "raw")
        raw = sorted((tmp / "raw" / "dicom").rglob("*.dcm"))
        for f in raw:
            f.read_bytes()  # warm the page cache for everyone

        t_help = timed([[SPINEPIPE, "--help"]], runs=3)
        t_sub_help = timed([[SPINEPIPE, "anonymize", "--help"]], runs=3)

        def fresh(*paths: Path):
            def reset() -> None:
                for p in paths:
                    shutil.rmtree(p, ignore_errors=True)
            return reset

        t_anon = timed([[SPINEPIPE, "anonymize", "--input", str(tmp / "raw" / "dicom"),
                         "--output", str(tmp / "anon"), "--private", str(tmp / "private"),
                         *none]], reset=fresh(tmp / "anon", tmp / "private"))
        t_dicognito = None
        try:
            import dicognito  # noqa: F401
            t_dicognito = timed([[sys.executable, "-m", "dicognito", "--output-directory",
                                  str(tmp / "dicognito"), *map(str, raw)]],
                                reset=fresh(tmp / "dicognito"))
        except ImportError:
            pass

        anon = [f for f in sorted((tmp / "anon").rglob("*.dcm")) if "audit" not in f.parts]
        t_export = timed([[SPINEPIPE, "export", "--input", str(tmp / "anon"), "--output",
                           str(tmp / "png"), *none]], reset=fresh(tmp / "png"))
        t_dcmtk = None
        if shutil.which("dcmj2pnm"):
            (tmp / "dcmtk").mkdir()
            t_dcmtk = timed([["dcmj2pnm", "+on", "+Wh", "0", str(f), str(tmp / "dcmtk" / f"{i}.png")]
                             for i, f in enumerate(anon)])

    print(f"whole commands, {len(raw)} radiographs {args.width}x{args.height} (start-up included)")
    print(f"  spinepipe --help:            {t_help:5.2f} s (target < 0.5 s)")
    print(f"  spinepipe anonymize --help:  {t_sub_help:5.2f} s (target < 0.5 s)")
    if t_dicognito is not None:
        print(f"  spinepipe anonymize {t_anon:5.2f} s, python -m dicognito {t_dicognito:5.2f} s "
              f"-> dicognito / spinepipe = {t_dicognito / t_anon:.2f}x (target >= 1x)")
    else:
        print(f"  spinepipe anonymize {t_anon:5.2f} s; dicognito not installed (make bench)")
    if t_dcmtk is not None:
        print(f"  spinepipe export {t_export:5.2f} s, dcmj2pnm per file {t_dcmtk:5.2f} s "
              f"-> dcmj2pnm / spinepipe = {t_dcmtk / t_export:.2f}x (target >= 3x)")
    else:
        print(f"  spinepipe export {t_export:5.2f} s; dcmj2pnm not installed (apt-get install dcmtk)")


if __name__ == "__main__":
    main()
