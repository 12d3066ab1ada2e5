"""A trained run's facts from its folder (``<models>/<model>/fold<k>/``): the leaf ``config.py``
read as data (only its literal assignments are evaluated, never executed), ``metrics.json``,
``train.log`` (duration of the last run's block, hardware) and ``best.pth`` (its SHA-256). A
malformed record leaves its facts None ("not recorded" in the texts).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from converters.core.records import open_input
from train.report.study_facts import NOT_RECORDED, _int, _record, _scalar


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
    config_read: bool = False               # False: where the weights started is unknown

    @property
    def size(self) -> str:
        """The parameter count in words (``1,234,567 parameters``), or not recorded."""
        return f"{self.parameters:,} parameters" if self.parameters is not None else \
            f"parameters {NOT_RECORDED}"
    parameters: int | None = None           # the model's parameter count (train's metrics.json)
    software: str | None = None             # the versions it trained with (``torch 2.13.0, ...``)


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
    metrics = _record(folder / "metrics.json")
    _config_facts(read_config(folder / "config.py"), run,
                  world=(_int(metrics.get("world_size")) if metrics else None) or 1)
    if metrics and isinstance(metrics.get("metric"), str) and metrics["metric"]:
        best = _scalar(metrics.get("best"))
        said = f" ({best:.4g})" if isinstance(best, (int, float)) else ""
        run.picked_by = f"best validation {metrics['metric']}{said}"
    if metrics:
        _trained_with(metrics, run)
    try:
        with open_input(folder / "train.log", "rb") as fh:
            text = fh.read(64 << 20).decode("utf-8", errors="replace")
    except OSError:
        text = ""
    if text:
        _log_facts(text, folder, run)
    if (folder / "best.pth").is_file():
        from train.infer.to_seg import algorithm_of
        digest = algorithm_of(run.model, run.fold, folder).checkpoint_sha256
        run.checkpoint_sha256 = None if digest == "unknown" else digest


def _trained_with(metrics: dict, run: Run) -> None:
    """The parameter count and the software versions train recorded in ``metrics.json``
    (runs trained before it recorded them: None)."""
    count = _int(metrics.get("parameters"))
    if count:
        run.parameters = count
    software = metrics.get("software")
    if isinstance(software, dict) and software and all(
            isinstance(k, str) and isinstance(v, str) for k, v in software.items()):
        run.software = ", ".join(f"{k} {v}" for k, v in software.items())


def _config_facts(cfg: dict, run: Run, world: int = 1) -> None:
    """What the leaf config says: architecture, backbone, input, schedule, optimizer (its
    learning rate as MMEngine's auto_scale_lr scaled it for ``world`` processes, the batch,
    mixed precision), augmentation, where the weights started."""
    run.config_read = bool(cfg)
    run.initialized_from = _pretrained(cfg)
    meta = cfg.get("spinepipe") if isinstance(cfg.get("spinepipe"), dict) else {}
    run.name = meta.get("name")
    m = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    run.architecture = _scalar(m.get("type"))
    bb = m.get("backbone") if isinstance(m.get("backbone"), dict) else {}
    if _scalar(bb.get("type")) is not None:
        run.backbone = f"{bb['type']}" + (f"-{bb['depth']}" if _int(bb.get("depth")) else "")
    pipeline = _train_pipeline(cfg)
    scale = next((t.get("scale") for t in pipeline if t.get("type") == "Resize"), None)
    if isinstance(scale, list) and len(scale) == 2 and all(_int(v) for v in scale):
        run.input_scale = f"{scale[0]} x {scale[1]}"
    tc = cfg.get("train_cfg") if isinstance(cfg.get("train_cfg"), dict) else {}
    if tc.get("max_iters"):
        run.schedule = f"{tc['max_iters']} iterations"
    elif tc.get("max_epochs"):
        run.schedule = f"{tc['max_epochs']} epochs"
    ow = cfg.get("optim_wrapper") if isinstance(cfg.get("optim_wrapper"), dict) else {}
    opt = ow.get("optimizer") if isinstance(ow.get("optimizer"), dict) else {}
    if _scalar(opt.get("type")) is not None:
        values = {k: opt[k] for k in ("lr", "momentum", "weight_decay")
                  if _scalar(opt.get(k)) is not None}
        loader = cfg.get("train_dataloader") if isinstance(cfg.get("train_dataloader"),
                                                           dict) else {}
        batch = _int(loader.get("batch_size"))
        scaled = cfg.get("auto_scale_lr") if isinstance(cfg.get("auto_scale_lr"), dict) else {}
        base = _int(scaled.get("base_batch_size"))
        if scaled.get("enable") is True and base and batch and isinstance(values.get("lr"),
                                                                          (int, float)):
            values["lr"] = f"{values['lr'] * batch * world / base:.4g}"   # as MMEngine ran it
        if batch:
            values["batch"] = f"{batch}" + (f" x {world} processes" if world > 1 else "")
        extras = ", ".join([f"{k} {v}" for k, v in values.items()]
                           + (["mixed precision"] if ow.get("type") == "AmpOptimWrapper" else []))
        run.optimizer = f"{opt.get('type')} ({extras})" if extras else str(opt.get("type"))
    if pipeline:
        kinds = [str(_scalar(t.get("type"))).rsplit(".", 1)[-1] for t in pipeline]
        skip = {"LoadImageFromFile", "CachedLoadImageFromFile", "LoadAnnotations",
                "PolygonsToBitmaps", "PackDetInputs", "PackSegInputs"}
        run.augmentation = ", ".join(k for k in kinds if k not in skip) or "none"


def _train_pipeline(cfg: dict) -> list[dict]:
    """The steps the training really ran: the training dataloader's dataset's pipeline (through
    wrappers such as RepeatDataset), else the config's ``train_pipeline`` variable (a leaf
    config also carries its bases' variables, which the loaders need not use)."""
    ds = cfg.get("train_dataloader")
    for _ in range(8):
        ds = ds.get("dataset") if isinstance(ds, dict) else None
        if isinstance(ds, dict) and isinstance(ds.get("pipeline"), list):
            return [t for t in ds["pipeline"] if isinstance(t, dict)]
    pipeline = cfg.get("train_pipeline")
    return [t for t in pipeline if isinstance(t, dict)] if isinstance(pipeline, list) else []

def _log_facts(text: str, folder: Path, run: Run) -> None:
    """What ``train.log`` says: the last run's duration and its hardware."""
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
