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

- ``<phantom_truth>`` (``data/raw/truth.json``): when it lists the phantom's cases, the texts say
  the data is synthetic (an empty one, written with the phantom off, says nothing).

Records are hostile input: each part of a record that is not as its stage writes it leaves its
facts "not recorded" (never a traceback, never "None" in a sentence); files are read through
:func:`converters.core.records.open_input` (never a FIFO) with a size bound; headers are read
only below the de-identified tree and never through a link out of it (the private folder lies
beside it); every record value is Markdown-escaped, and the page's renderer has links, images
and raw HTML switched off.

Nothing identifying is read: only the de-identified tree, its public report and the records
after it (the private folder is never opened). The texts are drafts a researcher edits: every
sentence that no record can answer (ethics approval, clinical setting, readers' qualifications)
says "to be completed by the authors" instead of inventing an answer.
"""
from __future__ import annotations

import ast
import csv
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from converters.core.errors import SpinepipeError
from converters.core.provenance import pixel_spacing
from converters.core.records import open_input, read_json

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


def _dict(value) -> dict:
    """A record's value where an object is expected ({} for anything else)."""
    return value if isinstance(value, dict) else {}


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_MD_SPECIAL = re.compile(r"([\\`*_\[\]()!|#<>~])")


def _md(value) -> str:
    """A record's value as Markdown text: every character Markdown would read as markup
    (links, images, emphasis, table cells) escaped, and on one line."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))[:300]


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "n/a"


def _counts(counter: Counter | None) -> str:
    """``DX (50), CR (49)``."""
    return ", ".join(f"{_md(k)} ({v})" for k, v in (counter or Counter()).most_common()) \
        or NOT_RECORDED


def _range(pair: tuple | None, fmt: str = "{}") -> str:
    if pair is None:
        return NOT_RECORDED
    lo, hi = (fmt.format(v) for v in pair)
    return lo if lo == hi else f"{lo}-{hi}"


def _kinds(counts) -> str:
    """convert's problem counts in words: ``unannotated image: 10``."""
    if not isinstance(counts, dict):
        return NOT_RECORDED
    return "; ".join(f"{_md(str(k).replace('_', ' '))}: {_md(v)}"
                     for k, v in counts.items()) or "none"


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
    readers: list[str] | None = None                   # images.csv's readers, all images
    multi_read: int | None = None                      # images read by two or more
    truths: Counter | None = None                      # ground truth by kind
    splits: dict | None = None
    split_summary: dict | None = None
    synthetic: bool = False


ONE_READER = "one reader's"


def gather(src: Sources) -> Facts:
    """The facts of the records under ``src`` (module docstring); each record that is not as
    its stage writes it leaves its facts None ("not recorded"), it never fails."""
    f = Facts()
    for part in (_provenance_facts, _anonymize_facts, _annotation_facts, _split_facts):
        try:
            part(src, f)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError):
            continue          # a malformed record: its facts stay unrecorded
    try:
        truth = _record(src.phantom_truth)
        f.synthetic = bool(truth)          # the phantom's cases (an empty one: phantom off)
    except (TypeError, ValueError):
        f.synthetic = False
    return f


def _provenance_facts(src: Sources, f: Facts) -> None:
    provenance = [r for r in (_record(p) for p in sorted((src.png / "provenance")
                                                          .glob("*.json"))) if r]
    if not provenance:
        return
    f.images = len(provenance)
    patients = [r.get("patient") for r in provenance]
    f.patients = (len(set(patients)) if all(isinstance(p, str) and p for p in patients)
                  else None)
    rows = [v for v in (_int(r.get("rows")) for r in provenance) if v]
    cols = [v for v in (_int(r.get("columns")) for r in provenance) if v]
    f.rows = (min(rows), max(rows)) if rows else None
    f.columns = (min(cols), max(cols)) if cols else None
    f.modalities = Counter(str(r.get("modality", "")) for r in provenance)
    f.bits = Counter(str(r.get("bits_stored", "")) for r in provenance)
    spacing = [sp[0] for sp in (pixel_spacing(r) for r in provenance) if sp]
    f.spacing_mm = (min(spacing), max(spacing)) if spacing else None


