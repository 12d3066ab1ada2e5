"""What does proposing add to inference? The demo's trained run outlines 100 radiographs at
1100x2870 (the demo's PNGs scaled up to the study's largest size): seconds per image of the whole
``propose`` (inference + post-processing + polygons + review + the VIA project) and, within that
same run, of the model's own inference (``train.infer.inference.predict``, masks at full size,
timed where propose calls it), so the difference is what propose adds: once with polygons only,
once as ``spinepipe propose`` runs with the default params, the polygons' endplate corners
refined on each image (``measures.refine_predictions``: each PNG read again, ~10 ms, and refined,
~17 ms).

Target (issue 15): propose adds < 20 % to inference. Needs a trained run (`make demo`).

    .venv/bin/python benchmarks/bench_propose.py [--model mask_rcnn] [--fold 0] [--n 100]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converters.spine.refine import MeasuresConfig  # noqa: E402
from train.models import run_dir  # noqa: E402
from train.infer.propose import ProposeConfig, propose_images, write_proposals  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mask_rcnn")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--images", default="data/interim/png")
    args = ap.parse_args()
    run = run_dir(args.model, args.fold)
    sources = sorted(Path(args.images).glob("*.png"))
    if not sources or not (run / "best.pth").is_file():
        sys.exit("run `make demo` first (needs data/interim/png and a trained run)")
    cfg = ProposeConfig(device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.n):
            img = cv2.imread(str(sources[i % len(sources)]), cv2.IMREAD_UNCHANGED)
            big = cv2.resize(img, (1100, 2870), interpolation=cv2.INTER_LINEAR)
            paths.append(Path(tmp) / f"img{i:03d}.png")
            cv2.imwrite(str(paths[-1]), big)
        import train.infer.inference as inference
        real_predict = inference.predict
        list(real_predict(run, paths[:2], device="cpu"))     # warm-up: model load, first batch
        inside = [0.0]

        def timed_predict(*a, **kw):
            """The model's own inference, timed where propose calls it (same run, same
            images): every step of the generator is inference, the rest is propose's."""
            gen = real_predict(*a, **kw)
            while True:
                t = time.perf_counter()
                try:
                    item = next(gen)
                except StopIteration:
                    inside[0] += time.perf_counter() - t
                    return
                inside[0] += time.perf_counter() - t
                yield item

        inference.predict = timed_predict
        runs = {}
        try:
            for label, measures in (("polygons only", None),
                                    ("endplates refined", MeasuresConfig())):
                inside[0] = 0.0
                t0 = time.perf_counter()
                props = propose_images([run], paths, cfg, measures=measures)
                write_proposals(props, Path(tmp) / "out" / "proposals.json", model=args.model,
                                class_attribute="class", class_options=None, default_filepath="",
                                truth=None, runs=[args.model])
                runs[label] = (time.perf_counter() - t0, inside[0])
        finally:
            inference.predict = real_predict
    n = args.n
    print(f"{n} images 1100x2870, {args.model} fold {args.fold}, CPU")
    # the model's own time varies between the runs (warm caches): each run's addition is
    # set against the mean inference of both
    infer = sum(i for _, i in runs.values()) / len(runs) / n
    print(f"inference (model load included): {infer:.3f} s/image (mean of the runs)")
    for label, (total, inner) in runs.items():
        added = (total - inner) / n
        print(f"{label:18s}: propose adds {1000 * added:.0f} ms/image, "
              f"{100 * added / infer:.1f} % of inference (target < 20 %)")

if __name__ == "__main__":
    main()
