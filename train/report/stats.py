"""The study's statistics between models, on per-image values (one value per test image and
fold; recognition rates as 0 / 1 per image), with SciPy, statsmodels and scikit-posthocs.

- :func:`describe` (Table 1): mean and standard deviation (``ddof=1``) per model.
- :func:`shapiro` : Shapiro-Wilk per model and metric (normality; ``n >= 3``).
- :func:`kruskal` (Table 2): Kruskal-Wallis H over the models, with the effect size
  epsilon-squared = H / (n - 1).
- :func:`pairwise` (Tables 3-4): every pair of models, as the paper reports them (statsmodels'
  ``MultiComparison.allpairtest`` layout: ``stat``, ``pval``, ``pval_corr``, ``reject``):
  Student's t (``scipy.stats.ttest_ind``), Holm-Bonferroni corrected with statsmodels'
  ``multipletests``; next to it Dunn's non-parametric post-hoc test (scikit-posthocs,
  Holm-corrected) and Cliff's delta (from Mann-Whitney U) as the effect size.
- :func:`tukey`: Tukey's HSD (statsmodels ``pairwise_tukeyhsd``), computed where it applies:
  only for metrics whose values pass Shapiro-Wilk in every model.

Degenerate data (every value identical, as a perfect recognition rate gives) has no test
statistic: results are NaN, p-values 1.0, and the ``note`` column says why. Nothing is dropped.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import scikit_posthocs as sp
from scipy import stats as st
from statsmodels.stats.multicomp import pairwise_tukeyhsd
from statsmodels.stats.multitest import multipletests


def _groups(df: pd.DataFrame, metric: str, by: str) -> dict[str, np.ndarray]:
    return {str(k): g[metric].to_numpy(dtype=np.float64) for k, g in df.groupby(by, sort=False)}


def describe(df: pd.DataFrame, metrics: list[str], by: str = "model") -> pd.DataFrame:
    """Mean and SD of each metric per model (rows: models in order of appearance)."""
    out = {}
    for m in metrics:
        g = df.groupby(by, sort=False)[m]
        out[(m, "mean")] = g.mean()
        out[(m, "sd")] = g.std(ddof=1)
    res = pd.DataFrame(out)
    res.insert(0, ("images", "n"), df.groupby(by, sort=False).size())
    return res


def shapiro(df: pd.DataFrame, metrics: list[str], alpha: float, by: str = "model") -> pd.DataFrame:
    rows = []
    for m in metrics:
        for name, x in _groups(df, m, by).items():
            note = ""
            if len(x) < 3:
                w, p, note = np.nan, np.nan, "fewer than 3 values"
            elif np.ptp(x) == 0:
                w, p, note = np.nan, np.nan, "all values identical"
            else:
                w, p = st.shapiro(x)
            rows.append({"metric": m, "model": name, "n": len(x), "W": w, "p": p,
                         "normal": bool(p > alpha) if not np.isnan(p) else False, "note": note})
    return pd.DataFrame(rows)


def kruskal(df: pd.DataFrame, metrics: list[str], alpha: float, by: str = "model") -> pd.DataFrame:
    rows = []
    for m in metrics:
        groups = list(_groups(df, m, by).values())
        n = sum(len(x) for x in groups)
        note = ""
        if len(groups) < 2:
            h, p, note = np.nan, 1.0, "fewer than two models"
        elif np.ptp(np.concatenate(groups)) == 0:
            h, p, note = np.nan, 1.0, "all values identical"
        else:
            h, p = st.kruskal(*groups)
        rows.append({"metric": m, "H": h, "p": p, "reject": bool(p < alpha),
                     "epsilon_squared": h / (n - 1) if n > 1 and not np.isnan(h) else np.nan,
                     "note": note})
    return pd.DataFrame(rows)


def cliffs_delta(a: np.ndarray, b: np.ndarray) -> float:
    """P(a > b) - P(a < b), from Mann-Whitney U: 2 U / (n_a n_b) - 1."""
    if not len(a) or not len(b):
        return np.nan
    u = st.mannwhitneyu(a, b, alternative="two-sided").statistic
    return float(2 * u / (len(a) * len(b)) - 1)


def pairwise(df: pd.DataFrame, metric: str, alpha: float, by: str = "model") -> pd.DataFrame:
    """Tables 3-4: every pair of models (module docstring)."""
    groups = _groups(df, metric, by)
    names = list(groups)
    rows = []
    for a, b in itertools.combinations(names, 2):
        x, y = groups[a], groups[b]
        note = ""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t, p = st.ttest_ind(x, y)
        if np.isnan(p):
            p, note = 1.0, "no variance in either model"
        rows.append({"model_1": a, "model_2": b, "stat": t, "pval": p,
                     "cliffs_delta": cliffs_delta(x, y), "note": note})
    res = pd.DataFrame(rows, columns=["model_1", "model_2", "stat", "pval", "cliffs_delta", "note"])
    if res.empty:
        return res
    reject, corr, _, _ = multipletests(res["pval"].to_numpy(), alpha=alpha, method="holm")
    res.insert(4, "pval_corr", corr)
    res.insert(5, "reject", reject)
    data = np.concatenate(list(groups.values()))
    if np.ptp(data) > 0:
        dunn = sp.posthoc_dunn(df[[by, metric]], val_col=metric, group_col=by, p_adjust="holm")
        dunn.index, dunn.columns = dunn.index.astype(str), dunn.columns.astype(str)
        res.insert(6, "dunn_pval_corr", [float(dunn.loc[a, b]) for a, b in
                                         zip(res["model_1"], res["model_2"])])
    else:
        res.insert(6, "dunn_pval_corr", 1.0)
    return res


def tukey(df: pd.DataFrame, metric: str, alpha: float, by: str = "model") -> pd.DataFrame | None:
    """Tukey's HSD table, or None when normality fails in some model (module docstring) or
    there are fewer than two models to compare."""
    if df[by].nunique() < 2:
        return None
    sh = shapiro(df, [metric], alpha, by)
    if sh.empty or not sh["normal"].all():
        return None
    res = pairwise_tukeyhsd(df[metric].to_numpy(dtype=np.float64), df[by].astype(str).to_numpy(),
                            alpha=alpha)
    table = res.summary().data
    return pd.DataFrame(table[1:], columns=table[0])