def _anonymize_facts(src: Sources, f: Facts) -> None:
    f.export = _record(src.png / "report.json")
    f.anonymize = _record(src.anon / "report.json")
    if f.anonymize and isinstance(f.anonymize.get("outputs"), list):
        f.manufacturers = _manufacturers(src.anon, f.anonymize["outputs"])


def _annotation_facts(src: Sources, f: Facts) -> None:
    f.convert = _record(src.processed / "report.json")
    if f.convert and isinstance(f.convert.get("formats"), dict):
        f.via_versions = Counter(str(v) for v in f.convert["formats"].values())
    table = src.processed / "images.csv"
    try:
        with open_input(table, "r", encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            columns = set(reader.fieldnames or [])
            rows_ = list(reader)
        f.annotated = len(rows_)
        if {"implants", "overlap"} <= columns:
            f.implants = sum(1 for r in rows_ if (r.get("implants") or "0") not in ("0", ""))
            f.overlaps = sum(1 for r in rows_ if (r.get("overlap") or "0") not in ("0", ""))
        if {"readers", "ground_truth"} <= columns:
            sets = [str(r.get("readers") or "").split() for r in rows_]
            f.readers = sorted({x for s in sets for x in s})
            f.multi_read = sum(len(s) > 1 for s in sets)
            f.truths = Counter("consensus" if r.get("ground_truth") == "consensus" else
                               "adjudicated" if r.get("ground_truth") == "adjudicated" else
                               ONE_READER for r in rows_)
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    coco = _record(src.processed / "coco.json")
    if coco and isinstance(coco.get("annotations"), list):
        f.classes = [str(c.get("name")) for c in coco.get("categories", [])
                     if isinstance(c, dict)]
        f.instances = len(coco["annotations"])
        pts = [len(p) // 2 for a in coco["annotations"] if isinstance(a, dict)
               and isinstance(a.get("segmentation"), list)
               for p in a["segmentation"] if isinstance(p, list)]
        if pts:
            f.points = (sum(pts) / len(pts), min(pts), max(pts))


def _split_facts(src: Sources, f: Facts) -> None:
    f.splits = _record(src.splits / "splits.json")
    f.split_summary = _record(src.splits / "summary.json")


def _manufacturers(anon: Path, outputs: list) -> Counter | None:
    """Manufacturer (and model) of the anonymized objects, read without pixels."""
    from converters.core.paths import confined
    from converters.dicom.read import read_dicom
    out: Counter = Counter()
    root = os.path.realpath(anon)
    for rel in outputs:
        if not isinstance(rel, str):
            continue
        try:
            path = confined(anon, *rel.split("/"))
            # read, never through a link out of the tree (the private folder is beside it)
            if not os.path.realpath(path).startswith(root + os.sep) or any(
                    p.is_symlink() for p in [path, *path.parents] if len(p.parts) >
                    len(Path(anon).parts)):
                continue
            ds = read_dicom(path, header_only=True)
        except (SpinepipeError, OSError, ValueError):
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


#: a leaf config larger than this is not one (MMEngine's dumps are tens of kB)
CONFIG_BYTES = 1 << 20


def read_config(path: Path) -> dict:
    """The top-level assignments of an MMEngine leaf config that are data (others are left
    out); empty when the file is missing or not Python."""
    try:
        with open_input(path, "rb") as fh:     # never a FIFO; at most CONFIG_BYTES read
            data = fh.read(CONFIG_BYTES + 1)
        if len(data) > CONFIG_BYTES:
            return {}
        tree = ast.parse(data.decode("utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError, RecursionError,
            MemoryError):
        return {}
    out = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                and isinstance(stmt.targets[0], ast.Name):
            try:
                out[stmt.targets[0].id] = _literal(stmt.value)
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
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
    initialized_from: str | None = None     # None: from scratch (no load_from, no Pretrained)


_LOG_TIME = re.compile(r"^(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d) - mmengine", re.M)


def read_run(models: Path, model: str, fold: int) -> Run:
    """A run's facts from its folder (module docstring); a malformed record leaves its facts
    None."""
    folder = models / model / f"fold{fold}"
    run = Run(model, fold)
    try:
        _read_run(folder, run)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError):
        pass
    return run


def _pretrained(cfg: dict) -> str | None:
    """Where a run's weights started from: ``load_from``, or a ``Pretrained`` init_cfg
    anywhere in the model (None: from scratch)."""
    if cfg.get("load_from"):
        return f"load_from {Path(str(cfg['load_from'])).name}"
    stack = [cfg.get("model")]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "Pretrained" and node.get("checkpoint"):
                return f"Pretrained {Path(str(node['checkpoint'])).name}"
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def _read_run(folder: Path, run: Run) -> None:
    cfg = read_config(folder / "config.py")
    run.initialized_from = _pretrained(cfg)
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
    try:
        with open_input(folder / "train.log", "rb") as fh:
            text = fh.read(64 << 20).decode("utf-8", errors="replace")
    except OSError:
        text = ""
    if text:
        # the log is appended to by every run (a resume, a re-run): the last run's block
        block = text[text.rfind("System environment:"):] if "System environment:" in text \
            else text
        # the block's own first stamp is on the lines just above "System environment:"
        above = [line for line in text[:len(text) - len(block)].splitlines()[-3:]
                 if _LOG_TIME.match(line)]
        stamps = _LOG_TIME.findall((above[-1] if above else "") + "\n" + block)
        # MMEngine's stamps carry no year: the run folder's name (YYYYmmdd_HHMMSS) does
        years = sorted(p.name[:4] for p in folder.glob("20[0-9][0-9][01][0-9]*_*") if p.is_dir())
        year = int(years[-1]) if years else 2001
        try:
            def t(s):
                return datetime(year, int(s[0]), int(s[1]), int(s[2]), int(s[3]), int(s[4]))
            minutes = (t(stamps[-1]) - t(stamps[0])).total_seconds() / 60 \
                if len(stamps) >= 2 else None
        except ValueError:        # a stamp that is no date
            minutes = None
        run.training_minutes = minutes if minutes is not None and 0 <= minutes < 60 * 24 * 14 \
            else None
        if "CUDA available: True" in text:
            gpu = re.search(r"GPU 0[^:]*: ([^\n]+)", text)
            run.hardware = f"GPU ({gpu.group(1).strip()})" if gpu else "GPU"
        elif "CUDA available: False" in text:
            run.hardware = "CPU"
    if (folder / "best.pth").is_file():
        from train.infer.to_seg import algorithm_of
        digest = algorithm_of(run.model, run.fold, folder).checkpoint_sha256
        run.checkpoint_sha256 = None if digest == "unknown" else digest


# --------------------------------------------------------------------------------------------
# the texts


def _or(value, fmt: str = "{}") -> str:
    return NOT_RECORDED if value is None else fmt.format(value)


def _counts_said(counts) -> str:
    """anonymize's counts (``99 anonymized, 11 quarantined``), or not recorded."""
    if not isinstance(counts, dict) or not counts:
        return f"counts {NOT_RECORDED}"
    return ", ".join(f"{_md(v)} {_md(k)}" for k, v in counts.items())


def _options_said(opts: dict) -> str:
    """The de-identification options in force: those switched on, and the lists given."""
    on = [_md(str(k).replace("_", " ")) for k, v in opts.items() if v is True]
    lists = [f"{_md(str(k).replace('_', ' '))}: {len(v)}" for k, v in opts.items()
             if isinstance(v, list) and v]
    return "; ".join([", ".join(on) or "none switched on", *lists])


def _runs_said(runs: list[Run]) -> list[str]:
    """The models table and how the weights started."""
    out = ["| model | architecture | backbone | input (w x h) | schedule | optimizer | "
           "augmentation | checkpoint picked by | training | hardware |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        cells = [f"{_md(r.name or r.model)} (fold {r.fold})", *(
            _or(None if v is None else _md(v)) for v in
            (r.architecture, r.backbone, r.input_scale, r.schedule, r.optimizer,
             r.augmentation, r.picked_by)),
            _or(r.training_minutes, "{:.1f} min"), _or(None if r.hardware is None
                                                       else _md(r.hardware))]
        out.append("| " + " | ".join(cells) + " |")
    started = [r for r in runs if r.initialized_from]
    scratch = [r for r in runs if not r.initialized_from]
    out.append("")
    if scratch:
        out.append("Trained from scratch (no checkpoint loaded, no pre-trained backbone): "
                   + ", ".join(f"{_md(r.name or r.model)} fold {r.fold}" for r in scratch)
                   + ".")
    for r in started:
        out.append(f"{_md(r.name or r.model)} fold {r.fold} started from "
                   f"{_md(r.initialized_from)}.")
    out.append(f"Models were built with MMDetection (instance models) or MMSegmentation "
               f"(semantic models); parameter counts: {NOT_RECORDED}.")
    return out


