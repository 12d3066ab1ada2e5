"""Clinical measures: milliseconds per image, from one image's vertebra polygons (with their
levels) to every measure (endplates, lordosis, segmental angles, heights, slips), for the
polygons of 1,000 phantom radiographs at the study's largest size (1100x2870).

Target (issue 16): < 5 ms per image.

    .venv/bin/python benchmarks/bench_measures.py [--n 1000]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from converters.phantom.anatomy import render
from converters.spine.measures import image_measures
from converters.phantom.writing import PhantomConfig, plan_cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--distinct", type=int, default=100, help="phantom spines rendered "
                    "(the polygons of the rest are these, shifted and jittered)")
    args = ap.parse_args()
    cfg = PhantomConfig(n=args.distinct, seed=2, height=2870, width=1100, slip_share=0.3)
    spines = []
    for case in plan_cases(cfg):
        _, regions, _ = render(case, cfg)
        spines.append([(r.level, np.rint(r.points)) for r in regions if r.level])
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


if __name__ == "__main__":
    main()
