"""The model registry and where each run lives: light (no torch, no mmlab), so the command
line, evaluation and the report use it without importing a training stack.

A model is one file: ``train/configs/<name>.py``, an MMDetection or MMSegmentation config that
declares itself in one line, read here without running it (:mod:`ast`)::

    spinepipe = dict(family='instance', name='SOLOv2')   # or family='semantic'

``<name>`` (lower case, digits, ``_``) names its runs (``models/<name>/fold<k>``), its DVC stages
(``train@<name>-<k>``) and its ``--model``; ``name`` is how the report and the help texts write
it. Files whose name starts with ``_`` (templates) and the ``_base_`` folder are not models.
``params.yaml`` ``train.models`` chooses which registered models ``dvc repro`` trains; nothing
else names a model (README, "Add a model"; ``train/configs/_template.py``).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from converters.core.errors import InvalidConfigError

#: where the model configs live
CONFIG_DIR = Path(__file__).parent / "configs"
#: a model's name: it becomes a folder and a DVC stage name
NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
FAMILIES = ("instance", "semantic")


@dataclass(frozen=True)
class Model:
    """One registered model: its config file, task family ("instance": MMDetection + COCO;
    "semantic": MMSegmentation + class masks) and display name (``Mask R-CNN``)."""

    key: str
    family: str
    name: str
    config: Path


def _shown(path: Path) -> str:
    """A config's path as the user knows it: ``train/configs/<name>.py``."""
    root = CONFIG_DIR.parents[1]
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _declaration(path: Path) -> Model:
    """The ``spinepipe = dict(family=..., name=...)`` line of one config, as a literal."""
    where = _shown(path)
    how = "declare it with spinepipe = dict(family='instance' or 'semantic', name='Display name')"
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise InvalidConfigError(f"not valid Python (line {exc.lineno}: {exc.msg})",
                                 file=where) from None
    except ValueError as exc:       # null bytes
        raise InvalidConfigError(f"not valid Python ({exc})", file=where) from None
    found = [node.value for node in tree.body if isinstance(node, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == "spinepipe" for t in node.targets)]
    if len(found) != 1:
        raise InvalidConfigError(f"{'no' if not found else 'more than one'} model declaration; "
                                 f"{how}", file=where)
    value = found[0]
    try:
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) \
                and value.func.id == "dict" and not value.args:
            decl = {kw.arg: ast.literal_eval(kw.value) for kw in value.keywords}
        else:
            decl = ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        decl = None
    if not isinstance(decl, dict) or set(decl) != {"family", "name"} \
            or decl["family"] not in FAMILIES or not isinstance(decl["name"], str) \
            or not decl["name"].strip():
        raise InvalidConfigError(f"its model declaration is not plain text; {how}", file=where)
    return Model(path.stem, decl["family"], decl["name"].strip(), path)


@lru_cache(maxsize=None)
def _read(path: Path, stamp: tuple) -> Model:
    return _declaration(path)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))


def _load(path: Path) -> Model:
    """One config's entry (re-read when the file changes)."""
    if not NAME.fullmatch(path.stem):
        raise InvalidConfigError("a model's file name is lower-case letters, digits and _ "
                                 "(it names folders and DVC stages)",
                                 file=_shown(path))
    st = path.stat()
    return _read(path, (st.st_mtime_ns, st.st_size))


def registry(folder: Path = CONFIG_DIR) -> dict[str, Model]:
    """Every model of ``train/configs/``, by key, in file name order."""
    return {path.stem: _load(path) for path in _files(folder)}


def display_names(models, folder: Path = CONFIG_DIR) -> dict[str, str]:
    """Model -> display name for a report's columns; two models of one name would share a
    column (one hiding the other), so that is an error naming both files."""
    out: dict[str, str] = {}
    for model in models:
        name = display_name(model, folder)
        twin = next((m for m, n in out.items() if n == name), None)
        if twin is not None:
            raise InvalidConfigError(f"{twin} and {model} are both named '{name}'; give one "
                                     "another name= in its declaration",
                                     file=_shown(folder / f"{model}.py"))
        out[model] = name
    return out


