"""A model must learn: one small, seeded training per family (Mask R-CNN through MMDetection,
U-Net through MMSegmentation) on a tiny phantom, through the code ``spinepipe train`` and
``spinepipe evaluate`` run (``prepare_run`` + ``run``, ``evaluate_run``), scored on the fixed
test set against two baselines computed here: the empty prediction (every test image without
a prediction: all background) and the untrained model (the same leaf config, its seeded
initial weights, evaluated the same way).

Class of defect guarded: a training that runs and saves a checkpoint but learns nothing (labels
or masks misread, classes shifted, a broken pipeline, loss or optimizer wiring, inference that
ignores the trained weights), which "best is not None", "some weight changed" and
"0 <= mIoU <= 1" do not catch. Thresholds were set from observed runs (see each test).
Time: 100 s (U-Net) + 190 s (Mask R-CNN) of wall time on 2 cores shared with other work.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import ingest_chain
from converters.annotations.convert import ConvertConfig, convert
from converters.dicom.ledger import SALT_FILE, prepare_private
from converters.phantom.writing import PhantomConfig, generate
from train.fit.checkpoint import allow_mmengine_checkpoints
from train.evaluation.evaluate import EvaluateConfig, evaluate_run
from train.fit.runner import ModelSettings, Preset, TrainConfig, prepare_run, run
from converters.annotations.split import SplitConfig, write_splits

SEED = 0
SCALE = [64, 160]   # width, height of the network's input (the phantom is 96 x 240)
#: small, fast schedules (CPU, 2 cores); demo preset's architecture choices otherwise
OPTIONS = {
    "unet": {
        "model.backbone.base_channels": 8, "model.decode_head.in_channels": 8,
        "model.decode_head.channels": 16, "model.auxiliary_head.in_channels": 16,
        "model.auxiliary_head.channels": 8,
        "model.decode_head.loss_decode.class_weight": [1.0, 3.0, 6.0],
        "model.auxiliary_head.loss_decode.class_weight": [1.0, 3.0, 6.0],
        "optim_wrapper.optimizer": {"_delete_": True, "type": "AdamW", "lr": 0.002,
                                    "weight_decay": 0.01},
        "param_scheduler": [{"type": "PolyLR", "eta_min": 1e-4, "power": 0.9, "begin": 0,
                             "end": 150, "by_epoch": False}],
        "train_cfg.max_iters": 150, "train_cfg.val_interval": 150,
        "default_hooks.checkpoint.interval": 150, "default_hooks.logger.interval": 25},
    "mask_rcnn": {
        "model.backbone.depth": 18, "model.neck.in_channels": [64, 128, 256, 512],
        "model.neck.out_channels": 64, "model.rpn_head.in_channels": 64,
        "model.rpn_head.feat_channels": 64,
        "model.roi_head.bbox_roi_extractor.out_channels": 64,
        "model.roi_head.bbox_head.in_channels": 64,
        "model.roi_head.bbox_head.fc_out_channels": 256,
        "model.roi_head.mask_roi_extractor.out_channels": 64,
        "model.roi_head.mask_head.in_channels": 64,
        "model.roi_head.mask_head.conv_out_channels": 64,
        # fewer proposals and sampled RoIs than the demo: the image holds six objects
        "model.train_cfg.rpn_proposal.max_per_img": 100, "model.train_cfg.rcnn.sampler.num": 64,
        "model.test_cfg.rpn.max_per_img": 100,
        # from scratch in 120 iterations: SGD at 0.02 with a short warm-up diverged (NaN at
        # iteration 29); AdamW as the demo's YOLACT, PSPNet and DeepLabv3 use it
        "optim_wrapper.optimizer": {"_delete_": True, "type": "AdamW", "lr": 5e-4,
                                    "weight_decay": 0.05},
        "train_cfg.max_epochs": 40, "train_cfg.val_interval": 40,
        "param_scheduler.0.end": 30, "param_scheduler.1.milestones": [32],
        "param_scheduler.1.end": 40, "default_hooks.logger.interval": 10},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """phantom -> anonymize -> export -> convert -> split: 16 images, a fixed test set. The
    project's salt is fixed too: every run sees the same data. Bowel gas and doubled contours
    are off: at 240x96 (1.7 mm pixels) a gas pocket covers a whole vertebra."""
    root = tmp_path_factory.mktemp("learning")
    private = prepare_private(root / "private")
    (private / SALT_FILE).write_text("5a" * 32 + "\n")
    (private / SALT_FILE).chmod(0o600)
    generate(PhantomConfig(n=16, seed=9, height=240, width=96, burned_in_share=0,
                           repeat_patient_share=0.2, gas=0.0, rotation=0.0), root / "raw",
             workers=1)
    ingest_chain(root / "raw", root)
    convert([root / "via.json"], root / "png", root / "processed", ConvertConfig(qa=False))
    write_splits(root / "processed", root / "splits", SplitConfig(k=2, max_test_fraction=0.25))
    return root


def _evaluate(project: Path, model: str, out: str, **where) -> dict:
    return evaluate_run(model, 0, EvaluateConfig(device="cpu"),
                        test=project / "splits" / "test" / "coco.json",
                        masks=project / "processed" / "masks", images=project / "png",
                        out=project / out, **where)


def _untrained(leaf, trained: Path, work: Path) -> Path:
    """A run folder with the trained run's leaf config and the model's seeded initial
    weights (built from the same config as training builds it) as its checkpoint."""
    from mmengine.registry import MODELS, DefaultScope
    from mmengine.runner import set_random_seed

    work.mkdir()
    shutil.copy(trained / "config.py", work / "config.py")
    set_random_seed(SEED)
    with DefaultScope.overwrite_default_scope(leaf.default_scope):
        net = MODELS.build(leaf.model)
    net.init_weights()
    allow_mmengine_checkpoints()
    meta = torch.load(trained / "best.pth", map_location="cpu",
                      weights_only=True)["meta"]            # classes, as inference reads them
    torch.save({"state_dict": net.state_dict(), "meta": meta}, work / "best.pth")
    return work


def _learn(project: Path, model: str) -> tuple[dict, dict, dict]:
    """(trained, untrained, empty prediction) summaries of ``model`` on the test set."""
    cfg = TrainConfig(seed=SEED, images=str(project / "png"),
                      masks=str(project / "processed" / "masks"),
                      splits=str(project / "splits"), preset="tiny",
                      presets={"tiny": Preset(img_scale=SCALE, crop_size=SCALE[::-1],
                                              models={model: ModelSettings(
                                                  options=OPTIONS[model])})})
    work = project / "models" / model
    leaf = prepare_run(model, 0, cfg, work)
    leaf.visualizer.vis_backends = [dict(type="LocalVisBackend")]   # no dvclive here
    metrics = run(leaf)
    assert metrics["best"] is not None and (work / "best.pth").is_file()
    trained = _evaluate(project, model, f"eval/{model}", run=work)
    untrained = _evaluate(project, model, f"eval/{model}_untrained",
                          run=_untrained(leaf, work, project / "models" / f"{model}_untrained"))
    (project / "nothing" / model).mkdir(parents=True, exist_ok=True)
    empty = _evaluate(project, model, f"eval/{model}_empty",
                      predictions=project / "nothing" / model)
    assert empty["missing_predictions"] and len(empty["missing_predictions"]) == empty["images"]
    print(f"{model}: mean IoU trained {trained['mean_iou']:.3f}, untrained "
          f"{untrained['mean_iou']:.3f}, empty {empty['mean_iou']:.3f}; recognition "
          f"{trained['recognition_rate']:.2f}")
    return trained, untrained, empty


def test_unet_learns_the_phantom(project):
    """Observed (seeded): trained 0.514, untrained 0.125, empty 0.280 on the radiograph-like
    phantom (2026-12-04; the box-like one: 0.592, 0.126, 0.271); a lower learning rate or 100
    iterations left the decode head at background."""
    trained, untrained, empty = _learn(project, "unet")
    assert trained["images"] == empty["images"] >= 3
    assert trained["mean_iou"] >= empty["mean_iou"] + 0.2
    assert trained["mean_iou"] >= untrained["mean_iou"] + 0.2
    assert trained["mean_iou"] >= 0.5


def test_mask_rcnn_learns_the_phantom(project):
    """Observed on the radiograph-like phantom (2026-12-04, seeded; bowel gas and doubled
    contours off, as for the U-Net): trained 0.508, untrained 0.291, empty 0.280 (the box-like
    phantom: 0.696, 0.290, 0.277, so the absolute bar moved from 0.55 to 0.5); vertebrae
    recognized 0.71 (L1 0.75, L2-L4 1.0, L5 0.5, S1 0.0: under the iliac wings and the implants
    a 240x96 image gives the sacrum too few pixels for a tiny model) against 0.00 untrained;
    whole images 0 of 4. An image counts only when all six vertebrae are recognized, so on four
    test images one level a tiny model has not learnt decides that rate; the margins over the
    untrained model and the empty prediction and the share of vertebrae recognized are what
    tell instance learning from none."""
    trained, untrained, empty = _learn(project, "mask_rcnn")
    assert trained["images"] == empty["images"] >= 3
    assert trained["mean_iou"] >= empty["mean_iou"] + 0.2
    assert trained["mean_iou"] >= untrained["mean_iou"] + 0.2
    assert trained["mean_iou"] >= 0.5

    def vertebrae(summary: dict) -> float:
        rates = [r for r in summary["level_recognition"].values() if r is not None]
        return sum(rates) / len(rates)
    assert vertebrae(trained) >= 0.6 > vertebrae(untrained)