def methods_md(f: Facts, runs: list[Run], table1_md: str, notes: list[str],
               alpha: float, match_iou: float | None = None) -> str:
    """``methods.md`` (module docstring); ``match_iou``: the evaluations' matching
    threshold (their summaries' ``params``)."""
    out = ["# Methods (draft)", "",
           "*Written by `spinepipe report` from the pipeline's records; every number below is "
           "read from a record. Edit before submission.*", ""]
    out += ["## Material", ""]
    if f.images is not None:
        out.append(f"The dataset comprised {f.images} radiographs of {_or(f.patients)} "
                   f"patients (modality: {_counts(f.modalities)}; bits stored: "
                   f"{_counts(f.bits)}), {_range(f.rows)} x {_range(f.columns)} pixels (rows x "
                   f"columns), pixel spacing {_range(f.spacing_mm, '{:.3g}')} mm (as the "
                   f"headers give it). Manufacturer (from the de-identified headers): "
                   f"{_counts(f.manufacturers)}.")
    else:
        out.append(f"Images: {NOT_RECORDED} (no export provenance records).")
    if f.synthetic:
        out.append("")
        out.append("**These images are spinepipe's synthetic phantom, not patient data**: "
                   "every number below describes the demonstration, not a clinical cohort.")
    if f.annotated is not None:
        out.append("")
        if f.implants is not None and f.overlaps is not None:
            out.append(f"Of the {f.annotated} annotated images, {f.implants} "
                       f"({_pct(f.implants, f.annotated)}) show implants and {f.overlaps} "
                       f"({_pct(f.overlaps, f.annotated)}) overlapping vertebrae in projection.")
        else:
            out.append(f"{f.annotated} images were annotated; implants and overlaps: "
                       f"{NOT_RECORDED}.")
    out.append("")
    out.append(f"Eligibility criteria, clinical setting and collection period: {TO_COMPLETE}. "
               f"Ethics approval and informed consent (or its waiver): {TO_COMPLETE}.")
    out += ["", "## De-identification", ""]
    a = f.anonymize
    if a:
        opts = _dict(a.get("options"))
        out.append(f"Images were de-identified by spinepipe (action table "
                   f"`{_md(a.get('action_table', NOT_RECORDED))}`, an allowlist after DICOM "
                   f"PS3.15 Annex E's Basic Application Level Confidentiality Profile; options: "
                   f"{_options_said(opts)}; burned-in text: "
                   f"{_md(opts.get('burned_in', NOT_RECORDED))}): "
                   f"{_counts_said(a.get('counts'))}. Identifiers were replaced by keyed "
                   "pseudonyms; the key and the re-identification ledger are kept in a private "
                   "folder outside the shared data.")
    else:
        out.append(f"De-identification: {NOT_RECORDED} (no anonymize report).")
    out += ["", "## Image export", ""]
    e = _dict(_dict(f.export).get("options"))
    if e.get("bits") and e.get("equalization"):
        out.append(f"Each radiograph was exported as {_md(e['bits'])}-bit grayscale PNG after "
                   f"the Modality LUT, with {_md(e['equalization'])} histogram equalization"
                   + (" over the VOI window" if e.get("use_voi_window") is True else "")
                   + f" ({_md(_dict(f.export).get('exported', NOT_RECORDED))} exported).")
    else:
        out.append(f"Export: {NOT_RECORDED}.")
    out += ["", "## Annotation", ""]
    c = f.convert
    if c:
        pts = (f"{f.points[0]:.1f} points per polygon on average (range {f.points[1]}-"
               f"{f.points[2]})" if f.points else f"points per polygon {NOT_RECORDED}")
        out.append(f"Vertebrae were outlined as polygons in the VGG Image Annotator (VIA; "
                   f"files read, by format: {_counts(f.via_versions)}), one polygon per "
                   f"vertebra, classes {', '.join(_md(x) for x in f.classes or []) or NOT_RECORDED}"
                   f": {_md(c.get('annotations', NOT_RECORDED))} instances on "
                   f"{_md(c.get('images', NOT_RECORDED))} images, {pts}. Problems found by "
                   f"spinepipe's checks: {_kinds(c.get('counts'))}.")
    else:
        out.append(f"Annotation: {NOT_RECORDED} (no convert report).")
    if f.readers:
        truths = f.truths or Counter()
        out.append("")
        out.append(f"{len(f.readers)} reader(s) annotated; {f.multi_read} image(s) were read "
                   f"by two or more. Ground truth: the readers' consensus on "
                   f"{truths.get('consensus', 0)} image(s) (per vertebra, STAPLE with three or "
                   f"more readers, majority vote with two; one polygon of at most 15 points), "
                   f"an expert's adjudication on {truths.get('adjudicated', 0)}, one reader's "
                   f"polygons on {truths.get(ONE_READER, 0)}. Inter-reader agreement "
                   "(IoU, boundary distances, the clinical measures' ICC(2,1) and Bland-Altman "
                   "limits) is reported beside the models (reports/agreement/).")
    out.append("")
    out.append(f"Readers, their qualifications and training: {TO_COMPLETE}.")
    out += ["", "## Data partition", ""]
    sp, ss = _dict(f.splits), _dict(f.split_summary)
    test = _dict(ss.get("test"))
    if _int(test.get("images")) is not None and _int(sp.get("k")) is not None:
        out.append(f"A fixed test set of {test['images']} images ({_or(_int(test.get('patients')))}"
                   f" patients) was held out; the remaining images were split into {sp['k']} "
                   f"folds, grouped by patient (no patient in two partitions) and stratified by "
                   f"{_md(sp.get('strata') or 'nothing')} (seed {_md(sp.get('seed'))}).")
        tr = [_int(_dict(v.get("train")).get("images")) for k, v in ss.items()
              if str(k).startswith("fold") and isinstance(v, dict)]
        va = [_int(_dict(v.get("val")).get("images")) for k, v in ss.items()
              if str(k).startswith("fold") and isinstance(v, dict)]
        if tr and va and None not in tr + va:
            out.append(f"Each fold trained on {_range((min(tr), max(tr)))} images and "
                       f"validated on {_range((min(va), max(va)))}.")
        folds = sorted({r.fold for r in runs})
        if folds:
            out.append(f"Folds trained and evaluated in this run: "
                       f"{', '.join(str(k) for k in folds)} of {sp['k']}"
                       + ("" if len(folds) == sp["k"] else
                          " (not a full cross-validation: the results below are of these "
                          "folds only)") + ".")
    else:
        out.append(f"Data partition: {NOT_RECORDED}.")
    out += ["", "## Models and training", ""]
    out += _runs_said(runs) if runs else [f"Models: {NOT_RECORDED} (no trained run)."]
    rule = (f"a predicted instance overlapping it with a mask IoU of at least {match_iou:g}"
            if isinstance(match_iou, (int, float)) else
            f"a predicted instance matching it (threshold {NOT_RECORDED})")
    out += ["", "## Metrics", "",
            "Pixel accuracy, mean accuracy, mean intersection over union (IoU) and frequency-"
            "weighted IoU per test image over the classes background, lumbar vertebra and "
            f"sacrum (Long et al., CVPR 2015). A vertebra counts as recognized when {rule} "
            "(one prediction per vertebra, judged automatically), an image when every vertebra "
            "is; the composite rate also requires overlapping vertebrae to be kept apart. "
            "Clinical measures (lumbar lordosis L1-S1, segmental angles, disc and body heights, "
            "slip) are computed from the endplates of the outlines and compared with the "
            "ground truth's by Bland-Altman analysis.",
            "", "## Statistics", "",
            f"Per-image values were pooled over the folds evaluated. Models were compared by the "
            f"Kruskal-Wallis test (epsilon-squared effect size), pairwise t-tests with "
            f"Holm-Bonferroni correction, Dunn's test (Holm) and Cliff's delta; normality by "
            f"Shapiro-Wilk, Tukey HSD where it applies; 95 % Wilson intervals for rates; "
            f"significance level {alpha}. These tests treat the models' values as independent "
            "samples although every model is scored on the same test images.",
            "", "## Results", "", table1_md.strip(), ""]
    out += [n for n in notes if n]
    return "\n".join(out).rstrip() + "\n"


