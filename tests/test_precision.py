"""Mixed precision (train/fit/precision.py): AmpOptimWrapper where a preset asks for it and the
device runs it, full precision where it cannot and, said, for a run that diverges under it.

MMEngine refuses AmpOptimWrapper without an accelerator (its constructor asserts CUDA / NPU /
MLU / MUSA). The tests that train in mixed precision on this CPU open that one gate, so the real
wrapper runs: autocast to bfloat16 (MMEngine's CPU autocast), the loss scaler (which disables
itself without CUDA), MMEngine's Runner, spinepipe's fallback.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from converters.core.errors import TrainingDivergedError
from converters.core.files import prepare_output
from train.fit import precision
from train.fit.precision import FULL, MIXED, settle_precision
from train.fit.run_config import build_leaf
from train.fit.runner import drop_checkpoints, run

TINY_UNET = {"model": {"backbone": {"base_channels": 8},
                       "decode_head": {"in_channels": 8, "channels": 8},
                       "auxiliary_head": {"in_channels": 16, "channels": 8}},
             "train_cfg": {"max_iters": 4, "val_interval": 2},
             "default_hooks": {"checkpoint": {"interval": 2}, "logger": {"interval": 1}}}
AMP = {"type": "AmpOptimWrapper", "loss_scale": "dynamic"}


def _leaf(data: Path, work: Path, **options):
    return build_leaf("unet", images=data / "images", masks=data / "masks",
                      train_ann=data / "train.txt", val_ann=data / "val.txt", work_dir=work,
                      img_scale=(64, 160), crop_size=(64, 64), dvclive=False,
                      options={**TINY_UNET, **options})


@pytest.fixture()
def mixed_precision_on_cpu(monkeypatch):
    """MMEngine's device gate opened (see the module's docstring): the real wrapper runs."""
    from mmengine.optim.optimizer import amp_optimizer_wrapper
    monkeypatch.setattr(amp_optimizer_wrapper, "is_cuda_available", lambda: True)
    monkeypatch.setattr(precision, "mixed_precision_device", lambda: True)


def test_a_preset_asking_for_mixed_precision_gets_it_only_where_the_device_runs_it(
        tmp_path, tiny_dataset):
    import torch
    leaf = _leaf(tiny_dataset, tmp_path / "run", optim_wrapper={**AMP, "clip_grad": None})
    optimizer = dict(leaf.optim_wrapper.optimizer)
    said = settle_precision(leaf)
    if torch.cuda.is_available():       # the GPU machine: the branch this CPU cannot take
        assert said == MIXED and leaf.optim_wrapper.type == "AmpOptimWrapper"
    else:
        assert said.startswith(FULL + ": ") and "CUDA" in said, said
        assert dict(leaf.optim_wrapper) == {"type": "OptimWrapper", "optimizer": optimizer,
                                            "clip_grad": None}
    assert leaf.spinepipe_precision == said               # in the run's config.py
    plain = _leaf(tiny_dataset, tmp_path / "plain")
    assert settle_precision(plain) == FULL and plain.optim_wrapper.type == "OptimWrapper"
    # a preset's mixed precision switched off by its type alone (README: --cfg-options)
    off = _leaf(tiny_dataset, tmp_path / "off", optim_wrapper={**AMP, "type": "OptimWrapper"})
    assert settle_precision(off) == FULL and "loss_scale" not in off.optim_wrapper


def test_a_run_in_mixed_precision_trains_and_says_so(tmp_path, tiny_dataset,
                                                      mixed_precision_on_cpu):
    leaf = _leaf(tiny_dataset, tmp_path / "run", optim_wrapper=AMP)
    assert settle_precision(leaf) == MIXED
    metrics = run(leaf)
    assert metrics["precision"] == MIXED and metrics["iterations"] == 4
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["precision"] == MIXED
    assert "AmpOptimWrapper" in (tmp_path / "run" / "config.py").read_text()
    assert (tmp_path / "run" / "best.pth").is_file()


def test_a_run_diverging_in_mixed_precision_trains_again_in_full_precision(
        tmp_path, tiny_dataset, mixed_precision_on_cpu):
    """A learning rate of 1e8 diverges in any precision: the mixed attempt stops at its first
    NaN loss, the run starts again in float32 (its config.py and log say so), and the float32
    attempt's own divergence is the error (the dropped checkpoints: the test below)."""
    work = tmp_path / "run"
    leaf = _leaf(tiny_dataset, work, optim_wrapper={**AMP, "optimizer": {"lr": 1e8}})
    assert settle_precision(leaf) == MIXED
    with pytest.raises(TrainingDivergedError, match="training diverged at iteration"):
        run(leaf)
    config = (work / "config.py").read_text()
    assert "AmpOptimWrapper" not in config and "loss_scale" not in config
    assert "diverged at iteration" in leaf.spinepipe_precision and FULL in leaf.spinepipe_precision
    logs = sorted(work.glob("*/*.log"))
    said = [log for log in logs if "training again from iteration 1 in float32"
            in log.read_text()]
    assert said, [log.read_text()[-500:] for log in logs]
    assert not (work / "metrics.json").exists() and not (work / "best.pth").exists()


