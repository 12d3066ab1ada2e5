"""The study writes itself up (issue 26): ``reports/study/methods.md``, ``dataset_card.md`` and
``model_cards/<model>.md``, every number read from the pipeline's own records.

Records read (each optional: a missing or unreadable record makes its sentence say
"not recorded", it never fails the report):

- ``<anon>/report.json`` (anonymize: counts, the action table, the options in force) and the
  anonymized headers it lists (modality, manufacturer, model: read without pixels);
- ``<png>/report.json`` (export's options) and ``<png>/provenance/*.json`` (per image: patient
  pseudonym, size, bits stored, photometric interpretation, pixel spacing);
- ``<processed>/report.json`` (convert: annotation formats, problems by kind), ``images.csv``
  (implants, overlaps) and ``coco.json`` (classes, points per polygon);
- ``<splits>/splits.json`` and ``summary.json`` (test set, folds, strata, seed);
- ``<models>/<model>/fold<k>/``: the leaf ``config.py`` (read as data: only its literal
  assignments are evaluated, never executed), ``metrics.json`` (the metric that picked the
  checkpoint), ``train.log`` (duration, hardware), ``best.pth`` (its SHA-256);
- the evaluations and the report's own tables (Table 1, subgroups, the measures' agreement).

Nothing identifying is read: only the de-identified tree, its public report and the records
after it (the private folder is never opened). The texts are drafts a researcher edits: every
sentence that no record can answer (ethics approval, clinical setting, readers' qualifications)
says "to be completed by the authors" instead of inventing an answer.
"""
from __future__ import annotations

import ast
import csv
import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from converters.core.errors import SpinepipeError
from converters.core.records import read_json

#: what a sentence says when its record is missing
NOT_RECORDED = "not recorded"
TO_COMPLETE = "*to be completed by the authors*"


@dataclass(frozen=True)
class Sources:
    """Where the records are (the pipeline's defaults: README "Where results appear")."""

    anon: Path = Path("data/interim/anon")
    png: Path = Path("data/interim/png")
    processed: Path = Path("data/processed")
    splits: Path = Path("data/splits")
    models: Path = Path("models")
    #: the phantom's truth (converters/phantom/writing.py): present, the data is synthetic
    phantom_truth: Path = Path("data/raw/truth.json")


def _record(path: Path) -> dict | None:
    try:
        return read_json(path, what="record")
    except SpinepipeError:
        return None


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "n/a"


def _counts(counter: Counter | None) -> str:
    """``DX (50), CR (49)``."""
    return ", ".join(f"{k} ({v})" for k, v in (counter or Counter()).most_common()) \
        or NOT_RECORDED


def _range(pair: tuple | None, fmt: str = "{}") -> str:
    if pair is None:
        return NOT_RECORDED
    lo, hi = (fmt.format(v) for v in pair)
    return lo if lo == hi else f"{lo}-{hi}"


def _kinds(counts: dict) -> str:
    """convert's problem counts in words: ``unannotated image: 10``."""
    return "; ".join(f"{str(k).replace('_', ' ')}: {v}" for k, v in counts.items()) or "none"


# --------------------------------------------------------------------------------------------
# facts from the records


@dataclass
class Facts:
    """Every fact the texts use, each None where its record is missing."""

    images: int | None = None
    patients: int | None = None
    rows: tuple[int, int] | None = None
    columns: tuple[int, int] | None = None
    modalities: Counter | None = None
    bits: Counter | None = None
    manufacturers: Counter | None = None
    spacing_mm: tuple[float, float] | None = None
    anonymize: dict | None = None
    export: dict | None = None
    convert: dict | None = None
    via_versions: Counter | None = None
    annotated: int | None = None
    implants: int | None = None
    overlaps: int | None = None
    classes: list[str] | None = None
    instances: int | None = None
    points: tuple[float, int, int] | None = None       # mean, min, max per polygon
    splits: dict | None = None
    split_summary: dict | None = None
    synthetic: bool = False


