"""train.evaluation: Evaluation on the fixed test set: pixel metrics, recognition, agreement of
measures.

Rooms (import them by name; this face imports nothing, so start-up and DVC's deps stay
per module):

- ``agreement``: Clinical measures of a model's predictions against the ground truth's (evaluate's
  part of :mod:`converters.spine.measures`): per test image the measures of both, then per measure
  the agreement (Bland-Altman): mean absolute error, bias (mean of prediction - truth), the 95 %
  limits of agreement (bias -/+ 1.96 SD of the differences), and the measurable rate.
- ``evaluate``: Evaluation of one model x fold on the fixed test set: predictions, per-image pixel
  metrics (:mod:`train.evaluation.metrics`), recognition rates
  (:mod:`train.evaluation.recognition`), pooled metrics.
- ``metrics``: Pixel metrics of label masks: the study's four per-image metrics and pooled
  versions.
- ``recognition``: Instances of a prediction and the study's recognition rates, judged
  automatically.
- ``test_set``: The fixed test set's ground truth as evaluate reads it (split's COCO, convert's
  class masks).
"""

__all__ = ["agreement", "evaluate", "metrics", "recognition", "test_set"]
