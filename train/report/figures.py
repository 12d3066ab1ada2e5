"""The report's figures (:mod:`train.report.build`), each returned as PNG bytes: the density of the
four pixel metrics per model (the paper's Figure 4), box plots, a Bland-Altman panel of the
lordosis per model, the best / worst example overlays (Figure 5: the prediction filled,
lumbar red, sacrum blue; the ground truth outlined in green), and per model the endplates of the
three images whose lordosis it measures worst (:func:`endplate_examples`: the ground truth's
green, the model's outline's (the prior) red, refined on the image cyan, withheld as
implausible magenta; from the evaluation's
``endplates.json``).

Images are read as written: the PNGs export made, the masks convert made (class values 1
lumbar, 2 sacrum) and each evaluation's ``predictions/<image>`` label maps; an overlay is
scaled down to at most ``max_height`` rows. matplotlib is imported (Agg) only when a figure is
drawn.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from converters.core.errors import SpinepipeError
from converters.spine.measures import read_measures
from train.evaluation.metrics import METRICS
from train.models import display_name, eval_dir
from train.report.tables import LABELS, pct

#: class value -> overlay colour (BGR): lumbar red, sacrum blue
COLORS = {1: (60, 20, 220), 2: (255, 128, 0)}


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def bland_altman_figure(measures: dict[str, tuple[list[dict], list[dict]]], *,
                        sides: tuple[str, str] = ("model", "truth"),
                        title: str = "Lordosis L1-S1: Bland-Altman") -> bytes | None:
    """Lordosis: one Bland-Altman panel per model (difference against mean of prediction
    and truth, with the bias and the 95 % limits of agreement); ``sides`` names the two
    (the readers' figure: the second reader of a pair against the first)."""
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
        ax.scatter(mean, diff, s=12)
        lines = [(bias, "-")]
        if len(diff) > 1:   # one difference has no spread: no limits drawn
            sd = float(diff.std(ddof=1))
            lines += [(bias - 1.96 * sd, "--"), (bias + 1.96 * sd, "--")]
        for y, style in lines:
            ax.axhline(y, color="grey", linestyle=style, linewidth=1)
        ax.set_title(f"{display_name(model)} (n={len(diff)})", fontsize=10)
        ax.set_xlabel(f"mean of {sides[0]} and {sides[1]} (deg)")
    axes[0][0].set_ylabel(f"{sides[0]} - {sides[1]} (deg)")
    fig.suptitle(f"{title} (bias solid, 95 % limits dashed)", fontsize=11)
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


def contact_sheet(names: list[str], images: Path, masks: Path, height: int = 360
                  ) -> bytes | None:
    """The test images, each beside its ground truth's outlines (green), in one row, every
    panel scaled to ``height``: what the data looks like. An image or mask that cannot be read
    (or a mask that is not one 2-D label image of the image's size) is left out; None when
    none is left."""
    panels = []
    for name in names:
        img = cv2.imread(str(images / name), cv2.IMREAD_GRAYSCALE)
        gt = cv2.imread(str(masks / name), cv2.IMREAD_UNCHANGED)
        if img is None or gt is None or gt.ndim != 2 or img.shape != gt.shape:
            continue
        size = (max(1, round(img.shape[1] * height / img.shape[0])), height)
        for mask in (np.zeros_like(gt), gt):
            shown = overlay(img, mask, np.zeros_like(gt), max_height=img.shape[0])
            panels += [cv2.resize(shown, size, interpolation=cv2.INTER_AREA),
                       np.full((height, 2 if mask is not gt else 12, 3), 255, np.uint8)]
    if not panels:
        return None
    ok, png = cv2.imencode(".png", np.hstack(panels[:-1]))
    return png.tobytes() if ok else None


def empty_sheet(why: str) -> bytes:
    """The contact sheet's stand-in when there is nothing to show: one line saying why."""
    img = np.full((60, 640, 3), 255, np.uint8)
    cv2.putText(img, why[:80], (10, 36), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (60, 60, 60), 1,
                cv2.LINE_AA)
    return cv2.imencode(".png", img)[1].tobytes()


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


#: endplate colours (BGR): the ground truth's, the prior from the model's outline, refined
ENDPLATE_COLORS = {"truth": (0, 200, 0), "prior": (40, 40, 230), "refined": (255, 220, 0),
                   "withheld": (230, 0, 230)}


def _number(value) -> float | None:
    """A measures.csv cell as a number (None: empty or not a finite number)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _lordosis_error(pred: dict, truth: dict) -> float:
    """How badly a model measured an image's lordosis: inf where the ground truth gives it
    and the model does not (withheld), else the absolute error; -1 where the truth has none."""
    t, p = _number(truth.get("lordosis_deg")), _number(pred.get("lordosis_deg"))
    if t is None:
        return -1.0
    return float("inf") if p is None else abs(p - t)


def _segment(value) -> np.ndarray | None:
    """``[[x, y], [x, y]]`` of finite numbers as a (2, 2) array (None: anything else)."""
    try:
        seg = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return seg if seg.shape == (2, 2) and np.isfinite(seg).all() else None


def _endplate_lines(record) -> list[tuple[str, np.ndarray]]:
    """(kind, segment) of one image's endplates.json entry: the truth's, the prior and the
    refined line of the prediction's (``withheld`` where its level was withheld as
    implausible); whatever is malformed is left out."""
    lines = []
    if not isinstance(record, dict):
        return lines
    for who in ("truth", "prediction"):
        levels = record.get(who)
        for sides in (levels.values() if isinstance(levels, dict) else ()):
            for entry in (sides.values() if isinstance(sides, dict) else ()):
                if not isinstance(entry, dict):
                    continue
                if who == "truth":
                    pairs = (("endplate", "truth"),)
                elif "prior" in entry:
                    pairs = (("prior", "prior"), ("endplate", "refined"))
                else:                      # measured on the model's outline, not refined
                    pairs = (("endplate", "prior"),)
                if who == "prediction" and "withheld" in entry:   # found, then implausible
                    pairs = tuple((k, "withheld" if k == "endplate" else kind)
                                  for k, kind in pairs)
                for key, kind in pairs:
                    seg = _segment(entry.get(key))
                    if seg is not None:
                        lines.append((kind, seg))
    return lines


def _endplate_panel(image: np.ndarray, record, height: int = 420) -> np.ndarray:
    """The image cropped to its endplates (at least a third of it each way), each drawn:
    the truth's, the prior, refined."""
    if image.ndim == 2:
        img = cv2.cvtColor(cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8),
                           cv2.COLOR_GRAY2BGR)
    else:
        img = cv2.normalize(image[..., :3], None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    h, w = img.shape[:2]
    lines = _endplate_lines(record)
    x0, y0, x1, y1 = 0, 0, w, h
    if lines:
        pts = np.concatenate([p for _, p in lines])
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        centre, half = (lo + hi) / 2, np.maximum((hi - lo) / 2 * 1.15, [w / 6, h / 6])
        x0, y0 = np.clip(np.floor(centre - half), 0, [w, h]).astype(int)
        x1, y1 = np.clip(np.ceil(centre + half), 0, [w, h]).astype(int)
        if x1 - x0 < 2 or y1 - y0 < 2:         # all of it off the image
            x0, y0, x1, y1 = 0, 0, w, h
    f = height / (y1 - y0)
    out = cv2.resize(img[y0:y1, x0:x1], (max(min(int((x1 - x0) * f), 3 * height), 1), height),
                     interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)
    fx = out.shape[1] / (x1 - x0)
    for kind, p in lines:
        a, b = ((p - [x0, y0]) * [fx, f]).round().astype(int)
        cv2.line(out, tuple(map(int, a)), tuple(map(int, b)), ENDPLATE_COLORS[kind],
                 1 if kind == "truth" else 2, cv2.LINE_AA)
    return out


def endplate_examples(df: pd.DataFrame, eval_root: Path, images: Path, k: int = 3
                      ) -> list[tuple[str, int, str, bytes]]:
    """(model, fold, caption, PNG) per evaluation: the ``k`` test images whose lordosis the
    model measured worst (withheld first, then by absolute error), side by side, their
    endplates drawn (module docstring). Evaluations without a readable ``endplates.json``
    are left out."""
    out = []
    for (model, fold), _ in df.groupby(["model", "fold"], sort=False):
        folder = eval_dir(model, int(fold), eval_root)
        try:
            plates = json.loads((folder / "endplates.json").read_text())
            pred = read_measures(folder / "measures.csv")
            truth = read_measures(folder / "measures_truth.csv")
        except (OSError, ValueError, SpinepipeError):
            continue
        if not isinstance(plates, dict):
            continue
        by_name = {r["file_name"]: r for r in truth}
        rows = sorted(((_lordosis_error(p, by_name[p["file_name"]]), p, by_name[p["file_name"]])
                       for p in pred if p["file_name"] in by_name),
                      key=lambda r: -r[0])
        panels, notes = [], []
        for err, p, t in rows:
            if err < 0 or len(panels) == k:
                break
            image = cv2.imread(str(images / p["file_name"]), cv2.IMREAD_UNCHANGED)
            if image is None or p["file_name"] not in plates:
                continue
            panels.append(_endplate_panel(image, plates[p["file_name"]]))
            lordosis = _number(p.get("lordosis_deg"))
            said = (f"{lordosis:.1f} deg" if lordosis is not None else
                    f"withheld ({str(p.get('not_measurable', ''))[:90]})")
            notes.append(f"{p['file_name'][:24]}: truth {_number(t['lordosis_deg']):.1f} deg, "
                         f"model {said}")
        if not panels:
            continue
        gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
        strip = np.hstack([x for panel in panels for x in (panel, gap)][:-1])
        ok, png = cv2.imencode(".png", strip)
        caption = (f"{display_name(model)}, fold {fold}: the {len(panels)} images whose lordosis "
                   "it measured worst; " + "; ".join(notes))
        out.append((model, int(fold), caption, png.tobytes()))
    return out
