"""dvc.yaml tells the truth: every stage lists the project modules its command imports
(transitively, function-level imports included) and the params keys its config reads, so
`dvc repro` re-runs exactly what a change affects.

Only an explicit, short allowlist is exempt: the error types and the CLI glue that every
command shares and that never changes what a stage computes; and params fields whose
dataclass declares ``metadata={"not_a_dep": why}`` (a cache's folder: the same results).
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "converters", "train")
#: shared glue: error types, the command line and its console, the params loader
ALLOWED = {"converters/core/errors.py", "pipeline/cli.py", "pipeline/console.py",
           "pipeline/params.py"}
#: code a command reaches only through a flag: exempt where the stage's command does not pass it
#: (``spinepipe train --estimate`` times a few iterations and writes nothing)
BY_FLAG = {"train/fit/estimate.py": "--estimate"}


def _is_face(path: str) -> bool:
    """A package's ``__init__.py`` that imports nothing (its docstring names the rooms): it
    cannot change what a stage computes."""
    if not path.endswith("__init__.py"):
        return False
    tree = ast.parse((ROOT / path).read_text())
    return not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)
                   if not (isinstance(n, ast.ImportFrom) and n.module == "__future__"))


def _module_file(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    for candidate in (Path(*parts).with_suffix(".py"), Path(*parts) / "__init__.py"):
        if (ROOT / candidate).is_file():
            return candidate.as_posix()
    return None


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def imported_files(start: str) -> set[str]:
    """Project files that ``start`` (a path relative to the root) imports, transitively."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse((ROOT / path).read_text())
        for node in _runtime_nodes(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from converters import qa" names a module; "from x.y import f" a member
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                f = _module_file(name)
                if f:
                    todo.append(f)
    return seen


def _stages() -> dict[str, dict]:
    """dvc.yaml's stages with matrix stages expanded for the first value of each axis (the
    params keys of the axes are recorded under ``axes``: each run depends on its item only)."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = {}
    for name, stage in dvc["stages"].items():
        if "matrix" in stage:
            item, axes = {}, []
            for axis, values in stage["matrix"].items():
                if isinstance(values, str):  # ${train.models}
                    section, key = values.strip("${}").split(".")
                    values = params[section][key]
                    axes.append(f"{section}.{key}")
                item[axis] = values[0]
            text = yaml.safe_dump(stage)
            for axis, value in item.items():
                text = text.replace("${item.%s}" % axis, str(value))
            stage = {**yaml.safe_load(text), "axes": axes}
            name = f"{name}@{'-'.join(map(str, item.values()))}"
        out[name] = stage
    return out


def _command_module(cmd: str) -> str:
    m = re.match(r"spinepipe ([\w-]+)", cmd)
    assert m, f"stage command does not call spinepipe: {cmd}"
    return COMMANDS[m.group(1)][0]


def missing_deps(stage: dict) -> list[str]:
    """Project files the stage's command imports that its deps do not cover."""
    module = _command_module(stage["cmd"])
    needed = {f for f in imported_files(module.replace(".", "/") + ".py") - ALLOWED
              if not _is_face(f) and (f not in BY_FLAG or BY_FLAG[f] in stage["cmd"])}
    deps = [str(d).rstrip("/") for d in stage.get("deps", [])]
    covered = lambda f: any(f == d or f.startswith(d + "/") for d in deps)  # noqa: E731
    return sorted(f for f in needed if not covered(f))


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_deps_cover_the_code_it_runs(name):
    assert missing_deps(_stages()[name]) == []


#: code a stage runs without importing it: MMEngine loads the model config, the augmentation
#: module and the image cache's (``custom_imports`` of the run's leaf config) by name
LOADED_BY_NAME = ("train/configs/", "train/fit/augment.py", "train/fit/image_cache.py")


def extra_deps(stage: dict) -> list[str]:
    """Project modules the stage lists but never runs (a change there would re-run it for
    nothing)."""
    module = _command_module(stage["cmd"])
    needed = imported_files(module.replace(".", "/") + ".py")
    code = [str(d) for d in stage.get("deps", []) if str(d).endswith(".py")]
    return sorted(d for d in code if d not in needed and not d.startswith(LOADED_BY_NAME))


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_deps_list_no_code_it_does_not_run(name):
    assert extra_deps(_stages()[name]) == []


def test_the_check_would_catch_an_extra_dep():
    stage = _stages()["split"]
    assert extra_deps({**stage, "deps": [*stage["deps"], "converters/dicom/pacs.py"]}) == [
        "converters/dicom/pacs.py"]


def test_the_check_would_catch_a_dropped_dep():
    train = next(s for n, s in _stages().items() if n.startswith("train@"))
    train = {**train, "deps": [d for d in train["deps"] if d != "train/fit/augment.py"]}
    assert missing_deps(train) == ["train/fit/augment.py"]


def test_code_reached_by_a_flag_is_a_dep_of_a_stage_passing_it():
    train = next(s for n, s in _stages().items() if n.startswith("train@"))
    assert missing_deps(train) == []
    assert missing_deps({**train, "cmd": train["cmd"] + " --estimate"}) == list(BY_FLAG)


def _config_reads(module: str) -> list[tuple[type, str]]:
    """(dataclass, section) of every ``stage_params(Cls, "section", ...)`` in a stage module."""
    mod = importlib.import_module(module)
    tree = ast.parse(Path(mod.__file__).read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "stage_params":
            cls_name, section = node.args[0].id, node.args[1].value
            # the class is imported at module level, or inside the command function
            cls = getattr(mod, cls_name, None)
            if cls is None:
                for imp in ast.walk(tree):
                    if isinstance(imp, ast.ImportFrom) and any(a.name == cls_name for a in imp.names):
                        cls = getattr(importlib.import_module(imp.module), cls_name)
            found.append((cls, section))
    return found


def _covers(key: str, tp: Any, declared: list[str]) -> bool:
    """``key`` (of type ``tp``) is declared, or is a mapping of dataclasses narrowed to the
    entry the stage uses (``train.presets.${train.preset}``, ``models.unet``: an entry chosen
    by a template or a matrix item) with every field of that entry declared in turn."""
    if any(key == d or key.startswith(d + ".") for d in declared):
        return True
    args = typing.get_args(tp)
    if typing.get_origin(tp) is not dict or len(args) != 2 or not dataclasses.is_dataclass(args[1]):
        return False
    entries = {re.match(r"\$\{[^}]*\}|[^.]+", d[len(key) + 1:]).group(0)  # a template whole
               for d in declared if d.startswith(key + ".")}
    hints = typing.get_type_hints(args[1])
    return bool(entries) and all(_covers(f"{key}.{e}.{f.name}", hints[f.name], declared)
                                 for e in entries for f in dataclasses.fields(args[1])
                                 if not f.metadata.get("not_a_dep"))


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_params_cover_the_keys_it_reads(name):
    stage = _stages()[name]
    declared = [str(p) for p in [*stage.get("params", []), *stage.get("axes", [])]]
    missing = []
    for cls, section in _config_reads(_command_module(stage["cmd"])):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            if not f.metadata.get("not_a_dep") and not _covers(key, hints[f.name], declared):
                missing.append(key)
    assert missing == []


def test_a_train_stage_depends_on_its_own_models_block_only():
    """DVC resolves each train stage's params (its templates and matrix item): a change of one
    model's block leaves the other models' stages' values as they were."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    def values(repo_root: Path) -> dict[str, dict]:
        repo = Repo(str(repo_root))
        try:
            return {st.name: d.read_params() for st in repo.index.stages
                    if st.name.startswith("train@")
                    for d in st.deps if isinstance(d, ParamsDependency)}
        finally:
            repo.close()

    import shutil
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("dvc.yaml", "params.yaml"):
            shutil.copy(ROOT / name, root / name)
        Repo.init(str(root), no_scm=True).close()
        before = values(root)
        params = yaml.safe_load((root / "params.yaml").read_text())
        preset = params["train"]["preset"]
        unet = params["train"]["presets"][preset]["models"]["unet"]
        unet["options"]["train_cfg"]["max_iters"] += 1
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        after = values(root)
    assert set(before) == {f"train@{m}-{f}" for m in params["train"]["models"]
                           for f in params["train"]["folds"]}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {f"train@unet-{f}" for f in params["train"]["folds"]}
