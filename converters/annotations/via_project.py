"""VIA projects written: what VIA 2.0.x itself saves with *Project > Save*, so that annotators
load spinepipe's projects (export's stub, proposals) as their own.

A JSON object with ``_via_settings``, ``_via_img_metadata`` (keyed by ``filename + str(size)``,
where ``size`` is the file size in bytes, or -1 when VIA does not know it, as for images added by
URL), ``_via_attributes`` (region / file attribute definitions), ``_via_data_format_version`` and
``_via_image_id_list``.

Coordinates: VIA stores polygon vertices as integer image pixel coordinates,
``all_points_x`` / ``all_points_y``, x to the right and y down, origin at the top-left corner
of the image; the polygon is implicitly closed (the first point is not repeated). Reading every
VIA format: :mod:`converters.annotations.via`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from converters.annotations.via import DEFAULT_CLASS_OPTIONS


VIA2_FORMAT_VERSION = "2.0.10"


@dataclass(frozen=True)
class ProjectRegion:
    """One polygon region: integer vertices and its region attributes."""

    xs: tuple[int, ...]
    ys: tuple[int, ...]
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProjectImage:
    filename: str
    size: int = -1
    regions: tuple[ProjectRegion, ...] = ()
    file_attributes: dict[str, str] = field(default_factory=dict)

    @property
    def image_id(self) -> str:
        return f"{self.filename}{self.size}"


def via2_project(images: Iterable[ProjectImage], *, name: str = "spinepipe",
                 class_attribute: str = "class",
                 class_options: dict[str, str] | None = None,
                 default_filepath: str = "") -> dict:
    """Build a VIA 2.0.x project (a dict ready for ``json.dump``)."""
    options = dict(DEFAULT_CLASS_OPTIONS if class_options is None else class_options)
    metadata: dict[str, dict] = {}
    for img in images:
        metadata[img.image_id] = {
            "filename": img.filename,
            "size": img.size,
            "regions": [
                {
                    "shape_attributes": {
                        "name": "polygon",
                        "all_points_x": [int(x) for x in r.xs],
                        "all_points_y": [int(y) for y in r.ys],
                    },
                    "region_attributes": dict(r.attributes),
                }
                for r in img.regions
            ],
            "file_attributes": dict(img.file_attributes),
        }
    return {
        "_via_settings": _settings(name, class_attribute, default_filepath),
        "_via_img_metadata": metadata,
        "_via_attributes": {
            "region": {
                class_attribute: {
                    "type": "dropdown",
                    "description": "vertebra or implant class",
                    "options": options,
                    "default_options": {},
                }
            },
            "file": {},
        },
        "_via_data_format_version": VIA2_FORMAT_VERSION,
        "_via_image_id_list": list(metadata),
    }


def _settings(name: str, class_attribute: str, default_filepath: str) -> dict:
    """VIA 2.0.10's own ``_via_settings``, with the class as region label and colour."""
    return {
        "ui": {
            "annotation_editor_height": 25,
            "annotation_editor_fontsize": 0.8,
            "leftsidebar_width": 18,
            "image_grid": {
                "img_height": 80,
                "rshape_fill": "none",
                "rshape_fill_opacity": 0.3,
                "rshape_stroke": "yellow",
                "rshape_stroke_width": 2,
                "show_region_shape": True,
                "show_image_policy": "all",
            },
            "image": {
                "region_label": class_attribute,
                "region_color": class_attribute,
                "region_label_font": "10px Sans",
                "on_image_annotation_editor_placement": "NEAR_REGION",
            },
        },
        "core": {"buffer_size": 18, "filepath": {}, "default_filepath": default_filepath},
        "project": {"name": name},
    }


def via_filepath(location: str) -> str:
    """``core.default_filepath`` for a VIA project: where VIA loads the images from, the
    prefix it puts before every file name. A folder path (as the annotators' machine sees
    it: ``/data/png/``, ``C:\\data\\png\\``) or an http(s) URL prefix, with the trailing
    separator VIA needs added; ``""`` leaves VIA asking for the images."""
    location = location.strip()
    if not location or location.endswith(("/", "\\")):
        return location
    windows = "\\" in location and "/" not in location and "://" not in location
    return location + ("\\" if windows else "/")


def polygon_region(points: Sequence[Sequence[float]], **attributes: str) -> ProjectRegion:
    """Round float vertices to VIA's integer pixel coordinates, dropping repeated neighbours."""
    xs: list[int] = []
    ys: list[int] = []
    for x, y in points:
        xi, yi = int(round(float(x))), int(round(float(y)))
        if xs and xs[-1] == xi and ys[-1] == yi:
            continue
        xs.append(xi)
        ys.append(yi)
    if len(xs) > 1 and xs[0] == xs[-1] and ys[0] == ys[-1]:
        xs.pop()
        ys.pop()
    return ProjectRegion(tuple(xs), tuple(ys), dict(attributes))
