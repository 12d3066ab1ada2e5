"""The study's projected time (train/fit/estimate.py): schedules counted as MMEngine's loops run
them, a real timed run of a few iterations, the projection's arithmetic and its bottleneck."""
from __future__ import annotations


import pytest
from mmengine.config import Config

from train.fit.estimate import DATA_BOUND, Estimate, estimate_model, schedule, summary
from train.fit.run_config import build_leaf

TINY_UNET = {"model": {"backbone": {"base_channels": 8},
                       "decode_head": {"in_channels": 8, "channels": 8},
                       "auxiliary_head": {"in_channels": 16, "channels": 8}},
             "train_cfg": {"max_iters": 300, "val_interval": 100}}


@pytest.mark.parametrize("loop, batches, expected", [
    (dict(max_epochs=36), 10, (360, 36)),                       # every epoch by default
    (dict(max_epochs=20, val_interval=4), 28, (560, 5)),
    (dict(max_epochs=10, val_interval=4), 3, (30, 3)),          # 4, 8 and the last, 10
    (dict(max_epochs=10, val_interval=2, val_begin=5), 1, (10, 3)),   # 6, 8, 10
    (dict(type="IterBasedTrainLoop", max_iters=40000, val_interval=4000), 99, (40000, 10)),
    (dict(by_epoch=False, max_iters=500, val_interval=250), 7, (500, 2)),
    # MMEngine's defaults: an iteration-based loop validates every 1000 iterations
    (dict(type="IterBasedTrainLoop", max_iters=40000), 1, (40000, 40)),
    (dict(type="IterBasedTrainLoop", max_iters=2500), 1, (2500, 3)),
    (dict(type="mmengine.EpochBasedTrainLoop", max_epochs=3), 5, (15, 3)),   # scoped
    (dict(type="mmengine.IterBasedTrainLoop", max_iters=9, val_interval=3), 5, (9, 3)),
])
def test_a_schedule_counts_iterations_and_validations_as_mmengine_runs_them(loop, batches,
                                                                               expected):
    assert schedule(Config(dict(train_cfg=loop)), batches) == expected


def test_the_projection_adds_start_iterations_and_validations_per_fold():
    e = Estimate("unet", seconds_per_iter=0.5, data_seconds_per_iter=0.1,
                 val_seconds_per_image=0.2, start_seconds=30, iterations=1000, validations=4,
                 val_images=50, runs=5, memory_gb=None)
    assert e.run_seconds == pytest.approx(30 + 500 + 40) and e.total_seconds == 5 * e.run_seconds
    assert e.bottleneck == "device" and e.data_share == pytest.approx(0.2)
    assert e.data_share < DATA_BOUND
    waits = Estimate(**{**e.__dict__, "data_seconds_per_iter": 0.2})
    assert waits.bottleneck == "data pipeline"
    line = summary([e, waits])
    assert line.startswith("10 runs (2 models x 5 folds) projected at 1.6 h on ")
    assert "unet: the device, unet: the data pipeline" in line


def test_a_few_real_iterations_are_timed_and_projected(tmp_path, tiny_dataset):
    data = tiny_dataset
    leaf = build_leaf("unet", images=data / "images", masks=data / "masks",
                      train_ann=data / "train.txt", val_ann=data / "val.txt",
                      work_dir=tmp_path / "run", img_scale=(64, 160), crop_size=(64, 64),
                      options=TINY_UNET)
    e = estimate_model("unet", leaf, runs=3, iterations=3, warm_up=1, val_images=1)
    assert (e.iterations, e.validations, e.val_images, e.runs) == (300, 3, 2, 3)
    assert 0 < e.data_seconds_per_iter < e.seconds_per_iter and e.val_seconds_per_image > 0
    assert e.total_seconds == pytest.approx(3 * (e.start_seconds + 300 * e.seconds_per_iter
                                                 + 3 * 2 * e.val_seconds_per_image))
    assert not (tmp_path / "run").exists()            # a temporary work dir, gone
    assert leaf.train_cfg.max_iters == 300 and leaf.val_dataloader.dataset.get("indices") is None
