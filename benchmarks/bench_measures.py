"""Clinical measures: milliseconds per image, from one image's vertebra polygons (with their
levels) to every measure (endplates, lordosis, segmental angles, heights, slips), for the
polygons of 1,000 phantom radiographs at the study's largest size (1100x2870); then the same
with the endplates refined on the radiograph (converters/spine/refine.py), the outlines moved
off the bone by a few pixels as a model's are, and how far the refined lordosis lies from the
polygons' own.

Targets: < 5 ms per image from polygons (issue 16); < 50 ms per image refined (issue 23).

    .venv/bin/python benchmarks/bench_measures.py [--n 1000] [--refined 100]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from converters.phantom.anatomy import render
from converters.spine.measures import image_measures
from converters.spine.refine import MeasuresConfig
from converters.phantom.writing import PhantomConfig, plan_cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--distinct", type=int, default=100, help="phantom spines rendered "
                    "(the polygons of the rest are these, shifted and jittered)")
    ap.add_argument("--refined", type=int, default=100, help="images measured with their "
                    "endplates refined on the radiograph (at most --distinct)")
    args = ap.parse_args()
    cfg = PhantomConfig(n=args.distinct, seed=2, height=2870, width=1100, slip_share=0.3)
    spines, radiographs = [], []
    for case in plan_cases(cfg):
        pixels, regions, _ = render(case)
        spines.append([(r.level, np.rint(r.points)) for r in regions if r.level])
        if len(radiographs) < args.refined:
            radiographs.append(pixels)
    rng = np.random.default_rng(0)
    images = []
    for i in range(args.n):
        shift = rng.integers(-40, 40, 2)          # the whole spine moves; each vertex jitters
        images.append([(lv, p + shift + rng.normal(0, 0.7, p.shape))
                       for lv, p in spines[i % len(spines)]])
    image_measures(images[0], (0.143, 0.143))     # warm-up
    t0 = time.perf_counter()
    measurable = 0
    for outlines in images:
        row, _ = image_measures(outlines, (0.143, 0.143))
        measurable += row["lordosis_deg"] is not None
    dt = time.perf_counter() - t0
    per = 1000 * dt / len(images)
    print(f"{len(images)} images (1100x2870, 6 vertebrae each): {per:.2f} ms per image, "
          f"{dt:.2f} s in all; lordosis measured on {measurable}")
    print(f"target < 5 ms per image: {'met' if per < 5 else 'MISSED'}")
    refined(spines, radiographs)


def refined(spines: list, radiographs: list) -> None:
    """The refinement's time per image, and its lordosis against the polygons' own."""
    cfg = MeasuresConfig()
    rng = np.random.default_rng(1)
    work = []
    for outlines, pixels in zip(spines, radiographs):
        shift = rng.normal(0, 3, 2)                 # a coarse outline: off by a few pixels
        work.append(([(lv, p + shift + rng.normal(0, 1.0, p.shape)) for lv, p in outlines],
                     outlines, pixels))
    image_measures(work[0][0], (0.143, 0.143), refine=cfg, image=work[0][2])   # warm-up
    t0 = time.perf_counter()
    rows = [image_measures(moved, (0.143, 0.143), refine=cfg, image=pixels)[0]
            for moved, _, pixels in work]
    dt = time.perf_counter() - t0
    per = 1000 * dt / len(work)
    errors = [abs(r["lordosis_deg"] - image_measures(exact, (0.143, 0.143))[0]["lordosis_deg"])
              for r, (_, exact, _) in zip(rows, work) if r["lordosis_deg"] is not None]
    print(f"{len(work)} radiographs (1100x2870) refined: {per:.1f} ms per image; lordosis "
          f"measured on {len(errors)}, {np.mean(errors):.2f} deg from the polygons' own "
          f"(median {np.median(errors):.2f})")
    print(f"target < 50 ms per image refined: {'met' if per < 50 else 'MISSED'}")


if __name__ == "__main__":
    main()
