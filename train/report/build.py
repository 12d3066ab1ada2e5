"""The study's report from the evaluations of every model x fold
(:mod:`train.evaluation.evaluate`): :func:`build_report` writes everything below; the tables are
:mod:`train.report.tables`, the figures :mod:`train.report.figures`, the page
:mod:`train.report.html`.

Input: ``<eval>/<model>/fold<k>/per_image.csv`` and ``summary.json``. All statistics are over
per-image values pooled across folds (the paper's Tables 1-4; :mod:`train.report.stats`). Outputs
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
  model's agreement with the ground truth's measures, :mod:`train.evaluation.agreement`), a
  Bland-Altman plot of the lordosis (``figures/bland_altman_lordosis.png``) and per model the
  endplates of the three images whose lordosis it measured worst
  (``figures/endplates/<model>_fold<k>_worst.png``: the ground truth's, the model's outline's
  and the refined ones);
- with ``spinepipe agreement``'s folder (:mod:`train.report.humans`): humans vs models
  (``tables/humans_vs_models.*``: each model against the ground truth next to reader against
  reader on the test images two or more readers read, "yes" where the model is within the
  readers' variability), the readers' tables (``readers_pairs``, ``readers_icc``,
  ``readers_vs_consensus``) and a Bland-Altman plot of the readers' lordosis
  (``figures/bland_altman_readers.png``);
- ``metrics.json``: per model, the means of the four pixel metrics (key names as
  ``spinepipe metrics`` prints them) plus ``recognition_rate``,
  ``composite_recognition_rate`` and ``composite_recognition_rate_overlaps`` (on the images
  with overlaps), ``lordosis_mae_deg``, ``lordosis_measurable_rate``, ``segmental_mae_deg``,
  ``disc_height_mae_mm`` and ``measurable_rate`` (the share of test images where the model
  gives every measure the ground truth gives), for ``dvc metrics show / diff``;
- ``plots/per_image.csv`` (one row per model, fold and image) and ``plots/density_<metric>.csv``
  (x ``value``, one density column per model) for ``dvc plots``;
- ``study/``: the write-up drafts from the pipeline's records (:mod:`train.report.study`):
  ``methods.md`` (also rendered into the page), ``dataset_card.md``, ``model_cards/<model>.md``,
  ``claim_checklist.md`` (:mod:`train.report.claim`).

Values are fractions in the files; the HTML and Markdown tables print percentages as the paper
does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from converters.core import waiting
from converters.core.files import prepare_output, write_bytes, write_json, write_text
from train.report import stats
from train.evaluation.agreement import summarize
from train.evaluation.metrics import METRICS
from train.report.figures import (bland_altman_figure, box_figure, contact_sheet, densities,
                                  density_figure, empty_sheet, endplate_examples, examples)
from train.report.html import page, waiting_page
from train.report.humans import (agreement_tables, humans_vs_models, load_agreement, model_ious,
                                 readers_lordosis)
from train.report.study import Sources, render_html, write_study
from train.models import display_names
from train.report.tables import (LABELS, RATES, load_evaluations, load_measures, markdown,
                                 measures_table, overlap_finding, sample_note, subgroups,
                                 study_comparison, subgroups_display, table1,
                                 table1_display)


@dataclass(frozen=True)
class ReportConfig:
    """params.yaml section ``report``."""

    alpha: float = field(default=0.05, metadata={"min": 0.0, "max": 0.5})
    examples: int = field(default=1, metadata={"min": 0})
    #: fewer test images per model than this: the report says its statistics are indicative
    min_images: int = field(default=30, metadata={"min": 1})


def waiting_reason(eval_root: str | Path, models: list[str] | None = None) -> str | None:
    """The reason the evaluations wait (:mod:`converters.core.waiting`) when no evaluation
    under ``eval_root`` scored anything and at least one says it waits; else ``None``."""
    eval_root = Path(eval_root)
    if any(eval_root.glob("*/fold*/per_image.csv")):
        return None
    reasons = [waiting.reason_in_file(p) for p in sorted(eval_root.glob("*/fold*/summary.json"))
               if not models or p.parent.parent.name in models]
    return next(filter(None, reasons), None)


def write_waiting_report(output: str | Path, why: str) -> None:
    """The report before the first annotation: a page that says so, ``metrics.json`` carrying
    the reason, and the report's folders, empty (DVC's outputs all exist)."""
    output = Path(output)
    prepare_output(output)
    for folder in ("tables", "figures", "plots", "study"):
        prepare_output(output / folder)
    write_json(output / "metrics.json", {waiting.KEY: why})
    write_bytes(output / "contact_sheet.png", empty_sheet("No test images yet: " + why))
    write_text(output / "report.html", waiting_page(why))


def build_report(eval_root: str | Path, output: str | Path, *, images: str | Path,
                 masks: str | Path, cfg: ReportConfig = ReportConfig(),
                 models: list[str] | None = None, sources: Sources | None = None,
                 agreement_dir: str | Path | None = None) -> dict:
    """Write every report output (module docstring); return ``metrics.json``'s content."""
    eval_root, output = Path(eval_root), Path(output)
    df, summaries = load_evaluations(eval_root, models)
    display_names(df["model"].unique())   # one column per model: two of one name would merge
    prepare_output(output)
    clinical = load_measures(eval_root, df)
    agreement = {model: summarize(pred, true) for model, (pred, true) in clinical.items()}
    t1, sub = table1(df), subgroups(df)
    notes = {"sample": sample_note(t1, cfg.min_images),
             "finding": overlap_finding(df, sub, cfg.alpha)}
    tables = _tables(df, summaries, t1, sub, cfg.alpha)
    if clinical:   # right after the recognition subgroups: what a surgeon reads first
        first = {k: tables.pop(k) for k in ("table1", "study_comparison", "subgroups")
                 if k in tables}
        tables = {**first, "measures": (
            measures_table(clinical, agreement), False, "Clinical measures: each model's "
            "against the ground truth's (Bland-Altman; measurable: every measure the ground "
            "truth gives, the model gives too)"), **tables}
    readers = load_agreement(agreement_dir) if agreement_dir is not None else None
    if readers is not None:   # beside the clinical measures: the humans' own disagreement
        tables = _with_readers(tables, readers, df, clinical, eval_root,
                               (sources or Sources()).splits / "test" / "coco.json")
    _write_tables(output, tables, t1, sub, notes)
    figs, ex = _write_figures(output, df, clinical, eval_root, Path(images), Path(masks),
                              cfg.examples)
    if readers is not None:
        ba = bland_altman_figure(readers_lordosis(readers), sides=("reader b", "reader a"),
                                 title="Readers' lordosis L1-S1, reader a vs reader b: "
                                 "Bland-Altman")
        if ba is not None:
            figs["bland_altman_readers"] = ba
            write_bytes(output / "figures" / "bland_altman_readers.png", ba)
    metrics = _metrics(t1, sub, agreement)
    write_json(output / "metrics.json", metrics)
    models_ = list(dict.fromkeys(df["model"]))
    params = _params(summaries)
    methods = write_study(output / "study", sources or Sources(png=Path(images)),
                          models=models_, folds={m: sorted({int(k) for k in
                                                            df[df["model"] == m]["fold"]})
                                                 for m in models_},
                          table1_md=markdown(tables["table1"][0], False), t1=t1, sub=sub,
                          agreement=agreement, per_image=df, notes=notes, alpha=cfg.alpha,
                          match_iou=params.get("match_iou"), postprocess=params,
                          measures=params.get("measures"))
    # the page has its own heading: the draft's title line is left out there
    write_text(output / "report.html", page(tables, figs, ex, df, cfg.alpha, notes,
                                            study_html=render_html(methods.split("\n", 1)[1]),
                                            study_files=[f"study/model_cards/{m}.md"
                                                         for m in models_]))
    return metrics


