"""Conversion speed: spinepipe convert vs a straightforward reference and vs the PNG floor.

1,000 annotated phantom images at 1100x2870 (50 unique phantom images exported to PNG,
hard-linked under 1,000 names, their VIA entries repeated: the per-image work is the same).
- reference: json.load, then per polygon pycocotools frPyObjects + decode of a full-size
  mask, composed into the class mask, written as PNG (what tutorials do)
- floor: writing the same masks as PNG (OpenCV, same PNG settings), nothing else; printed
  for the class masks alone and for every mask convert writes (class masks + overlap maps)
- spinepipe, one core and all cores (convert with qa off; then with QA overlays)
- re-conversion after one image's annotation changed
- one image with 1,000 and with 3,000 small regions (issue 21: the overlap search was
  quadratic, 12 s and 118 s; through shapely's STRtree it is near-linear)
Targets: within 2x of the class-mask floor (issue 13); re-conversion under 2 s; 3,000 regions
at most 4x the time of 1,000.

    .venv/bin/python benchmarks/bench_convert.py [--n 1000] [--unique 50] [--regions-only]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils


from converters.annotations.coco import PNG_LABEL_PARAMS
from converters.annotations.convert import ConvertConfig, convert
from converters.phantom.annotator import annotations_for_export
from exported_phantom import exported_phantom


def reference(via_path: Path, images: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads(via_path.read_text())["_via_img_metadata"]
    for entry in meta.values():
        img = cv2.imread(str(images / entry["filename"]), cv2.IMREAD_GRAYSCALE)
        h, w = img.shape
        mask = np.zeros((h, w), np.uint8)
        for r in entry["regions"]:
            cls = {"lumbar": 1, "sacrum": 2}.get(r["region_attributes"]["class"])
            if cls is None:
                continue
            s = r["shape_attributes"]
            poly = [float(v) for xy in zip(s["all_points_x"], s["all_points_y"]) for v in xy]
            m = mask_utils.decode(mask_utils.frPyObjects([poly], h, w)[0])
            mask = np.maximum(mask, m * cls)
        cv2.imwrite(str(out / (Path(entry["filename"]).stem + ".png")), mask, PNG_LABEL_PARAMS)


def many_regions(tmp: Path) -> None:
    """Convert one 1500x2000 image annotated with 1,000, then 3,000 small regions (random
    hexagons, many overlapping), one core; print both times and their ratio."""
    cv2.imwrite(str(tmp / "big.png"), np.full((2000, 1500), 90, np.uint8))
    times = {}
    for n in (1000, 3000):
        rng = np.random.default_rng(0)
        regions = []
        for k in range(n):
            cx, cy, r = rng.uniform(20, 1480), rng.uniform(20, 1980), rng.uniform(4, 15)
            t = np.sort(rng.uniform(0, 2 * np.pi, 6))
            regions.append({"shape_attributes": {
                "name": "polygon", "all_points_x": np.round(cx + r * np.cos(t)).astype(int).tolist(),
                "all_points_y": np.round(cy + r * np.sin(t)).astype(int).tolist()},
                "region_attributes": {"class": "sacrum" if k == 0 else "lumbar"}})
        via = tmp / f"regions{n}.json"
        via.write_text(json.dumps({"_via_img_metadata": {"big.png": {
            "filename": "big.png", "size": -1, "regions": regions}}}))
        images = tmp / f"regions{n}"
        images.mkdir()
        os.link(tmp / "big.png", images / "big.png")
        t0 = time.perf_counter()
        convert([via], images, tmp / f"regions{n}_out", ConvertConfig(), workers=1)
        times[n] = time.perf_counter() - t0
    print(f"one image with many regions, 1 core: 1,000 regions {times[1000]:.2f} s, 3,000 "
          f"regions {times[3000]:.2f} s -> ratio {times[3000] / times[1000]:.1f}x "
          "(quadratic: 9x; target <= 4x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--unique", type=int, default=50)
    ap.add_argument("--height", type=int, default=2870)
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--regions-only", action="store_true",
                    help="only the many-regions measurement")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        many_regions(Path(tmp))
    if args.regions_only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exported = exported_phantom(tmp, args.unique, args.height, args.width, cores)
        via = annotations_for_export(tmp / "raw" / "annotations" / "via_project.json", exported)
        # replicate to n images (hard links; VIA entries renamed accordingly)
        images = tmp / "images"
        images.mkdir()
        uniq = list(via["_via_img_metadata"].values())
        meta = {}
        for i in range(args.n):
            src = uniq[i % len(uniq)]
            name = f"IMG{i:05d}_{src['filename']}"
            os.link(tmp / "png" / src["filename"], images / name)
            meta[f"{name}{src['size']}"] = {**json.loads(json.dumps(src)), "filename": name}
        via["_via_img_metadata"] = meta
        via["_via_image_id_list"] = list(meta)
        via_path = tmp / "via.json"
        via_path.write_text(json.dumps(via))

        t0 = time.perf_counter()
        reference(via_path, images, tmp / "ref")
        t_ref = time.perf_counter() - t0

        t0 = time.perf_counter()
        convert([via_path], images, tmp / "ours1", ConvertConfig(qa=False), workers=1)
        t_one = time.perf_counter() - t0

        def floor(folders: tuple[str, ...]) -> float:
            arrays = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
                      for f in folders for p in sorted((tmp / "ours1" / f).glob("*.png"))]
            (tmp / "floor").mkdir(exist_ok=True)
            t0 = time.perf_counter()
            for i, m in enumerate(arrays):
                ok, buf = cv2.imencode(".png", m, PNG_LABEL_PARAMS)
                (tmp / "floor" / f"{i}.png").write_bytes(buf.tobytes())
            return time.perf_counter() - t0

        t_floor = floor(("masks",))
        t_floor_all = floor(("masks", "overlaps"))

        t0 = time.perf_counter()
        convert([via_path], images, tmp / "ours", ConvertConfig(qa=False), workers=cores)
        t_all = time.perf_counter() - t0
        t0 = time.perf_counter()
        convert([via_path], images, tmp / "ours_qa", ConvertConfig(qa=True), workers=cores)
        t_qa = time.perf_counter() - t0

        first = sorted(meta)[0]
        meta[first]["regions"][0]["shape_attributes"]["all_points_x"][0] += 2
        via_path.write_text(json.dumps(via))
        t0 = time.perf_counter()
        report = convert([via_path], images, tmp / "ours", ConvertConfig(qa=False), workers=cores)
        t_again = time.perf_counter() - t0

    n = args.n
    print(f"convert of {n} images {args.width}x{args.height} (VIA 2 -> COCO + masks + overlaps)")
    print(f"  reference (json + per-polygon pycocotools decode), 1 core: {t_ref:6.2f} s")
    print(f"  spinepipe, 1 core:   {t_one:6.2f} s  -> reference / spinepipe = {t_ref / t_one:.2f}x")
    print(f"  floor, class-mask PNGs only, 1 core: {t_floor:6.2f} s -> spinepipe / floor = {t_one / t_floor:.2f}x (target <= 2x)")
    print(f"  floor, every mask PNG convert writes (class masks + overlap maps): {t_floor_all:6.2f} s "
          f"-> spinepipe / floor = {t_one / t_floor_all:.2f}x (target <= 2x)")
    print(f"  spinepipe, {cores} cores: {t_all:6.2f} s; with QA overlays and contact sheets: {t_qa:.2f} s")
    print(f"  re-conversion after one annotation changed: {t_again:.2f} s, "
          f"{report.rendered} image re-rasterized (target < 2 s)")


if __name__ == "__main__":
    main()
