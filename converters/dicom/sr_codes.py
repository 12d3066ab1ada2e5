"""What the Measurement Reports say, as codes: every coded concept (:data:`CODES`: SNOMED CT,
DCM, UCUM and spinepipe's private scheme where no standard code exists) and the measurement
groups (:data:`GROUPS`: one per lordosis, segmental angle, disc, body and slip), each naming the
``measures.csv`` columns it reports and the endplates they were measured between.
:mod:`converters.dicom.sr` builds the objects from them; README's codes table lists every
entry of :data:`CODES` (``tests/test_sr.py`` checks it).

A new clinical measure (a column of :data:`converters.spine.measures.MEASURES`) reaches the SR
once it has a group here (``tests/test_sr.py`` asks that every column has one) and each code it
uses is in :data:`CODES` (a private code under :data:`PRIVATE_SCHEME` where PS3.16 has none).
"""
from __future__ import annotations

from dataclasses import dataclass
from converters.spine.levels import LEVELS, LUMBAR

PRIVATE_SCHEME = "99SPINEPIPE"  # local coding scheme designators begin with "99" (PS3.3 8.2)
PRIVATE_SCHEME_NAME = "spinepipe lumbar spine measures"

#: every code the reports use: key -> (scheme, value, meaning); the standard ones checked against
#: pydicom's dictionary in the tests (PS3.16), the private ones declared in each object
CODES: dict[str, tuple[str, str, str]] = {
    "cobb_angle": ("SCT", "285285000", "Cobb angle"),
    "height": ("DCM", "121207", "Height"),
    "slip": (PRIVATE_SCHEME, "SLIP", "Vertebral slip, % of the lower endplate (Taillard)"),
    "meyerding": (PRIVATE_SCHEME, "MEYERDING", "Meyerding grade"),
    "withheld": (PRIVATE_SCHEME, "WITHHELD", "Measurement withheld"),
    **{f"grade_{g}": (PRIVATE_SCHEME, f"MEYERDING-{g}", f"Meyerding grade {name}")
       for g, name in enumerate(("0 (slip under 5 %)", "I", "II", "III", "IV", "V"))},
    "procedure": ("SCT", "363679005", "Imaging procedure"),
    "L1": ("SCT", "66794005", "Bone structure of L1"),
    "L2": ("SCT", "14293000", "Bone structure of L2"),
    "L3": ("SCT", "36470004", "Bone structure of L3"),
    "L4": ("SCT", "11994002", "Bone structure of L4"),
    "L5": ("SCT", "49668003", "Bone structure of L5"),
    "S1": ("SCT", "54735007", "Sacrum"),
    "disc_L1": ("SCT", "80064006", "Intervertebral disc structure of first lumbar vertebra"),
    "disc_L2": ("SCT", "67459009", "Intervertebral disc structure of second lumbar vertebra"),
    "disc_L3": ("SCT", "62551000", "Intervertebral disc structure of third lumbar vertebra"),
    "disc_L4": ("SCT", "84020006", "Intervertebral disc structure of fourth lumbar vertebra"),
    "disc_L5": ("SCT", "75782005", "Intervertebral disc structure of fifth lumbar vertebra"),
    "anterior": ("SCT", "255549009", "Anterior"),
    "middle": ("SCT", "26216008", "Central"),
    "posterior": ("SCT", "255551008", "Posterior"),
    "deg": ("UCUM", "deg", "Degree"),
    "mm": ("UCUM", "mm", "mm"),
    "%": ("UCUM", "%", "Percent"),
    "px": ("UCUM", "{pixels}", "pixels"),
}


@dataclass(frozen=True)
class Group:
    """One measurement group: its tracking identifier, the ``measures.csv`` columns it reports
    (``{unit}`` for lengths: ``mm``, or ``px`` where the spacing is unknown), the measurement's
    code key, the finding sites, the endplates it was measured between, and the slip's grade
    column."""

    name: str
    columns: tuple[str, ...]
    code: str
    unit: str
    sites: tuple[str, ...]
    lines: tuple[tuple[str, str], ...]       # (level, "superior" / "inferior")
    grade: str | None = None


def _groups() -> tuple[Group, ...]:
    pairs = list(zip(LEVELS[:-1], LEVELS[1:]))
    out = [Group("lordosis L1-S1", ("lordosis_deg",), "cobb_angle", "deg", ("L1", "S1"),
                 (("L1", "superior"), ("S1", "superior")))]
    out += [Group(f"segmental {a}-{b}", (f"seg_{a}_{b}_deg",), "cobb_angle", "deg", (a, b),
                  ((a, "superior"), (b, "superior"))) for a, b in pairs]
    out += [Group(f"disc {a}-{b}", tuple(f"disc_{a}_{b}_{s}_{{unit}}"
                                         for s in ("anterior", "middle", "posterior")),
                  "height", "{unit}", (f"disc_{a}",), ((a, "inferior"), (b, "superior")))
            for a, b in pairs]
    out += [Group(f"body {lv}", tuple(f"body_{lv}_{s}_{{unit}}" for s in ("anterior", "posterior")),
                  "height", "{unit}", (lv,), ((lv, "superior"), (lv, "inferior")))
            for lv in LUMBAR]
    out += [Group(f"slip {a}-{b}", (f"slip_{a}_{b}_pct",), "slip", "%", (a, b),
                  ((a, "inferior"), (b, "superior")), grade=f"meyerding_{a}_{b}")
            for a, b in pairs]
    return tuple(out)


#: the report's measurement groups, in order (module docstring)
GROUPS = _groups()
SIDES = ("anterior", "middle", "posterior")
