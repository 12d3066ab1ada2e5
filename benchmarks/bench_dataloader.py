"""The training data pipeline at the study preset's size (issue 27): images per second of each
model's own training pipeline (decode, annotations, resize, crop, augmentations, pack) against
the PNG decode floor of the same files, in one process and in a DataLoader of 1, 2 and N workers.

Data: study-size phantom radiographs (1100x2870; default 30, seed 3000) through the real commands
(``spinepipe phantom``, ``anonymize``, ``export``, ``phantom-annotations``, ``convert``,
``split``); each model's leaf config as ``spinepipe train --preset study`` builds it
(:func:`train.fit.runner.prepare_run`: the model's config, the study preset's image scale,
crop, albumentations and options), its training dataset built by MMEngine's registry, and:

- floor: ``cv2.imread`` of each training image as it is stored (8-bit grey PNG), one process;
- pipeline: ``dataset[i]`` for every training image in one process (one worker's work),
  decoding every PNG every epoch (no ``image_cache``), and with the study preset's
  ``image_cache`` (train/fit/image_cache.py) after the first epoch filled it (each PNG
  decoded once per run: the later epochs);
- loader: a torch DataLoader with the preset's batch size, MMEngine's ``pseudo_collate`` and
  1, 2 and N (every core) persistent workers, with the image cache; the second pass timed (the
  first starts them); per worker as a multiple of the floor (ms per image x workers).

Printed per model: ms per image and images per second, the pipeline's time as a multiple of
the floor (issue 27's target: within 2x per worker), and the loader's images per second per
worker. No GPU needed: this is the data side of a training step.

    .venv/bin/python benchmarks/bench_dataloader.py [--n 30] [--models unet yolact]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import cv2
import yaml

from bench_knobs import ROOT, make_phantom_set, phantom_params  # (benchmarks/ on sys.path)
from bench_learning import MODELS

for _noise in ("pkg_resources is deprecated", "`reduce_zero_label` will be deprecated"):
    warnings.filterwarnings("ignore", message=_noise)   # the libraries' own, once per process


def make_data(work: Path, n: int, seed: int) -> Path:
    """Study-size phantom images, annotated, converted and split, through the real commands;
    returns the params file they were made with."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = phantom_params(base, n, seed, None, None)
    params["phantom"].update(height=2870, width=1100)
    make_phantom_set(work, params, split=True)
    return work / "params.yaml"


def training_dataset(model: str, work: Path, params: Path, cache: Path | None = None):
    """The model's training dataset at the study preset, as its training run would build it;
    its decoded images kept in ``cache`` (None: decoded every time)."""
    from mmengine.registry import DATASETS, init_default_scope
    from mmengine.utils import import_modules_from_strings

    from pipeline.params import load_section
    from train.fit.runner import TrainConfig, prepare_run

    cfg = load_section(TrainConfig, "train", params)
    cfg = replace(cfg, images=str(work / "png"), masks=str(work / "processed" / "masks"),
                  splits=str(work / "splits"),
                  presets={**cfg.presets, "study": replace(cfg.presets["study"],
                                                           image_cache=cache and str(cache))})
    leaf = prepare_run(model, 0, cfg, work / "runs" / model, preset="study")
    if leaf.get("custom_imports"):
        import_modules_from_strings(**leaf.custom_imports)
    init_default_scope(leaf.default_scope)
    return DATASETS.build(leaf.train_dataloader.dataset), int(leaf.train_dataloader.batch_size)


def _paths(dataset) -> list[str]:
    return [dataset.get_data_info(i)["img_path"] for i in range(len(dataset))]


def floor_ms(paths: list[str], rounds: int = 3) -> float:
    """Median ms per image of decoding the files as stored (the best of ``rounds`` passes)."""
    best = []
    for _ in range(rounds):
        times = []
        for p in paths:
            t0 = time.perf_counter()
            cv2.imread(p, cv2.IMREAD_UNCHANGED)
            times.append(time.perf_counter() - t0)
        best.append(statistics.median(times))
    return 1000 * min(best)


def pipeline_ms(dataset, rounds: int = 2) -> float:
    """Median ms per image of ``dataset[i]`` in this process (the best of ``rounds`` passes)."""
    best = []
    for _ in range(rounds):
        times = []
        for i in range(len(dataset)):
            t0 = time.perf_counter()
            dataset[i]
            times.append(time.perf_counter() - t0)
        best.append(statistics.median(times))
    return 1000 * min(best)


def loader_rate(dataset, batch_size: int, workers: int) -> float:
    """Images per second of the second pass of a DataLoader with ``workers`` workers."""
    from mmengine.dataset import pseudo_collate
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        persistent_workers=True, collate_fn=pseudo_collate, shuffle=True)
    for _ in loader:              # the workers start and warm up
        pass
    t0 = time.perf_counter()
    seen = sum(len(batch["inputs"]) for batch in loader)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="study-size phantom images made")
    ap.add_argument("--seed", type=int, default=3000)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    counts = sorted({1, 2, cores})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "study"
        t0 = time.perf_counter()
        params = make_data(work, args.n, args.seed)
        print(f"{args.n} images 1100x2870 made, annotated, converted and split in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        print(f"training pipelines at the study preset, fold 0 ({cores} cores); ms per image "
              "(images/s); target: the pipeline within 2x the decode floor per worker")
        for model in args.models:
            dataset, batch = training_dataset(model, work, params)
            floor, cold = floor_ms(_paths(dataset)), pipeline_ms(dataset)
            cached, _ = training_dataset(model, work, params, work / f"cache-{model}")
            first = pipeline_ms(cached, rounds=1)         # the first epoch fills the cache
            warm = pipeline_ms(cached)
            rates = {w: loader_rate(cached, batch, w) for w in counts}
            print(f"  {model:10s} {len(dataset)} images: floor {floor:6.1f} ms "
                  f"({1000 / floor:5.1f}/s); pipeline decoding every epoch {cold:6.1f} ms = "
                  f"{cold / floor:.1f}x the floor; with image_cache: the first epoch (decoded "
                  f"and kept) {first:6.1f} ms, later epochs {warm:6.1f} ms "
                  f"({1000 / warm:5.1f}/s) = {warm / floor:.1f}x the floor; loader with "
                  "image_cache " + ", ".join(
                      f"{w} worker{'s' if w > 1 else ''} {r:5.1f}/s ({r / w:4.1f}/s each, "
                      f"{1000 * w / r / floor:.1f}x the floor)" for w, r in rates.items()))


if __name__ == "__main__":
    main()