def model_card_md(runs: list[Run] | Run, f: Facts, t1: pd.DataFrame, sub: pd.DataFrame,
                  agreement: dict | None, per_image: pd.DataFrame, sample_note: str | None
                  ) -> str:
    """``model_cards/<model>.md`` (Mitchell et al. 2019's sections); ``runs``: the model's
    runs, one per fold evaluated (its test metrics pool them)."""
    runs = [runs] if isinstance(runs, Run) else runs
    name = _md(runs[0].name or runs[0].model)
    out = [f"# Model card: {name}", "", "## Model details", ""]
    for run in runs:
        def said(value) -> str:
            return _or(None if value is None else _md(value))
        out.append(f"- fold {run.fold}: architecture {said(run.architecture)}, backbone "
                   f"{said(run.backbone)}, input {said(run.input_scale)}, trained "
                   f"{said(run.schedule)} with {said(run.optimizer)}"
                   + (f" from {_md(run.initialized_from)}" if run.initialized_from else
                      " from scratch")
                   + f", augmentation: {said(run.augmentation)}; checkpoint: "
                   f"{said(run.picked_by)}, SHA-256 `{_or(run.checkpoint_sha256)}`; training "
                   f"{_or(run.training_minutes, '{:.1f} min')} on {said(run.hardware)}.")
    out += ["", "## Intended use", "",
            "Research on segmenting lumbar vertebrae and the sacrum in lateral radiographs. "
            "**Not for clinical decision-making**: no regulatory clearance, no prospective "
            "validation.", "", "## Training data", ""]
    for run in runs:
        fold = _dict(_dict(f.split_summary).get(f"fold{run.fold}"))
        trained, val = (_int(_dict(fold.get(k)).get("images")) for k in ("train", "val"))
        out.append(f"Fold {run.fold}: {_or(trained)} training and {_or(val)} validation "
                   "images." if fold else f"Fold {run.fold}: {NOT_RECORDED}.")
    if f.synthetic:
        out.append("The images are spinepipe's synthetic phantom: the numbers below say "
                   "nothing about real radiographs.")
    model = runs[0].model
    out += ["", "## Metrics on the test set", ""]
    if model in t1.index:
        r = t1.loc[model]
        out.append(f"- mean IoU {100 * r['mean_iou_mean']:.1f} % (SD "
                   f"{100 * r['mean_iou_sd']:.1f}) over {int(r['images'])} test images "
                   f"(folds {', '.join(str(x.fold) for x in runs)} pooled);")
        for rate in ("recognition_rate", "composite_recognition_rate"):
            lo, hi = r.get(f"{rate}_ci_low"), r.get(f"{rate}_ci_high")
            ci = (f" (95 % CI {100 * lo:.0f}-{100 * hi:.0f} %)"
                  if lo is not None and not math.isnan(lo) else "")
            out.append(f"- {rate.replace('_', ' ')} {100 * r[rate]:.0f} %{ci};")
    else:
        out.append(f"Metrics: {NOT_RECORDED}.")
    rows = sub[sub["model"] == model] if "model" in sub else sub.iloc[0:0]
    if len(rows):
        out += ["", "## Subgroups (composite recognition)", ""]
        for _, r in rows.iterrows():
            out.append(f"- {r['subgroup']}: {int(r['composite'])} of {int(r['images'])} "
                       f"test images")
    if agreement:
        g = _dict(_dict(agreement.get("groups")).get("lordosis_deg"))
        rate = g.get("measurable_rate")
        if g.get("mae") is None:
            out += ["", "## Clinical measures", "",
                    "Lordosis L1-S1: not measurable on any test image (the model's outlines "
                    "gave no usable L1 and S1 endplates together)."]
        else:
            out += ["", "## Clinical measures", "",
                    f"Lordosis L1-S1 against the ground truth: MAE {g['mae']:.2f} deg, bias "
                    f"{_or(g.get('bias'), '{:.2f}')} deg, measurable on "
                    f"{_or(None if rate is None else 100 * rate, '{:.0f} %')} of the images."]
    mine = per_image[per_image["model"] == model] if "model" in per_image else per_image
    if len(mine):
        missed = Counter(lv for cell in mine.get("missed", pd.Series(dtype=str)).fillna("")
                         for lv in str(cell).split(";") if lv)
        out += ["", "## Failure modes seen", ""]
        out.append(f"Levels missed on the test images: {_counts(missed) if missed else 'none'}; "
                   f"images with a level shifted: "
                   f"{int((mine.get('shifted', pd.Series(dtype=str)).fillna('') != '').sum())} "
                   "(the report's overlays and endplate figures show examples).")
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
               f"(classes: {', '.join(_md(x) for x in f.classes or []) or NOT_RECORDED});")
    if f.annotated and f.implants is not None and f.overlaps is not None:
        out.append(f"- implants on {f.implants} images ({_pct(f.implants, f.annotated)}), "
                   f"overlapping vertebrae on {f.overlaps} ({_pct(f.overlaps, f.annotated)}).")
    out += ["", "## Collection and pre-processing", ""]
    out.append(f"- de-identified on site: {_counts_said(_dict(f.anonymize).get('counts'))};")
    opts = _dict(_dict(f.export).get("options"))
    out.append(f"- exported as {_md(opts.get('bits', NOT_RECORDED))}-bit PNG, "
               f"{_md(opts.get('equalization', NOT_RECORDED))} histogram equalization;")
    out.append(f"- collection period, devices and selection: {TO_COMPLETE}; ethics approval "
               f"and consent: {TO_COMPLETE}.")
    out += ["", "## Labelling", "",
            f"VIA polygons (files by format: {_counts(f.via_versions)}); spinepipe's checks "
            f"found: {_kinds(_dict(f.convert).get('counts'))}.",
            "", "## Uses", "",
            "Training and comparing segmentation models; clinical measures research. Not for "
            "clinical decisions.", "", "## Distribution", "",
            "Identifiable data (original DICOM, the pseudonym ledger and its key) is kept in a "
            "private folder that is never part of a DVC output or this repository; sharing the "
            f"de-identified images: {TO_COMPLETE}."]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# writing