def gather(src: Sources) -> Facts:
    """The facts of the records under ``src`` (module docstring)."""
    f = Facts()
    provenance = [r for r in (_record(p) for p in sorted((src.png / "provenance")
                                                          .glob("*.json"))) if r]
    if provenance:
        f.images = len(provenance)
        f.patients = len({r.get("patient") for r in provenance})
        rows = [int(r["rows"]) for r in provenance if isinstance(r.get("rows"), int)]
        cols = [int(r["columns"]) for r in provenance if isinstance(r.get("columns"), int)]
        f.rows = (min(rows), max(rows)) if rows else None
        f.columns = (min(cols), max(cols)) if cols else None
        f.modalities = Counter(str(r.get("modality", "")) for r in provenance)
        f.bits = Counter(str(r.get("bits_stored", "")) for r in provenance)
        spacing = [float(r["pixel_spacing_mm"][0]) for r in provenance
                   if isinstance(r.get("pixel_spacing_mm"), list)]
        f.spacing_mm = (min(spacing), max(spacing)) if spacing else None
    f.anonymize = _record(src.anon / "report.json")
    if f.anonymize and isinstance(f.anonymize.get("outputs"), list):
        f.manufacturers = _manufacturers(src.anon, f.anonymize["outputs"])
    f.export = _record(src.png / "report.json")
    f.convert = _record(src.processed / "report.json")
    if f.convert and isinstance(f.convert.get("formats"), dict):
        f.via_versions = Counter(str(v) for v in f.convert["formats"].values())
    table = src.processed / "images.csv"
    if table.is_file():
        try:
            with table.open(newline="", encoding="utf-8") as fh:
                rows_ = list(csv.DictReader(fh))
            f.annotated = len(rows_)
            f.implants = sum(1 for r in rows_ if (r.get("implants") or "0") not in ("0", ""))
            f.overlaps = sum(1 for r in rows_ if (r.get("overlap") or "0") not in ("0", ""))
        except (OSError, UnicodeDecodeError, csv.Error):
            pass
    coco = _record(src.processed / "coco.json")
    if coco and isinstance(coco.get("annotations"), list):
        f.classes = [str(c.get("name")) for c in coco.get("categories", [])
                     if isinstance(c, dict)]
        f.instances = len(coco["annotations"])
        pts = [len(s) // 2 for a in coco["annotations"] if isinstance(a, dict)
               for s in (a.get("segmentation") or []) if isinstance(s, list)]
        if pts:
            f.points = (sum(pts) / len(pts), min(pts), max(pts))
    f.splits = _record(src.splits / "splits.json")
    f.split_summary = _record(src.splits / "summary.json")
    f.synthetic = src.phantom_truth.is_file()
    return f


def _manufacturers(anon: Path, outputs: list) -> Counter | None:
    """Manufacturer (and model) of the anonymized objects, read without pixels."""
    from converters.core.paths import confined
    from converters.dicom.read import read_dicom
    out: Counter = Counter()
    for rel in outputs:
        if not isinstance(rel, str):
            continue
        try:
            ds = read_dicom(confined(anon, *rel.split("/")), header_only=True)
        except (SpinepipeError, OSError):
            continue
        out[str(ds.get("Manufacturer", "") or "removed by de-identification")] += 1
    return out or None


# --------------------------------------------------------------------------------------------
# a leaf config read as data