def _with_readers(tables: dict, readers: dict, df: pd.DataFrame, clinical: dict,
                  eval_root: Path, test_coco: Path) -> dict:
    """``tables`` with humans vs models and the readers' agreement tables after the measures
    (or after the subgroups when nothing was measured)."""
    test_images = set(df["file_name"])
    runs = [(m, int(f)) for (m, f), _ in df.groupby(["model", "fold"], sort=False)]
    read_twice = {r["image"] for r in readers["pairs"]} & test_images
    ious = model_ious(eval_root, runs, test_coco, read_twice) if read_twice and \
        test_coco.is_file() else {}
    extra = {}
    hvm = humans_vs_models(readers, clinical, ious, test_images)
    if hvm is not None:
        extra["humans_vs_models"] = (hvm, False, "Humans vs models: each model against the "
                                     "ground truth next to reader against reader, on the test "
                                     "images two or more readers read (yes: within the "
                                     "readers' variability)")
    captions = {"readers_pairs": "Readers' agreement per pair (every image two or more read)",
                "readers_icc": "Readers' agreement per measure: ICC(2,1), absolute agreement",
                "readers_vs_consensus": "Each reader against the readers' consensus",
                "readers_vs_truth": "Each reader and the consensus against the known truth "
                                    "(the phantom's), on the images read twice"}
    for name, table in agreement_tables(readers).items():
        extra[name] = (table, False, captions[name])
    after = "measures" if "measures" in tables else "subgroups"
    out = {}
    for name, value in tables.items():
        out[name] = value
        if name == after:
            out.update(extra)
    return out


