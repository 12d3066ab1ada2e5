"""What no lumbar motion segment shows is an outline, or an edge found on the image, that is
wrong: :func:`withhold_implausible` withholds both levels of such a pair, with the reason, before
anything is measured from them (never a guess; the measurable rate counts it).

Checked per pair of neighbouring usable levels (L1/L2 .. L5/S1), on the endplates measured
(refined on the image where they were, :mod:`converters.spine.refine`; a reader's polygons too,
so a reader's and a model's measures pass the same gate):

- **segmental angle** (:mod:`converters.spine.measures`: between the two superior endplates)
  beyond ``max_segment_deg`` either way. A lumbar segment's lordosis in adults lies within about
  0-35 deg (L5/S1 the largest); a fracture's or a slip's kyphosis stays within a few tens of
  degrees. Seen on the demo: a sacrum mask cut short, its hull's steep side taken for S1's
  endplate, read an L5/S1 angle of 61 deg (the truth 9) and a lordosis 52 deg too large.
- **disc not seen**: the upper body's inferior endplate and the lower body's superior one lie
  within ``min_disc_ratio`` x the median body height (the distance between a lumbar body's
  endplate midpoints) of each other along their whole length (anterior, middle and posterior
  heights, :func:`converters.spine.endplates.disc_heights`, all that small either way): one edge
  taken for both. On the demo, where the iliac wings saturate the L5/S1 region and no disc is
  seen, every model's S1 edge landed on L5's cortex, 2 mm under L5's endplate, and read the
  lordosis 8-9 deg too small. Bodies that overlap in projection (one corner well below, the
  other above) are not this case: they are measured. A disc truly collapsed under that height
  (about 2 mm on an adult lumbar body at the default 6 %) is withheld too: its two edges cannot
  be told apart.

Which of the pair's two endplates is wrong is not known, so both levels are withheld, and every
measure that uses either (:func:`converters.spine.measures.uses`) stays empty. Their refinement
fits stay in :attr:`Spine.fits` (``endplates.json`` shows where they were found).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from converters.spine.endplates import Spine, disc_heights, tilt_deg
from converters.spine.levels import LEVELS, LUMBAR
from converters.spine.refine import MeasuresConfig


def implausible(spine: Spine, cfg: MeasuresConfig) -> dict[str, str]:
    """Level -> why, for both levels of each neighbouring pair that fails a check (module
    docstring); empty where every pair passes or the spine has no frame."""
    v = spine.vertebrae
    if spine.anterior is None or spine.up is None:
        return {}
    bodies = [float(np.linalg.norm(v[lv].superior.midpoint - v[lv].inferior.midpoint))
              for lv in LUMBAR if lv in v and v[lv].inferior is not None]
    body = float(np.median(bodies)) if bodies else None
    out: dict[str, str] = {}
    for a, b in zip(LEVELS, LEVELS[1:]):
        if a not in v or b not in v:
            continue
        why = ""
        angle = tilt_deg(v[a].superior, spine) - tilt_deg(v[b].superior, spine)
        if abs(angle) > cfg.max_segment_deg:
            why = (f"{a}/{b} segmental angle {angle:.0f} deg, beyond +-{cfg.max_segment_deg:g} "
                   f"(an outline or an edge is wrong)")
        elif body and v[a].inferior is not None:
            heights = disc_heights(v[a].inferior, v[b].superior, spine.up).values()
            limit = cfg.min_disc_ratio * body
            if max(abs(h) for h in heights) <= limit:
                why = (f"{a}/{b} disc not seen (its endplates within "
                       f"{max(abs(h) for h in heights):.1f} px of each other along their length, "
                       f"{100 * cfg.min_disc_ratio:g} % of a body's height or less: one edge, "
                       f"{a}'s or {b}'s, taken for both)")
        if why:
            for lv in (a, b):
                out[lv] = f"{out[lv]}; {why}" if lv in out else why
    return out


def withhold_implausible(spine: Spine, cfg: MeasuresConfig) -> Spine:
    """The spine without the levels of :func:`implausible`, each recorded as unusable with
    its reason (the fits kept)."""
    bad = implausible(spine, cfg)
    if not bad:
        return spine
    return replace(spine, vertebrae={lv: vt for lv, vt in spine.vertebrae.items()
                                     if lv not in bad},
                   unusable={**spine.unusable, **bad})


__all__ = ["implausible", "withhold_implausible"]
