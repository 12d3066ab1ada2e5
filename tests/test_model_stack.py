"""The real MMDetection / MMSegmentation stack on CPU: build from the project's configs (which
inherit the packages' own), train a few iterations on phantom images, save a checkpoint and
load it back through mmengine under torch >= 2.6's weights-only default."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from mmengine.runner import load_checkpoint as mm_load_checkpoint

from converters.core.errors import CheckpointError
from train.fit.checkpoint import allow_mmengine_checkpoints, check_checkpoint
from train.fit.run_config import build_leaf
from train.fit.runner import last_checkpoint, train

TINY = {
    # (model, annotation files, options keeping the run to a few CPU seconds)
    "mask_rcnn": (("train.json", "val.json"), {
        "model.backbone.depth": 18, "model.neck.in_channels": [64, 128, 256, 512],
        "train_cfg.max_epochs": 1, "train_cfg.val_interval": 100,
        "default_hooks.logger.interval": 1}),
    "unet": (("train.txt", "val.txt"), {
        "model.backbone.base_channels": 8, "model.decode_head.in_channels": 8,
        "model.decode_head.channels": 8, "model.auxiliary_head.in_channels": 16,
        "model.auxiliary_head.channels": 8, "train_cfg.max_iters": 3,
        "train_cfg.val_interval": 100, "default_hooks.checkpoint.interval": 3,
        "default_hooks.logger.interval": 1}),
}


@pytest.mark.parametrize("model", sorted(TINY))
def test_train_few_iterations_and_roundtrip_checkpoint(model, tiny_dataset, tmp_path):
    (train_ann, val_ann), options = TINY[model]
    cfg = build_leaf(model, images=tiny_dataset / "images", masks=tiny_dataset / "masks",
                     train_ann=tiny_dataset / train_ann, val_ann=tiny_dataset / val_ann,
                     work_dir=tmp_path / "work", img_scale=(128, 320), crop_size=(128, 128),
                     dvclive=False, options=options)
    initial = None
    runner = train(cfg)
    net = runner.model
    assert runner.iter >= 2, "training ran fewer iterations than planned"
    ckpt = last_checkpoint(cfg.work_dir)
    assert ckpt is not None and ckpt.stat().st_size > 0

    # training changed the weights: the first conv differs from a freshly built model's
    from mmengine.registry import MODELS, DefaultScope
    scope = "mmdet" if model == "mask_rcnn" else "mmseg"
    with DefaultScope.overwrite_default_scope(scope):
        fresh = MODELS.build(cfg.model)
        initial = {k: v.clone() for k, v in fresh.state_dict().items()}
        # load back through mmengine's own loader (torch.load weights_only=True underneath)
        loaded = mm_load_checkpoint(fresh, str(ckpt), map_location="cpu", strict=True)
    assert "meta" in loaded and "message_hub" in loaded
    trained = net.state_dict()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, trained[key]), f"{key} differs after the round trip"
    changed = [k for k, v in trained.items()
               if v.dtype.is_floating_point and not torch.equal(v, initial[k])]
    assert changed, "no parameter changed during training"


def test_plain_torch_load_refuses_mmengine_checkpoint_but_allowlist_loads(tiny_dataset,
                                                                          tmp_path):
    """The trap of shared/STACK.md is real, and the allowlist (not a global switch) fixes it."""
    (train_ann, val_ann), options = TINY["unet"]
    cfg = build_leaf("unet", images=tiny_dataset / "images", masks=tiny_dataset / "masks",
                     train_ann=tiny_dataset / train_ann, val_ann=tiny_dataset / val_ann,
                     work_dir=tmp_path / "work", img_scale=(128, 320), crop_size=(128, 128),
                     dvclive=False, options={**options, "train_cfg.max_iters": 1,
                              "default_hooks.checkpoint.interval": 1})
    train(cfg)
    ckpt = last_checkpoint(cfg.work_dir)
    code = ("import sys, torch\n"
            "try:\n    torch.load(sys.argv[1], weights_only=True)\n"
            "except Exception as e:\n    print('refused', type(e).__name__); sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert check_checkpoint(ckpt) == ckpt          # what mmengine writes passes the check
    allow_mmengine_checkpoints()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert "state_dict" in state and state["meta"]["iter"] == 1


class _Payload:
    """Not on the allowlist: unpickling it could run arbitrary code."""


def test_allowlist_still_refuses_other_globals(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"'test_model_stack\._Payload'.*evil\.pth"):
        check_checkpoint(path)


def test_inference_refuses_a_checkpoint_with_other_globals_in_one_line(tmp_path):
    """A run whose best.pth pickles an object beyond mmengine's: refused by name before
    MMDetection / MMSegmentation unpickle anything (the CLI prints it as one line)."""
    from train.infer.inference import predict

    run = tmp_path / "run"
    run.mkdir()
    data = tmp_path / "data"
    build_leaf("unet", images=data / "images", masks=data / "masks",
               train_ann=data / "train.txt", val_ann=data / "val.txt", work_dir=run,
               img_scale=(128, 320), crop_size=(128, 128), dvclive=False
               ).dump(str(run / "config.py"))
    torch.save({"state_dict": {}, "payload": _Payload()}, run / "best.pth")
    with pytest.raises(CheckpointError, match=r"_Payload.*best\.pth"):
        next(predict(run, [tmp_path / "any.png"]))


def test_missing_or_damaged_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        check_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(CheckpointError, match=r"unreadable checkpoint .*cut\.pth"):
        check_checkpoint(tmp_path / "cut.pth")


class _AttributeGadget:
    """Pickles as getattr(HistoryBuffer, '__init__'): an attribute lookup mmengine never makes."""

    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer
        return (getattr, (HistoryBuffer, "__init__"))


def test_getattr_is_allowed_only_for_history_buffer_statistics(tmp_path):
    path = tmp_path / "gadget.pth"
    torch.save({"x": _AttributeGadget()}, path)
    with pytest.raises(CheckpointError, match=r"refused.*getattr\(HistoryBuffer, '__init__'\)"
                                              r".*gadget\.pth"):
        check_checkpoint(path)
