"""The phantom's shapes: vertebral body and sacrum outlines in local coordinates, the rounding
of their corners into the solid a radiograph shows, and the regions an annotator draws.

Local coordinates: ``u`` anterior, ``v`` down the spine's axis, in units of the vertebral body
height; :func:`to_image` turns them into image pixels (COCO convention of
:mod:`converters.annotations.coco`: x right, y down, pixel centres at +0.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d


@dataclass
class Region:
    points: np.ndarray  # (k, 2) float, image pixel coordinates: the annotator's clicks
    cls: str
    level: str | None
    #: rows of ``points`` that are the endplate corners: posterior-superior,
    #: anterior-superior, then (lumbar bodies) anterior-inferior, posterior-inferior
    corners: tuple[int, ...] = ()
    #: the same vertices where they truly are (``points`` are whole pixels, as VIA stores
    #: clicks); None when ``points`` are exact
    exact: np.ndarray | None = None

    def endplates(self) -> dict[str, list[list[float]]]:
        """The true endplates, each [posterior corner, anterior corner] as (x, y)."""
        src = self.points if self.exact is None else self.exact
        c = [[float(v) for v in src[i]] for i in self.corners]
        out = {"superior": [c[0], c[1]]}
        if len(c) == 4:
            out["inferior"] = [c[3], c[2]]
        return out

    def mirror(self, width: int) -> None:
        """Mirror x about the image's centre (a patient facing left)."""
        for name in ("points", "exact"):
            value = getattr(self, name)
            if value is not None:
                value = value.copy()
                value[:, 0] = width - value[:, 0]
                setattr(self, name, value)


# --------------------------------------------------------------------------------------------
# geometry


def rot(points_uv: np.ndarray, center: np.ndarray, phi: float) -> np.ndarray:
    """Local (u anterior, v down the spine axis) -> image; ``phi`` tilts the axis anteriorly."""
    u_hat = np.array([math.cos(phi), -math.sin(phi)])
    v_hat = np.array([math.sin(phi), math.cos(phi)])
    return center + points_uv[:, :1] * u_hat + points_uv[:, 1:2] * v_hat


def axis(phi: float) -> np.ndarray:
    """Unit vector down the spine axis tilted by ``phi`` towards anterior (+x)."""
    return np.array([math.sin(phi), math.cos(phi)])


def _edge(p0, p1, bulge, inward, n: int = 24) -> np.ndarray:
    """``n`` points from p0 towards p1 (p1 excluded), displaced by a sine bulge along
    ``inward``: a smooth side of a body."""
    s = np.arange(n) / n
    p0, p1, inward = np.asarray(p0, float), np.asarray(p1, float), np.asarray(inward, float)
    return p0 + (p1 - p0) * s[:, None] + inward * (bulge * np.sin(np.pi * s))[:, None]


def body_corners(n_points: int) -> tuple[int, int, int, int]:
    """Rows of :func:`vertebral_body`'s clicks that are its corners (posterior-superior,
    anterior-superior, anterior-inferior, posterior-inferior)."""
    counts = _edge_counts(n_points)
    ta = 1 + counts[0]
    ba = ta + 1 + counts[1]
    return 0, ta, ba, ba + 1 + counts[2]


def _edge_counts(n_points: int) -> np.ndarray:
    """Points between the corners per side: endplates get most, as annotators click along
    them (superior endplate, anterior wall, inferior endplate, posterior wall)."""
    extra = max(0, n_points - 4)
    weights = np.array([3.0, 1.5, 3.0, 1.0])
    counts = np.floor(weights / weights.sum() * extra).astype(int)
    for i in np.argsort(-weights)[: extra - counts.sum()]:
        counts[i] += 1
    return counts


