"""The demo's readers: several annotators drawing the phantom's vertebrae, each in their own way.

Real reading studies measure the readers before the models; the phantom's readers give
``spinepipe agreement`` a known answer. Each reader (:data:`PROFILES`, the first
``annotator.readers`` of them) redraws the phantom's true polygon of each vertebra:

- ``jitter_mm``: each of the four corners (the polygon's vertices nearest the corners of its
  minimum-area rectangle) placed with an independent Gaussian error of this standard deviation
  per axis; the vertices between two corners move with them, linearly along the side, so a side
  stays as straight as it was (an endplate's angle error is that of its two corners);
- ``grow_mm``: a systematic outline offset, outward (positive) or inward, from the centroid;
- ``endplate_mm``: the superior endplate placed this much higher (towards the head, image -y):
  a level boundary drawn differently, seen in disc and body heights, not in angles;
- ``every``: keeps the corners and every ``every``-th other vertex (fewer points);
- ``miss_share``: the share of images in which the reader misses the top lumbar vertebra (L1 at
  the film's edge, as readers do).

Millimetres become pixels with the image's pixel spacing (export's provenance). Who reads what:
``annotator.double_read_share`` of the images (by a hash of their key) are read by every reader,
the others by one (by the same hash). Everything depends only on the image's key and the
reader, so adding images leaves the others' drawings unchanged. The key is a salt-free identity
of the image (the demo: the phantom's own SOP Instance UID, used only inside the hash, never
written): a site's salt renames the PNGs but changes neither who reads which image nor what
they draw.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from converters.annotations.via import AnnotatedRegion
from converters.core.provenance import pixel_spacing, read_record


@dataclass(frozen=True)
class ReaderProfile:
    name: str
    jitter_mm: float
    grow_mm: float
    endplate_mm: float
    every: int
    miss_share: float


#: the demo's readers, in order: a careful one, one who draws larger with fewer points and
#: misses L1 at times, one who draws smaller and places the superior endplates higher
PROFILES = (
    ReaderProfile("reader1", 0.6, 0.0, 0.0, 1, 0.0),
    ReaderProfile("reader2", 0.7, 0.5, 0.0, 2, 0.1),
    ReaderProfile("reader3", 0.8, -0.4, 0.4, 1, 0.0),
)


@dataclass(frozen=True)
class AnnotatorConfig:
    """params.yaml section ``annotator``: the demo's readers (``phantom-annotations``)."""

    #: exported images left unannotated, for ``spinepipe propose``
    #: (:func:`converters.phantom.annotator.held_out`)
    holdout: int = field(default=0, metadata={"min": 0})
    #: readers drawing the images (the first of :data:`PROFILES`; dvc.yaml lists three)
    readers: int = field(default=1, metadata={"min": 1, "max": len(PROFILES)})
    #: the share of images every reader reads (the others: one reader each)
    double_read_share: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})


