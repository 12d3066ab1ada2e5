"""The phantom's plan: what to generate (:class:`PhantomConfig`, the ``phantom:`` params) and,
per image, every random feature drawn once into its :class:`Case`.

Rendering (:mod:`converters.phantom.anatomy`, :mod:`converters.phantom.physics`) takes a case
and nothing else: no config, no shares. Each feature has its own random stream, keyed by the
seed and the patient's or the image's index, so results depend neither on the number of worker
processes nor on which other features are switched on:

- ``[seed, 0xCA5E]``: which images belong to which patient;
- ``[seed, 1, patient]``: the patient's anatomy (size, lordosis, body heights and discs);
  ``[seed, 1, patient, 1]``: a lumbosacral transitional vertebra;
- ``[seed, 2, image, k]``: the image's features, one stream each: implants (k = 0),
  degenerated discs (1), a field reaching up to T11 (2), orientation (3), osteophytes (4),
  vacuum discs (5), a wedge fracture and its cement (6);
- ``[seed, 4, image]``: the DICOM object (MONOCHROME1, burned-in name, DX or CR);
- ``[seed, 5, image]``: a degenerative slip;
- ``[seed, 6, image, k]``: details at rendering: the shapes and their placement (k = 0), bone
  texture (1), the implants' shapes (2), soft tissue and bowel gas (3);
- ``[seed, 7, image]``: the exposure (dose, scatter, heel effect, blur, rotation, collimation);
  ``[seed, 7, image, 1]``: its quantum noise.

Every draw is made whether or not its feature is used, so a knob changes its own feature only
(a share moved from 0.5 to 0.6 adds images with the feature; the others stay byte for byte,
unless the feature itself changes the anatomy, as a sixth lumbar vertebra does).

Rates from the literature: lumbosacral transitional vertebrae in about 10 % of people (a sixth
lumbar vertebra in a third of them, a sacralized L5 in the rest); anterior osteophytes in most
degenerated spines; vacuum phenomenon in about a fifth of degenerated discs; osteoporotic wedge
fractures in a few per cent of a spine surgery cohort, a share of them cemented.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from converters.core.errors import InvalidConfigError

#: the lumbosacral transitional vertebrae the phantom draws
SIX_LUMBAR = "six_lumbar"          # S1 lumbarized: six free lumbar vertebrae above the sacrum
SACRALIZED_L5 = "sacralized_L5"    # L5 partly fused to the sacrum: a rudimentary L5/S1 disc


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate. Shares are probabilities per image (per patient for ``repeat`` and
    ``transitional``); the exposure knobs set the image physics (:mod:`converters.phantom.physics`)."""

    enabled: bool = True            # the DVC stage's switch: off when a real archive is used
    n: int = 24
    seed: int = 0
    height: int = 640
    width: int = 256
    overlap_share: float = 0.3      # images with >= 1 degenerated disc (vertebrae overlap)
    overlap_severity: float = 1.0   # how far bodies overlap on a collapsed disc (x body height)
    implant_share: float = 0.7      # images with radiopaque implants (as in the study)
    thoracic_share: float = 0.4     # images reaching higher: ribs and T11 above T12 (unannotated)
    monochrome1_share: float = 0.2  # images stored as MONOCHROME1
    burned_in_share: float = 0.1    # images with the patient's name burned into the pixels
    dx_share: float = 0.5           # Digital X-Ray objects (the rest Computed Radiography)
    repeat_patient_share: float = 0.3  # patients with 2-3 images (pre- and post-operative)
    slip_share: float = 0.25        # images with a degenerative slip (grade I-II)
    transitional_share: float = 0.1  # patients with a lumbosacral transitional vertebra
    fracture_share: float = 0.05    # images with an osteoporotic wedge fracture (half cemented)
    osteophyte_share: float = 0.5   # images with anterior osteophytes
    gas: float = 1.0                # bowel gas over the spine (0 none, 1 typical, 2 much)
    dose: float = 1.0               # quantum noise: x the typical detector dose (lower: noisier)
    scatter: float = 0.5            # scatter-to-primary ratio at the spine, behind the grid
    rotation: float = 1.0           # doubled contours: x the typical doubling (0 none)

    def validate(self) -> None:
        if self.n < 1:
            raise InvalidConfigError(f"n must be at least 1, got {self.n}")
        if self.seed < 0:
            raise InvalidConfigError(f"seed must be 0 or more, got {self.seed}")
        if not (64 <= self.width <= 8192 and 128 <= self.height <= 8192):
            raise InvalidConfigError(
                f"image size {self.width}x{self.height} out of range "
                "(width 64-8192, height 128-8192)")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_share") and not 0.0 <= value <= 1.0:
                raise InvalidConfigError(f"{f.name} must be between 0 and 1, got {value}")
        for name, lo, hi in (("overlap_severity", 0.0, 3.0), ("gas", 0.0, 3.0),
                             ("rotation", 0.0, 5.0),
                             ("dose", 0.05, 20.0), ("scatter", 0.0, 3.0)):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise InvalidConfigError(f"{name} must be between {lo} and {hi}, got {value}")


