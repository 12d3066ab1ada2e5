"""A run's batch size fitted to ``train.gpu_memory_gb`` (train/fit/memory.py): the memory a
training iteration needs, measured on a real forward pass; the batch that fits; the learning rate
(MMEngine's auto_scale_lr) and the iteration counts that follow from it."""
from __future__ import annotations

import pytest
from mmengine.config import Config

from converters.core.errors import InvalidConfigError
from train.fit.memory import (CONTEXT_GB, HEADROOM, _saved_bytes, fit_batch, footprint,
                              same_images_seen)
from train.fit.run_config import build_leaf

TINY_UNET = {"model": {"backbone": {"base_channels": 8},
                       "decode_head": {"in_channels": 8, "channels": 8},
                       "auxiliary_head": {"in_channels": 16, "channels": 8}},
             "train_cfg": {"max_iters": 300, "val_interval": 100}}
TINY_MASK_RCNN = {"model": {"backbone": {"depth": 18},
                            "neck": {"in_channels": [64, 128, 256, 512]}}}
TINY_YOLACT = {"model": {"backbone": {"depth": 18}, "neck": {"in_channels": [64, 128, 256, 512]}}}


def _leaf(data, work, model="unet", crop=64, options=TINY_UNET):
    return build_leaf(model, images=data / "images", masks=data / "masks",
                      train_ann=data / f"train.{'txt' if model == 'unet' else 'json'}",
                      val_ann=data / f"val.{'txt' if model == 'unet' else 'json'}",
                      work_dir=work, img_scale=(crop, int(crop * 2.5)), crop_size=(crop, crop),
                      dvclive=False, options=options)


def _memory_for(need, batch: float) -> float:
    """The GiB for which the footprint's batch is ``batch`` (the inverse of Footprint.batch)."""
    return CONTEXT_GB + (need.fixed + batch * need.per_image * HEADROOM) / 2 ** 30


def test_the_saved_tensors_are_counted_once_and_the_parameters_apart():
    """A toy model whose saved tensors are known: the convolution saves its input (its weight
    is a parameter: not counted), the ReLU its output, the mean nothing."""
    import torch

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.data_preprocessor = lambda batch, training: batch

        def forward(self, inputs, mode):
            out = torch.relu(self.conv(inputs))
            return {"loss": out.mean() + torch.relu(self.conv(inputs)).mean() * 0}

    toy = Toy()
    params = {p.untyped_storage().data_ptr() for p in toy.parameters()}
    x = torch.zeros(3, 1, 10, 20)                 # 600 floats: 2400 bytes
    relu_out = 3 * 4 * 10 * 20 * 4                # 9600 bytes, twice (two ReLUs)
    assert _saved_bytes(toy, {"inputs": x}, params, False, "cpu") == 2400 + 2 * relu_out


def test_activations_grow_with_the_image_area(tmp_path, tiny_dataset):
    small = footprint(_leaf(tiny_dataset, tmp_path / "a", crop=64))
    large = footprint(_leaf(tiny_dataset, tmp_path / "b", crop=128))   # 4x the pixels
    assert 3.0 < large.per_image / small.per_image < 5.0, (small, large)
    assert small.fixed > 0 and large.fixed >= small.fixed * 0.9


def test_the_batch_fits_the_memory_and_the_schedule_keeps_the_images_seen(tmp_path,
                                                                          tiny_dataset):
    leaf = _leaf(tiny_dataset, tmp_path / "run")
    before = leaf.pretty_text
    need = footprint(leaf)
    assert leaf.pretty_text == before                       # measured, not changed
    assert leaf.train_dataloader.batch_size == 4
    said = fit_batch(leaf, "unet", _memory_for(need, 3.5), train_images=100)
    assert leaf.train_dataloader.batch_size == 3 and said.startswith("3 images: fitted to ")
    # MMSegmentation's U-Net rate is for 16 images (train/configs/unet.py): x 3/16
    assert leaf.auto_scale_lr == dict(enable=True, base_batch_size=16)
    # as many images seen: iteration counts x 4/3, the polynomial decay with them
    assert (leaf.train_cfg.max_iters, leaf.train_cfg.val_interval) == (400, 133)
    assert leaf.default_hooks.checkpoint.interval == round(200 * 4 / 3)
    assert [(s["begin"], s["end"]) for s in leaf.param_scheduler] == [(0, round(2000 * 4 / 3))]
    assert leaf.spinepipe_batch == said
    # a rate the preset chose (the demo's AdamW) is for the config's own batch
    own = _leaf(tiny_dataset, tmp_path / "own")
    fit_batch(own, "unet", _memory_for(need, 3.5), train_images=100, lr_set_here=True)
    assert own.auto_scale_lr == dict(enable=True, base_batch_size=4)


def test_the_batch_is_at_most_the_training_set_and_at_least_two_images(tmp_path, tiny_dataset):
    leaf = _leaf(tiny_dataset, tmp_path / "run")
    fit_batch(leaf, "unet", 1000.0, train_images=3)
    assert leaf.train_dataloader.batch_size == 3
    small = _leaf(tiny_dataset, tmp_path / "small")
    one_and_a_half = _memory_for(footprint(small), 1.5)   # batch-norm needs two images
    with pytest.raises(InvalidConfigError, match=r"train.gpu_memory_gb is [0-9.]+: unet needs "
                                                 r"about [0-9.]+ GiB for two images"):
        fit_batch(small, "unet", one_and_a_half, train_images=30)
    assert small.train_dataloader.batch_size == 4 and not small.auto_scale_lr.enable


