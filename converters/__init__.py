"""spinepipe's pure data library: DICOM, VIA, COCO, masks and the synthetic phantom.

Nothing here parses command lines, reads params.yaml or prints: functions take typed arguments,
return values, raise :class:`converters.core.errors.SpinepipeError` subclasses on bad input and
write files atomically (see :mod:`converters.core.files`).

Sub-packages (each face names its rooms; none imports anything):

- ``annotations``: VIA read and written, regions checked, COCO and masks, QA, convert, the split,
  readers and their consensus and agreement, proposals back into VIA.
- ``core``: errors by fault, the one write path, safe paths, parallel maps, incremental re-runs,
  provenance and pipeline records.
- ``dicom``: one DICOM reader, the PACS, de-identification and its ledger, pixels, export, SEG, SR.
- ``phantom``: the synthetic lateral lumbar phantom (plan, anatomy, physics, writing, annotator).
- ``spine``: vertebral levels, endplates and the clinical measures (geometry only).
"""

__all__ = ["annotations", "core", "dicom", "phantom", "spine"]
