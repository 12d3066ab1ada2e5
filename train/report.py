"""The study's report from the evaluations of every model x fold (:mod:`train.evaluate`).

Input: ``<eval>/<model>/fold<k>/per_image.csv`` and ``summary.json``. All statistics are over
per-image values pooled across folds (the paper's Tables 1-4; :mod:`train.stats`). Outputs
under the report folder:

- ``report.html``: one self-contained page (figures embedded as PNG data URIs);
- ``tables/*.md`` and ``tables/*.csv``: Table 1 (mean and SD per model, recognition rates
  with Wilson 95 % intervals), the subgroups (composite recognition on test images with /
  without overlapping vertebrae and with / without implants, checked against the study's
  finding that instance models keep overlapping vertebrae apart; ``notes.md`` says whether it
  holds and warns when the test set has fewer than ``min_images`` images per model),
  Table 2 (Kruskal-Wallis per metric), Table 3 / Table 4 (pairwise post-hoc tests of the
  recognition / composite recognition rate, Holm-corrected) and the same for each pixel
  metric, Shapiro-Wilk, Tukey HSD where it applies, pooled (dataset-level) metrics;
- ``figures/``: density plots of the four metrics (the paper's Figure 4), box plots per model,
  best / worst example overlays per model (Figure 5: ground truth outlined in green, the
  prediction filled, lumbar red, sacrum blue);
- the clinical measures table (``tables/measures.*``: the ground truth's lordosis, then each
  model's agreement with the ground truth's measures, :mod:`train.measures`) and a
  Bland-Altman plot of the lordosis (``figures/bland_altman_lordosis.png``);
- ``metrics.json``: per model, the means of the four pixel metrics (key names as
  ``spinepipe metrics`` prints them) plus ``recognition_rate``,
  ``composite_recognition_rate`` and ``composite_recognition_rate_overlaps`` (on the images
  with overlaps), ``lordosis_mae_deg`` and ``measurable_rate``, for ``dvc metrics show /
  diff``;
- ``plots/per_image.csv`` (one row per model, fold and image) and ``plots/density_<metric>.csv``
  (x ``value``, one density column per model) for ``dvc plots``.

Values are fractions in the files; the HTML and Markdown tables print percentages as the paper
does.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from converters.errors import InvalidTableError, MissingInputError
from converters.io import prepare_output, write_bytes, write_json, write_text
from converters.records import read_json
from train import stats
from train.metrics import METRICS
from train.models import eval_dir, family

RATES = ("recognition_rate", "composite_recognition_rate")
PER_IMAGE_RATE = {"recognition_rate": "recognized", "composite_recognition_rate": "composite"}
LABELS = {"pixel_accuracy": "Pixel accuracy", "mean_accuracy": "Mean accuracy",
          "mean_iou": "Mean IoU", "frequency_weighted_iou": "Frequency weighted IoU",
          "recognition_rate": "Recognition rate",
          "composite_recognition_rate": "Composite recognition rate"}
MODEL_NAMES = {"mask_rcnn": "Mask R-CNN", "yolact": "YOLACT", "unet": "U-Net",
               "pspnet": "PSPNet", "deeplabv3": "DeepLabv3"}
COLORS = {1: (60, 20, 220), 2: (255, 128, 0)}   # BGR: lumbar red, sacrum blue


#: The study's composite recognition rates (Konya et al. 2021, Table 1; 100 test images per
#: fold, five folds): the instance models keep overlapping vertebrae apart.
STUDY_COMPOSITE = {"mask_rcnn": 0.89, "yolact": 0.82, "unet": 0.71, "deeplabv3": 0.55,
                   "pspnet": 0.36}


@dataclass(frozen=True)
class ReportConfig:
    """params.yaml section ``report``."""

    alpha: float = field(default=0.05, metadata={"min": 0.0, "max": 0.5})
    examples: int = field(default=1, metadata={"min": 0})
    #: fewer test images per model than this: the report says its statistics are indicative
    min_images: int = field(default=30, metadata={"min": 1})


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


def _name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


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
        p = pd.read_csv(pred, keep_default_na=False, dtype=str).to_dict("records")
        t = pd.read_csv(truth, keep_default_na=False, dtype=str).to_dict("records")
        if [r["file_name"] for r in p] != [r["file_name"] for r in t]:
            raise InvalidTableError("measures.csv and measures_truth.csv list different "
                                    "images", file=pred)
        rows = out.setdefault(model, ([], []))
        rows[0].extend(p)
        rows[1].extend(t)
    return out


def measures_table(measures: dict[str, tuple[list[dict], list[dict]]]) -> pd.DataFrame:
    """The ground truth's lordosis and measurable rate, then each model's agreement with it
    (Bland-Altman: MAE, bias, 95 % limits of agreement) for the lordosis, the segmental
    angles, disc heights and slips, and its measurable rate."""
    from train.measures import summarize

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
    }
    for model, (pred, true) in measures.items():
        s = summarize(pred, true)
        g, lp = s["groups"], lordoses(pred)
        lo = g["lordosis_deg"]
        out[_name(model)] = {
            "Test images": str(len(pred)),
            "Lordosis L1-S1, deg (mean (SD))": f"{fmt(lp.mean() if lp.size else None)} "
                                               f"({fmt(lp.std(ddof=1) if lp.size > 1 else None)})",
            "Measurable rate (%)": fmt(None if s["measurable_rate"] is None
                                       else 100 * s["measurable_rate"]),
            "Lordosis MAE (deg)": fmt(lo["mae"]),
            "Lordosis bias (deg)": fmt(lo["bias"]),
            "Lordosis 95 % LoA (deg)": (f"{fmt(lo['loa_low'])} to {fmt(lo['loa_high'])}"
                                        if lo["n"] else "n/a"),
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


def bland_altman_figure(measures: dict[str, tuple[list[dict], list[dict]]]) -> bytes | None:
    """Lordosis: one Bland-Altman panel per model (difference against mean of prediction
    and truth, with the bias and the 95 % limits of agreement)."""
    pairs = {}
    for model, (pred, true) in measures.items():
        xy = [(float(p["lordosis_deg"]), float(t["lordosis_deg"])) for p, t in zip(pred, true)
              if p["lordosis_deg"] != "" and t["lordosis_deg"] != ""]
        if xy:
            pairs[model] = np.array(xy)
    if not pairs:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.3 * len(pairs), 3.2), squeeze=False,
                             sharey=True)
    for ax, (model, xy) in zip(axes[0], pairs.items()):
        mean, diff = xy.mean(axis=1), xy[:, 0] - xy[:, 1]
        bias = float(diff.mean())
        sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
        ax.scatter(mean, diff, s=12)
        for y, style in ((bias, "-"), (bias - 1.96 * sd, "--"), (bias + 1.96 * sd, "--")):
            ax.axhline(y, color="grey", linestyle=style, linewidth=1)
        ax.set_title(f"{_name(model)} (n={len(diff)})", fontsize=10)
        ax.set_xlabel("mean of model and truth (deg)")
    axes[0][0].set_ylabel("model - truth (deg)")
    fig.suptitle("Lordosis L1-S1: Bland-Altman (bias solid, 95 % limits dashed)", fontsize=11)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


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


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.2f}"


def table1_display(t1: pd.DataFrame) -> pd.DataFrame:
    """Table 1 as the paper prints it: metrics as rows, models as columns, percentages."""
    out = {}
    for model, r in t1.iterrows():
        col = {f"{LABELS[m]} average (%) (SD)": f"{_pct(r[f'{m}_mean'])} ({_pct(r[f'{m}_sd'])})"
               for m in METRICS}
        for k in RATES:
            col[f"{LABELS[k]} (%)"] = _pct(r[k])
            col[f"{LABELS[k]} 95 % CI (Wilson)"] = f"{_pct(r[f'{k}_ci_low'])}-{_pct(r[f'{k}_ci_high'])}"
        col["Test images (all folds)"] = str(int(r["images"]))
        out[_name(model)] = col
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
        cell = f"{_pct(r['composite_recognition_rate'])} ({r['composite']}/{r['images']})"
        out.setdefault(_name(r["model"]), {})[f"Composite recognition, {r['subgroup']} (%)"] = cell
        if r["subgroup"] == "overlaps":
            out[_name(r["model"])]["Overlapping pairs kept apart"] = \
                f"{r['overlap_pairs_apart']}/{r['overlap_pairs']}"
    return pd.DataFrame.from_dict(out, orient="index")


def overlap_finding(df: pd.DataFrame, sub: pd.DataFrame, alpha: float) -> str:
    """The study's finding checked on this test set: the best instance model's composite
    recognition on the images with overlaps against the best semantic model's (exact McNemar
    test: both models saw the same images)."""
    from statsmodels.stats.contingency_tables import mcnemar

    study = ("The study (Konya et al. 2021, Table 1) found that instance models keep "
             "overlapping vertebrae apart: composite recognition " + ", ".join(
                 f"{_name(m)} {100 * v:.0f} %" for m, v in STUDY_COMPOSITE.items()) + ".")
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
            f"instance model ({_name(i['model'])}) reaches {_pct(i['composite_recognition_rate'])} %"
            f" composite recognition, the best semantic model ({_name(s['model'])}) "
            f"{_pct(s['composite_recognition_rate'])} %; overlapping pairs kept apart: "
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


def sample_note(t1: pd.DataFrame, cfg: ReportConfig) -> str | None:
    """A warning when the test set is too small for its statistics to be read as evidence."""
    n = int(t1["images"].min())
    if n >= cfg.min_images:
        return None
    half = 100 * float(np.max(np.abs(np.array(proportion_confint(n // 2, n, method="wilson"))
                                     - 0.5)))
    return (f"Only {n} test images per model (report.min_images = {cfg.min_images}): the "
            f"statistics below are indicative, not evidence. A recognition rate near 50 % has a "
            f"95 % confidence interval of about ±{half:.0f} points at this size; differences "
            f"smaller than that, and any p-value here, say little. The study tested 100 images "
            f"per fold in five folds.")


# --------------------------------------------------------------------------------------------
# figures


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def densities(df: pd.DataFrame, points: int = 200) -> dict[str, pd.DataFrame]:
    """Per metric: x ``value`` and one Gaussian-KDE density column per model (a model whose
    values are all equal gets a narrow spike there)."""
    from scipy.stats import gaussian_kde
    out = {}
    for m in METRICS:
        lo, hi = float(df[m].min()), float(df[m].max())
        pad = max(0.02, 0.1 * (hi - lo))
        x = np.linspace(max(0.0, lo - pad), min(1.0, hi + pad), points)
        cols = {"value": x}
        for model, g in df.groupby("model", sort=False):
            v = g[m].to_numpy(dtype=float)
            if len(v) > 1 and np.ptp(v) > 0:
                cols[model] = gaussian_kde(v)(x)
            else:
                width = (x[1] - x[0]) * 2
                cols[model] = np.exp(-0.5 * ((x - v.mean()) / width) ** 2) / (width * np.sqrt(2 * np.pi))
        out[m] = pd.DataFrame(cols)
    return out


def density_figure(dens: dict[str, pd.DataFrame]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, m in zip(axes.ravel(), METRICS):
        d = dens[m]
        for model in d.columns[1:]:
            ax.plot(100 * d["value"], d[model] / 100, label=_name(model))
        ax.set_title(LABELS[m])
        ax.set_xlabel("%")
        ax.set_ylabel("density")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def box_figure(df: pd.DataFrame) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    models = list(dict.fromkeys(df["model"]))
    for ax, m in zip(axes.ravel(), METRICS):
        ax.boxplot([100 * df.loc[df["model"] == k, m].to_numpy() for k in models],
                   tick_labels=[_name(k) for k in models])
        ax.set_title(f"{LABELS[m]} (%)")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def overlay(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, max_height: int = 640) -> np.ndarray:
    """The image with the prediction filled (lumbar red, sacrum blue) and the ground truth's
    outlines in green."""
    img = cv2.cvtColor(cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8),
                       cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    fill = img.copy()
    for value, color in COLORS.items():
        fill[pred == value] = color
    out = cv2.addWeighted(img, 0.6, fill, 0.4, 0)
    for value in COLORS:
        contours, _ = cv2.findContours((gt == value).astype(np.uint8), cv2.RETR_LIST,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (0, 255, 0), max(1, img.shape[0] // 400))
    if out.shape[0] > max_height:
        f = max_height / out.shape[0]
        out = cv2.resize(out, (int(out.shape[1] * f), max_height), interpolation=cv2.INTER_AREA)
    return out


def examples(df: pd.DataFrame, eval_root: Path, images: Path, masks: Path, k: int
             ) -> list[tuple[str, str, str, bytes]]:
    """(model, kind, caption, PNG) of the best and worst ``k`` images per model by mean IoU."""
    out = []
    for model, g in df.groupby("model", sort=False):
        g = g.sort_values("mean_iou", kind="stable")
        picks = [("best", r) for _, r in g.tail(k)[::-1].iterrows()] + \
                [("worst", r) for _, r in g.head(k).iterrows()]
        for kind, r in picks:
            pred_path = eval_dir(model, r["fold"], eval_root) / "predictions" / r["file_name"]
            img = cv2.imread(str(images / r["file_name"]), cv2.IMREAD_UNCHANGED)
            gt = cv2.imread(str(masks / r["file_name"]), cv2.IMREAD_UNCHANGED)
            if img is None or gt is None:
                continue
            pred = cv2.imread(str(pred_path), cv2.IMREAD_UNCHANGED)
            if pred is None:
                pred = np.zeros_like(gt)
            ok, png = cv2.imencode(".png", overlay(img, gt, pred))
            caption = (f"{_name(model)}, {kind}: fold {r['fold']}, mIoU {_pct(r['mean_iou'])} %, "
                       f"recognized {r['recognized']}, composite {r['composite']}"
                       + (f", missed {r['missed']}" if r["missed"] else "")
                       + (f", lost overlaps {r['lost_overlaps']}" if r["lost_overlaps"] else ""))
            out.append((model, kind, caption, png.tobytes()))
    return out


# --------------------------------------------------------------------------------------------
# the report


def _cell(v, percent: bool) -> str:
    """One table cell as text: floats as percentages or 4 significant digits, NaN as n/a."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        return "n/a" if np.isnan(v) else (f"{100 * v:.2f}" if percent else f"{v:.4g}")
    return str(v)


