"""``spinepipe train`` through the code path dvc runs: leaf config, MMEngine Runner, best
checkpoint, metrics.json, dvclive curves; and the errors raised before any training."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ingest_chain
from converters.convert import ConvertConfig, convert
from converters.phantom import PhantomConfig, generate
from train.split import SplitConfig, write_splits

SPINEPIPE = str(Path(sys.executable).parent / "spinepipe")

TINY = {  # a few CPU seconds per model; the demo preset in params.yaml is larger
    "img_scale": [96, 240],
    "crop_size": [96, 96],
    "options": {
        "mask_rcnn": {"model.backbone.depth": 18, "model.neck.in_channels": [64, 128, 256, 512],
                      "train_cfg.max_epochs": 1, "train_cfg.val_interval": 1},
        "unet": {"model.backbone.base_channels": 8, "model.decode_head.in_channels": 8,
                 "model.decode_head.channels": 8, "model.auxiliary_head.in_channels": 16,
                 "model.auxiliary_head.channels": 8, "train_cfg.max_iters": 4,
                 "train_cfg.val_interval": 2, "default_hooks.checkpoint.interval": 2},
    },
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder after phantom -> anonymize -> export -> convert -> split."""
    root = tmp_path_factory.mktemp("project")
    generate(PhantomConfig(n=14, seed=9, height=240, width=96, burned_in_share=0,
                           repeat_patient_share=0.2), root / "raw", workers=1)
    ingest_chain(root / "raw", root)
    convert([root / "via.json"], root / "png", root / "processed", ConvertConfig(qa=False))
    write_splits(root / "processed", root / "splits", SplitConfig(k=2, max_test_fraction=0.15))
    params = {"train": {"preset": "tiny", "images": str(root / "png"),
                        "masks": str(root / "processed" / "masks"),
                        "splits": str(root / "splits"), "presets": {"tiny": TINY}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _train(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SPINEPIPE, "train", *args, "--quiet"], capture_output=True,
                          text=True, timeout=600, cwd=project)


@pytest.mark.parametrize("model, metric", [("mask_rcnn", "coco/segm_mAP_50"), ("unet", "mIoU")])
def test_train_one_instance_and_one_semantic_model(project, model, metric):
    proc = _train(project, "--model", model, "--fold", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = project / "models" / model / "fold1"
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["metric"] == metric and metrics["best"] is not None
    assert (work / "best.pth").is_file()
    leaf = (work / "config.py").read_text()
    assert "fold1" in leaf and str(project / "png") in leaf  # the leaf config is the artifact
    assert list((work / "dvclive").rglob("*.tsv")), "no dvclive curves"
    assert not (work / "dvclive" / "dvc.yaml").exists()
    # resume continues from the last checkpoint instead of starting over
    again = _train(project, "--model", model, "--fold", "1", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed" in (again.stdout + again.stderr).lower()


@pytest.mark.parametrize("args, message", [
    (["--model", "vgg", "--fold", "0"], "unknown model 'vgg' (known: deeplabv3, mask_rcnn, pspnet, unet, yolact)"),
    (["--model", "unet", "--fold", "7"], "fold 7 out of range (0..1)"),
    (["--model", "unet", "--fold", "0", "--preset", "huge"], "unknown preset 'huge'"),
    (["--model", "unet", "--fold", "0", "--launcher", "mpi"], "--launcher must be none, pytorch or slurm"),
    (["--model", "unet", "--fold", "0", "--cfg-options", "oops"], "key=value"),
])
def test_bad_requests_fail_before_training(project, args, message):
    proc = _train(project, *args)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_missing_data_is_reported_before_training(project, tmp_path):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["masks"] = str(tmp_path / "nowhere")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([SPINEPIPE, "train", "--model", "unet", "--fold", "0", "--params",
                           str(tmp_path / "params.yaml")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 1 and "nowhere" in proc.stderr and "missing" in proc.stderr


def test_every_model_config_builds_its_model():
    """All five configs inherit the packages' own and build at the demo preset's size."""
    from mmengine.registry import DefaultScope
    from mmengine.registry import MODELS as REGISTRY
    from pipeline.params import load_section
    from train.leaf import MODELS, build_leaf
    from train.runner import TrainConfig
    cfg = load_section(TrainConfig, "train", Path(__file__).parents[1] / "params.yaml")
    demo = cfg.presets["demo"]
    for model, fam in MODELS.items():
        leaf = build_leaf(model, images="x", masks="y", train_ann="a", val_ann="b",
                          work_dir="w", img_scale=tuple(demo.img_scale),
                          crop_size=tuple(demo.crop_size), dvclive=False,
                          options=demo.options.get(model, {}))
        import mmdet.models  # noqa: F401  (registers the models)
        import mmseg.models  # noqa: F401
        with DefaultScope.overwrite_default_scope(leaf.default_scope):
            net = REGISTRY.build(leaf.model)
        assert sum(p.numel() for p in net.parameters()) > 1e5, model