def _unit(key: str, *what: str) -> float:
    """A number in [0, 1) from the image's key and what it decides (stable, independent of
    the other images)."""
    h = hashlib.sha256("\x00".join((key, *what)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def readers_of(key: str, n_readers: int, double_read_share: float) -> list[str]:
    """The readers who read the image keyed ``key`` (module docstring)."""
    names = [p.name for p in PROFILES[:n_readers]]
    if _unit(key, "double") < double_read_share:
        return names
    return [names[int(_unit(key, "reader") * len(names))]]


def _corners(pts: np.ndarray) -> list[int]:
    """Indices of the polygon's vertices nearest its minimum-area rectangle's corners, in
    polygon order (distinct)."""
    box = cv2.boxPoints(cv2.minAreaRect(pts.astype(np.float32)))
    idx: list[int] = []
    for corner in box:
        d = np.hypot(*(pts - corner).T)
        d[idx] = np.inf
        idx.append(int(np.argmin(d)))
    return sorted(idx)


def draw(xs: list[float], ys: list[float], profile: ReaderProfile, spacing_mm: float,
         rng: np.random.Generator) -> tuple[list[float], list[float]]:
    """One polygon as ``profile`` draws it (pixels, the COCO convention of the phantom)."""
    pts = np.c_[xs, ys].astype(np.float64)
    n = len(pts)
    if n < 4:
        return list(xs), list(ys)
    corners = _corners(pts)
    shift = rng.normal(0.0, profile.jitter_mm / spacing_mm, (len(corners), 2))
    moved = pts.copy()
    seg = np.hypot(*np.diff(np.vstack([pts, pts[:1]]), axis=0).T)
    for k, start in enumerate(corners):
        end = corners[(k + 1) % len(corners)]
        run = [(start + j) % n for j in range((end - start) % n or n)]
        along = np.concatenate([[0.0], np.cumsum(seg[run])])
        total = along[-1] or 1.0
        for j, i in enumerate(run):
            t = along[j] / total
            moved[i] = pts[i] + (1 - t) * shift[k] + t * shift[(k + 1) % len(corners)]
    centre = pts.mean(axis=0)
    out = moved - centre
    out = moved + profile.grow_mm / spacing_mm * out / np.maximum(
        np.hypot(out[:, 0], out[:, 1]), 1e-9)[:, None]
    if profile.endplate_mm:
        top = sorted(corners, key=lambda i: pts[i, 1])[:2]   # the superior corners
        a, b = sorted(top)
        inner = any(a < c < b for c in corners)   # the arc a..b runs over another corner
        side = [*range(b, n), *range(a + 1)] if inner else range(a, b + 1)
        for i in side:
            out[i, 1] -= profile.endplate_mm / spacing_mm
    keep = [i for i in range(n) if i in corners or i % max(profile.every, 1) == 0]
    return [float(x) for x in out[keep, 0]], [float(y) for y in out[keep, 1]]


def redraw(key: str, regions: list[AnnotatedRegion], profile: ReaderProfile,
           spacing_mm: float) -> list[AnnotatedRegion]:
    """The true polygon regions of the image keyed ``key`` as ``profile`` draws them (module
    docstring)."""
    rng = rng_for(key, profile)
    if misses_top(key, profile):
        lumbar = [r for r in regions if r.attributes.get("class") == "lumbar"]
        if lumbar:
            top = min(lumbar, key=lambda r: float(np.mean(r.ys)))
            regions = [r for r in regions if r is not top]
    return [dataclasses.replace(r, xs=xy[0], ys=xy[1]) for r in regions
            for xy in [draw(r.xs, r.ys, profile, spacing_mm, rng)]]


def misses_top(key: str, profile: ReaderProfile) -> bool:
    """Whether ``profile`` misses the top lumbar vertebra of the image keyed ``key``."""
    return _unit(key, profile.name, "miss") < profile.miss_share


def rng_for(key: str, profile: ReaderProfile) -> np.random.Generator:
    return np.random.default_rng(int(_unit(key, profile.name, "draw") * 2**63))


def profiles_record(n_readers: int, double_read_share: float) -> dict:
    """What ``readers_truth.json`` records of the readers."""
    return {"double_read_share": double_read_share,
            "readers": {p.name: asdict(p) for p in PROFILES[:n_readers]}}


def readers_record(cfg: AnnotatorConfig, who: dict[str, list[str]],
                   key: Callable[[str], str] = str) -> dict:
    """``readers_truth.json``: the profiles, who read each image (by its PNG name), who missed
    its top lumbar; ``key``: a PNG name's key (module docstring)."""
    profile = {p.name: p for p in PROFILES}
    missed = {name: [r for r in readers if misses_top(key(name), profile[r])]
              for name, readers in sorted(who.items())}
    return {**profiles_record(cfg.readers, cfg.double_read_share),
            "images": {name: who[name] for name in sorted(who)},
            "missed_top": {name: rs for name, rs in missed.items() if rs}}


def png_spacing(png_dir: Path, name: str) -> float:
    """An exported PNG's pixel spacing in mm (export's provenance); 1 when unknown."""
    spacing = pixel_spacing(read_record(png_dir, name))
    return float(spacing[0]) if spacing else 1.0
