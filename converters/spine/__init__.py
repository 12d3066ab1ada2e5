"""converters.spine: Spine geometry: vertebral levels and the clinical measures read from vertebra
outlines.

Rooms (import them by name; this face imports nothing, so start-up and DVC's deps stay
per module):

- ``levels``: Vertebral levels: L1-L5 and S1, assigned bottom-up from the sacrum.
- ``measures``: Clinical measures from vertebra outlines: endplates, lumbar lordosis, segmental
  angles, disc and body heights, slip (anterolisthesis) and its Meyerding grade.
"""

__all__ = ["levels", "measures"]