def names(folder: Path = CONFIG_DIR) -> list[str]:
    """The registered models' keys, from their file names (each file is read when its model is
    used: one broken file stops its own model only)."""
    return [p.stem for p in _files(folder) if NAME.fullmatch(p.stem)]


def help_list() -> str:
    """The registered models for a ``--help`` text (never raises: a broken config is reported
    when it is used, not by ``--help``)."""
    return ", ".join(names())


def get(model: str, folder: Path = CONFIG_DIR) -> Model:
    """The registered model ``model``, read from its own file only (another model's broken
    file does not stop this one); an unknown one is a one-line error listing the known."""
    path = folder / f"{model}.py" if isinstance(model, str) and "/" not in model else None
    if path is None or not NAME.fullmatch(model) or not path.is_file():
        misnamed = path is not None and path.is_file() and not model.startswith("_")
        raise InvalidConfigError(
            f"unknown model '{model}' (known: {', '.join(names(folder))}; a model is a config "
            "file in train/configs/" + (f"; rename {_shown(path)}: a model's name is lower-case "
                                        "letters, digits and _" if misnamed else "") + ")")
    return _load(path)


def known(models) -> None:
    """Raise for the first of ``models`` that is not registered."""
    for model in models:
        get(model)


#: the validation metric that picks the best checkpoint, per family. Instance models: COCO's
#: mask AP averaged over IoU 0.50-0.95, not AP50, which saturates on the phantom (Mask R-CNN
#: 1.000 at epochs 16 and 20; the tie kept epoch 16, whose masks were worse: mask AP 0.78
#: against 0.83, test mean IoU 0.861 against 0.915, proposals' IoU 0.837 against 0.877)
BEST_METRIC = {"instance": "coco/segm_mAP", "semantic": "mIoU"}


def family(model: str) -> str:
    """``instance`` or ``semantic``."""
    return get(model).family


def display_name(model: str, folder: Path = CONFIG_DIR) -> str:
    """The model's name as people write it (``Mask R-CNN``); one no longer registered (an old
    evaluation) as given."""
    try:
        return get(model, folder).name
    except InvalidConfigError:
        return model


def family_of_scope(default_scope: str) -> str:
    """The family of a leaf config, from its MMEngine ``default_scope``."""
    return "instance" if default_scope == "mmdet" else "semantic"


def _path_name(model: str) -> str:
    """A model's name where it becomes a folder: a registry name, never a path."""
    if not isinstance(model, str) or not NAME.fullmatch(model):
        raise InvalidConfigError(f"unknown model {model!r} (a model's name is lower-case "
                                 "letters, digits and _: its config train/configs/<name>.py)")
    return model


def run_dir(model: str, fold: int, root: str | Path = "models") -> Path:
    """``models/<model>/fold<k>``: a trained run (leaf config, checkpoints, metrics)."""
    return Path(root) / _path_name(model) / f"fold{fold}"


def eval_dir(model: str, fold: int, root: str | Path = "reports/eval") -> Path:
    """``reports/eval/<model>/fold<k>``: an evaluation (predictions, per-image scores)."""
    return Path(root) / _path_name(model) / f"fold{fold}"


def eval_metrics_file(evaluation: str | Path) -> Path:
    """``reports/eval/<model>/fold<k>.json`` beside an evaluation folder: its headline numbers
    (:data:`HEADLINE`), flat, as DVC metrics: ``dvc metrics show`` and ``dvc exp show`` give one
    row per model and fold, from the experiment that made them."""
    evaluation = Path(evaluation)
    return evaluation.with_name(evaluation.name + ".json")


#: the numbers of an evaluation's summary that its metrics file carries (evaluate's summary.json
#: keeps everything: per-level recognition, pooled metrics, measures' agreement)
HEADLINE = ("images", "pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou",
            "recognition_rate", "composite_recognition_rate", "lordosis_mae_deg",
            "lordosis_measurable_rate", "segmental_mae_deg", "disc_height_mae_mm",
            "measurable_rate")
