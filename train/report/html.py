"""report.html (:mod:`train.report.build`): one self-contained page, its tables as HTML, its
figures embedded as PNG data URIs (nothing to fetch: the page opens offline and can be mailed as
is). Every text from the data is escaped.
"""
from __future__ import annotations

import base64
import html

import pandas as pd

from train.models import display_name
from train.report.tables import cell

def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
    "th{background:#f3f3f3}figure{display:inline-block;margin:6px;vertical-align:top}"
    "figcaption{font-size:12px;max-width:300px}"
    ".note{background:#fff8e0;border-left:4px solid #e0a800;padding:6px 10px}")
_HEAD = ("<!doctype html><html><head><meta charset='utf-8'><title>spinepipe report</title>"
         f"<style>{_STYLE}</style></head><body>"
         "<h1>Lumbar spine segmentation: model comparison</h1>")


def waiting_page(why: str) -> str:
    """report.html before the first annotation (:mod:`converters.core.waiting`)."""
    return (f"{_HEAD}<p class='note'><b>Waiting for annotations.</b> {html.escape(why)}. "
            "Put the annotators' VIA exports in <code>data/annotations/</code> and run "
            "<code>dvc repro</code>: the models train, and this page compares them.</p>"
            "</body></html>")


def table_html(table: pd.DataFrame, percent: bool) -> str:
    """One table (its index shown unless it is a plain range), cells escaped."""
    show_index = not isinstance(table.index, pd.RangeIndex)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in
                   ([""] if show_index else []) + list(table.columns))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(v, percent))}</td>" for v in
                                    (([idx] if show_index else []) + list(row))) + "</tr>"
                   for idx, row in table.iterrows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _contact_sheet(figs: dict) -> list[str]:
    if "contact_sheet" not in figs:
        return []
    return ["<h2>The test images (the first four by name), each beside its ground truth "
            f"(green)</h2><img src='{_uri(figs['contact_sheet'])}' style='max-width:100%'>"]


def page(tables: dict, figs: dict, ex: list, df: pd.DataFrame, alpha: float,
         notes: dict[str, str | None], study_html: str = "",
         study_files: list[str] | None = None) -> str:
    """report.html: one self-contained page (figures as PNG data URIs); ``study_html``: the
    methods draft rendered (escaped by its renderer), ``study_files``: the model cards and
    the other drafts beside the page, linked."""
    runs = df.groupby("model", sort=False)["fold"].unique()
    parts = [
        _HEAD,
        "<p>Models and folds: " + ", ".join(
            f"{html.escape(display_name(m))} ({', '.join(str(int(f)) for f in sorted(fs))})"
            for m, fs in runs.items()) +
        ". Per-image metrics on the fixed test set, as in the study (Konya et al. 2021, "
        "with Long et al.'s definitions; background counts as a class); recognition rates "
        f"judged automatically; significance level {alpha}.</p>",
    ]
    if notes.get("sample"):
        parts.append(f"<p class='note'><b>Small test set.</b> {html.escape(notes['sample'])}</p>")
    parts += _contact_sheet(figs)
    for name, (table, percent, caption) in tables.items():
        parts.append(f"<h2>{html.escape(caption)}</h2>{table_html(table, percent)}")
        if name == "subgroups" and notes.get("finding"):
            parts.append(f"<p class='note'>{html.escape(notes['finding'])}</p>")
        if name == "measures" and "bland_altman_lordosis" in figs:
            parts.append(f"<img src='{_uri(figs['bland_altman_lordosis'])}' width='1000'>")
        if name == "measures" and figs.get("endplates"):
            parts.append("<h3>Endplates of the images whose lordosis each model measured worst "
                         "(ground truth green, from the model's outline red, refined on the "
                         "image cyan, withheld as implausible magenta)</h3>")
            for _, _, caption, data in figs["endplates"]:
                parts.append(f"<figure><img src='{_uri(data)}' height='420'><figcaption>"
                             f"{html.escape(caption)}</figcaption></figure>")
        if name == "readers_pairs" and "bland_altman_readers" in figs:
            parts.append(f"<img src='{_uri(figs['bland_altman_readers'])}' width='1000'>")
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
    if study_html:
        links = ["study/methods.md", "study/dataset_card.md", "study/claim_checklist.md",
                 *(study_files or [])]
        parts.append("<h2>Study write-up (drafts from the pipeline's records)</h2><p>" +
                     " &middot; ".join(f"<a href='{html.escape(f)}'>{html.escape(f)}</a>"
                                       for f in links) + "</p>")
        parts.append(f"<div class='study'>{study_html}</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
