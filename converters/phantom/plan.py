"""The phantom's plan: what to generate (:class:`PhantomConfig`, the ``phantom:`` params) and,
per image, every random feature drawn once into its :class:`Case`.

Rendering (:mod:`converters.phantom.anatomy`, :mod:`converters.phantom.physics`) takes a case
and nothing else: no config, no shares. Each feature has its own random stream, keyed by the
seed and the patient's or the image's index, so results depend neither on the number of worker
processes nor on which other features are switched on:

- ``[seed, 0xCA5E]``: which images belong to which patient;
- ``[seed, 1, patient]``: the patient's anatomy (size, lordosis, body heights and discs, a
  lumbosacral transitional vertebra);
- ``[seed, 2, image]``: the image's features (implants, degenerated discs, thoracic vertebrae in
  view, osteophytes, vacuum discs, a wedge fracture and its cement, orientation);
- ``[seed, 4, image]``: the DICOM object (MONOCHROME1, burned-in name, DX or CR);
- ``[seed, 5, image]``: a degenerative slip;
- ``[seed, 6, image]``: shape details at rendering (vertex jitter, bone texture);
- ``[seed, 7, image]``: the exposure (dose, scatter, heel effect, blur, rotation, collimation)
  and its quantum noise.

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
    thoracic_share: float = 0.4     # images showing a thoracic vertebra above L1 (unannotated)
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
    heights: tuple[float, ...] = (1.0,) * 7
    gaps: tuple[float, ...] = (0.28,) * 7   # discs from the top body down; the last is L5/S1
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
    drng = np.random.default_rng([cfg.seed, 4, index])
    dicom = dict(monochrome1=bool(drng.random() < cfg.monochrome1_share),
                 burned_in=bool(drng.random() < cfg.burned_in_share),
                 dx=bool(drng.random() < cfg.dx_share))
    return Case(**base, **{**anatomy, **features}, **dicom, exposure=_exposure(cfg, index))


def _anatomy(cfg: PhantomConfig, patient: int) -> dict:
    prng = np.random.default_rng([cfg.seed, 1, patient])
    transitional = None
    if prng.random() < cfg.transitional_share:
        transitional = SIX_LUMBAR if prng.random() < 0.35 else SACRALIZED_L5
    n = 8  # T12, L1..L6 and a spare
    gaps = prng.uniform(0.22, 0.34, n)
    if transitional == SACRALIZED_L5:
        gaps[5] = prng.uniform(0.06, 0.12)   # a rudimentary L5/S1 disc
    return dict(depth=float(prng.uniform(1.25, 1.55)),
                lordosis_deg=float(prng.uniform(8, 32)),
                sacral_extra_deg=float(prng.uniform(8, 18)),
                heights=tuple(float(h) for h in 1.0 + prng.normal(0, 0.04, n)),
                gaps=tuple(float(g) for g in gaps), transitional=transitional)


def _features(cfg: PhantomConfig, image: int, n_images: int, index: int, n_bodies: int,
              anatomy: dict) -> dict:
    rng = np.random.default_rng([cfg.seed, 2, index])
    last = n_bodies - 1                         # index of the lowest lumbar body (L5 or L6)
    post_op = image > 0 or n_images == 1
    implants = bool(rng.random() < cfg.implant_share) and post_op
    if n_images > 1 and image == 0:
        implants = False  # the pre-operative image of a patient who was operated later
    overlap = bool(rng.random() < cfg.overlap_share)
    thoracic = bool(rng.random() < cfg.thoracic_share)
    # discs: index d lies below body d (1 = L1/L2, ..., last = the lumbosacral disc)
    overlap_discs: list[int] = []
    if overlap:
        n_ov = 1 if rng.random() < 0.7 else 2
        choices = [last - 2, last - 1, last, last - 3]
        overlap_discs = sorted(int(d) for d in rng.choice(
            choices, size=n_ov, replace=False, p=[0.35, 0.35, 0.2, 0.1]))
    fused: list[int] = []
    cage_discs: list[int] = []
    if implants:
        n_lev = int(rng.choice([2, 3, 4], p=[0.55, 0.3, 0.15]))
        tops = np.arange(2, n_bodies + 2 - n_lev)  # mostly low: L4-S1 more often than L2-L3
        top = int(rng.choice(tops, p=2.0 ** tops / (2.0 ** tops).sum()))
        fused = list(range(top, top + n_lev))
        cage_discs = [d for d in range(fused[0], fused[-1]) if rng.random() < 0.6]
        overlap_discs = [d for d in overlap_discs if d not in cage_discs]
    if anatomy["transitional"] == SACRALIZED_L5:
        overlap_discs = [d for d in overlap_discs if d != last]
    facing_left = bool(rng.random() < 0.5)
    osteophytes = ([int(b) for b in range(1, n_bodies) if rng.random() < 0.45]
                   if rng.random() < cfg.osteophyte_share else [])
    vacuum = [d for d in overlap_discs if rng.random() < 0.35]
    fracture, loss, cement = None, 0.0, False
    if rng.random() < cfg.fracture_share:
        fracture = int(rng.integers(1, n_bodies - 1))
        loss = float(rng.uniform(0.2, 0.4))
        cement = bool(rng.random() < 0.5)
    srng = np.random.default_rng([cfg.seed, 5, index])
    slip = None
    if srng.random() < cfg.slip_share:
        d = int(srng.choice([last - 2, last - 1, last], p=[0.15, 0.5, 0.35]))
        slip = (d, float(srng.uniform(0.08, 0.45)))
    gaps = list(anatomy["gaps"])
    for d in overlap_discs:
        gaps[d] = -rng.uniform(0.06, 0.22) * cfg.overlap_severity
    for d in cage_discs:
        gaps[d] = rng.uniform(0.28, 0.36)      # a cage restores the disc height
    return dict(gaps=tuple(float(g) for g in gaps), implants=implants, fused=tuple(fused), cage_discs=tuple(cage_discs),
                overlap_discs=tuple(overlap_discs), thoracic=thoracic, facing_left=facing_left,
                slip=slip, osteophytes=tuple(osteophytes), vacuum_discs=tuple(vacuum),
                fracture=fracture, fracture_loss=loss, cement=cement, gas=cfg.gas)


def _exposure(cfg: PhantomConfig, index: int) -> Exposure:
    erng = np.random.default_rng([cfg.seed, 7, index])
    margins = tuple(float(m) if erng.random() < 0.6 else 0.0
                    for m in erng.uniform(0.0, 0.04, 4))
    return Exposure(counts=float(cfg.dose * erng.uniform(600, 1400)),
                    scatter=float(cfg.scatter * erng.uniform(0.7, 1.3)),
                    heel=float(erng.uniform(0.1, 0.25)),
                    blur_px=float(erng.uniform(0.5, 0.9)),
                    doubling_mm=float(cfg.rotation * abs(erng.normal(0, 1.5))),
                    collimation=margins,  # type: ignore[arg-type]
                    contrast=float(erng.uniform(0.9, 1.2)))