def render_html(markdown_text: str) -> str:
    """A study text as HTML for the report page (raw HTML in the text is escaped, never
    passed through: record values reach these texts)."""
    from markdown_it import MarkdownIt
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.disable(["image", "link", "autolink"])      # the page fetches nothing, links nowhere
    return md.render(markdown_text)


def write_study(output: Path, src: Sources, *, models: list[str], folds: dict[str, list[int]],
                table1_md: str, t1: pd.DataFrame, sub: pd.DataFrame, agreement: dict,
                per_image: pd.DataFrame, notes: dict[str, str | None], alpha: float,
                match_iou: float | None = None) -> str:
    """Write ``methods.md``, ``dataset_card.md`` and ``model_cards/<model>.md`` under
    ``output``; return ``methods.md``'s text."""
    from converters.core.files import write_text
    facts = gather(src)
    runs = [read_run(src.models, m, k) for m in models for k in folds.get(m, [])]
    methods = methods_md(facts, runs, table1_md, [notes.get("sample"), notes.get("finding")],
                         alpha, match_iou)
    write_text(output / "methods.md", methods)
    write_text(output / "dataset_card.md", dataset_card_md(facts))
    for model in models:
        mine = [r for r in runs if r.model == model] or [Run(model, 0)]
        write_text(output / "model_cards" / f"{model}.md",
                   model_card_md(mine, facts, t1, sub, agreement.get(model), per_image,
                                 notes.get("sample")))
    return methods
