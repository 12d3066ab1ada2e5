"""The phantom's anatomy: lumbar vertebral bodies on a lordotic curve, the sacrum, posterior
elements, iliac wings, soft tissue, degenerated discs (overlapping bodies), implants, and the
projection that turns them into a radiograph's pixel values.

Geometry follows :mod:`converters.annotations.coco` (continuous coordinates, x right, y down, pixel
centres at +0.5); shapes are rendered from the very integer polygons the VIA file stores. Pixel
values are 12-bit (0-:data:`MAX_VALUE`), MONOCHROME2 sense (bone bright); densities of overlapping
structures add, as in a projection. :mod:`converters.phantom.writing` plans the cases and writes
the DICOM objects, the VIA project and the truth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import cv2
import numpy as np

from converters.spine.levels import LUMBAR as LUMBAR_LEVELS

if TYPE_CHECKING:
    from converters.phantom.writing import PhantomConfig

MAX_VALUE = 4095  # 12 bits stored


@dataclass(frozen=True)
class CaseSpec:
    """One image to render: who it belongs to and which of the random features it has."""

    index: int
    patient_index: int
    patient_image: int  # 0 for the patient's first image
    n_patient_images: int


@dataclass
class Region:
    points: np.ndarray  # (k, 2) float, image pixel coordinates
    cls: str
    level: str | None
    #: rows of ``points`` that are the endplate corners: posterior-superior,
    #: anterior-superior, then (lumbar bodies) anterior-inferior, posterior-inferior
    corners: tuple[int, ...] = ()

    def endplates(self) -> dict[str, list[list[float]]]:
        """The true endplates, each [posterior corner, anterior corner] as (x, y)."""
        c = [[float(v) for v in self.points[i]] for i in self.corners]
        out = {"superior": [c[0], c[1]]}
        if len(c) == 4:
            out["inferior"] = [c[3], c[2]]
        return out



# --------------------------------------------------------------------------------------------
# geometry


def _rot(points_uv: np.ndarray, center: np.ndarray, phi: float) -> np.ndarray:
    """Local (u anterior, v down the spine axis) -> image; ``phi`` tilts the axis anteriorly."""
    u_hat = np.array([math.cos(phi), -math.sin(phi)])
    v_hat = np.array([math.sin(phi), math.cos(phi)])
    return center + points_uv[:, :1] * u_hat + points_uv[:, 1:2] * v_hat


def _axis(phi: float) -> np.ndarray:
    """Unit vector down the spine axis tilted by ``phi`` towards anterior (+x)."""
    return np.array([math.sin(phi), math.cos(phi)])


def _edge(p0, p1, n, bulge, rng, inward) -> list[tuple[float, float]]:
    """``n`` interior points on the segment p0->p1, displaced by a sine bulge along ``inward``."""
    pts = []
    for k in range(1, n + 1):
        s = k / (n + 1) + rng.normal(0, 0.03)
        x = p0[0] + (p1[0] - p0[0]) * s + inward[0] * bulge * math.sin(math.pi * s)
        y = p0[1] + (p1[1] - p0[1]) * s + inward[1] * bulge * math.sin(math.pi * s)
        pts.append((x, y))
    return pts


def body_corners(n_points: int) -> tuple[int, int, int, int]:
    """Rows of :func:`vertebral_body`'s outline that are its corners (posterior-superior,
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
                   n_points: int) -> np.ndarray:
    """A lateral vertebral body outline in local coordinates, ``n_points`` (6-15) vertices,
    its corners at the rows :func:`body_corners` gives.

    ``a``/``b`` are half depth / half height; ``wedge`` > 0 makes the anterior wall taller.
    Endplates are slightly concave, the anterior wall waisted, as on a lateral radiograph.
    """
    ba, bp = b * (1 + wedge), b * (1 - wedge)
    tp, ta, bA, bP = (-a, -bp), (a, -ba), (a, ba), (-a, bp)  # corners, clockwise on screen
    counts = _edge_counts(n_points)
    conc = b * rng.uniform(0.04, 0.10)
    pts: list[tuple[float, float]] = [tp]
    pts += _edge(tp, ta, counts[0], conc, rng, (0, 1))             # superior endplate
    pts.append(ta)
    pts += _edge(ta, bA, counts[1], a * 0.06, rng, (-1, 0))         # anterior wall
    pts.append(bA)
    pts += _edge(bA, bP, counts[2], conc, rng, (0, -1))             # inferior endplate
    pts.append(bP)
    pts += _edge(bP, tp, counts[3], a * 0.03, rng, (1, 0))          # posterior wall
    jitter = rng.normal(0, 0.012 * b, size=(len(pts), 2))
    return np.asarray(pts) + jitter


