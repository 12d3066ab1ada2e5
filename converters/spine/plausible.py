"""What no lumbar motion segment shows is an outline, or an edge found on the image, that is
wrong: :func:`withhold_implausible` withholds the levels of such a segment, with the reason,
before anything is measured from them (never a guess; the measurable rate counts it).

Checked on the endplates measured (refined on the image where they were,
:mod:`converters.spine.refine`), in physical space when the pixel spacing is known (so a
non-square pixel changes nothing), between each pair of levels next to each other in the
spine as found: neighbours (L4/L5), or across levels that are missing or not usable. A level
the refinement withheld (one of its edges not seen) still takes part with the endplates it did
find on the image, never with its outline's (which the image contradicted), so a wrong S1 is
checked against L5's superior edge when only L5's inferior one was not seen:

- **segmental angle** (:mod:`converters.spine.measures`: between the two superior endplates)
  beyond ``max_segment_deg`` either way, times the number of segments spanned (L4 to S1 with
  L5 missing: twice it; endplate tilts lie within +-90 deg, so across four segments or more
  nothing is beyond it: a wrong S1 with L2-L5 missing goes unchecked). A lumbar segment's
  lordosis in adults lies within about 0-35 deg (L5/S1 the largest); a fracture's or a slip's
  kyphosis stays within a few tens of degrees.
  Seen on the demo: a sacrum mask cut short, its hull's steep side taken for S1's endplate, read
  an L5/S1 angle of 61 deg (the truth 9) and a lordosis 52 deg too large. 180 turns it off.
- **disc not seen**, only where both endplates were found on the image (a reader's or a
  model's line through a collapsed disc is what was drawn, and is measured): the upper body's
  inferior endplate and the lower body's superior one lie within ``min_disc_ratio`` x the median
  body height (the distance between a lumbar body's endplate midpoints) of each other at the
  anterior, middle and posterior points alike (:func:`converters.spine.endplates.disc_heights`,
  either sign): parallel and coincident, one edge taken for both. On the demo, where the iliac
  wings saturate the L5/S1 region and no disc is seen, every model's S1 edge landed on L5's own
  cortex, 2 mm under L5's endplate, and read the lordosis 8-9 deg too small. Bodies overlapping
  in projection are measured: their endplates cross (a negative height at one end beyond the
  limit) or lie apart; a disc collapsed to within the limit along its whole length, seen on
  the image, is withheld too (its two edges are one there). 0 turns it off.

Which of the two endplates is wrong is not known, so each usable level of the pair is withheld
(and every measure that uses it, :func:`converters.spine.measures.uses`), its endplates kept in
:attr:`Spine.withheld` (``endplates.json`` shows them, marked withheld) and its refinement fits
in :attr:`Spine.fits`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from converters.spine.endplates import Spine, Vertebra, disc_heights, scaled, tilt_deg
from converters.spine.levels import LEVELS, LUMBAR
from converters.spine.refine import MeasuresConfig


def _on_image(spine: Spine, level: str, side: str) -> bool:
    """Whether that endplate was found on the image (refined, not withheld)."""
    fit = spine.fits.get(level, {}).get(side)
    return fit is not None and fit.refined is not None


def _chain(spine: Spine) -> Spine:
    """The endplates the checks read, in the spine's frame: the usable levels', and of a level
    the refinement withheld, the sides it found on the image (None: not found)."""
    out = Spine(vertebrae=dict(spine.vertebrae), anterior=spine.anterior, up=spine.up)
    for lv, sides in spine.fits.items():
        if lv in out.vertebrae or lv in spine.withheld:
            continue
        found = {side: fit.refined for side, fit in sides.items() if fit.refined is not None}
        if found:
            out.vertebrae[lv] = Vertebra(lv, found.get("superior"), found.get("inferior"))
    return out


def implausible(spine: Spine, cfg: MeasuresConfig,
                spacing_mm: tuple[float, float] | None = None) -> dict[str, str]:
    """Level -> why, for each usable level of a pair that fails a check (module docstring);
    empty where every pair passes or the spine has no frame."""
    if spine.anterior is None or spine.up is None:
        return {}
    frame = scaled(_chain(spine), spacing_mm) if spacing_mm else _chain(spine)
    chain = {lv: (vt.superior, vt.inferior) for lv, vt in frame.vertebrae.items()}
    unit = "mm" if spacing_mm else "px"
    bodies = [float(np.linalg.norm(sup.midpoint - inf.midpoint))
              for lv, (sup, inf) in chain.items()
              if lv in LUMBAR and lv in spine.vertebrae and sup is not None and inf is not None]
    body = float(np.median(bodies)) if bodies else 0.0
    out: dict[str, list[str]] = {}

    def flag(a: str, b: str, why: str) -> None:
        for lv in (a, b):
            if lv in spine.vertebrae:
                out.setdefault(lv, []).append(why)

    with_sup = [lv for lv in LEVELS if lv in chain and chain[lv][0] is not None]
    for a, b in zip(with_sup, with_sup[1:]):
        span = LEVELS.index(b) - LEVELS.index(a)
        angle = tilt_deg(chain[a][0], frame) - tilt_deg(chain[b][0], frame)
        limit = cfg.max_segment_deg * span
        if cfg.max_segment_deg < 180 and abs(angle) > limit:
            over = f" over {span} segments" if span > 1 else ""
            flag(a, b, f"{a}/{b} segmental angle {angle:.1f} deg, beyond +-{limit:g}{over} "
                       "(an outline or an edge is wrong)")
    for a, b in zip(LEVELS, LEVELS[1:]):
        upper, lower = chain.get(a, (None, None))[1], chain.get(b, (None, None))[0]
        if (cfg.min_disc_ratio <= 0 or body <= 0 or upper is None or lower is None
                or not _on_image(spine, b, "superior")):
            continue
        most = max(abs(h) for h in disc_heights(upper, lower, frame.up).values())
        if most <= cfg.min_disc_ratio * body:
            flag(a, b, f"{a}/{b} disc not seen (its endplates within {most:.1f} {unit} of each "
                       f"other along their length, {100 * cfg.min_disc_ratio:g} % of a body's "
                       "height or less: one edge taken for both)")
    return {lv: " and ".join(w) for lv, w in out.items()}


def withhold_implausible(spine: Spine, cfg: MeasuresConfig,
                         spacing_mm: tuple[float, float] | None = None) -> Spine:
    """A new spine without the levels of :func:`implausible`: each recorded as unusable with
    its reason, its endplates in ``withheld``; the input is left as it was."""
    bad = implausible(spine, cfg, spacing_mm)
    if not bad:
        return spine
    return replace(spine, vertebrae={lv: vt for lv, vt in spine.vertebrae.items()
                                     if lv not in bad},
                   unusable={**spine.unusable, **bad}, fits=dict(spine.fits),
                   withheld={**spine.withheld,
                             **{lv: spine.vertebrae[lv] for lv in bad}})


__all__ = ["implausible", "withhold_implausible"]
