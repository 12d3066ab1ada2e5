"""One layout: every default path a command or params.yaml names is one the pipeline writes
(issue 22). Class of defect guarded: a default that drifted from where dvc.yaml's stages put
things (a command run without flags reading a folder nothing makes), and the split layout
re-spelled by a reader.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path, PurePosixPath

import pytest
import yaml

from converters.annotations import split
from pipeline.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("data", "models", "reports")


def _outs() -> set[str]:
    """Every output path of every dvc.yaml stage, matrix items written out."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    outs = set()
    for stage in dvc["stages"].values():
        values = [{}]
        for axis, items in (stage.get("matrix") or {}).items():
            if isinstance(items, str):                      # ${train.models}
                section, key = items.strip("${}").split(".")
                items = params[section][key]
            values = [{**v, axis: item} for v in values for item in items]
        for item in values:
            for out in stage.get("outs", []):
                path = next(iter(out)) if isinstance(out, dict) else out
                for axis, value in item.items():
                    path = path.replace("${item.%s}" % axis, str(value))
                outs.add(path)
    return outs


def _made_by_a_stage(path: str, outs: set[str]) -> bool:
    p = PurePosixPath(path)
    return any(p == PurePosixPath(o) or PurePosixPath(o) in p.parents
               or p in PurePosixPath(o).parents for o in outs)


def _cli_defaults() -> list[tuple[str, str, str]]:
    found = []
    for name, (module, _) in COMMANDS.items():
        for param in inspect.signature(importlib.import_module(module).command).parameters.values():
            value = getattr(param.default, "default", None)
            if isinstance(value, (str, Path)) and str(value).split("/")[0] in TOPS:
                found.append((name, param.name, PurePosixPath(value).as_posix()))
    return found


def _params_paths(node, key="") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _params_paths(v, f"{key}.{k}".lstrip("."))]
    if isinstance(node, str) and node.split("/")[0] in TOPS[:1] and "/" in node:
        return [(key, node)]
    return []


def test_there_are_defaults_to_check():
    names = {(c, p) for c, p, _ in _cli_defaults()}
    assert {("evaluate", "test"), ("to-seg", "images"), ("report", "input")} <= names
    keys = {k for k, _ in _params_paths(yaml.safe_load((ROOT / "params.yaml").read_text()))}
    assert {"train.images", "train.masks", "train.splits"} <= keys


@pytest.mark.parametrize("command, option, path", _cli_defaults())
def test_every_cli_default_path_is_made_by_a_stage(command, option, path):
    assert _made_by_a_stage(path, _outs()), f"spinepipe {command} --{option} {path}"


def test_every_params_path_is_made_by_a_stage():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    outs = _outs()
    for key, path in _params_paths(params):
        assert _made_by_a_stage(path, outs), f"{key}: {path}"


def test_each_evaluation_is_dvc_metrics_beside_its_folder():
    """``dvc metrics show`` gives one row per model and fold: each evaluate stage declares
    the metrics file evaluate writes beside its folder (train.models owns both names)."""
    from train.models import eval_dir, eval_metrics_file

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["evaluate"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    for model in params["models"]:
        for fold in params["folds"]:
            def item(text: str) -> str:
                return text.replace("${item.model}", model).replace("${item.fold}", str(fold))
            out = eval_dir(model, fold)
            assert [item(next(iter(m))) for m in stage["metrics"]] == \
                [eval_metrics_file(out).as_posix()]
            assert [item(next(iter(o)) if isinstance(o, dict) else o) for o in stage["outs"]] \
                == [out.as_posix()]
    assert "metrics" not in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]


def test_the_split_layout_has_one_spelling():
    """What training and evaluation read is what split writes, by the same functions; the
    CLI's and params.yaml's defaults point at it."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    root = params["train"]["splits"]
    defaults = {(c, p): v for c, p, v in _cli_defaults()}
    assert defaults[("evaluate", "test")] == split.test_set_file(root, "json").as_posix()
    assert split.splits_file(root).as_posix() == f"{root}/splits.json"
    assert split.fold_file(root, 3, "val", "txt").as_posix() == f"{root}/fold3/val.txt"
    assert split.test_set_file(root, "txt").as_posix() == f"{root}/test/list.txt"
