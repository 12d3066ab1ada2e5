"""The ML engineer's loop in DVC itself, on a copy of this project (its tracked files, a tiny
phantom and tiny schedules) after `dvc repro split`:

- the experiment queue runs the train matrix side by side: two experiments queued with
  `dvc exp run --queue`, `dvc queue start -j 2`, and `dvc exp show` collects each experiment's
  metrics for every model (each evaluation's metrics file, which .gitignore keeps in git);
- one model's option changed with `dvc exp run -S` (a nested key) re-trains that model only,
  and `dvc exp show` / `dvc metrics show` give one row per model, from the experiment."""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import copy_project
from conftest import run_ok as _run

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {"img_scale": [96, 240], "crop_size": [240, 96], "augment": [], "models": {
    "mask_rcnn": {"options": {"model.backbone.depth": 18,
                              "model.neck.in_channels": [64, 128, 256, 512],
                              "train_cfg.max_epochs": 1, "train_cfg.val_interval": 1}},
    "unet": {"options": {"model": {"backbone": {"base_channels": 8},      # nested: DVC's -S
                                   "decode_head": {"in_channels": 8, "channels": 8},
                                   "auxiliary_head": {"in_channels": 16, "channels": 8}},
                         "train_cfg": {"max_iters": 4, "val_interval": 2},
                         "default_hooks": {"checkpoint": {"interval": 2}}}}}}


@pytest.fixture(scope="module")
def split_project(tmp_path_factory) -> Path:
    """The project copied, tiny, with `dvc repro split` done and committed."""
    tmp_path = tmp_path_factory.mktemp("queue")
    project = copy_project(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["phantom"].update(n=14, height=240, width=96, burned_in_share=0.0)
    params["annotator"].update(holdout=0)    # every one of the few images annotated
    params["split"].update(k=2, max_test_fraction=0.15)
    params["train"].update(models=["mask_rcnn", "unet"], preset="tiny")
    params["train"]["presets"]["tiny"] = TINY
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = str(BIN / "dvc")
    _run("git", "init", "-q", cwd=project)
    _run("git", "add", "-A", cwd=project)
    _run("git", "commit", "-qm", "project", cwd=project)
    _run(dvc, "repro", "-q", "split", cwd=project)
    _run("git", "add", "-A", cwd=project)
    _run("git", "commit", "-qm", "data", cwd=project)
    return project


def _copy(project: Path, to: Path) -> Path:
    shutil.copytree(project, to, symlinks=True)
    return to


def test_experiment_queue_runs_the_train_matrix_side_by_side(split_project, tmp_path):
    project = _copy(split_project, tmp_path / "project")
    dvc = str(BIN / "dvc")
    for seed in (1, 2):
        _run(dvc, "exp", "run", "--queue", "-S", f"train.seed={seed}", cwd=project)
    _run(dvc, "queue", "start", "-j", "2", cwd=project)
    deadline = time.time() + 900
    while time.time() < deadline:
        status = _run(dvc, "queue", "status", cwd=project)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert status.count("Success") == 2, status
    shown = json.loads(_run(dvc, "exp", "show", "--json", cwd=project))
    exps = [r for baseline in shown for e in (baseline.get("experiments") or [])
            for r in e["revs"]]
    assert len(exps) == 2
    for rev in exps:
        data = rev["data"]
        seed = data["params"]["params.yaml"]["data"]["train"]["seed"]
        metrics = {path: m["data"] for path, m in data["metrics"].items()}
        assert seed in (1, 2) and set(metrics) == {"reports/eval/mask_rcnn/fold0.json",
                                                   "reports/eval/unet/fold0.json"}, metrics
        assert all(0 <= m["mean_iou"] <= 1 for m in metrics.values())


def test_one_models_option_re_trains_that_model_only(split_project, tmp_path):
    project = _copy(split_project, tmp_path / "project")
    dvc = str(BIN / "dvc")
    _run(dvc, "repro", "-q", cwd=project)
    _run("git", "add", "-A", cwd=project)
    _run("git", "commit", "-qm", "baseline", cwd=project)
    before = json.loads(_run(dvc, "metrics", "show", "--json", cwd=project))
    rows = before[""]["data"]                          # the workspace: path -> its numbers
    # one row per model and fold, each its own file
    assert set(rows) == {"reports/eval/mask_rcnn/fold0.json", "reports/eval/unet/fold0.json"}
    # U-Net's block changes: only its train stage is stale (DVC's own status)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["presets"]["tiny"]["models"]["unet"]["options"]["train_cfg"]["max_iters"] = 6
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = json.loads(_run(dvc, "status", "--json", cwd=project))
    assert stale.pop("retrieve") == ["always changed"]  # it asks the PACS on every repro
    assert set(stale) == {"train@unet-0"}, stale
    _run("git", "checkout", "params.yaml", cwd=project)
    # the same through an experiment, with a nested key DVC sets itself
    log = _run(dvc, "exp", "run", "-S",
               "train.presets.tiny.models.unet.options.model.decode_head.channels=16",
               cwd=project)
    assert "Stage 'train@mask_rcnn-0' didn't change, skipping" in log, log
    assert "Running stage 'train@unet-0'" in log, log
    shown = json.loads(_run(dvc, "exp", "show", "--json", cwd=project))
    exps = [r for baseline in shown for e in (baseline.get("experiments") or [])
            for r in e["revs"]]
    assert len(exps) == 1
    data = exps[0]["data"]
    unet = data["params"]["params.yaml"]["data"]["train"]["presets"]["tiny"]["models"]["unet"]
    assert unet["options"]["model"]["decode_head"]["channels"] == 16
    metrics = {path: m["data"] for path, m in data["metrics"].items()}

    def numbers(d: dict) -> dict:   # DVC leaves out a metric without a value (null)
        return {k: v for k, v in d.items() if v is not None}

    assert numbers(metrics["reports/eval/mask_rcnn/fold0.json"]) == \
        numbers(rows["reports/eval/mask_rcnn/fold0.json"]["data"])   # not re-trained
    new = json.loads((project / "reports/eval/unet/fold0.json").read_text())
    assert numbers(metrics["reports/eval/unet/fold0.json"]) == numbers(new)
    assert new["model"] == "unet"

