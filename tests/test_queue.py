"""DVC's experiment queue runs the train matrix side by side: a copy of this project (its
tracked files, a tiny phantom and tiny schedules), `dvc repro split`, two experiments queued
with `dvc exp run --queue`, `dvc queue start -j 2`, and `dvc exp show` collects each
experiment's metrics for every model (which needs reports/metrics.json in git: .gitignore)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {"img_scale": [96, 240], "crop_size": [240, 96], "augment": [], "options": {
    "mask_rcnn": {"model.backbone.depth": 18, "model.neck.in_channels": [64, 128, 256, 512],
                  "train_cfg.max_epochs": 1, "train_cfg.val_interval": 1},
    "unet": {"model.backbone.base_channels": 8, "model.decode_head.in_channels": 8,
             "model.decode_head.channels": 8, "model.auxiliary_head.in_channels": 16,
             "model.auxiliary_head.channels": 8, "train_cfg.max_iters": 4,
             "train_cfg.val_interval": 2, "default_hooks.checkpoint.interval": 2}}}


def _run(*args: str, cwd: Path, timeout: int = 600) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@localhost"}
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_experiment_queue_runs_the_train_matrix_side_by_side(tmp_path):
    project = tmp_path / "project"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (project / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, project / f)
    (project / "dvc.lock").unlink(missing_ok=True)
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
        metrics = data["metrics"]["reports/metrics.json"]["data"]
        assert seed in (1, 2) and set(metrics) == {"mask_rcnn", "unet"}, metrics
        assert all(0 <= m["mean_iou"] <= 1 for m in metrics.values())
