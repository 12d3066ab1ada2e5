"""A run's batch size fitted to ``train.gpu_memory_gb`` (train/fit/memory.py): the memory a
training iteration needs, measured on a real forward pass; the batch that fits; the learning rate
(MMEngine's auto_scale_lr) and the iteration counts that follow from it."""
from __future__ import annotations

import pytest

from converters.core.errors import InvalidConfigError
from train.fit.memory import CONTEXT_GB, HEADROOM, fit_batch, footprint
from train.fit.run_config import build_leaf

TINY_UNET = {"model": {"backbone": {"base_channels": 8},
                       "decode_head": {"in_channels": 8, "channels": 8},
                       "auxiliary_head": {"in_channels": 16, "channels": 8}},
             "train_cfg": {"max_iters": 300, "val_interval": 100}}
TINY_MASK_RCNN = {"model": {"backbone": {"depth": 18},
                            "neck": {"in_channels": [64, 128, 256, 512]}}}


def _leaf(data, work, model="unet", crop=64, options=TINY_UNET):
    return build_leaf(model, images=data / "images", masks=data / "masks",
                      train_ann=data / f"train.{'txt' if model == 'unet' else 'json'}",
                      val_ann=data / f"val.{'txt' if model == 'unet' else 'json'}",
                      work_dir=work, img_scale=(crop, int(crop * 2.5)), crop_size=(crop, crop),
                      dvclive=False, options=options)


def _memory_for(need, batch: float) -> float:
    """The GB for which the footprint's batch is ``batch`` (the inverse of Footprint.batch)."""
    return CONTEXT_GB + (need.fixed + batch * need.per_image * HEADROOM) / 2 ** 30


def test_activations_grow_with_the_image_area(tmp_path, tiny_dataset):
    small = footprint(_leaf(tiny_dataset, tmp_path / "a", crop=64))
    large = footprint(_leaf(tiny_dataset, tmp_path / "b", crop=128))   # 4x the pixels
    assert 3.0 < large.per_image / small.per_image < 5.0, (small, large)
    assert small.fixed > 0 and large.fixed >= small.fixed * 0.9


def test_the_batch_fits_the_memory_and_the_schedule_keeps_the_images_seen(tmp_path,
                                                                          tiny_dataset):
    leaf = _leaf(tiny_dataset, tmp_path / "run")
    assert leaf.train_dataloader.batch_size == 4 and leaf.get("auto_scale_lr") is None
    said = fit_batch(leaf, "unet", _memory_for(footprint(leaf), 3.5), train_images=100)
    assert leaf.train_dataloader.batch_size == 3 and said.startswith("3 images: fitted to ")
    # the learning rate was set for the config's own batch of 4: MMEngine scales it by 3/4
    assert leaf.auto_scale_lr == dict(enable=True, base_batch_size=4)
    # as many images seen: iteration counts x 4/3, the polynomial decay with them
    assert (leaf.train_cfg.max_iters, leaf.train_cfg.val_interval) == (400, 133)
    assert leaf.default_hooks.checkpoint.interval == round(200 * 4 / 3)
    assert [(s["begin"], s["end"]) for s in leaf.param_scheduler] == [(0, round(2000 * 4 / 3))]
    assert leaf.spinepipe_batch == said


def test_the_batch_is_at_most_the_training_set_and_at_least_one_image(tmp_path, tiny_dataset):
    leaf = _leaf(tiny_dataset, tmp_path / "run")
    fit_batch(leaf, "unet", 1000.0, train_images=3)
    assert leaf.train_dataloader.batch_size == 3
    small = _leaf(tiny_dataset, tmp_path / "small")
    with pytest.raises(InvalidConfigError, match=r"train.gpu_memory_gb is 1.01: unet needs "
                                                 r"about [0-9.]+ GB for one image"):
        fit_batch(small, "unet", 1.01, train_images=3)
    assert small.train_dataloader.batch_size == 4 and small.get("auto_scale_lr") is None


def test_an_epoch_based_model_keeps_its_epochs_and_scales_its_warm_up(tmp_path, tiny_dataset):
    leaf = _leaf(tiny_dataset, tmp_path / "run", "mask_rcnn", crop=96, options=TINY_MASK_RCNN)
    epochs = leaf.train_cfg.max_epochs
    warm_up = leaf.param_scheduler[0]
    assert (warm_up["by_epoch"], warm_up["end"]) == (False, 100)
    fit_batch(leaf, "mask_rcnn", _memory_for(footprint(leaf), 8.5), train_images=100)
    assert leaf.train_dataloader.batch_size == 8 and leaf.train_cfg.max_epochs == epochs
    assert leaf.auto_scale_lr == dict(enable=True, base_batch_size=2)   # its config's batch
    assert leaf.param_scheduler[0]["end"] == round(100 * 2 / 8)      # warm-up: same images
    assert leaf.param_scheduler[1]["milestones"] == [8, 11]          # epochs: unchanged


def test_a_config_stating_its_base_batch_keeps_it(tmp_path, tiny_dataset):
    """MMDetection's YOLACT config says its learning rate is for 8 images (1 GPU x 8)."""
    leaf = _leaf(tiny_dataset, tmp_path / "run", "yolact", crop=96, options={
        "model": {"backbone": {"depth": 18}, "neck": {"in_channels": [64, 128, 256, 512]}}})
    assert leaf.train_dataloader.batch_size == 4 and leaf.auto_scale_lr.base_batch_size == 8
    fit_batch(leaf, "yolact", 1000.0, train_images=5)
    assert leaf.train_dataloader.batch_size == 5
    assert leaf.auto_scale_lr == dict(enable=True, base_batch_size=8)


def test_the_measure_is_the_same_on_every_call_and_leaves_the_generators_alone(tmp_path,
                                                                                 tiny_dataset):
    import random

    import numpy as np
    import torch
    leaf = _leaf(tiny_dataset, tmp_path / "run", "mask_rcnn", crop=96, options=TINY_MASK_RCNN)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    expected = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    first, second = footprint(leaf), footprint(leaf)
    assert first == second
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
