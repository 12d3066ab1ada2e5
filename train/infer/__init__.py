"""train.infer: Inference of trained runs: predictions, proposals for annotators, DICOM SEG of
predictions and DICOM SR of their measures.

Rooms (import them by name; this face imports nothing, so start-up and DVC's deps stay
per module):

- ``inference``: Inference of a trained run (``models/<model>/fold<k>/``) through MMDetection's /
  MMSegmentation's own APIs (``init_detector`` + ``inference_detector``, ``init_model`` +
  ``inference_model``), on the run's leaf config and ``best.pth``.
- ``propose``: Proposals from trained runs (``spinepipe propose``): inference on PNGs, each
  predicted vertebra as a VIA polygon, the images in review order, and a worklist.
- ``to_seg``: An evaluation's predictions as DICOM Segmentation objects on the anonymized
  radiographs (``spinepipe to-seg``); the objects themselves: :mod:`converters.dicom.seg`.
- ``to_sr``: An evaluation's clinical measures as DICOM Measurement Reports (Comprehensive SR, TID
  1500) on the radiographs they were measured on (``spinepipe to-sr``); the objects themselves:
  :mod:`converters.dicom.sr`.
"""

__all__ = ["inference", "propose", "to_seg", "to_sr"]