@dataclass(frozen=True)
class Exposure:
    """One image's acquisition: what :mod:`converters.phantom.physics` needs."""

    counts: float        # quanta per pixel behind the patient's thinnest soft tissue
    scatter: float       # scatter-to-primary ratio
    heel: float          # fall of the tube's output from the cathode end to the anode end
    blur_px: float       # detector blur (Gaussian sigma, pixels): the MTF
    doubling_mm: float   # the two sides of the body projected this far apart (rotation)
    collimation: tuple[float, float, float, float]  # field edges: left, top, right, bottom shares
    contrast: float      # the modality's gradation (exponent of the log-exposure mapping)


@dataclass(frozen=True)
class Case:
    """One image to render, every random feature already drawn."""

    index: int
    patient_index: int
    patient_image: int          # 0 for the patient's first image
    n_patient_images: int
    seed: int = 0
    height: int = 640
    width: int = 256
    # the patient's anatomy (units: vertebral body height = 1)
    depth: float = 1.4          # body depth (antero-posterior)
    lordosis_deg: float = 20.0
    sacral_extra_deg: float = 12.0
    heights: tuple[float, ...] = (1.0,) * 8   # T12, L1.. (a spare)
    gaps: tuple[float, ...] = (0.28,) * 8   # disc d below body d (0: T12/L1; n_lumbar: to S1)
    transitional: str | None = None
    # the image's features
    implants: bool = False
    fused: tuple[int, ...] = ()      # body indices spanned by a fusion (1 = L1, ...; last+1 = S1)
    cage_discs: tuple[int, ...] = ()
    overlap_discs: tuple[int, ...] = ()
    thoracic: bool = False
    facing_left: bool = False
    slip: tuple[int, float] | None = None    # (disc index, fraction of the body depth)
    osteophytes: tuple[int, ...] = ()        # body indices with anterior osteophytes
    vacuum_discs: tuple[int, ...] = ()
    fracture: int | None = None              # body index of a wedge fracture
    fracture_loss: float = 0.0               # anterior height lost
    cement: bool = False
    gas: float = 1.0                         # bowel gas over the spine (the config's knob)
    # the DICOM object
    monochrome1: bool = False
    burned_in: bool = False
    dx: bool = False
    exposure: Exposure | None = None

    @property
    def n_lumbar(self) -> int:
        return 6 if self.transitional == SIX_LUMBAR else 5

    def lumbar_names(self) -> list[str]:
        """The true names of the lumbar bodies, top down."""
        return [f"L{i}" for i in range(1, self.n_lumbar + 1)]

    @property
    def pixel_spacing_mm(self) -> float:
        """mm per pixel: the study's largest images were 2870 px high at 0.143 mm."""
        return 0.143 * 2870 / self.height

    def disc_name(self, d: int) -> str:
        """Disc ``d`` lies below body ``d`` (0 = the thoracic body above L1)."""
        names = ["T12", *self.lumbar_names(), "S1"]
        return f"{names[d]}/{names[d + 1]}"


