"""DICOM SEG and SR: seconds per image to write a Segmentation of one radiograph's predicted
vertebrae (six instance masks, overlapping ones included, built with highdicom and saved) and
its Measurement Report (Comprehensive SR, TID 1500: every measure with its endplate lines and
the SEG's segments, built with highdicom and saved), next to the PNG export of the same
radiograph (decode, equalize, encode, provenance), for phantom radiographs at the study's
largest size (1100x2870), in one run.

Targets: SEG per image of the order of the export's (issue 17); SR under the SEG (issue 25).

    .venv/bin/python benchmarks/bench_seg.py [--n 100]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from converters.dicom.deid_table import AnonymizeConfig

from converters.dicom.anonymize import anonymize_tree
from converters.annotations.coco import rasterize
from converters.core.files import prepare_output
from converters.dicom.export import ExportConfig, export_file
from converters.dicom.ledger import load_ledger, load_or_create_salt, prepare_private
from converters.phantom.writing import PhantomConfig, generate
from converters.dicom.seg import Algorithm, Segment, build_segmentation
from converters.dicom.sr import SegReference, build_report
from converters.spine.measures import image_measures, measures_csv
from train.evaluation.evaluate import endplates_record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(PhantomConfig(n=args.n, seed=4, height=2870, width=1100, burned_in_share=0),
                 tmp / "raw")
        priv = prepare_private(tmp / "private")
        anonymize_tree(tmp / "raw" / "dicom", tmp / "anon", priv, load_or_create_salt(priv),
                       AnonymizeConfig(), workers=os.cpu_count() or 1)
        truth = json.loads((tmp / "raw" / "truth.json").read_text())
        via = json.loads((tmp / "raw" / "annotations" / "via_project.json").read_text())
        regions = {im["filename"][:-4]: im["regions"] for im in via["_via_img_metadata"].values()}
        new_to_old = {k: v["sop_instance_uid"] for k, v in load_ledger(priv)["instances"].items()}
        files = [f for f in sorted((tmp / "anon").rglob("*.dcm")) if "audit" not in f.parts]
        jobs = []
        for f in files:
            ds = pydicom.dcmread(f)
            old = new_to_old[str(ds.SOPInstanceUID)]
            segs, outlines = [], []
            for r, level in zip(regions[old], truth[old]["levels"]):
                if level is None:
                    continue
                s = r["shape_attributes"]
                poly = [v for xy in zip(s["all_points_x"], s["all_points_y"]) for v in xy]
                segs.append(Segment(level, "sacrum" if level == "S1" else "lumbar",
                                    rasterize(poly, int(ds.Rows), int(ds.Columns)).astype(bool)))
                outlines.append((level, np.reshape(poly, (-1, 2)).astype(float)))
            spacing = tuple(float(v) for v in ds.get("ImagerPixelSpacing", [0.14, 0.14]))
            row, spine = image_measures(outlines, spacing)
            row = next(csv.DictReader(io.StringIO(measures_csv([{"file_name": "x", **row}]))))
            jobs.append((f, ds, segs, row, endplates_record(spine)))
        alg = Algorithm("mask_rcnn", 0, "bench", "0" * 64, "bench")
        build_segmentation(jobs[0][1], jobs[0][2], alg)          # warm-up (imports)
        for folder in ("warm", "png"):                           # export's output roots
            prepare_output(tmp / folder)
        export_file(jobs[0][0], tmp / "warm", ExportConfig())

        (tmp / "seg").mkdir()
        t0 = time.perf_counter()
        refs = []
        for f, ds, segs, _, _ in jobs:
            seg = build_segmentation(ds, segs, alg)
            seg.save_as(tmp / "seg" / f"{seg.SOPInstanceUID}.dcm", enforce_file_format=True)
            refs.append(SegReference(str(seg.SOPClassUID), str(seg.SOPInstanceUID),
                                     {str(x.SegmentLabel): int(x.SegmentNumber)
                                      for x in seg.SegmentSequence}, seg))
        t_seg = time.perf_counter() - t0

        build_report(jobs[0][1], jobs[0][3], jobs[0][4], alg, seg=refs[0])   # warm-up
        (tmp / "sr").mkdir()
        t0 = time.perf_counter()
        for (f, ds, _, row, plates), ref in zip(jobs, refs):
            sr = build_report(ds, row, plates, alg, seg=ref)
            sr.save_as(tmp / "sr" / f"{sr.SOPInstanceUID}.dcm", enforce_file_format=True)
        t_sr = time.perf_counter() - t0

        t0 = time.perf_counter()
        for f, *_ in jobs:
            export_file(f, tmp / "png", ExportConfig())
        t_png = time.perf_counter() - t0
        n = len(jobs)
        size = np.mean([p.stat().st_size for p in (tmp / "seg").glob("*.dcm")]) / 1e6
    print(f"{n} radiographs 1100x2870, 6 vertebra segments each, one core")
    print(f"DICOM SEG (highdicom, BINARY) : {t_seg / n:.3f} s per image ({size:.2f} MB each)")
    print(f"DICOM SR (highdicom, TID 1500): {t_sr / n:.3f} s per image")
    print(f"PNG export (spinepipe export) : {t_png / n:.3f} s per image")
    print(f"SEG / export: {t_seg / t_png:.2f}x; SR / SEG: {t_sr / t_seg:.2f}x (target under 1)")


if __name__ == "__main__":
    main()
