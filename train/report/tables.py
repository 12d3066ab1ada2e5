"""The report's tables (:mod:`train.report.build`): the evaluations read back, Table 1 (mean and
SD per model, recognition rates with Wilson 95 % intervals), the subgroups and the study's
overlap finding checked, the clinical measures' agreement, and the renderers of a table as
Markdown cells.

Input: ``<eval>/<model>/fold<k>/per_image.csv`` and ``summary.json``
(``train.evaluation.evaluate``; read through :func:`converters.core.records.read_json`), and
``measures.csv`` / ``measures_truth.csv`` where the evaluation measured. Values are fractions; the
``*_display`` tables and :func:`markdown` print percentages as the paper does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from converters.core.errors import InvalidTableError, MissingInputError
from converters.core.records import read_json
from converters.spine.measures import read_measures
from train.report import stats
from train.evaluation.metrics import METRICS
from train.models import display_name, eval_dir, family

RATES = ("recognition_rate", "composite_recognition_rate")


PER_IMAGE_RATE = {"recognition_rate": "recognized", "composite_recognition_rate": "composite"}


LABELS = {"pixel_accuracy": "Pixel accuracy", "mean_accuracy": "Mean accuracy",
          "mean_iou": "Mean IoU", "frequency_weighted_iou": "Frequency weighted IoU",
          "recognition_rate": "Recognition rate",
          "composite_recognition_rate": "Composite recognition rate"}

#: The study's Table 1 (Konya et al. 2021; 100 test images per fold, five folds, fractions):
#: per-image means of the pixel metrics and the two recognition rates.
STUDY_TABLE1 = {model: dict(zip((*METRICS, *RATES), values)) for model, values in {
    #            pixel acc., mean acc., mean IoU, fw IoU, recognition, composite
    "mask_rcnn": (0.9627, 0.9247, 0.8587, 0.9374, 0.99, 0.89),
    "unet": (0.9539, 0.9100, 0.8220, 0.9449, 0.91, 0.71),
    "deeplabv3": (0.9548, 0.9156, 0.8323, 0.9453, 0.70, 0.55),
    "yolact": (0.9694, 0.9415, 0.8777, 0.9433, 0.98, 0.82),
    "pspnet": (0.9513, 0.9134, 0.8097, 0.9397, 0.43, 0.36),
}.items()}
#: the composite recognition rates alone: the instance models keep overlapping vertebrae apart
STUDY_COMPOSITE = {m: v["composite_recognition_rate"] for m, v in STUDY_TABLE1.items()}


def load_evaluations(root: str | Path, models: list[str] | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """Per-image rows of every ``<model>/fold<k>`` under ``root`` (columns ``model``, ``fold``
    added) and their summaries; models in the order given (else sorted)."""
    root = Path(root)
    runs = sorted(root.glob("*/fold*/per_image.csv"))
    if not runs:
        raise MissingInputError("no evaluations found", produced_by="evaluate", file=root)
    frames, summaries = [], []
    for csv_path in runs:
        model, fold = csv_path.parent.parent.name, int(csv_path.parent.name[4:])
        if models and model not in models:
            continue
        df = pd.read_csv(csv_path, keep_default_na=False)
        missing = [c for c in ("file_name", "predicted", *METRICS, "recognized", "composite")
                   if c not in df.columns]
        if missing:
            raise InvalidTableError(f"missing columns {', '.join(missing)}", file=csv_path)
        df.insert(0, "model", model)
        df.insert(1, "fold", fold)
        frames.append(df)
        summaries.append(read_json(csv_path.parent / "summary.json",
                                   what="evaluation summary", made_by="evaluate"))
    if not frames:
        raise MissingInputError(f"no evaluations of {', '.join(models or [])} found", file=root)
    df = pd.concat(frames, ignore_index=True)
    order = [m for m in (models or sorted(df["model"].unique())) if m in set(df["model"])]
    df["model"] = pd.Categorical(df["model"], categories=order, ordered=True)
    df = df.sort_values(["model", "fold", "file_name"], kind="stable").reset_index(drop=True)
    df["model"] = df["model"].astype(str)
    for m in METRICS:
        df[m] = df[m].astype(float)
    return df, summaries


# --------------------------------------------------------------------------------------------
# clinical measures


def load_measures(root: str | Path, df: pd.DataFrame) -> dict[str, tuple[list[dict], list[dict]]]:
    """Per model (all folds pooled, in ``df``'s order): the rows of the evaluations'
    ``measures.csv`` and ``measures_truth.csv`` (paired by position). Evaluations without
    them (made before spinepipe measured) are left out."""
    out: dict[str, tuple[list[dict], list[dict]]] = {}
    for (model, fold), _ in df.groupby(["model", "fold"], sort=False):
        folder = eval_dir(model, int(fold), root)
        pred, truth = folder / "measures.csv", folder / "measures_truth.csv"
        if not (pred.is_file() and truth.is_file()):
            continue
        p = read_measures(pred)
        t = read_measures(truth)
        if [r["file_name"] for r in p] != [r["file_name"] for r in t]:
            raise InvalidTableError("measures.csv and measures_truth.csv list different "
                                    "images", file=pred)
        rows = out.setdefault(model, ([], []))
        rows[0].extend(p)
        rows[1].extend(t)
    return out


def measures_table(measures: dict[str, tuple[list[dict], list[dict]]],
                   agreement: dict[str, dict]) -> pd.DataFrame:
    """The ground truth's lordosis and measurable rate, then each model's agreement with it
    (``agreement``: :func:`train.evaluation.agreement.summarize` per model; Bland-Altman: MAE,
    bias, 95 % limits of agreement) for the lordosis, the segmental angles, disc heights and slips,
    its measurable rate, and the share of images whose endplates were refined on the image
    (:mod:`converters.spine.refine`)."""

    def lordoses(rows: list[dict]) -> np.ndarray:
        return np.array([float(r["lordosis_deg"]) for r in rows if r["lordosis_deg"] != ""])

    def fmt(v: float | None, digits: int = 1) -> str:
        return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"

    out: dict[str, dict[str, str]] = {}
    if not measures:
        return pd.DataFrame()
    truth = next(iter(measures.values()))[1]
    lt = lordoses(truth)
    out["Ground truth"] = {
        "Test images": str(len(truth)),
        "Lordosis L1-S1, deg (mean (SD))": f"{fmt(lt.mean() if lt.size else None)} "
                                           f"({fmt(lt.std(ddof=1) if lt.size > 1 else None)})",
        "Measurable rate (%)": fmt(100 * float(np.mean([r["not_measurable"] == ""
                                                        for r in truth]))),
        "Endplates refined on the image (%)": fmt(
            100 * float(np.mean([r.get("refined") == "1" for r in truth]))),
    }
    for model, (pred, true) in measures.items():
        s = agreement[model]
        g, lp = s["groups"], lordoses(pred)
        lo = g["lordosis_deg"]
        out[display_name(model)] = {
            "Test images": str(len(pred)),
            "Lordosis L1-S1, deg (mean (SD))": f"{fmt(lp.mean() if lp.size else None)} "
                                               f"({fmt(lp.std(ddof=1) if lp.size > 1 else None)})",
            "Measurable rate (%)": fmt(None if s["measurable_rate"] is None
                                       else 100 * s["measurable_rate"]),
            "Endplates refined on the image (%)": fmt(
                100 * float(np.mean([r.get("refined") == "1" for r in pred])) if pred else None),
            "Lordosis MAE (deg)": fmt(lo["mae"]),
            "Lordosis bias (deg)": fmt(lo["bias"]),
            "Lordosis 95 % LoA (deg)": (f"{fmt(lo['loa_low'])} to {fmt(lo['loa_high'])}"
                                        if lo["loa_low"] is not None else "n/a"),
            "Lordosis measurable (%)": fmt(None if lo["measurable_rate"] is None
                                           else 100 * lo["measurable_rate"]),
            "Segmental angle MAE (deg)": fmt(g["segmental_deg"]["mae"]),
            "Disc height MAE (mm)": fmt(g["disc_height_mm"]["mae"]),
            "Body height MAE (mm)": fmt(g["body_height_mm"]["mae"]),
            "Slip MAE (%)": fmt(g["slip_pct"]["mae"]),
            "Meyerding agreement (%)": fmt(None if s["meyerding_agreement"] is None
                                           else 100 * s["meyerding_agreement"]),
        }
    return pd.DataFrame.from_dict(out, orient="index").fillna("")


# --------------------------------------------------------------------------------------------
# Table 1


def table1(df: pd.DataFrame) -> pd.DataFrame:
    """Mean (SD) of each metric and the two recognition rates per model (fractions)."""
    d = stats.describe(df, list(METRICS))
    rows = {}
    for model in d.index:
        g = df[df["model"] == model]
        row = {"images": int(d.loc[model, ("images", "n")])}
        for m in METRICS:
            row[f"{m}_mean"] = float(d.loc[model, (m, "mean")])
            row[f"{m}_sd"] = float(d.loc[model, (m, "sd")])
        for rate, col in PER_IMAGE_RATE.items():
            row[rate] = float(g[col].mean())
            lo, hi = proportion_confint(int(g[col].sum()), len(g), alpha=0.05, method="wilson")
            row[f"{rate}_ci_low"], row[f"{rate}_ci_high"] = float(lo), float(hi)
        row["missing_predictions"] = int((g["predicted"] == 0).sum())
        rows[model] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.2f}"


def table1_display(t1: pd.DataFrame) -> pd.DataFrame:
    """Table 1 as the paper prints it: metrics as rows, models as columns, percentages."""
    out = {}
    for model, r in t1.iterrows():
        col = {f"{LABELS[m]} average (%) (SD)": f"{pct(r[f'{m}_mean'])} ({pct(r[f'{m}_sd'])})"
               for m in METRICS}
        for k in RATES:
            col[f"{LABELS[k]} (%)"] = pct(r[k])
            col[f"{LABELS[k]} 95 % CI (Wilson)"] = f"{pct(r[f'{k}_ci_low'])}-{pct(r[f'{k}_ci_high'])}"
        col["Test images (all folds)"] = str(int(r["images"]))
        out[display_name(model)] = col
    return pd.DataFrame(out)


def study_comparison(t1: pd.DataFrame) -> pd.DataFrame:
    """This run's Table 1 beside the study's: metrics as rows, per model (the study's models
    only; none: an empty table) the study's value, this run's and the difference, in
    percentage points ("n/a" where this run has no value)."""
    out = {}
    for model, r in t1.iterrows():
        study = STUDY_TABLE1.get(str(model))
        if study is None:
            continue
        name = display_name(model)
        col_s, col_r, col_d = (f"{name}: study", f"{name}: this run", f"{name}: difference")
        out[col_s], out[col_r], out[col_d] = {}, {}, {}
        for key, value in study.items():
            mine = float(r[f"{key}_mean"] if key in METRICS else r[key])
            label = LABELS[key]
            out[col_s][label] = f"{100 * value:.1f}"
            out[col_r][label] = "n/a" if np.isnan(mine) else f"{100 * mine:.1f}"
            out[col_d][label] = "n/a" if np.isnan(mine) else f"{100 * (mine - value):+.1f}"
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------
# subgroups: do instance models keep overlapping vertebrae apart?

#: subgroup -> (column of per_image.csv, whether the image has it)
SUBGROUPS = {"overlaps": ("gt_overlaps", True), "no overlaps": ("gt_overlaps", False),
             "implants": ("implants", True), "no implants": ("implants", False)}


def subgroups(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and subgroup (test images with / without overlapping vertebrae in the ground
    truth, with / without implants): images, recognized and composite counts and rates, and
    the overlapping ground-truth pairs and how many the model kept apart (both vertebrae
    matched, each by its own prediction). A subgroup whose column
    the evaluations lack (older evaluations; a test set without ``n_implants``) is left out."""
    rows = []
    for name, (col, has) in SUBGROUPS.items():
        if col not in df.columns or (df[col].astype(str) == "").any():
            continue
        for model, g in df.groupby("model", sort=False):
            g = g[(g[col].astype(int) > 0) == has]
            pairs = int(g["gt_overlaps"].astype(int).sum()) if "gt_overlaps" in g else 0
            apart = int(g["overlaps_apart"].astype(int).sum()) if "overlaps_apart" in g else 0
            rows.append({"model": model, "family": family(model), "subgroup": name,
                         "images": len(g), "recognized": int(g["recognized"].sum()),
                         "composite": int(g["composite"].sum()),
                         "recognition_rate": float(g["recognized"].mean()) if len(g) else np.nan,
                         "composite_recognition_rate": float(g["composite"].mean()) if len(g)
                         else np.nan,
                         "overlap_pairs": pairs, "overlap_pairs_apart": apart})
    return pd.DataFrame(rows, columns=["model", "family", "subgroup", "images", "recognized",
                                       "composite", "recognition_rate",
                                       "composite_recognition_rate", "overlap_pairs",
                                       "overlap_pairs_apart"])


def subgroups_display(sub: pd.DataFrame) -> pd.DataFrame:
    """Models as rows, one column per subgroup: composite recognition % (composite / images)."""
    out: dict[str, dict[str, str]] = {}
    for _, r in sub.iterrows():
        cell = f"{pct(r['composite_recognition_rate'])} ({r['composite']}/{r['images']})"
        out.setdefault(display_name(r["model"]), {})[f"Composite recognition, {r['subgroup']} (%)"] = cell
        if r["subgroup"] == "overlaps":
            out[display_name(r["model"])]["Overlapping pairs kept apart"] = \
                f"{r['overlap_pairs_apart']}/{r['overlap_pairs']}"
    return pd.DataFrame.from_dict(out, orient="index")


def overlap_finding(df: pd.DataFrame, sub: pd.DataFrame, alpha: float) -> str:
    """The study's finding checked on this test set: the best instance model's composite
    recognition on the images with overlaps against the best semantic model's (exact McNemar
    test: both models saw the same images)."""
    from statsmodels.stats.contingency_tables import mcnemar

    study = ("The study (Konya et al. 2021, Table 1) found that instance models keep "
             "overlapping vertebrae apart: composite recognition " + ", ".join(
                 f"{display_name(m)} {100 * v:.0f} %" for m, v in STUDY_COMPOSITE.items()) + ".")
    ov = sub[sub["subgroup"] == "overlaps"]
    if ov.empty:
        return study + " This evaluation does not say which test images have overlaps."
    best = {}
    for fam in ("instance", "semantic"):
        f = ov[(ov["family"] == fam) & (ov["images"] > 0)]
        if not f.empty:
            best[fam] = f.loc[f["composite_recognition_rate"].idxmax()]
    if len(best) < 2 or not ov["images"].max():
        return study + (" No test image has overlapping vertebrae: the finding cannot be "
                        "checked here." if not ov["images"].max() else
                        " Only one family of models was evaluated: nothing to compare.")
    i, s = best["instance"], best["semantic"]
    text = (f"{study} Here, on the {i['images']} test images with overlapping vertebrae, the best "
            f"instance model ({display_name(i['model'])}) reaches {pct(i['composite_recognition_rate'])} %"
            f" composite recognition, the best semantic model ({display_name(s['model'])}) "
            f"{pct(s['composite_recognition_rate'])} %; overlapping pairs kept apart: "
            f"{i['overlap_pairs_apart']}/{i['overlap_pairs']} against "
            f"{s['overlap_pairs_apart']}/{s['overlap_pairs']}.")
    a = df[df["model"] == i["model"]].set_index(["fold", "file_name"])
    b = df[df["model"] == s["model"]].set_index(["fold", "file_name"])
    both = a.join(b, how="inner", lsuffix="_i", rsuffix="_s")
    both = both[both["gt_overlaps_i"].astype(int) > 0]
    if len(both) and i["images"] == s["images"] == len(both):
        x, y = both["composite_i"].astype(int), both["composite_s"].astype(int)
        table = [[int(((x == 1) & (y == 1)).sum()), int(((x == 1) & (y == 0)).sum())],
                 [int(((x == 0) & (y == 1)).sum()), int(((x == 0) & (y == 0)).sum())]]
        p = float(mcnemar(table, exact=True).pvalue)
        holds = i["composite_recognition_rate"] > s["composite_recognition_rate"]
        text += (f" The finding {'holds' if holds else 'does not hold'} on this test set "
                 f"(exact McNemar p = {p:.3g}; {'significant' if p < alpha else 'not significant'}"
                 f" at {alpha}).")
    return text


def sample_note(t1: pd.DataFrame, min_images: int) -> str | None:
    """A warning when the test set is too small for its statistics to be read as evidence."""
    n = int(t1["images"].min())
    if n >= min_images:
        return None
    half = 100 * float(np.max(np.abs(np.array(proportion_confint(n // 2, n, method="wilson"))
                                     - 0.5)))
    return (f"Only {n} test images per model (report.min_images = {min_images}): the "
            f"statistics below are indicative, not evidence. A recognition rate near 50 % has a "
            f"95 % confidence interval of about ±{half:.0f} points at this size; differences "
            f"smaller than that, and any p-value here, say little. The study tested 100 images "
            f"per fold in five folds.")


# --------------------------------------------------------------------------------------------
# cells


def cell(v, percent: bool) -> str:
    """One table cell as text: floats as percentages or 4 significant digits, NaN as n/a."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        return "n/a" if np.isnan(v) else (f"{100 * v:.2f}" if percent else f"{v:.4g}")
    return str(v)


def markdown(df: pd.DataFrame, percent: bool = False) -> str:
    cols = [str(c) for c in df.columns]
    show_index = not isinstance(df.index, pd.RangeIndex)
    lines = ["| " + " | ".join(([""] if show_index else []) + cols) + " |",
             "|" + "---|" * (len(cols) + show_index)]
    for idx, row in df.iterrows():
        cells = ([str(idx)] if show_index else []) + [cell(v, percent) for v in row]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