def sacrum_outline(rng: np.random.Generator, a: float, length: float, n_points: int) -> np.ndarray:
    """The sacrum in local coordinates (10-15 vertices).

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


def _rect(u0, u1, v0, v1) -> np.ndarray:
    return np.array([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], dtype=float)


# --------------------------------------------------------------------------------------------
# rendering


class _Canvas:
    """A float32 density image; polygons are added in their bounding boxes only."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.d = np.zeros((h, w), np.float32)

    def _window(self, pts: np.ndarray, pad: int):
        x0 = max(int(np.floor(pts[:, 0].min())) - pad, 0)
        y0 = max(int(np.floor(pts[:, 1].min())) - pad, 0)
        x1 = min(int(np.ceil(pts[:, 0].max())) + pad + 1, self.w)
        y1 = min(int(np.ceil(pts[:, 1].max())) + pad + 1, self.h)
        return x0, y0, x1, y1

    def fill(self, pts: np.ndarray, value: float, *, texture: Callable | None = None,
             rim: float = 0.0, rim_px: int = 0) -> None:
        x0, y0, x1, y1 = self._window(pts, 2)
        if x1 <= x0 or y1 <= y0:
            return
        # OpenCV has pixel centres at integers, COCO at +0.5: shift by half a pixel
        local = np.round((pts - 0.5 - (x0, y0)) * 16).astype(np.int32)  # 4 fractional bits
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(m, [local], 255, lineType=cv2.LINE_AA, shift=4)
        mf = m.astype(np.float32) * (1 / 255)
        layer = mf * value
        if texture is not None:
            layer *= texture(mf.shape)
        if rim and rim_px > 0:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim_px + 1, 2 * rim_px + 1))
            layer += (mf - cv2.erode(mf, k)) * rim
        self.d[y0:y1, x0:x1] += layer