def plan_cases(cfg: PhantomConfig) -> list[Case]:
    """Every image's case: patients (most with one image, some with two or three) and all the
    features each image shows."""
    rng = np.random.default_rng([cfg.seed, 0xCA5E])
    slots: list[tuple[int, int, int, int]] = []
    patient = 0
    while len(slots) < cfg.n:
        k = 1
        if rng.random() < cfg.repeat_patient_share:
            k = int(rng.integers(2, 4))
        k = min(k, cfg.n - len(slots))
        for j in range(k):
            slots.append((len(slots), patient, j, k))
        patient += 1
    return [_case(cfg, *slot) for slot in slots]


def _case(cfg: PhantomConfig, index: int, patient: int, image: int, n_images: int) -> Case:
    base = dict(index=index, patient_index=patient, patient_image=image,
                n_patient_images=n_images, seed=cfg.seed, height=cfg.height, width=cfg.width)
    anatomy = _anatomy(cfg, patient)
    n_bodies = 1 + (6 if anatomy["transitional"] == SIX_LUMBAR else 5)  # T12 + the lumbar
    features = _features(cfg, image, n_images, index, n_bodies, anatomy)  # gaps included
    drng = _stream(cfg, 4, index)
    dicom = dict(monochrome1=bool(drng.random() < cfg.monochrome1_share),
                 burned_in=bool(drng.random() < cfg.burned_in_share),
                 dx=bool(drng.random() < cfg.dx_share))
    return Case(**base, **{**anatomy, **features}, **dicom, exposure=_exposure(cfg, index))


def _stream(cfg: PhantomConfig, *key: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, *key])


def _anatomy(cfg: PhantomConfig, patient: int) -> dict:
    """The patient's anatomy; the transitional vertebra from a stream of its own."""
    prng = _stream(cfg, 1, patient)
    n = 8  # T12, L1..L6 and a spare
    depth, lordosis, sacral = prng.uniform(1.25, 1.55), prng.uniform(8, 32), prng.uniform(8, 18)
    heights, gaps = 1.0 + prng.normal(0, 0.04, n), prng.uniform(0.22, 0.34, n)
    trng = _stream(cfg, 1, patient, 1)
    has, kind, rudiment = trng.random(), trng.random(), trng.uniform(0.06, 0.12)
    transitional = None
    if has < cfg.transitional_share:
        transitional = SIX_LUMBAR if kind < 0.35 else SACRALIZED_L5
    if transitional == SACRALIZED_L5:
        gaps[5] = rudiment                   # a rudimentary L5/S1 disc
    return dict(depth=float(depth), lordosis_deg=float(lordosis), sacral_extra_deg=float(sacral),
                heights=tuple(float(h) for h in heights), gaps=tuple(float(g) for g in gaps),
                transitional=transitional)


def _surgery(cfg: PhantomConfig, index: int, image: int, n_images: int, n_bodies: int,
             sacralized: bool) -> dict:
    """Implants (a fusion of 2-4 levels, mostly low, cages in some of its discs) on a
    post-operative image; never on the first image of a patient operated later. A sacralized
    L5's rudimentary disc gets no cage."""
    rng = _stream(cfg, 2, index, 0)
    has, n_lev = rng.random(), int(rng.choice([2, 3, 4], p=[0.55, 0.3, 0.15]))
    tops = np.arange(2, n_bodies + 2 - n_lev)   # L4-S1 more often than L2-L3
    top = int(rng.choice(tops, p=2.0 ** tops / (2.0 ** tops).sum()))
    caged, heights = rng.random(8) < 0.6, rng.uniform(0.28, 0.36, 8)
    post_op = (image > 0 or n_images == 1)
    if not (post_op and has < cfg.implant_share):
        return dict(implants=False, fused=(), cage_discs=(), cage_heights={})
    fused = tuple(range(top, top + n_lev))
    cages = tuple(d for d in range(fused[0], fused[-1])
                  if caged[d] and not (sacralized and d == n_bodies - 1))
    return dict(implants=True, fused=fused, cage_discs=cages,
                cage_heights={d: float(heights[d]) for d in cages})


