"""What each of the phantom's difficulty knobs does to the numbers (issue 28, item 5).

The demo's trained models (``models/<model>/fold0``, from ``make demo``) are evaluated, exactly as
the evaluate stage scores the test set, on phantom test sets that differ from the demo's
phantom in one knob only: the same seed (an unseen one, not the demo's), the same size and every
other knob as in params.yaml, so the same patients, poses and variants, with one feature turned
off or up (each knob moves its own feature only: :mod:`converters.phantom.plan`). Every set
goes through the real commands: ``spinepipe phantom``, ``anonymize``, ``export``,
``phantom-annotations`` (one reader, nothing held out), ``convert``, ``evaluate``.

This measures how much harder or easier each feature makes the images for models trained on the
demo's mixture; a demo trained on the changed phantom (``phantom:`` in params.yaml, then
``make demo``: about 15 minutes per setting) also learns from the change, so its numbers move
less for features it sees in training. Per model and knob setting: mean IoU, recognition,
composite recognition, lordosis measurable rate and MAE; the change against the unchanged
phantom in brackets. 30 images: one image is 3.3 points of a rate.

    .venv/bin/python benchmarks/bench_knobs.py [--n 30] [--seed 1000] [--models unet yolact]
        [--knobs gas dose] [--csv knobs.csv]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench_learning import MODELS, run_or_exit  # the benchmarks' folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent
#: knob -> (the setting that removes the feature or makes it easy, the hard one)
KNOBS = {
    "overlap_share": (0.0, 1.0),
    "overlap_severity": (0.2, 1.5),
    "implant_share": (0.0, 1.0),
    "gas": (0.0, 3.0),
    "dose": (4.0, 0.25),
    "scatter": (0.0, 1.5),
    "rotation": (0.0, 3.0),
    "slip_share": (0.0, 1.0),
    "osteophyte_share": (0.0, 1.0),
    "thoracic_share": (0.0, 1.0),
}
METRICS = [("mean_iou", "mean IoU", 100), ("recognition_rate", "recognition", 100),
           ("composite_recognition_rate", "composite recognition", 100),
           ("lordosis_measurable_rate", "lordosis measurable", 100),
           ("lordosis_mae_deg", "lordosis MAE (deg)", 1)]


def require_trained(models: list[str]) -> None:
    """Exit with one line unless each model has its demo run (``models/<model>/fold0``)."""
    missing = [m for m in models if not (ROOT / "models" / m / "fold0" / "best.pth").exists()]
    if missing:
        sys.exit(f"no trained model for {', '.join(missing)} in models/<model>/fold0: "
                 "run `make demo` first")


def phantom_params(base: dict, n: int, seed: int, knob: str | None,
                   value: float | None) -> dict:
    """params.yaml with the phantom's size and seed set, nothing quarantined or held out, one
    reader, and ``knob`` at ``value``."""
    params = json.loads(json.dumps(base))
    params["phantom"].update(n=n, seed=seed, burned_in_share=0.0)
    if knob is not None:
        params["phantom"][knob] = value
    params["annotator"].update(holdout=0, readers=1, double_read_share=0.0)
    return params


def make_phantom_set(work: Path, params: dict, *, split: bool = False) -> list[str]:
    """One phantom set through the real commands into ``work`` (phantom, anonymize, export,
    phantom-annotations, convert; with ``split``, split into ``work/splits`` too), made with
    ``params``; returns the arguments every later command takes (``--params``, ``--quiet``)."""
    work.mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    spinepipe = str(Path(sys.executable).with_name("spinepipe"))
    p = ["--params", str(work / "params.yaml"), "--quiet"]
    run_or_exit([spinepipe, "phantom", "--output", str(work / "raw"), *p])
    run_or_exit([spinepipe, "anonymize", "--input", str(work / "raw" / "dicom"),
                 "--output", str(work / "anon"), "--private", str(work / "private"), *p])
    run_or_exit([spinepipe, "export", "--input", str(work / "anon"),
                 "--output", str(work / "png"), *p])
    run_or_exit([spinepipe, "phantom-annotations",
                 "--via", str(work / "raw/annotations/via_project.json"),
                 "--png", str(work / "png"), "--private", str(work / "private"),
                 "--output", str(work / "ann"), "--holdout-output", str(work / "holdout.json"),
                 "--readers-truth", str(work / "readers.json"),
                 "--double-read-output", str(work / "double.json"), *p])
    run_or_exit([spinepipe, "convert", "--input", str(work / "ann"),
                 "--images", str(work / "png"), "--output", str(work / "processed"), *p])
    if split:
        run_or_exit([spinepipe, "split", "--input", str(work / "processed"),
                     "--output", str(work / "splits"), *p])
    return p


def evaluate_on_phantom(work: Path, params: dict, models: list[str]) -> dict[str, dict]:
    """Generate one phantom test set through the real commands and evaluate every model on it:
    model -> summary.json."""
    p = make_phantom_set(work, params)
    spinepipe = str(Path(sys.executable).with_name("spinepipe"))
    out = {}
    for model in models:
        ev = work / "eval" / model
        run_or_exit([spinepipe, "evaluate", "--model", model, "--fold", "0",
                     "--run-dir", str(ROOT / "models" / model / "fold0"),
                     "--test", str(work / "processed/coco.json"),
                     "--masks", str(work / "processed/masks"), "--images", str(work / "png"),
                     "--output", str(ev), *p])
        out[model] = json.loads((ev / "summary.json").read_text())
    return out


def _cell(s: dict, base: dict, key: str, scale: float) -> str:
    v, b = s.get(key), base.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    text = f"{scale * v:.1f}"
    if b is None or (isinstance(b, float) and math.isnan(b)) or s is base:
        return text
    return f"{text} ({scale * (v - b):+.1f})"


def _report(results: dict[str, dict[str, dict]], models: list[str], n: int) -> None:
    base = results["phantom as in params.yaml"]
    for key, title, scale in METRICS:
        print(f"\n{title}, {n} test images per setting (change against the unchanged phantom)")
        print(f"  {'setting':28s}" + "".join(f"{m:>16s}" for m in models))
        for name, by_model in results.items():
            print(f"  {name:28s}" + "".join(f"{_cell(by_model[m], base[m], key, scale):>16s}"
                                            for m in models))


def _write_csv(path: Path, results: dict[str, dict[str, dict]], models: list[str]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["setting", "model"] + [k for k, _, _ in METRICS])
        for name, by_model in results.items():
            for m in models:
                w.writerow([name, m] + [by_model[m].get(k) for k, _, _ in METRICS])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="test images per knob setting")
    ap.add_argument("--seed", type=int, default=1000, help="the phantom's seed (not the demo's)")
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--knobs", nargs="+", default=list(KNOBS), choices=list(KNOBS))
    ap.add_argument("--csv", type=Path, help="also write every number to this CSV file")
    args = ap.parse_args()
    require_trained(args.models)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings: list[tuple[str, str | None, float | None]] = [
        ("phantom as in params.yaml", None, None)]
    for knob in args.knobs:
        settings += [(f"{knob} {base['phantom'][knob]} -> {v}", knob, v) for v in KNOBS[knob]]
    results: dict[str, dict[str, dict]] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, knob, value) in enumerate(settings):
            results[name] = evaluate_on_phantom(
                Path(tmp) / f"v{i}", phantom_params(base, args.n, args.seed, knob, value),
                args.models)
            print(f"{name}: done ({(time.perf_counter() - t0) / 60:.1f} min)", file=sys.stderr)
    _report(results, args.models, args.n)
    if args.csv:
        _write_csv(args.csv, results, args.models)


if __name__ == "__main__":
    main()