def test_an_epoch_based_model_keeps_its_epochs_and_scales_its_warm_up(tmp_path, tiny_dataset):
    leaf = _leaf(tiny_dataset, tmp_path / "run", "mask_rcnn", crop=96, options=TINY_MASK_RCNN)
    epochs = leaf.train_cfg.max_epochs
    warm_up = leaf.param_scheduler[0]
    assert (warm_up["by_epoch"], warm_up["end"]) == (False, 100)
    fit_batch(leaf, "mask_rcnn", _memory_for(footprint(leaf), 8.5), train_images=100)
    assert leaf.train_dataloader.batch_size == 8 and leaf.train_cfg.max_epochs == epochs
    # MMDetection's 0.02 is for 16 images (train/configs/_base_/spine_instance.py): x 8/16
    assert leaf.auto_scale_lr == dict(enable=True, base_batch_size=16)
    assert leaf.param_scheduler[0]["end"] == round(100 * 2 / 8)      # warm-up: same images
    assert leaf.param_scheduler[1]["milestones"] == [8, 11]          # epochs: unchanged


def test_yolact_keeps_mmdetection_s_base_unless_the_preset_set_its_rate(tmp_path, tiny_dataset):
    leaf = _leaf(tiny_dataset, tmp_path / "run", "yolact", crop=96, options=TINY_YOLACT)
    assert leaf.train_dataloader.batch_size == 4 and leaf.auto_scale_lr.base_batch_size == 8
    fit_batch(leaf, "yolact", 1000.0, train_images=5)
    assert leaf.train_dataloader.batch_size == 5
    assert leaf.auto_scale_lr == dict(enable=True, base_batch_size=8)
    demo = _leaf(tiny_dataset, tmp_path / "demo", "yolact", crop=96, options={
        **TINY_YOLACT, "optim_wrapper": {"optimizer": {"_delete_": True, "type": "AdamW",
                                                       "lr": 0.001}}})
    fit_batch(demo, "yolact", 1000.0, train_images=4, lr_set_here=True)
    assert demo.auto_scale_lr == dict(enable=True, base_batch_size=4)   # x 4/4: unchanged


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


@pytest.mark.parametrize("options, key", [
    ({"model": {"backbone": {"type": "Nope"}}}, "unet: the model does not build or run"),
    ({"model": {"decode_head": {"channels": -3}}}, "unet: the model does not build or run"),
    ({"train_dataloader": {"batch_size": 0}}, "train_dataloader.batch_size is 0"),
    ({"train_dataloader": {"batch_size": None}}, "train_dataloader.batch_size is None"),
    ({"auto_scale_lr": {"base_batch_size": "x"}}, "auto_scale_lr.base_batch_size is 'x'"),
])
def test_bad_options_are_one_line_before_anything_trains(tmp_path, tiny_dataset, options, key):
    leaf = _leaf(tiny_dataset, tmp_path / "run", options={**TINY_UNET, **{
        k: {**TINY_UNET.get(k, {}), **v} for k, v in options.items()}})
    with pytest.raises(InvalidConfigError, match=key) as err:
        fit_batch(leaf, "unet", 8.0, train_images=10)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("schedulers, expected", [
    # a dict, T_max, iteration milestones, a window collapsing onto its start, a float end,
    # MMEngine's "until the end" left alone; epoch-based ones untouched
    (dict(type="CosineAnnealingLR", by_epoch=False, begin=0, T_max=3200, end=3200),
     dict(type="CosineAnnealingLR", by_epoch=False, begin=0, T_max=100, end=100)),
    ([dict(type="MultiStepLR", by_epoch=False, milestones=[1600, 2400], end=3200),
      dict(type="ConstantLR", by_epoch=False, begin=500, end=510),
      dict(type="PolyLR", by_epoch=False, begin=0, end=40000.0),
      dict(type="StepLR", by_epoch=False, step_size=640, end=9223372036854775807),
      dict(type="MultiStepLR", by_epoch=True, milestones=[8, 11], end=12)],
     [dict(type="MultiStepLR", by_epoch=False, milestones=[50, 75], end=100),
      dict(type="ConstantLR", by_epoch=False, begin=16, end=17),
      dict(type="PolyLR", by_epoch=False, begin=0, end=1250),
      dict(type="StepLR", by_epoch=False, step_size=20, end=9223372036854775807),
      dict(type="MultiStepLR", by_epoch=True, milestones=[8, 11], end=12)]),
])
def test_every_iteration_count_of_the_schedule_is_scaled(schedulers, expected):
    cfg = Config(dict(train_cfg=dict(type="IterBasedTrainLoop", max_iters=3200, val_begin=320),
                      default_hooks=dict(checkpoint=dict(by_epoch=False, interval=640)),
                      param_scheduler=schedulers))
    same_images_seen(cfg, 1 / 32)
    assert cfg.train_cfg == dict(type="IterBasedTrainLoop", max_iters=100, val_begin=10,
                                 val_interval=31)   # MMEngine's default 1000, scaled
    assert cfg.default_hooks.checkpoint.interval == 20
    got = cfg.param_scheduler
    assert (got.to_dict() if hasattr(got, "to_dict") else [dict(s) for s in got]) == expected