def _md(df: pd.DataFrame, percent: bool = False) -> str:
    cols = [str(c) for c in df.columns]
    show_index = not isinstance(df.index, pd.RangeIndex)
    lines = ["| " + " | ".join(([""] if show_index else []) + cols) + " |",
             "|" + "---|" * (len(cols) + show_index)]
    for idx, row in df.iterrows():
        cells = ([str(idx)] if show_index else []) + [_cell(v, percent) for v in row]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def build_report(eval_root: str | Path, output: str | Path, *, images: str | Path,
                 masks: str | Path, cfg: ReportConfig = ReportConfig(),
                 models: list[str] | None = None) -> dict:
    """Write every report output (module docstring); return ``metrics.json``'s content."""
    eval_root, output = Path(eval_root), Path(output)
    df, summaries = load_evaluations(eval_root, models)
    prepare_output(output)
    values = df.assign(recognition_rate=df["recognized"].astype(float),
                       composite_recognition_rate=df["composite"].astype(float))
    all_metrics = [*METRICS, *RATES]
    t1 = table1(df)
    t2 = stats.kruskal(values, all_metrics, cfg.alpha)
    post = {m: stats.pairwise(values, m, cfg.alpha) for m in all_metrics}
    shapiro = stats.shapiro(values, list(METRICS), cfg.alpha)
    tukeys = {m: stats.tukey(values, m, cfg.alpha) for m in METRICS}
    pooled = pd.DataFrame({f"{s['model']} fold {s['fold']}": {
        k: s["pooled"].get(k) for k in ("pixel_accuracy", "mean_accuracy", "mean_iou",
                                        "mean_dice", "frequency_weighted_iou")}
        for s in summaries}).T
    levels = pd.DataFrame({f"{s['model']} fold {s['fold']}": s["level_recognition"]
                           for s in summaries}).T
    sub = subgroups(df)
    notes = {"sample": sample_note(t1, cfg), "finding": overlap_finding(df, sub, cfg.alpha)}
    clinical = load_measures(eval_root, df)

    tables = {
        "table1": (table1_display(t1), False, "Table 1. Pixel metrics (mean and SD over the "
                   "test images of all folds) and recognition rates, %"),
        "subgroups": (subgroups_display(sub), False, "Subgroups: composite recognition on "
                      "the test images with / without overlapping vertebrae and with / without "
                      "implants, % (images composite-recognized / images)"),
        "table2_kruskal_wallis": (t2, False, "Table 2. Kruskal-Wallis test per metric "
                                  "(epsilon-squared effect size)"),
        "table3_recognition_rate": (post["recognition_rate"], False, "Table 3. Recognition rate: "
                                    "pairwise t-tests, Holm-Bonferroni corrected; Dunn's test "
                                    "(Holm) and Cliff's delta alongside"),
        "table4_composite_recognition_rate": (post["composite_recognition_rate"], False,
                                              "Table 4. Composite recognition rate: pairwise "
                                              "tests as Table 3"),
        **{f"posthoc_{m}": (post[m], False, f"Pairwise tests: {LABELS[m]}") for m in METRICS},
        "shapiro_wilk": (shapiro, False, "Shapiro-Wilk test of normality per model and metric"),
        **{f"tukey_{m}": (t, False, f"Tukey HSD: {LABELS[m]}") for m, t in tukeys.items()
           if t is not None},
        "pooled_metrics": (pooled, True, "Pooled (dataset-level, summed confusion matrix) "
                           "metrics per model and fold, % (labelled as such: not the paper's "
                           "per-image means)"),
        "level_recognition": (levels, True, "Recognition per vertebra level, % of test images"),
    }
    if clinical:   # right after the recognition subgroups: what a surgeon reads first
        first = {k: tables.pop(k) for k in ("table1", "subgroups")}
        tables = {**first, "measures": (
            measures_table(clinical), False, "Clinical measures: each model's against the "
            "ground truth's (Bland-Altman; measurable: every measure the ground truth gives, "
            "the model gives too)"), **tables}
    for name, (table, percent, _) in tables.items():
        write_text(output / "tables" / f"{name}.csv", table.to_csv(index=name in (
            "table1", "subgroups", "pooled_metrics", "level_recognition", "measures")))
        write_text(output / "tables" / f"{name}.md", _md(table, percent))
    write_text(output / "tables" / "table1_values.csv", t1.to_csv())
    write_text(output / "tables" / "subgroups_values.csv", sub.to_csv(index=False))
    write_text(output / "tables" / "notes.md",
               "\n\n".join(v for v in notes.values() if v) + "\n")

    dens = densities(df)
    for m, d in dens.items():
        write_text(output / "plots" / f"density_{m}.csv", d.to_csv(index=False, float_format="%.6g"))
    write_text(output / "plots" / "per_image.csv", df.to_csv(index=False, float_format="%.6f"))
    figs = {"density": density_figure(dens), "boxplots": box_figure(df)}
    ba = bland_altman_figure(clinical)
    if ba is not None:
        figs["bland_altman_lordosis"] = ba
    for name, data in figs.items():
        write_bytes(output / "figures" / f"{name}.png", data)
    ex = examples(df, eval_root, Path(images), Path(masks), cfg.examples)
    for model, kind, _, data in ex:
        write_bytes(output / "figures" / "overlays" / f"{model}_{kind}.png", data)

    metrics = {model: {**{m: float(r[f"{m}_mean"]) for m in METRICS},
                       **{k: float(r[k]) for k in RATES}} for model, r in t1.iterrows()}
    for _, r in sub[sub["subgroup"] == "overlaps"].iterrows():
        if r["images"]:
            metrics[r["model"]]["composite_recognition_rate_overlaps"] = \
                float(r["composite_recognition_rate"])
    from train.measures import summarize
    for model, (pred, true) in clinical.items():
        s = summarize(pred, true)
        metrics[model]["lordosis_mae_deg"] = s["groups"]["lordosis_deg"]["mae"]
        metrics[model]["measurable_rate"] = s["measurable_rate"]
    write_json(output / "metrics.json", metrics)
    write_text(output / "report.html", _html(tables, figs, ex, df, cfg, notes))
    return metrics


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _html(tables: dict, figs: dict, ex: list, df: pd.DataFrame, cfg: ReportConfig,
          notes: dict[str, str | None]) -> str:
    def table_html(table: pd.DataFrame, percent: bool) -> str:
        show_index = not isinstance(table.index, pd.RangeIndex)
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in
                       ([""] if show_index else []) + list(table.columns))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v, percent))}</td>" for v in
                                        (([idx] if show_index else []) + list(row))) + "</tr>"
                       for idx, row in table.iterrows())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    runs = df.groupby("model", sort=False)["fold"].unique()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>spinepipe report</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
        "th{background:#f3f3f3}figure{display:inline-block;margin:6px;vertical-align:top}"
        "figcaption{font-size:12px;max-width:300px}"
        ".note{background:#fff8e0;border-left:4px solid #e0a800;padding:6px 10px}</style></head><body>",
        "<h1>Lumbar spine segmentation: model comparison</h1>",
        "<p>Models and folds: " + ", ".join(
            f"{html.escape(_name(m))} ({', '.join(str(int(f)) for f in sorted(fs))})"
            for m, fs in runs.items()) +
        ". Per-image metrics on the fixed test set, as in the study (Konya et al. 2021, "
        "with Long et al.'s definitions; background counts as a class); recognition rates "
        f"judged automatically; significance level {cfg.alpha}.</p>",
    ]
    if notes.get("sample"):
        parts.append(f"<p class='note'><b>Small test set.</b> {html.escape(notes['sample'])}</p>")
    for name, (table, percent, caption) in tables.items():
        parts.append(f"<h2>{html.escape(caption)}</h2>{table_html(table, percent)}")
        if name == "subgroups" and notes.get("finding"):
            parts.append(f"<p class='note'>{html.escape(notes['finding'])}</p>")
        if name == "measures" and "bland_altman_lordosis" in figs:
            parts.append(f"<img src='{_uri(figs['bland_altman_lordosis'])}' width='1000'>")
        if name == "table2_kruskal_wallis":
            parts.append(f"<h2>Figure 4. Density of the per-image metrics</h2>"
                         f"<img src='{_uri(figs['density'])}' width='900'>"
                         f"<h2>Box plots per model</h2><img src='{_uri(figs['boxplots'])}' "
                         "width='900'>")
    parts.append("<h2>Examples (best and worst image per model by mean IoU; ground truth "
                 "outlined in green, prediction filled: lumbar red, sacrum blue)</h2>")
    for _, _, caption, data in ex:
        parts.append(f"<figure><img src='{_uri(data)}' height='420'><figcaption>"
                     f"{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
