"""converters.spine: Spine geometry: vertebral levels and the clinical measures read from vertebra
outlines.

Rooms (import them by name; this face imports nothing, so start-up and DVC's deps stay
per module):

- ``endplates``: Endplates from vertebra outlines (:func:`find_vertebrae`): the geometry the
  clinical measures (:mod:`converters.spine.measures`) are read from.
- ``fused``: A semantic model's lumbar blob over two or more bodies cut into one outline per
  body before the levels are assigned, so that the measures are made from what it did see.
- ``levels``: Vertebral levels: L1-L5 and S1, assigned bottom-up from the sacrum.
- ``measures``: Clinical measures from vertebra outlines (through their endplates): lumbar
  lordosis, segmental angles, disc and body heights, slip (anterolisthesis) and its Meyerding
  grade.
- ``plausible``: What no lumbar motion segment shows is an outline, or an edge found on the
  image, that is wrong: both levels of such a pair are withheld, with the reason.
- ``refine``: Endplates found where they are on the full-resolution radiograph, not where a
  coarse outline says (the outline's endplate is a prior; the bone's edge is searched around it).
"""

__all__ = ["endplates", "fused", "levels", "measures", "plausible", "refine"]
