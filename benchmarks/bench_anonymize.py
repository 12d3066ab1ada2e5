"""Anonymization speed vs dicognito and vs copying, and peak memory over many files.

Same phantom DICOM files (default 1,000 at the phantom's default 256x640), one core each:
- spinepipe: anonymize_tree(workers=1): read, PS3.15 profile, write, audit record, ledger
- dicognito (PyPI, `make bench` installs it): read, Anonymizer.anonymize, write
- copy: shutil.copyfile of every file (the floor)
Peak memory: maximum RSS of a fresh process anonymizing 10% of the files vs all of them.
Targets (issue 3): at least as fast as dicognito, within 3x of copying, memory flat.

    .venv/bin/python benchmarks/bench_anonymize.py [--n 1000] [--height 640 --width 256]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

from converters.anonymize import AnonymizeConfig, anonymize_tree
from converters.ledger import load_or_create_salt, prepare_private
from converters.phantom import PhantomConfig, generate


def _rss_run(src: str, limit: int, tmp: str) -> None:
    """Child mode: anonymize the first ``limit`` files, print the peak RSS in MiB."""
    sub = Path(tmp) / "subset"
    for i, f in enumerate(sorted(Path(src).rglob("*.dcm"))[:limit]):
        dst = sub / f"{i:05d}.dcm"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, dst)
    priv = prepare_private(Path(tmp) / "private")
    anonymize_tree(sub, Path(tmp) / "out", priv, load_or_create_salt(priv), AnonymizeConfig())
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--height", type=int, default=640)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--rss-child", nargs=3, metavar=("SRC", "LIMIT", "TMP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        _rss_run(args.rss_child[0], int(args.rss_child[1]), args.rss_child[2])
        return
    try:
        from dicognito.anonymizer import Anonymizer
    except ImportError:
        Anonymizer = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(PhantomConfig(n=args.n, seed=2, height=args.height, width=args.width,
                               burned_in_share=0), tmp / "raw", workers=os.cpu_count())
        files = sorted((tmp / "raw" / "dicom").rglob("*.dcm"))
        for f in files:
            f.read_bytes()

        priv = prepare_private(tmp / "private")
        salt = load_or_create_salt(priv)
        anonymizer = Anonymizer(seed="bench") if Anonymizer is not None else None

        def run_copy(k: int) -> None:
            (tmp / f"copy{k}").mkdir()
            for i, f in enumerate(files):
                shutil.copyfile(f, tmp / f"copy{k}" / f"{i}.dcm")

        def run_ours(k: int) -> None:
            anonymize_tree(tmp / "raw" / "dicom", tmp / f"ours{k}", priv, salt,
                           AnonymizeConfig())
            (priv / "anonymize_state.json").unlink()  # the second round must redo the work

        def run_dicognito(k: int) -> None:
            (tmp / f"dicognito{k}").mkdir()
            for i, f in enumerate(files):
                ds = pydicom.dcmread(f)
                anonymizer.anonymize(ds)
                ds.save_as(tmp / f"dicognito{k}" / f"{i}.dcm")

        contenders = {"copy": run_copy, "ours": run_ours}
        if anonymizer is not None:
            contenders["dicognito"] = run_dicognito
        best: dict[str, float] = {}
        for k in range(2):  # alternate the contenders, keep each one's best round
            for name, fn in contenders.items():
                os.sync()
                t0 = time.perf_counter()
                fn(k)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
        t_copy, t_ours, t_dicognito = best["copy"], best["ours"], best.get("dicognito")

        rss = []
        for limit in (max(1, len(files) // 10), len(files)):
            with tempfile.TemporaryDirectory() as child_tmp:
                out = subprocess.run([sys.executable, __file__, "--rss-child",
                                      str(tmp / "raw" / "dicom"), str(limit), child_tmp],
                                     capture_output=True, text=True, check=True)
                rss.append((limit, float(out.stdout.strip().splitlines()[-1])))

    n = len(files)
    print(f"anonymization of {n} files {args.width}x{args.height}, one core")
    print(f"  spinepipe: {t_ours:6.2f} s ({1000 * t_ours / n:.1f} ms/file)")
    print(f"  copy:      {t_copy:6.2f} s  -> spinepipe / copy = {t_ours / t_copy:.2f}x (target <= 3x)")
    if t_dicognito is not None:
        print(f"  dicognito: {t_dicognito:6.2f} s  -> dicognito / spinepipe = {t_dicognito / t_ours:.2f}x (target >= 1x)")
    else:
        print("  dicognito not installed: `make bench` installs the benchmark peers")
    (a, ra), (b, rb) = rss
    print(f"  peak RSS: {ra:.0f} MiB for {a} files, {rb:.0f} MiB for {b} files "
          f"(growth {100 * (rb - ra) / ra:+.0f}%)")


if __name__ == "__main__":
    main()