def _literal(node: ast.AST):
    """A config value: literals, tuples, lists, dicts and ``dict(...)`` calls of them."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" \
            and not node.args:
        return {k.arg: _literal(k.value) for k in node.keywords if k.arg}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)
                if k is not None}
    return ast.literal_eval(node)


def read_config(path: Path) -> dict:
    """The top-level assignments of an MMEngine leaf config that are data (others are left
    out); empty when the file is missing or not Python."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return {}
    out = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                and isinstance(stmt.targets[0], ast.Name):
            try:
                out[stmt.targets[0].id] = _literal(stmt.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                continue
    return out


@dataclass
class Run:
    """What a trained run's records say (None: not recorded)."""

    model: str
    fold: int
    name: str | None = None
    architecture: str | None = None
    backbone: str | None = None
    input_scale: str | None = None
    schedule: str | None = None
    optimizer: str | None = None
    augmentation: str | None = None
    picked_by: str | None = None
    training_minutes: float | None = None
    hardware: str | None = None
    checkpoint_sha256: str | None = None


_LOG_TIME = re.compile(r"^(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d) - mmengine", re.M)


def read_run(models: Path, model: str, fold: int) -> Run:
    """A run's facts from its folder (module docstring)."""
    folder = models / model / f"fold{fold}"
    run = Run(model, fold)
    cfg = read_config(folder / "config.py")
    meta = cfg.get("spinepipe") if isinstance(cfg.get("spinepipe"), dict) else {}
    run.name = meta.get("name")
    m = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    run.architecture = m.get("type")
    bb = m.get("backbone") if isinstance(m.get("backbone"), dict) else {}
    if bb:
        run.backbone = f"{bb.get('type')}" + (f"-{bb['depth']}" if bb.get("depth") else "")
    scale = cfg.get("img_scale")
    if not scale and isinstance(cfg.get("train_pipeline"), list):
        scale = next((t.get("scale") for t in cfg["train_pipeline"]
                      if isinstance(t, dict) and t.get("type") == "Resize"), None)
    if isinstance(scale, list) and len(scale) == 2:
        run.input_scale = f"{scale[0]} x {scale[1]}"
    tc = cfg.get("train_cfg") if isinstance(cfg.get("train_cfg"), dict) else {}
    if tc.get("max_iters"):
        run.schedule = f"{tc['max_iters']} iterations"
    elif tc.get("max_epochs"):
        run.schedule = f"{tc['max_epochs']} epochs"
    ow = cfg.get("optim_wrapper") if isinstance(cfg.get("optim_wrapper"), dict) else {}
    opt = ow.get("optimizer") if isinstance(ow.get("optimizer"), dict) else {}
    if opt:
        extras = ", ".join(f"{k} {opt[k]}" for k in ("lr", "momentum", "weight_decay")
                           if k in opt)
        run.optimizer = f"{opt.get('type')} ({extras})" if extras else str(opt.get("type"))
    pipeline = cfg.get("train_pipeline")
    if isinstance(pipeline, list):
        kinds = [str(t.get("type")) for t in pipeline if isinstance(t, dict)]
        skip = {"LoadImageFromFile", "LoadAnnotations", "PackDetInputs", "PackSegInputs"}
        run.augmentation = ", ".join(k for k in kinds if k not in skip) or "none"
    metrics = _record(folder / "metrics.json")
    if metrics and metrics.get("metric"):
        best = metrics.get("best")
        best = f"{best:.4g}" if isinstance(best, (int, float)) else str(best)
        run.picked_by = f"best validation {metrics['metric']} ({best})"
    log = folder / "train.log"
    if log.is_file():
        try:
            text = log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        stamps = _LOG_TIME.findall(text)
        if len(stamps) >= 2:
            def t(s):
                return datetime(2000, int(s[0]), int(s[1]), int(s[2]), int(s[3]), int(s[4]))
            minutes = (t(stamps[-1]) - t(stamps[0])).total_seconds() / 60
            run.training_minutes = minutes if minutes >= 0 else None
        if "CUDA available: True" in text:
            gpu = re.search(r"GPU 0[^:]*: ([^\n]+)", text)
            run.hardware = f"GPU ({gpu.group(1).strip()})" if gpu else "GPU"
        elif "CUDA available: False" in text:
            run.hardware = "CPU"
    if (folder / "best.pth").is_file():
        from train.infer.to_seg import algorithm_of
        run.checkpoint_sha256 = algorithm_of(model, fold, folder).checkpoint_sha256
    return run


# --------------------------------------------------------------------------------------------
# the texts


def _or(value, fmt: str = "{}") -> str:
    return NOT_RECORDED if value is None else fmt.format(value)


def methods_md(f: Facts, runs: list[Run], table1_md: str, notes: list[str],
               alpha: float) -> str:
    """``methods.md`` (module docstring)."""
    out = ["# Methods (draft)", "",
           "*Written by `spinepipe report` from the pipeline's records; every number below is "
           "read from a record. Edit before submission.*", ""]
    out += ["## Material", ""]
    if f.images is not None:
        out.append(f"The dataset comprised {f.images} lateral lumbar spine radiographs of "
                   f"{f.patients} patients (modality: {_counts(f.modalities)}; bits stored: "
                   f"{_counts(f.bits)}), {_range(f.rows)} x {_range(f.columns)} pixels (rows x "
                   f"columns), pixel spacing {_range(f.spacing_mm, '{:.3g}')} mm. "
                   f"Manufacturer (from the de-identified headers): {_counts(f.manufacturers)}.")
    else:
        out.append(f"Images: {NOT_RECORDED} (no export provenance records).")
    if f.synthetic:
        out.append("")
        out.append("**These images are spinepipe's synthetic phantom, not patient data**: "
                   "every number below describes the demonstration, not a clinical cohort.")
    if f.annotated is not None:
        out.append("")
        out.append(f"Of the {f.annotated} annotated images, {f.implants} "
                   f"({_pct(f.implants, f.annotated)}) show implants and {f.overlaps} "
                   f"({_pct(f.overlaps, f.annotated)}) overlapping vertebrae in projection.")
    out.append("")
    out.append(f"Eligibility criteria, clinical setting and collection period: {TO_COMPLETE}.")
    out += ["", "## De-identification", ""]
    a = f.anonymize
    if a:
        counts = a.get("counts") or {}
        opts = a.get("options") or {}
        on = [k.replace("_", " ") for k, v in opts.items() if v is True]
        out.append(f"Images were de-identified by spinepipe (action table "
                   f"`{a.get('action_table', NOT_RECORDED)}`, an allowlist after DICOM PS3.15 "
                   f"Annex E's Basic Application Level Confidentiality Profile; options in "
                   f"force: {', '.join(on) or 'none'}; burned-in text: "
                   f"{opts.get('burned_in', NOT_RECORDED)}): "
                   + ", ".join(f"{v} {k}" for k, v in counts.items())
                   + ". Identifiers were replaced by keyed pseudonyms; the key and the "
                   "re-identification ledger stay in a private folder that never leaves the "
                   "site.")
    else:
        out.append(f"De-identification: {NOT_RECORDED} (no anonymize report).")
    out += ["", "## Image export", ""]
    e = (f.export or {}).get("options")
    if isinstance(e, dict):
        out.append(f"Each radiograph was exported as {e.get('bits')}-bit grayscale PNG after "
                   f"the Modality LUT, with {e.get('equalization')} histogram equalization"
                   + (" over the VOI window" if e.get("use_voi_window") else "")
                   + f" ({(f.export or {}).get('exported', NOT_RECORDED)} exported).")
    else:
        out.append(f"Export: {NOT_RECORDED}.")
    out += ["", "## Annotation", ""]
    c = f.convert
    if c:
        problems = c.get("counts") or {}
        pts = (f"{f.points[0]:.1f} points per polygon on average (range {f.points[1]}-"
               f"{f.points[2]})" if f.points else f"points per polygon {NOT_RECORDED}")
        out.append(f"Vertebrae were outlined as polygons in the VGG Image Annotator (VIA; "
                   f"files read, by format: {_counts(f.via_versions)}), one polygon per "
                   f"vertebra, classes {', '.join(f.classes or []) or NOT_RECORDED}: "
                   f"{c.get('annotations', NOT_RECORDED)} instances on "
                   f"{c.get('images', NOT_RECORDED)} images, {pts}. Problems found by "
                   f"spinepipe's checks: {_kinds(problems)}.")
    else:
        out.append(f"Annotation: {NOT_RECORDED} (no convert report).")
    out.append("")
    out.append(f"Readers, their qualifications and training: {TO_COMPLETE}.")
    out += ["", "## Data partition", ""]
    s, ss = f.splits, f.split_summary
    if s and ss and isinstance(ss.get("test"), dict):
        test = ss["test"]
        folds = [v for k, v in ss.items() if k.startswith("fold") and isinstance(v, dict)]
        out.append(f"A fixed test set of {test.get('images')} images ({test.get('patients')} "
                   f"patients) was held out; the remaining images were split into "
                   f"{s.get('k')} folds for cross-validation, grouped by patient (no patient in "
                   f"two partitions) and stratified by {s.get('strata') or 'nothing'} "
                   f"(seed {s.get('seed')}).")
        if folds:
            tr = [x["train"]["images"] for x in folds if isinstance(x.get("train"), dict)]
            va = [x["val"]["images"] for x in folds if isinstance(x.get("val"), dict)]
            if tr and va:
                out.append(f"Each fold trained on {_range((min(tr), max(tr)))} images and "
                           f"validated on {_range((min(va), max(va)))}.")
    else:
        out.append(f"Data partition: {NOT_RECORDED}.")
    out += ["", "## Models and training", ""]
    if runs:
        out.append("| model | architecture | backbone | input (w x h) | schedule | optimizer | "
                   "augmentation | checkpoint picked by | training | hardware |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in runs:
            out.append(" | ".join(["", f"{r.name or r.model} (fold {r.fold})", _or(r.architecture),
                                   _or(r.backbone), _or(r.input_scale), _or(r.schedule),
                                   _or(r.optimizer), _or(r.augmentation), _or(r.picked_by),
                                   _or(r.training_minutes, "{:.1f} min"), _or(r.hardware), ""])
                       .strip())
        out.append("")
        out.append("Models were trained from scratch (no pre-trained weights) with MMDetection "
                   "(instance models) or MMSegmentation (semantic models); parameter counts: "
                   f"{NOT_RECORDED}.")
    else:
        out.append(f"Models: {NOT_RECORDED} (no trained run).")
    out += ["", "## Metrics", "",
            "Pixel accuracy, mean accuracy, mean intersection over union (IoU) and frequency-"
            "weighted IoU per test image over the classes background, lumbar vertebra and "
            "sacrum (Long et al., CVPR 2015); a vertebra is recognized when a predicted "
            "instance matches it (the study's rule), an image when every vertebra is; the "
            "composite rate also requires overlapping vertebrae to be kept apart. Clinical "
            "measures (lumbar lordosis L1-S1, segmental angles, disc and body heights, slip) "
            "are computed from the endplates of the outlines and compared with the ground "
            "truth's by Bland-Altman analysis.",
            "", "## Statistics", "",
            f"Per-image values were pooled over folds. Models were compared by the Kruskal-Wallis "
            f"test (epsilon-squared effect size), pairwise t-tests with Holm-Bonferroni "
            f"correction, Dunn's test (Holm) and Cliff's delta; normality by Shapiro-Wilk, Tukey "
            f"HSD where it applies; 95 % Wilson intervals for rates; significance level "
            f"{alpha}.", "", "## Results", "", table1_md.strip(), ""]
    out += [n for n in notes if n]
    return "\n".join(out).rstrip() + "\n"


def model_card_md(run: Run, f: Facts, t1: pd.DataFrame, sub: pd.DataFrame,
                  agreement: dict | None, per_image: pd.DataFrame, sample_note: str | None
                  ) -> str:
    """``model_cards/<model>.md`` (Mitchell et al. 2019's sections)."""
    name = run.name or run.model
    out = [f"# Model card: {name}", "", "## Model details", "",
           f"- architecture {_or(run.architecture)}, backbone {_or(run.backbone)}, input "
           f"{_or(run.input_scale)}, trained {_or(run.schedule)} with {_or(run.optimizer)}, "
           f"augmentation: {_or(run.augmentation)};",
           f"- checkpoint: {_or(run.picked_by)}, SHA-256 `{_or(run.checkpoint_sha256)}`;",
           f"- training: {_or(run.training_minutes, '{:.1f} min')} on {_or(run.hardware)}.",
           "", "## Intended use", "",
           "Research on segmenting lumbar vertebrae and the sacrum in lateral radiographs. "
           "**Not for clinical decision-making**: no regulatory clearance, no prospective "
           "validation.", "", "## Training data", ""]
    fold = (f.split_summary or {}).get(f"fold{run.fold}")
    if isinstance(fold, dict):
        out.append(f"Fold {run.fold}: {fold.get('train', {}).get('images')} training and "
                   f"{fold.get('val', {}).get('images')} validation images.")
    else:
        out.append(f"Training data: {NOT_RECORDED}.")
    if f.synthetic:
        out.append("The images are spinepipe's synthetic phantom: the numbers below say "
                   "nothing about real radiographs.")
    out += ["", "## Metrics on the test set", ""]
    if run.model in t1.index:
        r = t1.loc[run.model]
        out.append(f"- mean IoU {100 * r['mean_iou_mean']:.1f} % (SD "
                   f"{100 * r['mean_iou_sd']:.1f}) over {int(r['images'])} test images;")
        for rate in ("recognition_rate", "composite_recognition_rate"):
            lo, hi = r.get(f"{rate}_ci_low"), r.get(f"{rate}_ci_high")
            ci = (f" (95 % CI {100 * lo:.0f}-{100 * hi:.0f} %)"
                  if lo is not None and not math.isnan(lo) else "")
            out.append(f"- {rate.replace('_', ' ')} {100 * r[rate]:.0f} %{ci};")
    else:
        out.append(f"Metrics: {NOT_RECORDED}.")
    rows = sub[sub["model"] == run.model] if "model" in sub else sub.iloc[0:0]
    if len(rows):
        out += ["", "## Subgroups (composite recognition)", ""]
        for _, r in rows.iterrows():
            out.append(f"- {r['subgroup']}: {int(r['composite'])} of {int(r['images'])} "
                       f"test images")
    if agreement:
        g = agreement.get("groups", {}).get("lordosis_deg", {})
        out += ["", "## Clinical measures", ""]
        rate = g.get("measurable_rate")
        out.append(f"Lordosis L1-S1 against the ground truth: MAE {_or(g.get('mae'), '{:.2f}')} "
                   f"deg, bias {_or(g.get('bias'), '{:.2f}')} deg, measurable on "
                   f"{_or(None if rate is None else 100 * rate, '{:.0f} %')} of the images.")
    mine = per_image[per_image["model"] == run.model] if "model" in per_image else per_image
    if len(mine):
        missed = Counter(lv for cell in mine.get("missed", pd.Series(dtype=str)).fillna("")
                         for lv in str(cell).split(";") if lv)
        out += ["", "## Failure modes seen", ""]
        out.append(f"Levels missed on the test images: {_counts(missed) if missed else 'none'}; "
                   f"images with a level shifted: "
                   f"{int((mine.get('shifted', pd.Series(dtype=str)).fillna('') != '').sum())}; "
                   "the report's worst overlays show them.")
    out += ["", "## Limitations", ""]
    if sample_note:
        out.append(sample_note)
    out.append(f"External validation and the clinical population: {TO_COMPLETE}.")
    return "\n".join(out).rstrip() + "\n"


def dataset_card_md(f: Facts) -> str:
    """``dataset_card.md``: the datasheet questions (Gebru et al. 2021) answered from the
    records."""
    out = ["# Dataset card (draft)", "", "## Motivation", "",
           f"Segmenting lumbar vertebrae and the sacrum on lateral radiographs. Funding and "
           f"creators: {TO_COMPLETE}.", "", "## Composition", ""]
    if f.synthetic:
        out.append("**Synthetic**: spinepipe's phantom, generated; no patient data.")
    out.append(f"- {_or(f.images)} radiographs of {_or(f.patients)} patients; "
               f"{_or(f.annotated)} annotated with {_or(f.instances)} polygons "
               f"(classes: {', '.join(f.classes or []) or NOT_RECORDED});")
    if f.annotated:
        out.append(f"- implants on {f.implants} images ({_pct(f.implants, f.annotated)}), "
                   f"overlapping vertebrae on {f.overlaps} ({_pct(f.overlaps, f.annotated)}).")
    out += ["", "## Collection and pre-processing", ""]
    counts = (f.anonymize or {}).get("counts")
    out.append(f"- de-identified on site: {', '.join(f'{v} {k}' for k, v in counts.items())};"
               if counts else f"- de-identification: {NOT_RECORDED};")
    opts = (f.export or {}).get("options") or {}
    out.append(f"- exported as {opts.get('bits', NOT_RECORDED)}-bit PNG, "
               f"{opts.get('equalization', NOT_RECORDED)} histogram equalization;")
    out.append(f"- collection period, devices and selection: {TO_COMPLETE}.")
    out += ["", "## Labelling", "",
            f"VIA polygons (files by format: {_counts(f.via_versions)}); spinepipe's checks "
            f"found: {_kinds((f.convert or {}).get('counts') or {})}.",
            "", "## Uses", "",
            "Training and comparing segmentation models; clinical measures research. Not for "
            "clinical decisions.", "", "## Distribution", "",
            "Identifiable data (original DICOM, the pseudonym ledger and its key) stays in the "
            "site's private folder and is never part of a DVC output or this repository; "
            f"sharing the de-identified images: {TO_COMPLETE}."]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# writing


def render_html(markdown_text: str) -> str:
    """A study text as HTML for the report page (raw HTML in the text is escaped, never
    passed through: record values reach these texts)."""
    from markdown_it import MarkdownIt
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)


def write_study(output: Path, src: Sources, *, models: list[str], folds: dict[str, list[int]],
                table1_md: str, t1: pd.DataFrame, sub: pd.DataFrame, agreement: dict,
                per_image: pd.DataFrame, notes: dict[str, str | None], alpha: float) -> str:
    """Write ``methods.md``, ``dataset_card.md`` and ``model_cards/<model>.md`` under
    ``output``; return ``methods.md``'s text."""
    from converters.core.files import write_text
    facts = gather(src)
    runs = [read_run(src.models, m, k) for m in models for k in folds.get(m, [])]
    methods = methods_md(facts, runs, table1_md, [notes.get("sample"), notes.get("finding")],
                         alpha)
    write_text(output / "methods.md", methods)
    write_text(output / "dataset_card.md", dataset_card_md(facts))
    for model in models:
        mine = [r for r in runs if r.model == model] or [Run(model, 0)]
        write_text(output / "model_cards" / f"{model}.md",
                   model_card_md(mine[0], facts, t1, sub, agreement.get(model), per_image,
                                 notes.get("sample")))
    return methods
