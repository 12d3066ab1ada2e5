"""spinepipe's pure data library: DICOM, VIA, COCO, masks and the synthetic phantom.

Nothing here parses command lines, reads params.yaml or prints: functions take typed arguments,
return values, raise :class:`converters.core.errors.SpinepipeError` subclasses on bad input and
write files atomically (see :mod:`converters.core.files`).
"""