def vertebral_body(rng: np.random.Generator, a: float, b: float, wedge: float,
                   n_points: int, anterior_loss: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A lateral vertebral body in local coordinates: its outline (96 points, smooth sides) and
    the rows of it an annotator clicks (``n_points``, 6-15: the four corners, at the rows of
    the clicks :func:`body_corners` gives, and points along the sides).

    ``a``/``b`` are half depth / half height; ``wedge`` > 0 makes the anterior wall taller.
    Endplates are concave, the anterior wall waisted, as on a lateral radiograph.
    ``anterior_loss`` (a wedge fracture) takes that share off the anterior wall's height.
    """
    ba, bp = b * (1 + wedge) * (1 - anterior_loss), b * (1 - wedge)
    corners = np.array([(-a, -bp), (a, -ba), (a, ba), (-a, bp)])  # clockwise on screen
    corners += rng.normal(0, 0.012 * b, size=(4, 2))
    conc = b * rng.uniform(0.04, 0.10)
    bulges = (conc, a * 0.06, conc, a * 0.03)          # endplate, anterior wall, endplate, back
    inwards = ((0, 1), (-1, 0), (0, -1), (1, 0))
    per_side = 24
    outline = np.vstack([_edge(corners[k], corners[(k + 1) % 4], bulges[k], inwards[k],
                               per_side) for k in range(4)])
    rows = []
    for k, count in enumerate(_edge_counts(n_points)):
        rows.append(k * per_side)
        along = (np.arange(1, count + 1) / (count + 1) + rng.normal(0, 0.03, count)) * per_side
        rows += sorted(int(np.clip(round(v), 1, per_side - 1)) + k * per_side for v in along)
    return outline, np.asarray(rows)


def sacrum_outline(rng: np.random.Generator, a: float, length: float, n_points: int) -> np.ndarray:
    """The sacrum in local coordinates (9-15 vertices for ``n_points`` 10-15).

    The S1 endplate runs along v=0 from the posterior corner (-a, 0) to the promontory (a, 0);
    the bone tapers to its tip, about ``length`` down the axis and posterior, with a concave
    anterior (pelvic) surface.
    """
    k = max(3, (n_points - 3) // 2)
    tip = np.array([-0.55 * a + rng.normal(0, 0.05 * a), length])
    p0, a0 = np.array([-a, 0.0]), np.array([a, 0.0])
    bow_ant = rng.uniform(0.25, 0.4) * a
    bow_post = rng.uniform(0.05, 0.15) * a
    ant = [a0 + (tip - a0) * t - (bow_ant * math.sin(math.pi * t), 0)
           for t in np.linspace(0, 1, k + 2)[1:-1]]
    post = [p0 + (tip - p0) * t - (bow_post * math.sin(math.pi * t), 0)
            for t in np.linspace(0, 1, k + 2)[1:-1]]
    pts = [p0, a0, *ant, tip, *post[::-1]]
    return np.asarray(pts) + rng.normal(0, 0.01 * a, size=(len(pts), 2))


def rect(u0, u1, v0, v1) -> np.ndarray:
    return np.array([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], dtype=float)


def smooth_outline(points: np.ndarray, radius_px: float) -> np.ndarray:
    """The solid a polygon stands for: resampled every half pixel along its boundary and
    smoothed with a Gaussian of ``radius_px`` along it, which rounds the corners and keeps the
    gentle curves (concave endplates, a waisted wall)."""
    closed = np.vstack([points, points[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(arc[-1] / 0.5), 8)
    t = np.linspace(0, arc[-1], n, endpoint=False)
    dense = np.c_[np.interp(t, arc, closed[:, 0]), np.interp(t, arc, closed[:, 1])]
    if radius_px <= 0:
        return dense
    return gaussian_filter1d(dense, sigma=2 * radius_px, axis=0, mode="wrap")


def snap(points: np.ndarray, outline: np.ndarray) -> np.ndarray:
    """Each point moved to the nearest point of ``outline``: where an annotator clicks on the
    visible edge."""
    d = np.linalg.norm(points[:, None, :] - outline[None, :, :], axis=2)
    return outline[d.argmin(axis=1)]