def _tables(df: pd.DataFrame, summaries: list[dict], t1: pd.DataFrame, sub: pd.DataFrame,
            alpha: float) -> dict[str, tuple[pd.DataFrame, bool, str]]:
    """name -> (table, values are fractions to print as %, caption), in the page's order."""
    values = df.assign(recognition_rate=df["recognized"].astype(float),
                       composite_recognition_rate=df["composite"].astype(float))
    all_metrics = [*METRICS, *RATES]
    post = {m: stats.pairwise(values, m, alpha) for m in all_metrics}
    tukeys = {m: stats.tukey(values, m, alpha) for m in METRICS}
    pooled = pd.DataFrame({f"{s['model']} fold {s['fold']}": {
        k: s["pooled"].get(k) for k in ("pixel_accuracy", "mean_accuracy", "mean_iou",
                                        "mean_dice", "frequency_weighted_iou")}
        for s in summaries}).T
    levels = pd.DataFrame({f"{s['model']} fold {s['fold']}": s["level_recognition"]
                           for s in summaries}).T
    comparison = study_comparison(t1)
    return {
        "table1": (table1_display(t1), False, "Table 1. Pixel metrics (mean and SD over the "
                   "test images of all folds) and recognition rates, %"),
        **({"study_comparison": (comparison, False, "This run beside the study "
                                 "(Konya et al. 2021, Table 1): per model the study's value, "
                                 "this run's and the difference, % and percentage points")}
           if not comparison.empty else {}),
        "subgroups": (subgroups_display(sub), False, "Subgroups: composite recognition on "
                      "the test images with / without overlapping vertebrae and with / without "
                      "implants, % (images composite-recognized / images)"),
        "table2_kruskal_wallis": (stats.kruskal(values, all_metrics, alpha), False,
                                  "Table 2. Kruskal-Wallis test per metric "
                                  "(epsilon-squared effect size)"),
        "table3_recognition_rate": (post["recognition_rate"], False, "Table 3. Recognition rate: "
                                    "pairwise t-tests, Holm-Bonferroni corrected; Dunn's test "
                                    "(Holm) and Cliff's delta alongside"),
        "table4_composite_recognition_rate": (post["composite_recognition_rate"], False,
                                              "Table 4. Composite recognition rate: pairwise "
                                              "tests as Table 3"),
        **{f"posthoc_{m}": (post[m], False, f"Pairwise tests: {LABELS[m]}") for m in METRICS},
        "shapiro_wilk": (stats.shapiro(values, list(METRICS), alpha), False,
                         "Shapiro-Wilk test of normality per model and metric"),
        **{f"tukey_{m}": (t, False, f"Tukey HSD: {LABELS[m]}") for m, t in tukeys.items()
           if t is not None},
        "pooled_metrics": (pooled, True, "Pooled (dataset-level, summed confusion matrix) "
                           "metrics per model and fold, % (labelled as such: not the paper's "
                           "per-image means)"),
        "level_recognition": (levels, True, "Recognition per vertebra level, % of test images"),
    }