def _lowfreq(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth random field (zero mean, unit-ish variance) with features about ``cell`` px big."""
    h, w = shape
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    small = rng.standard_normal((gh, gw), dtype=np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def render(case: CaseSpec, cfg: PhantomConfig) -> tuple[np.ndarray, list[Region], dict]:
    """Render one image; returns 12-bit pixel values (MONOCHROME2 sense), regions, facts."""
    H, W = cfg.height, cfg.width
    prng = np.random.default_rng([cfg.seed, 1, case.patient_index])  # the patient's anatomy
    rng = np.random.default_rng([cfg.seed, 2, case.index])           # this image
    # features of this image
    post_op = case.patient_image > 0 or case.n_patient_images == 1
    implants = bool(rng.random() < cfg.implant_share) and post_op
    if case.n_patient_images > 1 and case.patient_image == 0:
        implants = False  # the pre-operative image of a patient who was operated later
    overlap = bool(rng.random() < cfg.overlap_share)
    thoracic = bool(rng.random() < cfg.thoracic_share)

    # anatomy in units of the vertebral body height (b = 0.5)
    depth = prng.uniform(1.25, 1.55)
    # L1-S1 comes to about 1.6 x this + the sacral angle: 20-70 degrees over the patients
    lordosis = math.radians(prng.uniform(8, 32) + rng.normal(0, 2))
    sacral_extra = math.radians(prng.uniform(8, 18) + rng.normal(0, 2))
    heights = 1.0 + prng.normal(0, 0.04, 7)   # T12, L1..L5 and a spare
    gaps = prng.uniform(0.22, 0.34, 7)        # T12/L1, L1/L2, ..., L5/S1
    overlap_discs: list[int] = []             # index into gaps: 1 = L1/L2, ..., 5 = L5/S1
    if overlap:
        n_ov = 1 if rng.random() < 0.7 else 2
        overlap_discs = sorted(rng.choice([3, 4, 5, 2], size=n_ov, replace=False,
                                          p=[0.35, 0.35, 0.2, 0.1]).tolist())
    fused: list[int] = []  # lumbar/sacral indices 1..6 (L1..L5, S1) spanned by the fusion
    cage_discs: list[int] = []
    if implants:
        n_lev = int(rng.choice([2, 3, 4], p=[0.55, 0.3, 0.15]))
        tops = np.arange(2, 8 - n_lev)  # fusions are mostly low: L4-S1 more often than L2-L3
        top = int(rng.choice(tops, p=2.0 ** tops / (2.0 ** tops).sum()))
        fused = list(range(top, top + n_lev))
        for d in range(fused[0], fused[-1]):  # disc between d and d+1 has index d
            if rng.random() < 0.6:
                cage_discs.append(d)
        overlap_discs = [d for d in overlap_discs if d not in cage_discs]
    overlap = bool(overlap_discs)
    for d in range(len(gaps)):
        if d in overlap_discs:
            gaps[d] = -rng.uniform(0.06, 0.22)   # collapsed disc: bodies overlap in projection
        elif d in cage_discs:
            gaps[d] = rng.uniform(0.28, 0.36)    # cage restores disc height

    # chain of bodies from T12 (index 0) down to L5 (index 5); axis angles follow the lordosis
    n_b = 6
    # L1 leans anteriorly-down, L5 posteriorly-down; the sacrum continues the curve
    phis = [lordosis * (0.6 - 1.6 * (i - 1) / 4) + rng.normal(0, math.radians(2.0))
            for i in range(n_b)]
    phis[0] = lordosis * 0.9
    centers = [np.zeros(2)]
    for i in range(1, n_b):
        step = heights[i - 1] / 2 + gaps[i - 1] + heights[i] / 2
        phi_mid = (phis[i - 1] + phis[i]) / 2
        centers.append(centers[-1] + step * _axis(phi_mid))
    # sacrum: its S1 endplate sits below L5 after the L5/S1 disc
    phi_s = phis[5] - sacral_extra  # sacral slope = L5 tilt + a lordotic L5/S1 disc
    phi_ls = (phis[5] + phi_s) / 2
    s_top = centers[5] + (heights[5] / 2 + gaps[5]) * _axis(phi_ls)
    a = depth / 2
    s_len = prng.uniform(1.8, 2.2)
    s_a = a * prng.uniform(1.0, 1.12)
    # S1's posterior-superior corner under L5's posterior-inferior one (no slip unless drawn):
    # move the sacrum along its endplate by what separates the two corners there
    u_s = np.array([math.cos(phi_s), -math.sin(phi_s)])
    l5_corner = centers[5] - a * np.array([math.cos(phis[5]), -math.sin(phis[5])]) \
        + heights[5] / 2 * 0.91 * _axis(phis[5])   # L5 is wedged: its posterior wall shorter
    s_top = s_top + float((l5_corner - (s_top - s_a * u_s)) @ u_s) * u_s
    # a degenerative slip (grade I-II): the body and everything above it moves anteriorly
    # along the endplate below (its own generator: the other features stay as they were)
    srng = np.random.default_rng([cfg.seed, 5, case.index])
    slip: dict | None = None
    if srng.random() < cfg.slip_share:
        k = int(srng.choice([3, 4, 5], p=[0.15, 0.5, 0.35]))   # L3/L4, L4/L5, L5/S1
        fraction = float(srng.uniform(0.08, 0.45))
        below_phi = phis[k + 1] if k < 5 else phi_s
        shift = fraction * depth * np.array([math.cos(below_phi), -math.sin(below_phi)])
        for i in range(k + 1):
            centers[i] = centers[i] + shift
        slip = {"pair": LUMBAR_LEVELS[k - 1] + "/" + (LUMBAR_LEVELS[k] if k < 5 else "S1"),
                "fraction": round(fraction, 4)}

    bodies_local, corners = [], []
    for i in range(n_b):
        wedge = rng.normal(0, 0.04) + (0.09 if i == 5 else 0.0) - (0.03 if i == 1 else 0.0)
        n_pts = int(rng.integers(6, 16))
        corners.append(body_corners(n_pts))
        bodies_local.append(vertebral_body(rng, a * (1 + rng.normal(0, 0.03)),
                                           heights[i] / 2, wedge, n_pts))
    bodies = [_rot(bodies_local[i], centers[i], phis[i]) for i in range(n_b)]
    # the sacral outline's v=0 is its superior endplate; centre it on the axis below L5
    sacrum = _rot(sacrum_outline(rng, s_a, s_len, int(rng.integers(10, 16))), s_top, phi_s)

    # fit into the image: L1 top .. sacrum bottom spans a share of the height, the lumbar
    # bodies a share of the width; the anterior cortex stays inside with soft tissue in front
    annotated = np.vstack(bodies[1:] + [sacrum])
    lumbar = np.vstack(bodies[1:])
    ymin, ymax = annotated[:, 1].min(), annotated[:, 1].max()
    span = rng.uniform(0.62, 0.74) if thoracic else rng.uniform(0.74, 0.84)
    scale = min(span * H / (ymax - ymin),
                rng.uniform(0.42, 0.52) * W / (lumbar[:, 0].max() - lumbar[:, 0].min()))
    bottom = H * (1 - rng.uniform(0.03, 0.07)) - (span * H - (ymax - ymin) * scale) / 2
    off = np.array([W * rng.uniform(0.80, 0.88) - lumbar[:, 0].max() * scale,
                    bottom - ymax * scale])

    def to_img(p: np.ndarray) -> np.ndarray:
        return p * scale + off

    # annotated shapes are rounded to VIA's integer vertices before rendering, so the image
    # shows exactly what the annotation says
    bodies = [np.rint(to_img(p)) for p in bodies]
    sacrum = np.rint(to_img(sacrum))
    centers_img = [to_img(c) for c in centers]
    unit = scale  # pixels per vertebral body height
    facing_left = bool(rng.random() < 0.5)

    cv = _Canvas(H, W)
    # soft tissue: the body's lateral silhouette, thicker in the middle, bowel gas and fat
    xs = np.arange(W, dtype=np.float32)
    ys = np.arange(H, dtype=np.float32)[:, None]
    front = W * (0.93 + 0.06 * np.sin(np.pi * ys / H + rng.uniform(-0.5, 0.5)))
    back = W * rng.uniform(0.0, 0.06) + 0.02 * W * np.sin(2 * np.pi * ys / H)
    mid, half = (front + back) / 2, np.maximum((front - back) / 2, 1)
    chord = np.sqrt(np.clip(1 - ((xs[None, :] - mid) / half) ** 2, 0, 1))
    tissue = rng.uniform(0.28, 0.40) * chord
    tissue *= 1 + 0.08 * _lowfreq(rng, (H, W), 0.12 * H)
    gas = np.clip(_lowfreq(rng, (H, W), 0.05 * H) - 1.2, 0, None) * 0.10
    cv.d += tissue - gas * chord

    def trabecular(shape):
        t = 1 + 0.10 * _lowfreq(rng, shape, max(2.0, 0.06 * unit))
        return t + 0.05 * rng.standard_normal(shape, dtype=np.float32)

    bone = rng.uniform(0.30, 0.42)
    rim_px = max(1, int(round(0.035 * unit)))
    # iliac wings and hips behind the sacrum (not annotated)
    il_c = sacrum.mean(axis=0) + np.array([-0.1 * unit, -0.35 * unit])
    ang = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    ilium = il_c + np.c_[1.6 * unit * np.cos(ang), 1.1 * unit * np.sin(ang)]
    cv.fill(ilium, bone * 0.35, texture=trabecular, rim=bone * 0.4, rim_px=rim_px)
    # posterior elements (pedicle, lamina, spinous process) of T12..L5: fainter, not annotated
    for i in range(n_b):
        hh = heights[i] / 2
        ped = _rect(-a - 0.55 * depth, -a + 0.05, -0.45 * hh, 0.25 * hh)
        spin = np.array([(-a - 0.5 * depth, -0.35 * hh), (-a - 1.25 * depth, 0.05 * hh),
                         (-a - 1.3 * depth, 0.55 * hh), (-a - 0.55 * depth, 0.45 * hh)])
        facet = _rect(-a - 0.65 * depth, -a - 0.35 * depth, 0.35 * hh, 1.2 * hh)
        for part, dens in ((ped, 0.55), (spin, 0.45), (facet, 0.5)):
            cv.fill(to_img(_rot(part, centers[i], phis[i])), bone * dens, texture=trabecular)
    # ribs near T12 when the thoracic spine is in view
    if thoracic:
        for r in range(2):
            c = centers_img[0] + np.array([-0.6 * unit, (-0.6 + 0.9 * r) * unit])
            t = np.linspace(0, 1, 12)
            top = np.c_[c[0] + t * 2.4 * unit, c[1] + 0.8 * unit * t ** 1.5]
            rib = np.vstack([top, top[::-1] + (0, 0.22 * unit)])
            cv.fill(rib, bone * 0.35, rim=bone * 0.3, rim_px=rim_px)
    # vertebral bodies (T12 too: it is in the picture but not annotated) and the sacrum
    for p in bodies:
        cv.fill(p, bone, texture=trabecular, rim=bone * 0.9, rim_px=rim_px)
    cv.fill(sacrum, bone * 0.9, texture=trabecular, rim=bone * 0.8, rim_px=rim_px)

    regions: list[Region] = [Region(bodies[i], "lumbar", LUMBAR_LEVELS[i - 1], corners[i])
                             for i in range(1, 6)]
    regions.append(Region(sacrum, "sacrum", "S1", (0, 1)))

    # implants: pedicle screws in each fused level, a rod joining their heads, cages in discs
    metal = 2.2
    if implants:
        heads = []
        for lev in fused:
            if lev <= 5:
                c, phi, hh = centers[lev], phis[lev], heights[lev] / 2
            else:  # S1 screw
                c, phi, hh = s_top + 0.45 * _axis(phi_s), phi_s, 0.35
            tilt = rng.normal(0, 0.06)
            length = depth * rng.uniform(0.95, 1.25)
            w = 0.11 * rng.uniform(0.9, 1.1)
            base_u = -a - 0.55 * depth
            shaft = np.array([(base_u, -w), (base_u + length, -w * 0.6 + tilt * length),
                              (base_u + length + 0.08, tilt * length),
                              (base_u + length, w * 0.6 + tilt * length), (base_u, w)])
            head = _rect(base_u - 0.22, base_u + 0.02, -0.17, 0.17)
            shaft_i = to_img(_rot(shaft - (0, 0.1 * hh), c, phi))
            head_i = to_img(_rot(head - (0, 0.1 * hh), c, phi))
            screw = np.rint(np.vstack([head_i[:2], shaft_i, head_i[2:]]))
            cv.fill(screw, metal)
            regions.append(Region(screw, "screw", None))
            heads.append(head_i.mean(axis=0))
        heads_arr = np.asarray(heads)
        direction = heads_arr[-1] - heads_arr[0]
        normal = np.array([-direction[1], direction[0]]) / (np.linalg.norm(direction) + 1e-9)
        half_w = 0.07 * unit
        ext = direction / (np.linalg.norm(direction) + 1e-9) * 0.25 * unit
        path = np.vstack([heads_arr[0] - ext, heads_arr, heads_arr[-1] + ext])
        rod = np.rint(np.vstack([path + normal * half_w, (path - normal * half_w)[::-1]]))
        cv.fill(rod, metal * 0.9)
        regions.append(Region(rod, "rod", None))
        for d in cage_discs:  # disc d lies between L<d> and L<d+1> (or S1 when d == 5)
            upper_bottom = centers[d] + heights[d] / 2 * _axis(phis[d])
            if d < 5:
                phi_low = phis[d + 1]
                lower_top = centers[d + 1] - heights[d + 1] / 2 * _axis(phi_low)
            else:
                phi_low, lower_top = phi_s, s_top
            phi = (phis[d] + phi_low) / 2
            mid_pt = (upper_bottom + lower_top) / 2
            gh = max(0.12, float(np.linalg.norm(lower_top - upper_bottom))) * 0.85
            cage = _rect(-0.55 * a, 0.75 * a, -gh / 2, gh / 2)
            cage_i = np.rint(to_img(_rot(cage, mid_pt, phi)))
            cv.fill(cage_i, metal * 0.55)
            regions.append(Region(cage_i, "cage", None))

    # image formation: unsharpness, detector response, quantum and electronic noise
    d = cv2.GaussianBlur(cv.d, (0, 0), sigmaX=max(0.5, 0.0012 * H))
    if facing_left:
        d = d[:, ::-1]
        for r in regions:
            r.points = r.points.copy()
            r.points[:, 0] = W - r.points[:, 0]  # mirror of x about the image centre
    k = rng.uniform(1.2, 1.8)  # contrast
    signal = 150 + 3700 * (1 - np.exp(-k * d))
    q = rng.uniform(0.6, 1.4)
    signal += rng.standard_normal((H, W), dtype=np.float32) * (q * np.sqrt(signal) + 4)
    pixels = np.clip(np.rint(signal), 0, MAX_VALUE).astype(np.uint16)
    info = {
        "implants": implants,
        "overlap": overlap,
        "overlap_discs": [("L%d/L%d" % (i, i + 1)) if i < 5 else "L5/S1" for i in overlap_discs],
        "thoracic": thoracic,
        "facing": "left" if facing_left else "right",
        "slip": slip,
    }
    return pixels, regions, info


def burn_in(pixels: np.ndarray, lines: Sequence[str]) -> None:
    """Write text into the pixels (as a modality's overlay burned into the image would be)."""
    h, w = pixels.shape
    scale = max(0.3, w / 700)
    thick = max(1, int(round(scale * 1.5)))
    mask = np.zeros((h, w), np.uint8)
    y = int(24 * scale) + 4
    for line in lines:
        cv2.putText(mask, line, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
        y += int(30 * scale) + 4
    pixels[mask > 127] = MAX_VALUE
