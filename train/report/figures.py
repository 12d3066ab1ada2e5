"""The report's figures (:mod:`train.report.build`), each returned as PNG bytes: the density of the
four pixel metrics per model (the paper's Figure 4), box plots, a Bland-Altman panel of the
lordosis per model, and the best / worst example overlays (Figure 5: the prediction filled,
lumbar red, sacrum blue; the ground truth outlined in green).

Images are read as written: the PNGs export made, the masks convert made (class values 1
lumbar, 2 sacrum) and each evaluation's ``predictions/<image>`` label maps; an overlay is
scaled down to at most ``max_height`` rows. matplotlib is imported (Agg) only when a figure is
drawn.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from train.evaluation.metrics import METRICS
from train.models import display_name, eval_dir
from train.report.tables import LABELS, pct

#: class value -> overlay colour (BGR): lumbar red, sacrum blue
COLORS = {1: (60, 20, 220), 2: (255, 128, 0)}


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


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
        ax.set_title(f"{display_name(model)} (n={len(diff)})", fontsize=10)
        ax.set_xlabel("mean of model and truth (deg)")
    axes[0][0].set_ylabel("model - truth (deg)")
    fig.suptitle("Lordosis L1-S1: Bland-Altman (bias solid, 95 % limits dashed)", fontsize=11)
    fig.tight_layout()
    data = png_bytes(fig)
    plt.close(fig)
    return data


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
            ax.plot(100 * d["value"], d[model] / 100, label=display_name(model))
        ax.set_title(LABELS[m])
        ax.set_xlabel("%")
        ax.set_ylabel("density")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    data = png_bytes(fig)
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
                   tick_labels=[display_name(k) for k in models])
        ax.set_title(f"{LABELS[m]} (%)")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    data = png_bytes(fig)
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
            caption = (f"{display_name(model)}, {kind}: fold {r['fold']}, mIoU {pct(r['mean_iou'])} %, "
                       f"recognized {r['recognized']}, composite {r['composite']}"
                       + (f", missed {r['missed']}" if r["missed"] else "")
                       + (f", lost overlaps {r['lost_overlaps']}" if r["lost_overlaps"] else ""))
            out.append((model, kind, caption, png.tobytes()))
    return out
