"""``spinepipe train`` through the code path dvc runs: leaf config, MMEngine Runner, best
checkpoint, metrics.json, dvclive curves; and the errors raised before any training."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_project, ingest_chain
from converters.core.errors import InvalidConfigError
from converters.annotations.convert import ConvertConfig, convert
from converters.phantom.writing import PhantomConfig, generate
from converters.annotations.split import SplitConfig, write_splits
from train.models import HEADLINE

SPINEPIPE = str(Path(sys.executable).parent / "spinepipe")

TINY = {  # a few CPU seconds per model; the demo preset in params.yaml is larger
    "img_scale": [96, 240],
    "crop_size": [96, 96],
    "models": {   # nested options, as params.yaml writes them
        "mask_rcnn": {"options": {"model": {"backbone": {"depth": 18},
                                            "neck": {"in_channels": [64, 128, 256, 512]}},
                                  "train_cfg": {"max_epochs": 1, "val_interval": 1}}},
        "unet": {"options": {"model": {"backbone": {"base_channels": 8},
                                       "decode_head": {"in_channels": 8, "channels": 8},
                                       "auxiliary_head": {"in_channels": 16, "channels": 8}},
                             "train_cfg": {"max_iters": 4, "val_interval": 2},
                             "default_hooks": {"checkpoint": {"interval": 2}}}},
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


@pytest.mark.parametrize("model, metric", [("mask_rcnn", "coco/segm_mAP"), ("unet", "mIoU")])
def test_train_one_instance_and_one_semantic_model(project, model, metric):
    proc = _train(project, "--model", model, "--fold", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = project / "models" / model / "fold1"
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["metric"] == metric and metrics["best"] is not None
    # what the study's write-up reports of the run: its size and the stack it trained with
    package = {"mask_rcnn": "mmdet", "unet": "mmseg"}[model]
    assert set(metrics["software"]) == {"torch", "mmengine", "mmcv", package}
    assert metrics["software"]["torch"] == __import__("torch").__version__
    weights = __import__("torch").load(work / "best.pth", map_location="cpu",
                                       weights_only=False)["state_dict"]
    assert metrics["parameters"] == sum(v.numel() for k, v in weights.items()
                                        if "running_" not in k and "num_batches" not in k)
    assert (work / "best.pth").is_file()
    best = [p for p in work.glob("best_*.pth")]  # MMEngine's best: named twice, stored once
    assert len(best) == 1 and os.path.samefile(best[0], work / "best.pth")
    leaf = (work / "config.py").read_text()
    assert "fold1" in leaf and str(project / "png") in leaf  # the leaf config is the artifact
    assert list((work / "dvclive").rglob("*.tsv")), "no dvclive curves"
    assert not (work / "dvclive" / "dvc.yaml").exists()
    # resume continues from the last checkpoint instead of starting over
    again = _train(project, "--model", model, "--fold", "1", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    # with --quiet, mmengine's own messages are in the run's log file, not on the terminal
    assert "resumed" in (work / "train.log").read_text().lower()
    assert "resumed" not in (again.stdout + again.stderr).lower()


def test_evaluate_and_report_the_trained_models(project):
    """evaluate (inference through mmdet / mmseg, scoring) and report, as dvc runs them."""
    for model in ("mask_rcnn", "unet"):
        if not (project / "models" / model / "fold1" / "best.pth").is_file():
            assert _train(project, "--model", model, "--fold", "1").returncode == 0
        proc = subprocess.run([SPINEPIPE, "evaluate", "--model", model, "--fold", "1",
                               "--test", "splits/test/coco.json", "--masks", "processed/masks",
                               "--images", "png", "--quiet"], capture_output=True, text=True,
                              timeout=600, cwd=project)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = project / "reports" / "eval" / model / "fold1"
        test = json.loads((project / "splits" / "test" / "coco.json").read_text())
        names = sorted(im["file_name"] for im in test["images"])
        assert sorted(p.name for p in (out / "predictions").iterdir()) == names
        rows = (out / "per_image.csv").read_text().splitlines()
        assert len(rows) == len(names) + 1 and rows[0].startswith("file_name,predicted,")
        summary = json.loads((out / "summary.json").read_text())
        assert summary["images"] == len(names) and summary["missing_predictions"] == []
        assert 0 <= summary["mean_iou"] <= 1 and 0 <= summary["recognition_rate"] <= 1
        # beside the folder, the headline numbers: the evaluate stage's DVC metrics
        headline = json.loads((out.parent / "fold1.json").read_text())
        assert headline == {"model": model, "fold": 1, **{k: summary[k] for k in HEADLINE}}
        results = json.loads((out / "instances.json").read_text())
        assert all(r["file_name"] in names for r in results)
    # external predictions with one image missing: scored as a miss, reported, not dropped
    ext = project / "ext"
    (ext / "predictions").mkdir(parents=True)
    for p in sorted((project / "reports/eval/unet/fold1/predictions").iterdir())[1:]:
        (ext / "predictions" / p.name).write_bytes(p.read_bytes())
    proc = subprocess.run([SPINEPIPE, "evaluate", "--model", "unet", "--fold", "1",
                           "--test", "splits/test/coco.json", "--masks", "processed/masks",
                           "--predictions", "ext", "--output", "ext_eval", "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=project)
    # the measures' endplates are refined on the test images: without them, one clear error
    # (not every measure withheld and the model blamed), nothing written
    assert proc.returncode == 1 and "images folder not found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (project / "ext_eval").exists()
    proc = subprocess.run([SPINEPIPE, "evaluate", "--model", "unet", "--fold", "1",
                           "--test", "splits/test/coco.json", "--masks", "processed/masks",
                           "--images", "png", "--predictions", "ext", "--output", "ext_eval"],
                          capture_output=True, text=True, timeout=300, cwd=project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((project / "ext_eval" / "summary.json").read_text())
    assert summary["missing_predictions"] == [names[0]] and summary["images"] == len(names)
    assert "without a prediction" in proc.stderr
    # a prediction of the wrong size is an error naming the image, and nothing is written
    bad = ext / "predictions" / names[-1]
    import cv2
    import numpy as np
    cv2.imwrite(str(bad), np.zeros((7, 7), np.uint8))
    proc = subprocess.run([SPINEPIPE, "evaluate", "--model", "unet", "--fold", "1",
                           "--test", "splits/test/coco.json", "--masks", "processed/masks",
                           "--images", "png", "--predictions", "ext", "--output", "bad_eval",
                           "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=project)
    assert proc.returncode == 1 and names[-1] in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (project / "bad_eval").exists()
    assert not [p for p in project.iterdir() if p.name.startswith(".bad_eval")]
    # the report over both models
    proc = subprocess.run([SPINEPIPE, "report", "--images", "png", "--masks", "processed/masks",
                           "--model", "mask_rcnn", "--model", "unet", "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert list(metrics) == ["mask_rcnn", "unet"]
    assert "U-Net" in (project / "reports" / "report.html").read_text()


#: a sixth model of each family, as a user adds it: one file in train/configs/ inheriting the
#: package's own config (COCO / ADE20K data, RGB, 80 / 150 classes, remote ImageNet weights),
#: with the few-iteration options a test affords
SIXTH = {
    "segformer_b0": ("semantic", "SegFormer-B0",
                     "mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py",
                     ["train_cfg.max_iters=4", "train_cfg.val_interval=2",
                      "default_hooks.checkpoint.interval=2"]),
    # R-18 for the test's time; scores from 0: an untrained SOLOv2 scores below 0.1, and a
    # validation without any instance keeps no best checkpoint to evaluate
    "solov2": ("instance", "SOLOv2", "mmdet::solov2/solov2_r50_fpn_1x_coco.py",
               ["train_cfg.max_epochs=1", "model.backbone.depth=18",
                "model.neck.in_channels=[64,128,256,512]", "model.test_cfg.score_thr=0.0",
                "model.test_cfg.filter_thr=0.0"]),
}


@pytest.fixture(scope="module")
def code_with_more_models(tmp_path_factory):
    """This project's code with the two models of :data:`SIXTH` added, one file each, and two
    broken configs beside them (which must not stop the others)."""
    code = copy_project(tmp_path_factory.mktemp("code"))
    configs = code / "train" / "configs"
    for key, (fam, name, base, _) in SIXTH.items():
        (configs / f"{key}.py").write_text(
            f"spinepipe = dict(family='{fam}', name='{name}')\n_base_ = ['{base}']\n")
    (configs / "two_bases.py").write_text(   # a full config and the data block: both set data
        "spinepipe = dict(family='instance', name='Two bases')\n"
        "_base_ = ['mmdet::solov2/solov2_r50_fpn_1x_coco.py', './_base_/spine_instance.py']\n")
    (configs / "undeclared.py").write_text("_base_ = ['mmdet::solov2/solov2_r50_fpn_1x_coco.py']\n")
    declared = "spinepipe = dict(family='{}', name='{}')\n"
    (configs / "body_error.py").write_text(declared.format("instance", "Body") +
                                           "_base_ = ['mmdet::solov2/solov2_r50_fpn_1x_coco.py']\n"
                                           "lr = [0.1][3]\n")
    (configs / "no_model.py").write_text(declared.format("semantic", "None") + "x = 1\n")
    (configs / "wrong_family.py").write_text(declared.format("semantic", "Wrong") +
                                             "_base_ = ['mmdet::solov2/solov2_r50_fpn_1x_coco.py']\n")
    (configs / "second_rcnn.py").write_text(declared.format("instance", "Second") +
                                            "_base_ = ['./mask_rcnn.py']\n")
    return code


def _in(code: Path, project: Path, *args: str) -> subprocess.CompletedProcess:
    """A spinepipe command of the code in ``code`` (its train/configs), run in ``project``."""
    return subprocess.run([SPINEPIPE, *args], capture_output=True, text=True, timeout=600,
                          cwd=project, env={**os.environ, "PYTHONPATH": str(code)})


@pytest.mark.parametrize("model", SIXTH)
def test_a_sixth_model_is_one_config_file(project, code_with_more_models, model):
    """One file in train/configs/ and the model is known to every command, trains on the
    spinepipe data (grayscale, two or three classes, no download), is evaluated and named in
    the report."""
    code, (fam, name, _, options) = code_with_more_models, SIXTH[model]
    helptext = _in(code, project, "train", "--help").stdout
    assert model in helptext.replace("\n", " ").replace("│", " ").replace(" ", "")
    params = yaml.safe_load((project / "params.yaml").read_text())   # a broken sibling's
    params["train"]["presets"]["tiny"]["models"]["undeclared"] = {}    # block stops only it
    (project / f"{model}.yaml").write_text(yaml.safe_dump(params))
    proc = _in(code, project, "train", "--model", model, "--fold", "1", "--quiet", "--params",
               f"{model}.yaml", *(a for o in options for a in ("--cfg-options", o)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = project / "models" / model / "fold1"
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["metric"] == {"instance": "coco/segm_mAP", "semantic": "mIoU"}[fam]
    assert metrics["best"] is not None and (work / "best.pth").is_file()
    from mmengine.config import Config
    leaf = Config.fromfile(str(work / "config.py"))
    said = "\n".join(leaf.spinepipe_adapted)   # what spinepipe changed, in the artifact
    assert "train_dataloader: spinepipe's" in said and "in_channels 1" in said
    assert "num_classes " + {"instance": "80 -> 2", "semantic": "150 -> 3"}[fam] in said
    assert "Pretrained " in said and " off" in said            # no download was tried
    assert leaf.model.backbone.init_cfg is None
    assert leaf.train_dataloader.dataset.metainfo["classes"][-1] == "sacrum"
    load = leaf.train_dataloader.dataset.pipeline[0]
    assert load["type"] == "LoadImageFromFile" and load["color_type"] == "grayscale"
    proc = _in(code, project, "evaluate", "--model", model, "--fold", "1", "--test",
               "splits/test/coco.json", "--masks", "processed/masks", "--images", "png",
               "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((project / "reports" / "eval" / model / "fold1.json").read_text())
    assert summary["model"] == model and 0 <= summary["mean_iou"] <= 1
    proc = _in(code, project, "report", "--model", model, "--output", f"report_{model}",
               "--images", "png", "--masks", "processed/masks", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert name in (project / f"report_{model}" / "report.html").read_text()


@pytest.mark.parametrize("model, message", [
    ("two_bases", "two of its _base_ files set auto_scale_lr, data_root, dataset_type, "
                  "optim_wrapper and 11 more; inherit one MMDetection / MMSegmentation config"),
    ("undeclared", "no model declaration; declare it with spinepipe = dict(family="),
    ("body_error", "does not load (IndexError: list index out of range)"),
    ("no_model", "no model = dict(...): inherit an MMDetection / MMSegmentation config"),
    ("wrong_family", "declared family='semantic', but its base is an MMDetection config"),
    ("second_rcnn", "_base_ names ./mask_rcnn.py: inherit a package config"),
])
def test_a_broken_model_config_is_one_line_naming_it(project, code_with_more_models, model,
                                                      message):
    proc = _in(code_with_more_models, project, "train", "--model", model, "--fold", "1",
               "--quiet")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and f"train/configs/{model}.py" in lines[0], \
        proc.stderr[-2000:]


@pytest.mark.parametrize("args, message", [
    (["--model", "vgg", "--fold", "0"], "unknown model 'vgg' (known: deeplabv3, mask_rcnn, pspnet, "
     "unet, yolact; a model is a config file in train/configs/)"),
    (["--model", "../unet", "--fold", "0"], "unknown model '../unet'"),
    (["--model", "unet", "--fold", "7"], "fold 7 out of range (0..1)"),
    (["--model", "unet", "--fold", "0", "--preset", "huge"], "unknown preset 'huge'"),
    (["--model", "unet", "--fold", "0", "--launcher", "mpi"], "--launcher must be none, pytorch or slurm"),
    (["--model", "unet", "--fold", "0", "--cfg-options", "oops"], "key=value"),
    (["--model", "unet", "--fold", "0", "--cfg-options", "model.x=[1,"],
     "--cfg-options model.x: not a YAML value: '[1,'"),
    # an override that leaves MMEngine nothing to build, or a layer it cannot make
    (["--model", "unet", "--fold", "0", "--cfg-options", "model.backbone=null"],
     "the model does not build from this config (TypeError: cfg should be a dict"),
    (["--model", "unet", "--fold", "0", "--cfg-options", "model.decode_head.num_classes=-1"],
     "the model does not build from this config (RuntimeError"),
    # a loop option the loop does not take: said before MMEngine builds the loop mid-run
    (["--model", "unet", "--fold", "0", "--cfg-options", "train_cfg.max_epochs=2"],
     "train_cfg: its train loop IterBasedTrainLoop takes max_iters, val_begin, val_interval, "
     "dynamic_intervals, not max_epochs; change the preset's options for unet"),
    (["--model", "mask_rcnn", "--fold", "0", "--cfg-options", "train_cfg.max_iters=2"],
     "train_cfg: its train loop EpochBasedTrainLoop takes max_epochs"),
    (["--model", "unet", "--fold", "0", "--cfg-options", "train_cfg.by_epoch=true"],
     "train_cfg sets both type (IterBasedTrainLoop) and by_epoch; keep one"),
])
def test_bad_requests_fail_before_training(project, args, message):
    proc = _train(project, *args)
    assert proc.returncode == 1
    assert not (project / "models" / "vgg").exists()   # a typo leaves no folder behind
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_cfg_options_read_scientific_notation_as_numbers():
    """PyYAML reads 1e-4 as a string (YAML 1.1 wants 1.0e-4): torch then refused the string
    learning rate with a traceback."""
    from pipeline.train import _options

    assert _options(["optim_wrapper.optimizer.lr=1e-4", "a=2.5E+3", "b=3", "c=[1, 2]",
                     "d=null", "e=abc", "f='1e5'"]) == {
        "optim_wrapper.optimizer.lr": 1e-4, "a": 2500.0, "b": 3, "c": [1, 2], "d": None,
        "e": "abc", "f": "1e5"}


@pytest.mark.parametrize("model, options, cause", [
    # the loss itself turns NaN (U-Net's cross-entropy)
    ("unet", [], "loss nan"),
    # weights so large that YOLACT's head asserts before any loss is NaN
    ("yolact", ["train_cfg.max_epochs=1", "model.backbone.depth=18",
                "model.neck.in_channels=[64,128,256,512]"],
     "AssertionError: classification scores become infinite or NaN!"),
])
def test_a_diverging_training_stops_with_one_line(project, model, options, cause):
    work = project / f"diverged_{model}"
    args = ["--model", model, "--fold", "1", "--work-dir", work.name,
            "--cfg-options", "optim_wrapper.optimizer.lr=1e8"]
    for option in options:
        args += ["--cfg-options", option]
    proc = _train(project, *args)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "training diverged at iteration" in lines[0], proc.stderr[-3000:]
    assert cause in lines[0] and "optim_wrapper.optimizer.lr" in lines[0]
    log = Path(lines[0].rsplit(", in ", 1)[1])
    assert log.is_file() and (project / log).resolve().is_relative_to(work.resolve())
    assert not (work / "metrics.json").exists() and not (work / "best.pth").exists()


def test_non_finite_weights_are_told_from_finite_ones():
    import torch

    from train.fit.runner import _finite_weights

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert _finite_weights(net)
    net[1].running_var[0] = float("inf")      # a buffer, not a parameter
    assert not _finite_weights(net)


def test_missing_data_is_reported_before_training(project, tmp_path):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["masks"] = str(tmp_path / "nowhere")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([SPINEPIPE, "train", "--model", "unet", "--fold", "0", "--params",
                           str(tmp_path / "params.yaml")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 1 and "nowhere" in proc.stderr and "missing" in proc.stderr


@pytest.mark.parametrize("model, split", [("mask_rcnn", "train.json"), ("unet", "train.txt")])
def test_albumentations_run_inside_the_training_pipeline(project, model, split):
    """Photometric and geometric albumentations on grayscale images; boxes, masks and class
    masks follow (train/fit/augment.py)."""
    import numpy as np
    from mmengine.registry import DATASETS, init_default_scope
    from train.fit.run_config import build_leaf
    augment = [{"type": "RandomGamma", "gamma_limit": [80, 120], "p": 1.0},
               {"type": "Affine", "rotate": [-5, 5], "p": 1.0}]
    ann = project / "splits" / "fold0" / split
    leaf = build_leaf(model, images=project / "png", masks=project / "processed" / "masks",
                      train_ann=ann, val_ann=ann, work_dir=project / "w", img_scale=(96, 240),
                      crop_size=(240, 96), dvclive=False, augment=augment)
    steps = [t["type"] for t in leaf.train_dataloader.dataset.pipeline]
    assert steps[-2] == ("Albu" if model == "mask_rcnn" else "GrayAlbu")
    assert leaf.custom_imports["imports"] == ["train.fit.augment"]
    import mmdet.datasets  # noqa: F401  (registers the datasets)
    import mmseg.datasets  # noqa: F401
    init_default_scope(leaf.default_scope)
    item = DATASETS.build(leaf.train_dataloader.dataset)[0]
    assert tuple(item["inputs"].shape) == (1, 240, 96)
    sample = item["data_samples"]
    if model == "mask_rcnn":
        assert len(sample.gt_instances.masks) == len(sample.gt_instances.bboxes) > 0
        # masks loaded as polygons, rasterized right after the resize, at the input size
        pipe = leaf.train_dataloader.dataset.pipeline
        load = next(t for t in pipe if t["type"] == "LoadAnnotations")
        assert load["poly2mask"] is False
        assert steps[steps.index("Resize") + 1] == "PolygonsToBitmaps"
        assert sample.gt_instances.masks.masks.dtype == np.uint8
        assert sample.gt_instances.masks.masks.shape[1:] == (240, 96)
    else:
        assert set(np.unique(sample.gt_sem_seg.data.numpy())) <= {0, 1, 2}
        assert "PolygonsToBitmaps" not in steps


@pytest.mark.parametrize("name", ["Resize", "mmdet.Resize", "RandomResize", "class"])
def test_masks_rasterized_after_any_resize_however_named(name):
    """Scoped names, new-style configs' classes and MMDetection's other resizes: the polygons
    become bitmaps right after the last resize."""
    from mmdet.datasets.transforms import Resize
    from mmengine.config import Config

    from train.fit.run_config import _masks_at_input_size, step_type
    kind = Resize if name == "class" else name
    cfg = Config(dict(train_dataloader=dict(dataset=dict(pipeline=[
        dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_mask=True),
        dict(type="FilterAnnotations"), dict(type=kind, scale=(96, 240)),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PackDetInputs")]))))
    _masks_at_input_size(cfg)
    pipe = cfg.train_dataloader.dataset.pipeline
    assert [step_type(t) for t in pipe] == ["LoadImageFromFile", "LoadAnnotations",
                                           "FilterAnnotations", kind if
                                           name == "RandomResize" else "Resize",
                                           "PolygonsToBitmaps", "RandomFlip", "PackDetInputs"]
    assert pipe[1]["poly2mask"] is False


@pytest.mark.parametrize("steps", [
    ["LoadAnnotations", "PackDetInputs"],                          # no resize at all
    ["LoadAnnotations", "Albu", "Resize", "PackDetInputs"],        # bitmaps needed before it
    ["Resize", "LoadAnnotations", "PackDetInputs"],                # loaded after the resize
])
def test_masks_left_at_full_size_where_polygons_cannot_go(steps):
    """A pipeline the polygons cannot pass through is left as its config wrote it (the masks
    rasterized where they are loaded), never a bare error."""
    from mmengine.config import Config

    from train.fit.run_config import _masks_at_input_size
    pipeline = [dict(type=s, with_mask=True) if s == "LoadAnnotations" else dict(type=s)
                for s in steps]
    cfg = Config(dict(train_dataloader=dict(dataset=dict(pipeline=pipeline))))
    _masks_at_input_size(cfg)
    assert [t["type"] for t in cfg.train_dataloader.dataset.pipeline] == steps
    assert "poly2mask" not in next(t for t in cfg.train_dataloader.dataset.pipeline
                                   if t["type"] == "LoadAnnotations")


def test_masks_filtered_by_their_area_stay_bitmaps_before_it():
    """``FilterAnnotations(by_mask=True)`` measures a polygon's area, not its pixels: the
    instances kept would differ, so the masks are rasterized where they are loaded."""
    from mmengine.config import Config

    from train.fit.run_config import _masks_at_input_size
    pipe = [dict(type="LoadAnnotations", with_mask=True),
            dict(type="FilterAnnotations", by_mask=True, min_gt_mask_area=10),
            dict(type="Resize"), dict(type="PackDetInputs")]
    cfg = Config(dict(train_dataloader=dict(dataset=dict(pipeline=[dict(t) for t in pipe]))))
    _masks_at_input_size(cfg)
    assert cfg.train_dataloader.dataset.pipeline == pipe
    pipe[1]["by_mask"] = False
    cfg = Config(dict(train_dataloader=dict(dataset=dict(pipeline=[dict(t) for t in pipe]))))
    _masks_at_input_size(cfg)
    assert [t["type"] for t in cfg.train_dataloader.dataset.pipeline][3] == "PolygonsToBitmaps"


def test_the_image_cache_reaches_pipelines_inside_dataset_wrappers(tmp_path):
    """RepeatDataset's and ConcatDataset's inner datasets load through the cache too."""
    from mmengine.config import Config

    from train.fit.run_config import _extend_pipelines
    inner = lambda: dict(pipeline=[dict(type="LoadImageFromFile"), dict(type="PackSegInputs")])  # noqa: E731
    cfg = Config(dict(
        train_dataloader=dict(dataset=dict(type="RepeatDataset", times=2, dataset=inner())),
        val_dataloader=dict(dataset=dict(type="ConcatDataset", datasets=[inner(), inner()]))))
    _extend_pipelines(cfg, "semantic", None, tmp_path / "cache")
    loads = [cfg.train_dataloader.dataset.dataset.pipeline[0],
             *(d.pipeline[0] for d in cfg.val_dataloader.dataset.datasets)]
    assert [t["type"] for t in loads] == ["CachedLoadImageFromFile"] * 3
    assert cfg.custom_imports["imports"] == ["train.fit.image_cache"]


def test_a_model_configs_own_imports_are_kept(tmp_path):
    """spinepipe's modules (augmentation, image cache) join the config's ``custom_imports``,
    never replace them."""
    from mmengine.config import Config

    from train.fit.run_config import _extend_pipelines
    cfg = Config(dict(custom_imports=dict(imports=["my_project.backbone"],
                                          allow_failed_imports=True),
                      train_dataloader=dict(dataset=dict(pipeline=[
                          dict(type="LoadImageFromFile"), dict(type="PackSegInputs")]))))
    _extend_pipelines(cfg, "semantic", [{"type": "RandomGamma"}], tmp_path / "cache")
    assert cfg.custom_imports == dict(imports=["my_project.backbone", "train.fit.augment",
                                               "train.fit.image_cache"],
                                      allow_failed_imports=True)


def test_instance_masks_are_rasterized_at_the_input_size():
    """A polygon resized to half its image, then made a bitmap (train/fit/augment.py): uint8
    (OpenCV's warps refuse bool), at the new size, covering the rectangle's half-size pixels;
    bitmaps and images without masks pass unchanged."""
    import numpy as np
    from mmdet.structures.mask import BitmapMasks, PolygonMasks
    from train.fit.augment import PolygonsToBitmaps
    rect = PolygonMasks([[np.array([10.0, 20.0, 50.0, 20.0, 50.0, 80.0, 10.0, 80.0])]], 100, 60)
    out = PolygonsToBitmaps()({"gt_masks": rect.resize((50, 30))})["gt_masks"]
    assert isinstance(out, BitmapMasks) and out.masks.dtype == np.uint8
    assert out.masks.shape == (1, 50, 30)
    ys, xs = np.nonzero(out.masks[0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 39, 5, 24)   # x 5-25, y 10-40
    bitmap = BitmapMasks(np.ones((1, 4, 4), np.uint8), 4, 4)
    assert PolygonsToBitmaps()({"gt_masks": bitmap})["gt_masks"] is bitmap
    assert PolygonsToBitmaps()({"img": 1}) == {"img": 1}


def test_every_model_config_builds_its_model():
    """All five configs inherit the packages' own and build at the demo preset's size."""
    from mmengine.registry import DefaultScope
    from mmengine.registry import MODELS as REGISTRY
    from pipeline.params import load_section
    from train.models import names
    from train.fit.run_config import build_leaf
    from train.fit.runner import TrainConfig
    cfg = load_section(TrainConfig, "train", Path(__file__).parents[1] / "params.yaml")
    demo = cfg.presets["demo"]
    assert names() == sorted(cfg.models)   # every registered model is one the pipeline trains
    for model in names():
        leaf = build_leaf(model, images="x", masks="y", train_ann="a", val_ann="b",
                          work_dir="w",
                          img_scale=tuple(demo.models[model].img_scale or demo.img_scale),
                          crop_size=tuple(demo.crop_size), dvclive=False,
                          options=demo.models[model].options)
        import mmdet.models  # noqa: F401  (registers the models)
        import mmseg.models  # noqa: F401
        with DefaultScope.overwrite_default_scope(leaf.default_scope):
            net = REGISTRY.build(leaf.model)
        assert sum(p.numel() for p in net.parameters()) > 1e5, model


@pytest.mark.parametrize("size", [(192, 480), (100, 250), (550, 550)])
def test_yolact_anchors_follow_its_input_size(size):
    """YOLACT's fixed input keeps the radiographs' aspect: every image is resized to it (no
    padding, so the prototypes cover the image) and each level's anchor stride is the input
    size over the feature map size the network really produces, per axis."""
    import torch
    from mmengine.registry import DefaultScope
    from mmengine.registry import MODELS as REGISTRY
    from train.fit.run_config import build_leaf
    import mmdet.models  # noqa: F401  (registers the models)
    width, height = size
    leaf = build_leaf("yolact", images="x", train_ann="a", val_ann="b", work_dir="w",
                      img_scale=size, dvclive=False,
                      options={"model.backbone.depth": 18,
                               "model.neck.in_channels": [64, 128, 256, 512]})
    for pipeline in (leaf.train_dataloader.dataset.pipeline, leaf.val_dataloader.dataset.pipeline):
        resize = next(t for t in pipeline if t["type"] == "Resize")
        assert tuple(resize["scale"]) == size and resize["keep_ratio"] is False
    with DefaultScope.overwrite_default_scope(leaf.default_scope):
        net = REGISTRY.build(leaf.model).eval()
    with torch.no_grad():
        feats = net.extract_feat(torch.zeros(1, 1, height, width))
    gen = net.bbox_head.prior_generator
    assert len(feats) == len(gen.strides) == 5
    for feat, stride, center in zip(feats, gen.strides, gen.centers):
        fh, fw = feat.shape[-2:]
        assert stride == pytest.approx((width / fw, height / fh))
        assert center == pytest.approx((width / fw / 2, height / fh / 2))
    priors = gen.grid_priors([f.shape[-2:] for f in feats], device="cpu")
    for level, (sw, sh) in zip(priors, gen.strides):   # the grid spans the image exactly:
        cx, cy = (level[-1, 0] + level[-1, 2]) / 2, (level[-1, 1] + level[-1, 3]) / 2
        assert (float(cx), float(cy)) == pytest.approx((width - sw / 2, height - sh / 2))


@pytest.mark.parametrize("model", ["mask_rcnn", "unet"])
def test_two_process_distributed_training_on_cpu(project, model):
    """mmengine's own launcher under torchrun (gloo on CPU; SyncBN becomes BN there): both
    ranks train, rank 0 alone writes the run's files, and its checkpoint loads."""
    torchrun = str(Path(sys.executable).parent / "torchrun")
    work = project / "ddp" / model
    proc = subprocess.run(  # --standalone: the rendezvous binds a free port itself
        [torchrun, "--standalone", "--nproc-per-node", "2",
         "-m", "pipeline.cli", "train", "--model", model, "--fold", "1", "--launcher",
         "pytorch", "--work-dir", str(work), "--quiet"],
        capture_output=True, text=True, timeout=600, cwd=project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "(rank 0 of 2)" in out and "(rank 1 of 2)" in out, out[-2000:]
    assert json.loads((work / "metrics.json").read_text())["world_size"] == 2
    checkpoints = sorted(p.name for p in work.glob("*.pth"))
    assert "best.pth" in checkpoints and len([c for c in checkpoints if c != "best.pth"]) <= 2
    log = (work / "train.log").read_text()
    assert "Distributed launcher: pytorch" in log or "distributed" in log.lower()
    from mmengine.config import Config
    from mmengine.registry import MODELS as REGISTRY
    from mmengine.registry import DefaultScope
    from mmengine.runner import load_checkpoint
    from train.fit.checkpoint import allow_mmengine_checkpoints
    import mmdet.models  # noqa: F401 - registers the models
    import mmseg.models  # noqa: F401
    allow_mmengine_checkpoints()
    cfg = Config.fromfile(str(work / "config.py"))
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        net = REGISTRY.build(cfg.model)
        ckpt = load_checkpoint(net, str(work / "best.pth"), map_location="cpu")
    assert ckpt["meta"]["iter"] > 0


def test_quiet_training_prints_one_line_and_logs_to_the_run(project):
    proc = _train(project, "--model", "unet", "--fold", "1", "--work-dir", "quiet_unet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train: unet fold 1: best mIoU"), lines[:20]
    log = (project / "quiet_unet" / "train.log").read_text()
    assert "Iter(train)" in log and "Saving checkpoint" in log


def test_study_preset_builds_every_model_and_trains_an_iteration_on_cpu(project):
    """The GPU preset (ResNet-50 backbones, 640x1600 inputs, the packages' schedules) is
    checked here on CPU: every model's study leaf config builds, and Mask R-CNN runs one
    training iteration at the study's scale through the CLI."""
    from mmengine.registry import DefaultScope
    from mmengine.registry import MODELS as REGISTRY
    import mmdet.models  # noqa: F401 - registers the models
    import mmseg.models  # noqa: F401
    from pipeline.params import load_section
    from train.models import names
    from train.fit.runner import TrainConfig, prepare_run
    from train.fit.precision import FULL, MIXED, NO_DEVICE
    import torch
    cfg = load_section(TrainConfig, "train", Path(__file__).parents[1] / "params.yaml")
    cfg = TrainConfig(**{**cfg.__dict__, "images": str(project / "png"),
                         "masks": str(project / "processed" / "masks"),
                         "splits": str(project / "splits")})
    for model in names():
        leaf = prepare_run(model, 1, cfg, project / "study" / model, preset="study")
        with DefaultScope.overwrite_default_scope(leaf.default_scope):
            net = REGISTRY.build(leaf.model)
        assert sum(p.numel() for p in net.parameters()) > 5e6, model  # full-size backbones
        loader = leaf.train_dataloader                  # the GPU fed by workers (issue 27)
        assert (loader.num_workers, loader.persistent_workers, loader.pin_memory) == \
            (8, True, True), model
        # mixed precision asked for everywhere; this CPU runs it in full (tests/test_precision)
        assert leaf.spinepipe_precision == (MIXED if torch.cuda.is_available() else
                                            FULL + ": " + NO_DEVICE), model
        assert leaf.env_cfg.cudnn_benchmark is True, model
    (project / "study.yaml").write_text(yaml.safe_dump({"train": {
        **yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())["train"],
        "images": str(project / "png"), "masks": str(project / "processed" / "masks"),
        "splits": str(project / "splits")}}))
    proc = _train(project, "--model", "mask_rcnn", "--fold", "1", "--preset", "study",
                  "--params", "study.yaml", "--work-dir", "study/run",
                  "--cfg-options", "train_cfg.max_epochs=1",
                  "--cfg-options", "train_cfg.val_interval=2",
                  "--cfg-options", "train_dataloader.dataset.indices=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "after 1 iterations" in proc.stderr + proc.stdout
    assert f"; precision {leaf.spinepipe_precision}" in proc.stderr, proc.stderr
    from mmengine.config import Config
    leaf = Config.fromfile(str(project / "study" / "run" / "config.py"))
    resize = [t for t in leaf.train_dataloader.dataset.pipeline if t["type"] == "Resize"]
    assert [tuple(t["scale"]) for t in resize] == [(640, 1600)]  # the study's scale
    # the decoded images kept (train/fit/image_cache.py), below the folder the run started in
    assert leaf.train_dataloader.dataset.pipeline[0]["type"] == "CachedLoadImageFromFile"
    assert list((project / ".cache" / "images").rglob("*.npy"))


def test_a_run_trained_before_a_module_moved_still_loads(tmp_path):
    """A run's leaf config names the augmentation module it was trained with: a run from
    before the library's sub-packages (``train.augment``) loads under today's name."""
    from train.infer.inference import load_run
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.py").write_text(
        'default_scope = "mmseg"\n'
        'custom_imports = dict(imports=["train.augment"], allow_failed_imports=False)\n'
        'test_dataloader = dict(dataset=dict(pipeline=[dict(type="LoadImageFromFile"), '
        'dict(type="LoadAnnotations"), dict(type="PackSegInputs")]))\n'
        'visualizer = dict(type="SegLocalVisualizer", vis_backends=[])\n')
    (run / "best.pth").write_bytes(b"")          # load_run only needs it to exist
    cfg, ckpt, family = load_run(run)
    assert family == "semantic" and ckpt == run / "best.pth"
    assert cfg.custom_imports["imports"] == ["train.fit.augment"]
    assert [t["type"] for t in cfg.test_pipeline] == ["LoadImageFromFile", "PackSegInputs"]


def test_remote_weights_are_switched_off_and_local_ones_kept(tmp_path):
    """Nothing downloads: a ``Pretrained`` source off this machine (or a file not on it) is
    switched off, in a dict or in a list of initialisers; a local checkpoint is kept; the
    model's other initialisers stay."""
    from mmengine.config import Config
    from train.fit.adapt import adapt
    local = tmp_path / "resnet18.pth"
    local.write_bytes(b"weights")
    cfg = Config(dict(model=dict(
        pretrained="open-mmlab://resnet50_v1c",
        data_preprocessor=dict(mean=[1.0, 2.0, 3.0], std=[1.0, 1.0, 1.0], bgr_to_rgb=True),
        backbone=dict(type="ResNet", frozen_stages=1, norm_eval=True,
                      init_cfg=dict(type="Pretrained", checkpoint=str(local))),
        neck=dict(init_cfg=[dict(type="Pretrained", checkpoint="https://x/y.pth"),
                            dict(type="Kaiming", layer="Conv2d")]),
        decode_head=dict(num_classes=150, init_cfg=dict(type="Pretrained",
                                                        checkpoint=str(tmp_path / "gone.pth"))),
        auxiliary_head=dict(num_classes=1))))
    said = adapt(cfg, "semantic")
    assert cfg.model.pretrained is None and "pretrained open-mmlab://resnet50_v1c off" in said
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained", checkpoint=str(local))
    # model.pretrained off: the backbone it would have filled learns every stage
    assert cfg.model.backbone.frozen_stages == -1 and cfg.model.backbone.norm_eval is False
    assert cfg.model.neck.init_cfg == [dict(type="Kaiming", layer="Conv2d")]
    assert cfg.model.decode_head.init_cfg is None
    assert cfg.model.decode_head.num_classes == 3 and cfg.model.auxiliary_head.num_classes == 1
    assert cfg.model.data_preprocessor.mean == [128.0] and not cfg.model.data_preprocessor.bgr_to_rgb
    assert cfg.model.backbone.in_channels == 1
    assert cfg.train_dataloader.dataset.metainfo["classes"] == ("background", "lumbar", "sacrum")


def test_adapt_fits_heads_inputs_and_loops_of_other_datasets():
    """The rest of adapt's rules on package-like configs: panoptic-style class counts, class
    weights of another dataset, a binary head, a backbone without in_channels (three equal
    channels instead), a data preprocessor written at the top level."""
    from mmengine.config import Config
    from train.fit.adapt import adapt
    cfg = Config(dict(default_scope="mmdet", data_preprocessor=dict(
        type="DetDataPreprocessor", mean=[1.0, 2.0, 3.0], std=[1.0, 1.0, 1.0], bgr_to_rgb=True),
        model=dict(type="RTMDet", backbone=dict(type="CSPNeXt"),
                   panoptic_head=dict(num_things_classes=80, num_stuff_classes=53,
                                      loss_cls=dict(class_weight=[1.0] * 133 + [0.1])),
                   edge_head=dict(num_classes=2), rpn_head=dict(num_classes=1),
                   bbox_head=dict(num_classes=80,
                                  loss_cls=dict(class_weight=[1.0, 2.0, 1.0])))))
    said = adapt(cfg, "instance")
    m = cfg.model
    assert m.panoptic_head.num_things_classes == 2 and m.panoptic_head.num_stuff_classes == 0
    assert m.panoptic_head.loss_cls.class_weight is None     # 134 weights: another dataset's
    assert m.bbox_head.num_classes == 2 and m.bbox_head.loss_cls.class_weight == [1.0, 2.0, 1.0]
    assert m.edge_head.num_classes == 2 and m.rpn_head.num_classes == 1   # binary heads kept
    assert "in_channels" not in m.backbone                  # CSPNeXt takes none:
    assert m.data_preprocessor.mean == [128.0] * 3 and m.data_preprocessor.bgr_to_rgb is False
    loads = [t for key in ("train_dataloader", "val_dataloader")
             for t in cfg[key].dataset.pipeline if t["type"] == "LoadImageFromFile"]
    assert loads and all(t["color_type"] == "color" for t in loads)
    assert any("takes no in_channels" in line for line in said)


@pytest.mark.parametrize("loop, options, message", [
    (dict(by_epoch=False, max_iters=10), {"train_cfg.max_epochs": 1},
     "its train loop IterBasedTrainLoop takes max_iters"),
    (dict(type="IterBasedTrainLoop", max_iters=10), {"train_cfg.val_interval": 0},
     "train_cfg.val_interval is 0: a whole number of iterations, at least 1"),
    (dict(type="EpochBasedTrainLoop", max_epochs=10), {"train_cfg.max_epochs": 2.5},
     "train_cfg.max_epochs is 2.5: a whole number of epochs"),
])
def test_loop_options_are_checked_in_either_spelling(loop, options, message):
    from mmengine.config import Config
    from train.fit.run_config import check_loops
    cfg = Config(dict(default_scope="mmseg", train_cfg=loop))
    cfg.merge_from_dict(options)
    with pytest.raises(InvalidConfigError, match=message):
        check_loops(cfg, "unet")


def test_estimate_projects_every_fold_of_each_model_and_writes_nothing(project):
    """``train --estimate``: a few real iterations of each model of train.models on this CPU,
    projected to every fold of splits.json (2 here); nothing written to the project, not even
    the preset's image cache (moved into the estimate's temporary folder)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["models"] = ["mask_rcnn", "unet"]
    params["train"]["presets"]["tiny"]["image_cache"] = "image-cache"
    (project / "estimate.yaml").write_text(yaml.safe_dump(params))
    before = sorted(p for p in project.rglob("*"))
    proc = subprocess.run([SPINEPIPE, "train", "--estimate", "--iterations", "2",
                           "--params", "estimate.yaml"], capture_output=True, text=True,
                          timeout=600, cwd=project, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train --estimate: 4 runs (2 models x 2 folds) projected at "), last
    assert last.endswith(("bottleneck: the device", "bottleneck: the data pipeline")) \
        or "mask_rcnn: the " in last, last
    fold0 = json.loads((project / "splits" / "fold0" / "train.json").read_text())
    batch = 2                                          # MMDetection's Mask R-CNN: 2 per GPU
    epochs = TINY["models"]["mask_rcnn"]["options"]["train_cfg"]["max_epochs"]
    iters = {"mask_rcnn": epochs * -(-len({a["image_id"] for a in fold0["annotations"]})
                                     // batch),
             "unet": TINY["models"]["unet"]["options"]["train_cfg"]["max_iters"]}
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in proc.stderr.splitlines() if line.startswith("│")}
    assert sorted(rows) == ["mask_rcnn", "unet"], proc.stderr[-2000:]
    for model, cells in rows.items():
        assert cells[2] == str(iters[model]) and cells[5] == "2", (model, cells)
    assert sorted(p for p in project.rglob("*")) == before   # nothing written
    proc = subprocess.run([SPINEPIPE, "train", "--estimate", "--iterations", "1", "--model",
                           "unet", "--params", "estimate.yaml", "--quiet"], capture_output=True,
                          text=True, timeout=600, cwd=project)
    assert proc.returncode == 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("train --estimate: 2 runs (1 model x 2 folds)"), proc.stderr
    for args, said in [
            (["--model", "unet", "--quiet"], "train needs --model and --fold"),
            (["--estimate", "--work-dir", "x"], "--estimate writes nothing and runs in this "
                                                "process: it takes no --work-dir"),
            (["--estimate", "--model", "unet", "--fold", "7", "--quiet"],
             "--estimate, unet: fold 7 out of range (0..1)"),
            # the model's error, not the temporary folder it ran in (gone when printed)
            (["--estimate", "--model", "unet", "--iterations", "1", "--cfg-options",
              "model.backbone.type=Nope", "--quiet"],
             "--estimate, unet: the model does not build from this config")]:
        proc = subprocess.run([SPINEPIPE, "train", *args, "--params", "estimate.yaml"],
                              capture_output=True, text=True, timeout=600, cwd=project)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and said in lines[0], proc.stderr[-2000:]
        assert "spinepipe-estimate-" not in lines[0]
    assert sorted(p for p in project.rglob("*")) == before


@pytest.mark.parametrize("value, error", [
    (8, None),
    ("lots", "train.gpu_memory_gb"),
    (0, "key 'train.gpu_memory_gb' must be >= 1, got 0.0, in memory.yaml"),
    (-1, "key 'train.gpu_memory_gb' must be >= 1, got -1.0, in memory.yaml"),
])
def test_gpu_memory_fits_the_batch_and_scales_the_learning_rate(project, value, error):
    """``train.gpu_memory_gb``: the run's batch fitted to it (train/fit/memory.py), MMEngine
    scaling the learning rate at the start of training, the choice kept in config.py."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["gpu_memory_gb"] = value
    (project / "memory.yaml").write_text(yaml.safe_dump(params))
    work = project / f"memory_{value}"
    proc = _train(project, "--model", "unet", "--fold", "1", "--params", "memory.yaml",
                  "--work-dir", work.name)
    if error:
        assert proc.returncode == 1 and error in proc.stderr, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1 and not (work / "config.py").exists()
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mmengine.config import Config
    leaf = Config.fromfile(str(work / "config.py"))
    folds = json.loads((project / "splits" / "splits.json").read_text())["folds"]
    batch = leaf.train_dataloader.batch_size
    assert batch == len(folds[1]["train"]) != 4       # 8 GB holds the tiny fold's whole set
    # MMSegmentation's U-Net rate is for 16 images (train/configs/unet.py)
    assert leaf.auto_scale_lr == dict(enable=True, base_batch_size=16)
    assert leaf.spinepipe_batch.startswith(f"{batch} images: fitted to 8 GiB")
    log = (work / "train.log").read_text()
    assert f"LR is set based on batch size of 16 and the current batch size is {batch}" in log


def test_a_batch_set_in_the_options_is_kept_under_gpu_memory(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["gpu_memory_gb"] = 8
    (project / "memory_set.yaml").write_text(yaml.safe_dump(params))
    proc = _train(project, "--model", "unet", "--fold", "1", "--params", "memory_set.yaml",
                  "--work-dir", "memory_set", "--cfg-options", "train_dataloader.batch_size=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mmengine.config import Config
    leaf = Config.fromfile(str(project / "memory_set" / "config.py"))
    assert leaf.train_dataloader.batch_size == 3 and not leaf.auto_scale_lr.enable
    assert leaf.spinepipe_batch == "3 images: set by the options (train.gpu_memory_gb fits " \
                                   "runs that do not set one)"
