"""train.fit: Training: per-run MMEngine configs, augmentation, the runner, checkpoint loading.

Rooms (import them by name; this face imports nothing, so start-up and DVC's deps stay
per module):

- ``adapt``: A model's config adapted to spinepipe's data, whatever dataset its bases were
  written for (data block, class counts, grayscale input, no remote weights).
- ``augment``: Albumentations inside the MMDetection / MMSegmentation training pipelines.
- ``checkpoint``: Loading mmengine checkpoints under torch >= 2.6's ``weights_only=True`` default.
- ``estimate``: The study's time before the night: a few training iterations of each model on
  the device at hand, projected to its whole schedule, every fold.
- ``image_cache``: Decoded training images kept on disk: each PNG decoded once per training
  run, not once per epoch.
- ``memory``: A run's batch size fitted to the GPU memory it may use, the learning rate scaled
  with it by MMEngine's ``auto_scale_lr``.
- ``precision``: Mixed precision (MMEngine's AmpOptimWrapper) where a preset asks for it and
  the device runs it; full precision where it cannot, and for a run that diverges under it.
- ``run_config``: Per-run ("leaf") MMEngine configs: a model config from ``train/configs/`` plus
  this run's data paths, image scale and schedule.
- ``runner``: Training through MMEngine's Runner, exactly as MMDetection's / MMSegmentation's tools
  do.
"""

__all__ = ["adapt", "augment", "checkpoint", "estimate", "image_cache", "memory", "precision", "run_config", "runner"]