#: tables whose index (models, runs) is written into their CSV
_INDEXED = ("table1", "study_comparison", "subgroups", "pooled_metrics", "level_recognition",
            "measures", "humans_vs_models", "readers_pairs", "readers_icc", "readers_vs_consensus",
            "readers_vs_truth")


def _write_tables(output: Path, tables: dict, t1: pd.DataFrame, sub: pd.DataFrame,
                  notes: dict[str, str | None]) -> None:
    for name, (table, percent, _) in tables.items():
        write_text(output / "tables" / f"{name}.csv", table.to_csv(index=name in _INDEXED))
        write_text(output / "tables" / f"{name}.md", markdown(table, percent))
    write_text(output / "tables" / "table1_values.csv", t1.to_csv())
    write_text(output / "tables" / "subgroups_values.csv", sub.to_csv(index=False))
    write_text(output / "tables" / "notes.md",
               "\n\n".join(v for v in notes.values() if v) + "\n")


def _write_figures(output: Path, df: pd.DataFrame, clinical: dict, eval_root: Path,
                   images: Path, masks: Path, k: int) -> tuple[dict[str, bytes], list]:
    """The plots' data for DVC, the figures and the example overlays; returns (figures,
    examples) for the page."""
    dens = densities(df)
    for m, d in dens.items():
        write_text(output / "plots" / f"density_{m}.csv",
                   d.to_csv(index=False, float_format="%.6g"))
    write_text(output / "plots" / "per_image.csv", df.to_csv(index=False, float_format="%.6f"))
    figs = {"density": density_figure(dens), "boxplots": box_figure(df)}
    ba = bland_altman_figure(clinical)
    if ba is not None:
        figs["bland_altman_lordosis"] = ba
    for name, data in figs.items():
        write_bytes(output / "figures" / f"{name}.png", data)
    sheet = contact_sheet(sorted(df["file_name"].astype(str).unique())[:4], images, masks)
    if sheet is not None:
        figs["contact_sheet"] = sheet
    # beside metrics.json, in git (the README shows it); a DVC output: always written
    write_bytes(output / "contact_sheet.png",
                sheet or empty_sheet("No test image or ground-truth mask could be read."))
    ex = examples(df, eval_root, images, masks, k)
    for model, kind, _, data in ex:
        write_bytes(output / "figures" / "overlays" / f"{model}_{kind}.png", data)
    figs["endplates"] = endplate_examples(df, eval_root, images)
    for model, fold, _, data in figs["endplates"]:
        write_bytes(output / "figures" / "endplates" / f"{model}_fold{fold}_worst.png", data)
    return figs, ex


def _metrics(t1: pd.DataFrame, sub: pd.DataFrame, agreement: dict[str, dict]) -> dict:
    """metrics.json: per model, the pixel metrics' means, the recognition rates, the
    composite rate on the images with overlaps, the measures' errors and measurable rates."""
    metrics = {model: {**{m: float(r[f"{m}_mean"]) for m in METRICS},
                       **{k: float(r[k]) for k in RATES}} for model, r in t1.iterrows()}
    for _, r in sub[sub["subgroup"] == "overlaps"].iterrows():
        if r["images"]:
            metrics[r["model"]]["composite_recognition_rate_overlaps"] = \
                float(r["composite_recognition_rate"])
    for model, s in agreement.items():
        g = s["groups"]
        metrics[model]["lordosis_mae_deg"] = g["lordosis_deg"]["mae"]
        metrics[model]["lordosis_measurable_rate"] = g["lordosis_deg"]["measurable_rate"]
        metrics[model]["segmental_mae_deg"] = g["segmental_deg"]["mae"]
        metrics[model]["disc_height_mae_mm"] = g["disc_height_mm"]["mae"]
        metrics[model]["measurable_rate"] = s["measurable_rate"]
    return metrics


def _params(summaries: list[dict]) -> dict:
    """The first evaluation's ``params`` (matching threshold, post-processing and, under
    ``measures``, how the clinical measures were made; every evaluation of one report runs
    with the same params.yaml)."""
    return next((s["params"] for s in summaries if isinstance(s.get("params"), dict)), {})
