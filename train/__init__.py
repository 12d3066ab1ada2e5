"""spinepipe's model side: MMDetection / MMSegmentation configs, training, inference, metrics.

May import ``converters``; never ``pipeline``. Torch and the mmlab stack are imported only where
a run trains or infers.

Rooms and sub-packages (each face names its rooms; none imports anything):

- ``models``: the model registry (family, display name, best metric) and where each run lives;
  light, no torch.
- ``fit``: per-run MMEngine configs, augmentation, the runner, checkpoint loading.
- ``infer``: inference, instance post-processing, proposals, DICOM SEG and SR of predictions.
- ``evaluation``: evaluation on the fixed test set: pixel metrics, recognition, the measures'
  agreement.
- ``report``: statistics between models, tables, figures, the HTML page, the study's write-up.

Beside them, not Python: ``configs/`` (the MMDetection / MMSegmentation templates, one per model)
and ``cluster/`` (a Slurm script for the study preset).
"""

__all__ = ["evaluation", "fit", "infer", "models", "report"]