def test_a_distributed_run_diverging_in_mixed_precision_stops_naming_the_override(
        tmp_path, tiny_dataset, mixed_precision_on_cpu, monkeypatch):
    """Ranks cannot start again one by one (their collectives would no longer match)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    work = tmp_path / "run"
    leaf = _leaf(tiny_dataset, work, optim_wrapper={**AMP, "optimizer": {"lr": 1e8}})
    settle_precision(leaf)
    with pytest.raises(TrainingDivergedError, match=r"in mixed precision; train again in "
                       r"float32 \(--cfg-options optim_wrapper.type=OptimWrapper\)"):
        run(leaf)
    assert "AmpOptimWrapper" in (work / "config.py").read_text()     # not trained again


def test_a_run_starting_again_drops_its_checkpoints_only(tmp_path):
    work = tmp_path / "run"
    (work / "20261204_120000").mkdir(parents=True)
    for name in ("iter_2.pth", "best_mIoU_iter_2.pth", "last_checkpoint", "config.py",
                 "20261204_120000/vis.pth"):
        (work / name).write_text("x")
    outside = tmp_path / "elsewhere.pth"
    outside.write_text("keep")
    (work / "linked.pth").symlink_to(outside)
    prepare_output(work)                  # the run's folder, as run() makes it
    drop_checkpoints(work)
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*")) == [
        "20261204_120000", "20261204_120000/vis.pth", "config.py", "linked.pth"]
    assert outside.read_text() == "keep"


def test_resuming_a_float32_checkpoint_stays_in_float32(tmp_path, tiny_dataset,
                                                        mixed_precision_on_cpu):
    work = tmp_path / "run"
    first = _leaf(tiny_dataset, work)                     # float32, 4 iterations
    settle_precision(first)
    run(first)
    longer = {**TINY_UNET, "train_cfg": {"max_iters": 6, "val_interval": 2}}
    leaf = build_leaf("unet", images=tiny_dataset / "images", masks=tiny_dataset / "masks",
                      train_ann=tiny_dataset / "train.txt", val_ann=tiny_dataset / "val.txt",
                      work_dir=work, img_scale=(64, 160), crop_size=(64, 64), dvclive=False,
                      options={**longer, "optim_wrapper": AMP})
    assert settle_precision(leaf) == MIXED
    metrics = run(leaf, resume=True)
    assert metrics["precision"] == f"{FULL}: resumed from a float32 checkpoint"
    assert metrics["iterations"] == 6
    # and a mixed checkpoint resumes mixed
    leaf = build_leaf("unet", images=tiny_dataset / "images", masks=tiny_dataset / "masks",
                      train_ann=tiny_dataset / "train.txt", val_ann=tiny_dataset / "val.txt",
                      work_dir=tmp_path / "mixed", img_scale=(64, 160), crop_size=(64, 64),
                      dvclive=False, options={**TINY_UNET, "optim_wrapper": AMP})
    settle_precision(leaf)
    run(leaf)
    leaf.train_cfg.max_iters = 6
    assert run(leaf, resume=True)["precision"] == MIXED


def test_another_optimizer_wrapper_is_left_as_it_is(tmp_path, tiny_dataset):
    leaf = _leaf(tiny_dataset, tmp_path / "run", optim_wrapper={
        "type": "ApexOptimWrapper", "opt_level": "O1", "loss_scale": "dynamic"})
    assert settle_precision(leaf) == "as ApexOptimWrapper sets it"
    assert leaf.optim_wrapper.loss_scale == "dynamic"


def test_a_batch_fitted_in_mixed_precision_is_fitted_again_in_full(tmp_path, tiny_dataset,
                                                                  mixed_precision_on_cpu):
    """float32 keeps about twice the activations of a 16-bit autocast: a run falling back
    re-fits its batch (train.gpu_memory_gb) instead of running out of memory late."""
    from train.fit.memory import CONTEXT_GB, HEADROOM, fit_batch, footprint, refit_batch
    from train.fit.precision import to_full_precision
    leaf = _leaf(tiny_dataset, tmp_path / "run", optim_wrapper=AMP)
    assert settle_precision(leaf) == MIXED
    need = footprint(leaf)
    fit_batch(leaf, "unet", CONTEXT_GB + (need.fixed + 6.5 * need.per_image * HEADROOM) / 2 ** 30,
              train_images=100)
    assert leaf.train_dataloader.batch_size == 6
    to_full_precision(leaf, "diverged")
    refit_batch(leaf)
    assert 2 <= leaf.train_dataloader.batch_size < 6, leaf.spinepipe_batch
    assert leaf.spinepipe_batch.startswith(f"{leaf.train_dataloader.batch_size} images")
    assert leaf.auto_scale_lr.base_batch_size == 16          # the rate's base stays
