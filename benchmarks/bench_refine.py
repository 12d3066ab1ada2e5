"""What each endplate-refinement setting trades (issue 23): how many images a model's measures
are made on against how far they lie from the truth, per setting of params.yaml's ``measures``.

A validation set the models never saw and the test set does not contain: a phantom of its own
seed (default 2000, 60 images) through the real commands, as ``bench_knobs.py`` makes its sets
(``spinepipe phantom``, ``anonymize``, ``export``, ``phantom-annotations``, ``convert``), and the
demo's trained models (``models/<model>/fold0``, from ``make demo``) evaluated on it once by
``spinepipe evaluate``. Their predictions are then measured again, as evaluate measures them
(:func:`train.evaluation.evaluate.score`), with each setting: unrefined, as in params.yaml, and
one field of ``measures`` lower and higher, ``split_fused`` the other way. Settings are chosen here, on images apart from the
test set, so the test set's numbers stay a measurement, not a fit.

Per model and setting: lordosis MAE (deg) / measurable (%), segmental angles MAE / measurable,
disc heights MAE (mm) / measurable. Issue 23's target: lordosis <= 3 deg on >= 90 % of the
images, segmental <= 3 deg, discs <= 1 mm.

    .venv/bin/python benchmarks/bench_refine.py [--n 60] [--seed 2000] [--models yolact unet]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import yaml

from bench_knobs import (ROOT, evaluate_on_phantom, phantom_params,  # (benchmarks/ on
                         require_trained)                              # sys.path)
from bench_learning import MODELS
from converters.core.provenance import pixel_spacing, read_record
from converters.spine.refine import MeasuresConfig
from pipeline.params import load_section
from train.evaluation.evaluate import EvaluateConfig, family, score
from train.evaluation.recognition import PostprocessConfig, RecognitionConfig
from train.evaluation.test_set import TestSet

#: field -> (lower, higher) than params.yaml's (the fields that decide what is seen as an edge,
#: and what is too implausible to be measured)
SWEEP = {"min_confidence": (0.3, 0.5), "band_mm": (4.0, 8.0), "inlier_px": (0.75, 1.5),
         "min_snr": (1.5, 4.0), "sigma_px": (0.5, 1.5), "max_tilt_deg": (15.0, 35.0),
         # plausibility (converters/spine/plausible.py): 180 deg and 0 turn a check off
         "max_segment_deg": (35.0, 180.0), "min_disc_ratio": (0.0, 0.1)}
#: booleans of ``measures`` measured the other way too (a fused blob cut into its bodies or not:
#: converters/spine/fused.py)
SWITCHES = ("split_fused",)
GROUPS = (("lordosis_deg", "lordosis"), ("segmental_deg", "segmental"),
          ("disc_height_mm", "discs"))


def settings(base: MeasuresConfig) -> list[tuple[str, MeasuresConfig]]:
    """(name, config) of every setting measured: unrefined, params.yaml's, each swept field
    lower and higher, each switch the other way."""
    out = [("unrefined", replace(base, refine_predictions=False)), ("params.yaml", base)]
    for name, values in SWEEP.items():
        out += [(f"{name} {getattr(base, name):g} -> {v:g}", replace(base, **{name: v}))
                for v in values]
    on = {True: "on", False: "off"}
    out += [(f"{name} {on[getattr(base, name)]} -> {on[not getattr(base, name)]}",
             replace(base, **{name: not getattr(base, name)})) for name in SWITCHES]
    return out


def measure(work: Path, models: list[str], configs: list[tuple[str, MeasuresConfig]],
            recognition: RecognitionConfig) -> dict[str, dict[str, dict]]:
    """setting -> model -> the measures' groups (summary.json's ``measures.groups``) of the
    predictions kept in ``work/eval/<model>``, measured with each config (levels assigned as
    evaluate assigns them: ``recognition``, from params.yaml's postprocess and evaluate)."""
    test = TestSet.load(work / "processed/coco.json", work / "processed/masks")
    spacing = {im["file_name"]: pixel_spacing(read_record(work / "png", im["file_name"]))
               for im in test.images}
    out: dict[str, dict[str, dict]] = {}
    for name, cfg in configs:
        for model in models:
            _, summary, *_ = score(work / "eval" / model, test, recognition, model=model,
                                   fold=0, family=family(model),
                                   spacing={k: v for k, v in spacing.items() if v},
                                   measures=cfg, images=work / "png")
            out.setdefault(name, {})[model] = summary["measures"]["groups"]
    return out


def _cell(group: dict) -> str:
    mae, rate = group.get("mae"), group.get("measurable_rate")
    return "-" if mae is None else f"{mae:.2f} / {100 * (rate or 0):.0f}%"


def report(results: dict[str, dict[str, dict]], models: list[str], n: int) -> None:
    for key, title in GROUPS:
        print(f"\n{title}: MAE / measurable, {n} validation images (target: lordosis <= 3 deg "
              "on >= 90 %, segmental <= 3 deg, discs <= 1 mm)")
        print(f"  {'setting':28s}" + "".join(f"{m:>16s}" for m in models))
        for name, by_model in results.items():
            print(f"  {name:28s}" + "".join(f"{_cell(by_model[m][key]):>16s}" for m in models))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="validation images")
    ap.add_argument("--seed", type=int, default=2000, help="their phantom's seed (not the "
                    "demo's, nor bench_knobs')")
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    args = ap.parse_args()
    require_trained(args.models)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    base = load_section(MeasuresConfig, "measures", ROOT / "params.yaml")
    recognition = RecognitionConfig(
        **asdict(load_section(PostprocessConfig, "postprocess", ROOT / "params.yaml")),
        match_iou=load_section(EvaluateConfig, "evaluate", ROOT / "params.yaml").match_iou)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "val"
        evaluate_on_phantom(work, phantom_params(params, args.n, args.seed, None, None),
                            args.models)
        print(f"validation set and predictions: {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        results = measure(work, args.models, settings(base), recognition)
    print(f"measured {len(results)} settings in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    report(results, args.models, args.n)


if __name__ == "__main__":
    main()