def _discs(cfg: PhantomConfig, index: int, n_bodies: int, sacralized: bool,
           cages: tuple[int, ...]) -> tuple[list[int], list[int], np.ndarray]:
    """Degenerated discs (index d lies below body d; the last is the lumbosacral disc) whose
    bodies overlap in projection, how far, and which hold vacuum gas."""
    last = n_bodies - 1
    rng = _stream(cfg, 2, index, 1)
    has, two = rng.random(), rng.random() < 0.3
    picked = rng.choice([last - 2, last - 1, last, last - 3], size=2, replace=False,
                        p=[0.35, 0.35, 0.2, 0.1])
    depth = rng.uniform(0.06, 0.22, 8) * cfg.overlap_severity
    gas = _stream(cfg, 2, index, 5).random(8) < 0.35
    discs = sorted(int(d) for d in picked[:2 if two else 1]) if has < cfg.overlap_share else []
    discs = [d for d in discs if d not in cages and not (sacralized and d == last)]
    return discs, [d for d in discs if gas[d]], depth


def _features(cfg: PhantomConfig, image: int, n_images: int, index: int, n_bodies: int,
              anatomy: dict) -> dict:
    """Every feature of one image, each from its own stream (``[seed, 2, image, k]``; a slip
    ``[seed, 5, image]``), drawn whether or not it is used: a knob changes its feature only."""
    last = n_bodies - 1                         # index of the lowest lumbar body (L5 or L6)
    sacralized = anatomy["transitional"] == SACRALIZED_L5
    surgery = _surgery(cfg, index, image, n_images, n_bodies, sacralized)
    overlap_discs, vacuum, depth = _discs(cfg, index, n_bodies, sacralized, surgery["cage_discs"])
    gaps = list(anatomy["gaps"])
    for d in overlap_discs:
        gaps[d] = -float(depth[d])             # a collapsed disc: bodies overlap in projection
    for d, height in surgery.pop("cage_heights").items():
        gaps[d] = height                       # a cage restores the disc height
    thoracic = bool(_stream(cfg, 2, index, 2).random() < cfg.thoracic_share)
    facing_left = bool(_stream(cfg, 2, index, 3).random() < 0.5)
    orng = _stream(cfg, 2, index, 4)
    has, which = orng.random(), orng.random(8) < 0.45
    osteophytes = [b for b in range(1, n_bodies) if which[b]] if has < cfg.osteophyte_share else []
    frng = _stream(cfg, 2, index, 6)
    has, level, loss, cement = (frng.random(), int(frng.integers(1, n_bodies - 1)),
                                float(frng.uniform(0.2, 0.4)), bool(frng.random() < 0.5))
    fracture = level if has < cfg.fracture_share else None
    srng = _stream(cfg, 5, index)
    has, d, fraction = (srng.random(), int(srng.choice([last - 2, last - 1, last],
                                                       p=[0.15, 0.5, 0.35])),
                        float(srng.uniform(0.08, 0.45)))
    slip = (d, fraction) if has < cfg.slip_share and not (sacralized and d == last) else None
    return dict(gaps=tuple(float(g) for g in gaps), **surgery,
                overlap_discs=tuple(overlap_discs), thoracic=thoracic, facing_left=facing_left,
                slip=slip, osteophytes=tuple(osteophytes), vacuum_discs=tuple(vacuum),
                fracture=fracture, fracture_loss=loss if fracture is not None else 0.0,
                cement=cement and fracture is not None, gas=cfg.gas)


def _exposure(cfg: PhantomConfig, index: int) -> Exposure:
    erng = _stream(cfg, 7, index)
    margins = tuple(float(m) if erng.random() < 0.6 else 0.0
                    for m in erng.uniform(0.0, 0.04, 4))
    return Exposure(counts=float(cfg.dose * erng.uniform(600, 1400)),
                    scatter=float(cfg.scatter * erng.uniform(0.7, 1.3)),
                    heel=float(erng.uniform(0.1, 0.25)),
                    blur_px=float(erng.uniform(0.5, 0.9)),
                    doubling_mm=float(cfg.rotation * abs(erng.normal(0, 1.5))),
                    collimation=margins,  # type: ignore[arg-type]
                    contrast=float(erng.uniform(0.9, 1.2)))
