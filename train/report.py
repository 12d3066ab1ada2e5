"""The study's report from the evaluations of every model x fold (:mod:`train.evaluate`).

Input: ``<eval>/<model>/fold<k>/per_image.csv`` and ``summary.json``. All statistics are over
per-image values pooled across folds (the paper's Tables 1-4; :mod:`train.stats`). Outputs
under the report folder:

- ``report.html``: one self-contained page (figures embedded as PNG data URIs);
- ``tables/*.md`` and ``tables/*.csv``: Table 1 (mean and SD per model, recognition rates),
  Table 2 (Kruskal-Wallis per metric), Table 3 / Table 4 (pairwise post-hoc tests of the
  recognition / composite recognition rate, Holm-corrected) and the same for each pixel
  metric, Shapiro-Wilk, Tukey HSD where it applies, pooled (dataset-level) metrics;
- ``figures/``: density plots of the four metrics (the paper's Figure 4), box plots per model,
  best / worst example overlays per model (Figure 5: ground truth outlined in green, the
  prediction filled, lumbar red, sacrum blue);
- ``metrics.json``: per model, the means of the four pixel metrics (key names as
  ``spinepipe metrics`` prints them) plus ``recognition_rate`` and
  ``composite_recognition_rate``, for ``dvc metrics show / diff``;
- ``plots/per_image.csv`` (one row per model, fold and image) and ``plots/density_<metric>.csv``
  (x ``value``, one density column per model) for ``dvc plots``.

Values are fractions in the files; the HTML and Markdown tables print percentages as the paper
does.
"""
from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from converters.errors import InvalidTableError, MissingInputError
from converters.io import write_bytes, write_json, write_text
from train import stats
from train.metrics import METRICS
from train.models import eval_dir

RATES = ("recognition_rate", "composite_recognition_rate")
PER_IMAGE_RATE = {"recognition_rate": "recognized", "composite_recognition_rate": "composite"}
LABELS = {"pixel_accuracy": "Pixel accuracy", "mean_accuracy": "Mean accuracy",
          "mean_iou": "Mean IoU", "frequency_weighted_iou": "Frequency weighted IoU",
          "recognition_rate": "Recognition rate",
          "composite_recognition_rate": "Composite recognition rate"}
MODEL_NAMES = {"mask_rcnn": "Mask R-CNN", "yolact": "YOLACT", "unet": "U-Net",
               "pspnet": "PSPNet", "deeplabv3": "DeepLabv3"}
COLORS = {1: (60, 20, 220), 2: (255, 128, 0)}   # BGR: lumbar red, sacrum blue


@dataclass(frozen=True)
class ReportConfig:
    """params.yaml section ``report``."""

    alpha: float = 0.05       # significance level of every test
    examples: int = 1         # best and worst images per model shown as overlays


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
        summaries.append(json.loads((csv_path.parent / "summary.json").read_text()))
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
        row["recognition_rate"] = float(g["recognized"].mean())
        row["composite_recognition_rate"] = float(g["composite"].mean())
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
        col.update({f"{LABELS[k]} (%)": _pct(r[k]) for k in RATES})
        col["Test images (all folds)"] = str(int(r["images"]))
        out[_name(model)] = col
    return pd.DataFrame(out)


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

    tables = {
        "table1": (table1_display(t1), False, "Table 1. Pixel metrics (mean and SD over the "
                   "test images of all folds) and recognition rates, %"),
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
    for name, (table, percent, _) in tables.items():
        write_text(output / "tables" / f"{name}.csv", table.to_csv(index=name in (
            "table1", "pooled_metrics", "level_recognition")))
        write_text(output / "tables" / f"{name}.md", _md(table, percent))
    write_text(output / "tables" / "table1_values.csv", t1.to_csv())

    dens = densities(df)
    for m, d in dens.items():
        write_text(output / "plots" / f"density_{m}.csv", d.to_csv(index=False, float_format="%.6g"))
    write_text(output / "plots" / "per_image.csv", df.to_csv(index=False, float_format="%.6f"))
    figs = {"density": density_figure(dens), "boxplots": box_figure(df)}
    for name, data in figs.items():
        write_bytes(output / "figures" / f"{name}.png", data)
    ex = examples(df, eval_root, Path(images), Path(masks), cfg.examples)
    for model, kind, _, data in ex:
        write_bytes(output / "figures" / "overlays" / f"{model}_{kind}.png", data)

    metrics = {model: {**{m: float(r[f"{m}_mean"]) for m in METRICS},
                       **{k: float(r[k]) for k in RATES}} for model, r in t1.iterrows()}
    write_json(output / "metrics.json", metrics)
    write_text(output / "report.html", _html(tables, figs, ex, df, cfg))
    return metrics


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _html(tables: dict, figs: dict, ex: list, df: pd.DataFrame, cfg: ReportConfig) -> str:
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
        "figcaption{font-size:12px;max-width:300px}</style></head><body>",
        "<h1>Lumbar spine segmentation: model comparison</h1>",
        "<p>Models and folds: " + ", ".join(
            f"{html.escape(_name(m))} ({', '.join(str(int(f)) for f in sorted(fs))})"
            for m, fs in runs.items()) +
        f". Per-image metrics on the fixed test set, as in the study (Long et al.; background "
        f"counts as a class); recognition rates judged automatically; significance level "
        f"{cfg.alpha}.</p>",
    ]
    for name, (table, percent, caption) in tables.items():
        parts.append(f"<h2>{html.escape(caption)}</h2>{table_html(table, percent)}")
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
