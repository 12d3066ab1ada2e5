"""Readers' agreement and consensus speed, beside convert's time on the same images.

830 phantom images at 1100x2870 (50 unique phantom images exported to PNG, hard-linked under
830 names), each read by the three demo readers (:mod:`converters.phantom.readers`, the readers'
VIA projects as ``phantom-annotations`` writes them):

- convert, one reader's file (the study's single-reader conversion; QA off);
- convert, the three readers' files: the consensus (STAPLE per vertebra) as ground truth;
- ``spinepipe agreement`` (in process): every reader pair, level and measure, ICC, each reader
  against the consensus, the worklist and the adjudication project.

Target (issue 24): agreement and consensus under 20 s on 2 cores: the agreement command, which
reads the readers' files and builds every consensus itself (convert's extra time for the
consensus as ground truth is printed beside it).

    .venv/bin/python benchmarks/bench_agreement.py [--n 830] [--unique 50]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

from converters.annotations.convert import ConvertConfig, convert
from converters.phantom.readers import PROFILES, png_spacing, redraw
from converters.phantom.annotator import annotations_for_export
from exported_phantom import exported_phantom
from pipeline.cli import main as cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=830)
    ap.add_argument("--unique", type=int, default=50)
    ap.add_argument("--height", type=int, default=2870)
    ap.add_argument("--width", type=int, default=1100)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exported = exported_phantom(tmp, args.unique, args.height, args.width, cores)
        images = tmp / "png"
        ann = tmp / "ann"
        originals = sorted(images.glob("*.png"))
        for p in PROFILES:
            via = annotations_for_export(
                tmp / "raw" / "annotations" / "via_project.json", exported,
                redraw=lambda name, regions: redraw(name, regions, p, png_spacing(images, name)))
            uniq = list(via["_via_img_metadata"].values())
            meta = {}
            for i in range(args.n):
                src = uniq[i % len(uniq)]
                name = f"IMG{i:05d}_{src['filename']}"
                if p is PROFILES[0]:   # the PNG and its provenance (the pixel spacing)
                    os.link(images / src["filename"], images / name)
                    os.link(images / "provenance" / f"{Path(src['filename']).stem}.json",
                            images / "provenance" / f"{Path(name).stem}.json")
                meta[f"{name}{src['size']}"] = {**json.loads(json.dumps(src)), "filename": name}
            via["_via_img_metadata"] = meta
            via["_via_image_id_list"] = list(meta)
            (ann / p.name).mkdir(parents=True)
            (ann / p.name / "via.json").write_text(json.dumps(via))

        for png in originals:   # only the n renamed images are annotated
            png.unlink()
        cfg = ConvertConfig(qa=False)
        t0 = time.perf_counter()
        convert([ann / "reader1" / "via.json"], images, tmp / "one", cfg, workers=cores)
        t_one = time.perf_counter() - t0

        from converters.annotations.readers import reader_files
        t0 = time.perf_counter()
        convert(reader_files([ann]), images, tmp / "three", cfg, workers=cores)
        t_three = time.perf_counter() - t0

        (tmp / "params.yaml").write_text("convert:\n  qa: false\n")
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            code = cli(["agreement", "-i", str(ann), "--images", str(images), "-o",
                        str(tmp / "agreement"), "--params", str(tmp / "params.yaml"),
                        "--quiet"])
        t_agree = time.perf_counter() - t0
        assert code == 0
        summary = json.loads((tmp / "agreement" / "summary.json").read_text())
        assert summary["images_read_by_two_or_more"] == args.n

    print(f"{args.n} images at {args.width}x{args.height}, 3 readers each, {cores} cores")
    print(f"  convert, one reader             {t_one:7.2f} s")
    print(f"  convert, 3 readers (consensus)  {t_three:7.2f} s   {t_three / t_one:5.2f}x one "
          f"reader; the consensus adds {t_three - t_one:6.2f} s")
    print(f"  spinepipe agreement             {t_agree:7.2f} s   {t_agree / t_one:5.2f}x convert "
          "(reads and checks the three readers' files, builds every consensus, pairs, "
          "measures, ICC, worklist)")
    print(f"  target: agreement and consensus under 20 s: "
          f"{'met' if t_agree < 20 else 'NOT met'}")


if __name__ == "__main__":
    main()
