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

A disc not seen gets a second look first (:func:`look_below`, wherever the endplates were
refined on an image: evaluate and propose, convert with ``measures.refine``): a model's mask of
the lower body grown over the disc (the issue the refinement was built for: a sacrum mask
filling the L5/S1 wedge) puts its prior on the upper body's edge, and the band around it may
never reach its own. Its superior endplate is searched again from that edge moved caudally by
a disc's height (the median of the image's discs found apart, in pixels, else
:data:`DISC_SHARE` x a body's height), and kept only where its edge is seen along
:data:`SECOND_CONFIDENCE` of its length (a second hypothesis asks more of the image than the
first) and makes a spine (:func:`_second_holds`: the disc it opens apart all along, both bodies
of the pair within :data:`BODY_SPREAD` of the median body: an upper outline grown over the disc,
its edge on the lower body's, would otherwise send the second look into the lower body); the
checks then judge it like any other. On bench_refine's validation images it measured the
lordosis on 2-4 % more of the images at the same error (U-Net, PSPNet, DeepLabv3; with the
refinement's own ``min_confidence``, PSPNet's grew by half a degree, one lordosis 21 deg off on
an edge seen along 44 %).

Which of the two endplates is wrong is not known, so each usable level of the pair is withheld
(and every measure that uses it, :func:`converters.spine.measures.uses`), its endplates kept in
:attr:`Spine.withheld` (``endplates.json`` shows them, marked withheld) and its refinement fits
in :attr:`Spine.fits`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from converters.spine.endplates import (Endplate, Spine, Vertebra, disc_heights, scaled,
                                        tilt_deg, unit_vector)
from converters.spine.levels import LEVELS, LUMBAR, segment_order
from converters.spine.refine import (MeasuresConfig, against, gray_image, noise_floor,
                                     refine_endplate, refine_spine, search_band, usable_spacing)

DISC_SHARE = 0.2        # x a body's height: the disc a second look steps over, where none says
SECOND_CONFIDENCE = 0.7  # a second look's edge: seen along this share of the endplate at least
BODY_SPREAD = 0.25       # a second look's pair: both bodies within this share of the median
MIN_GAP_SHARE = 0.1     # x a body's height: a disc found on the image this high says


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
    return _by_level(spine, _failures(spine, cfg, spacing_mm))


def _by_level(spine: Spine, failures: list[tuple[str, str, str]]) -> dict[str, str]:
    """Each usable level of the failed pairs -> its reasons, joined."""
    out: dict[str, list[str]] = {}
    for a, b, why in failures:
        for lv in (a, b):
            if lv in spine.vertebrae:
                out.setdefault(lv, []).append(why)
    return {lv: " and ".join(w) for lv, w in out.items()}


def _failures(spine: Spine, cfg: MeasuresConfig, spacing_mm: tuple[float, float] | None
              ) -> list[tuple[str, str, str]]:
    """(upper level, lower level, why) of each pair that fails a check (module docstring)."""
    if spine.anterior is None or spine.up is None:
        return []
    frame, chain, body = _frame(spine, spacing_mm)
    unit = "mm" if spacing_mm else "px"
    out = []
    with_sup = [lv for lv in LEVELS if lv in chain and chain[lv][0] is not None]
    for a, b in zip(with_sup, with_sup[1:]):
        span = LEVELS.index(b) - LEVELS.index(a)
        angle = tilt_deg(chain[a][0], frame) - tilt_deg(chain[b][0], frame)
        limit = cfg.max_segment_deg * span
        if cfg.max_segment_deg < 180 and abs(angle) > limit:
            over = f" over {span} segments" if span > 1 else ""
            out.append((a, b, f"{a}/{b} segmental angle {angle:.1f} deg, beyond +-{limit:g}"
                              f"{over} (an outline or an edge is wrong)"))
    for a, b, most in _coincident(spine, frame, chain, body, cfg):
        out.append((a, b, f"{a}/{b} disc not seen (its endplates within {most:.1f} {unit} of "
                          f"each other along their length, {100 * cfg.min_disc_ratio:g} % of a "
                          "body's height or less: one edge taken for both)"))
    return out


def _frame(spine: Spine, spacing_mm: tuple[float, float] | None
           ) -> tuple[Spine, dict[str, tuple], float]:
    """The checks' spine (:func:`_chain`, in mm where the spacing is known), its endplates by
    level (superior, inferior), and the median body height (0: none measured)."""
    frame = scaled(_chain(spine), spacing_mm) if spacing_mm else _chain(spine)
    chain = {lv: (vt.superior, vt.inferior) for lv, vt in frame.vertebrae.items()}
    bodies = [float(np.linalg.norm(sup.midpoint - inf.midpoint))
              for lv, (sup, inf) in chain.items()
              if lv in LUMBAR and lv in spine.vertebrae and sup is not None and inf is not None]
    return frame, chain, float(np.median(bodies)) if bodies else 0.0


def _coincident(spine: Spine, frame: Spine, chain: dict[str, tuple], body: float,
                cfg: MeasuresConfig) -> list[tuple[str, str, float]]:
    """(upper, lower, the largest of the disc's heights) of each disc not seen (module
    docstring)."""
    out = []
    for a, b in zip(LEVELS, LEVELS[1:]):
        upper, lower = chain.get(a, (None, None))[1], chain.get(b, (None, None))[0]
        if (cfg.min_disc_ratio <= 0 or body <= 0 or upper is None or lower is None
                or not _on_image(spine, b, "superior")):
            continue
        most = max(abs(h) for h in disc_heights(upper, lower, frame.up).values())
        if most <= cfg.min_disc_ratio * body:
            out.append((a, b, most))
    return out


def refined_spine(spine: Spine, image: np.ndarray | None, cfg: MeasuresConfig,
                  spacing_mm: tuple[float, float] | None = None, *,
                  image_name: str = "the image") -> Spine:
    """The spine's endplates refined on ``image``
    (:func:`converters.spine.refine.refine_spine`), then a second look where a disc was not
    seen (:func:`look_below`): what every caller that refines gets, before the checks."""
    return look_below(refine_spine(spine, image, cfg, spacing_mm, image_name=image_name),
                      image, cfg, spacing_mm)


def look_below(spine: Spine, image: np.ndarray | None, cfg: MeasuresConfig,
               spacing_mm: tuple[float, float] | None = None) -> Spine:
    """A second look where a disc was not seen (module docstring): the lower body's superior
    endplate searched again on ``image`` (as :func:`converters.spine.refine.refine_spine` reads
    it), from its first edge moved a disc's height caudally; kept where :func:`_second_holds`,
    else the first edge stays (and the checks withhold the pair). A new spine where an edge
    was replaced (its dicts copies), else the input itself; the input is never changed."""
    if image is None or spine.anterior is None or spine.up is None:
        return spine
    spacing_mm = usable_spacing(spacing_mm)      # as search_band reads it
    frame, chain, body = _frame(spine, spacing_mm)
    pairs = [(a, b) for a, b, _ in _coincident(spine, frame, chain, body, cfg)
             if b in spine.vertebrae]
    if not pairs:
        return spine
    _, chain_px, body_px = _frame(spine, None)           # the second look works in pixels
    gap = _disc_px(spine, body_px)
    gray, down = gray_image(image), unit_vector(-np.asarray(spine.up, dtype=np.float64))
    band, floor = search_band(cfg, spacing_mm), noise_floor(gray)
    vertebrae, fits = dict(spine.vertebrae), {lv: dict(f) for lv, f in spine.fits.items()}
    for a, b in pairs:
        first = fits[b]["superior"]
        moved = Endplate(*(tuple(map(float, np.asarray(pt) + gap * down))
                           for pt in (first.refined.posterior, first.refined.anterior)))
        fit = refine_endplate(gray, moved, down, cfg, band, floor)
        if fit.refined is not None and fit.confidence >= SECOND_CONFIDENCE and \
                _second_holds(chain_px[a], (fit.refined, chain_px[b][1]), spine.up, body_px,
                              cfg):
            vertebrae[b] = replace(vertebrae[b], superior=fit.refined)
            shift, tilt = against(first.prior, fit.refined, down)
            fits[b]["superior"] = replace(fit, prior=first.prior, shift_px=shift, tilt_deg=tilt)
    if vertebrae == spine.vertebrae:
        return spine
    return replace(spine, vertebrae=vertebrae, fits=fits, unusable=dict(spine.unusable),
                   withheld=dict(spine.withheld), segments=list(spine.segments))


def _second_holds(upper: tuple, lower: tuple, up: np.ndarray, body: float,
                  cfg: MeasuresConfig) -> bool:
    """Whether a second look's edge makes a spine: the disc it opens is seen apart at its
    anterior, middle and posterior points alike (over ``min_disc_ratio`` of a body: an edge
    crossing the upper endplate is none), and both bodies of the pair (superior, inferior
    endplates; None where unknown) measure within :data:`BODY_SPREAD` of the median body
    height (an upper outline grown over the disc, its lower edge on the lower body's, made
    the upper body tall and the second look found the lower one's edge inside it)."""
    heights = disc_heights(upper[1], lower[0], up).values()
    if min(heights) <= cfg.min_disc_ratio * body:
        return False
    for sup, inf in (upper, lower):
        if sup is not None and inf is not None:
            tall = float(np.linalg.norm(sup.midpoint - inf.midpoint))
            if abs(tall - body) > BODY_SPREAD * body:
                return False
    return True


def _disc_px(spine: Spine, body_px: float) -> float:
    """A disc's height in pixels on this image: the median middle height of its discs whose
    endplates were both found on the image and lie apart (over :data:`MIN_GAP_SHARE` of a
    body, ``body_px``), else :data:`DISC_SHARE` x the body."""
    heights = []
    for a, b in zip(LEVELS, LEVELS[1:]):
        if a in spine.vertebrae and b in spine.vertebrae and \
                _on_image(spine, a, "inferior") and _on_image(spine, b, "superior"):
            upper, lower = spine.vertebrae[a].inferior, spine.vertebrae[b].superior
            if upper is not None:
                heights.append(disc_heights(upper, lower, spine.up)["middle"])
    apart = [h for h in heights if h > MIN_GAP_SHARE * body_px]
    return float(np.median(apart)) if apart else DISC_SHARE * body_px


def withhold_implausible(spine: Spine, cfg: MeasuresConfig,
                         spacing_mm: tuple[float, float] | None = None) -> Spine:
    """A new spine without the levels of :func:`implausible`: each recorded as unusable with
    its reason, its endplates in ``withheld``, the segments that failed in ``segments``; the
    input is left as it was."""
    failures = _failures(spine, cfg, spacing_mm)
    bad = _by_level(spine, failures)
    if not bad:
        return spine
    found = [f"{a}/{b}" for a, b, _ in failures if a in bad or b in bad]
    segments = sorted(set(spine.segments) | set(found), key=segment_order)
    return replace(spine, vertebrae={lv: vt for lv, vt in spine.vertebrae.items()
                                     if lv not in bad},
                   unusable={**spine.unusable, **bad}, fits=dict(spine.fits),
                   withheld={**spine.withheld,
                             **{lv: spine.vertebrae[lv] for lv in bad}}, segments=segments)


__all__ = ["implausible", "withhold_implausible", "look_below", "refined_spine"]
