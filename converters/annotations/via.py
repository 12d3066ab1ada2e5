"""VIA (VGG Image Annotator) files read as VIA writes them: every format it saves or exports
(VIA 1 and 2 projects and annotation JSON, VIA 3 projects, COCO, CSV: :mod:`via_csv
<converters.annotations.via_csv>`) becomes the same :class:`AnnotatedImage` / :class:`AnnotatedRegion`
(:func:`read_via`); projects written: :mod:`converters.annotations.via_project`.

Coordinates as VIA stores them: polygon vertices in image pixels, ``all_points_x`` /
``all_points_y``, x to the right and y down, origin at the top-left corner of the image; the
polygon is implicitly closed.

Reading treats every file as hostile: a value of the wrong type (a string or null where VIA writes
numbers, nested coordinates, a region that is not an object, attributes as a list, a size that is
not a number), a non-finite coordinate, or invalid UTF-8 is an
:class:`~converters.core.errors.InvalidViaError` naming the file, image and region, never a crash.

Bounded resources (hostile files end in one line, not in a RecursionError, a ``csv.Error`` or a run
that never ends): JSON nested deeper than :data:`MAX_JSON_DEPTH` levels (VIA's own files are at
most 8 deep), a CSV field longer than :data:`~converters.annotations.via_csv.MAX_CSV_FIELD` characters (Python's default limit,
131,072, is raised so that a legitimate 10,000-point polygon fits), more than :data:`MAX_REGIONS`
regions in one image or more than :data:`MAX_POINTS` vertices in one polygon are each an
:class:`~converters.core.errors.InvalidViaError` naming the file (and the image, region or CSV
line). :func:`expand_inputs` takes regular files only (a symbolic link to one is followed): a FIFO,
socket or device named ``*.json`` is refused, never opened.

Classes: a dropdown region attribute (default name ``class``) whose option ids are the class
values (``lumbar``, ``sacrum``, ``cage``, ``screw``, ``rod``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from converters.core.errors import InvalidViaError, MissingInputError
from converters.core.records import read_json, special_kind


#: regions accepted in one image (the study draws about 15: vertebrae and implants)
MAX_REGIONS = 10_000
#: vertices accepted in one polygon (VIA users draw tens; spinepipe proposals 15)
MAX_POINTS = 10_000

#: class value -> description, as shown in VIA's dropdown
DEFAULT_CLASS_OPTIONS: dict[str, str] = {
    "lumbar": "lumbar vertebra (L1-L5)",
    "sacrum": "sacrum (S1)",
    "cage": "interbody cage",
    "screw": "pedicle screw",
    "rod": "rod",
}


# --------------------------------------------------------------------------------------------
# reading every VIA export format


@dataclass
class AnnotatedRegion:
    """A region as read, before validation: its shape, vertices (float) and attributes."""

    index: int                     # 0-based position in the image's region list
    shape: str                     # polygon, polyline, rect, ellipse, circle, point, ...
    xs: list[float]
    ys: list[float]
    attributes: dict[str, str]
    params: dict = field(default_factory=dict)  # rect x/y/width/height, ellipse cx/cy/rx/ry/theta


@dataclass
class AnnotatedImage:
    filename: str
    size: int                      # bytes as VIA recorded it (-1: unknown)
    regions: list[AnnotatedRegion]
    source: str                    # the VIA file it came from
    #: VIA 2 file attributes (JSON and CSV exports; values as strings, checkboxes joined)
    file_attributes: dict[str, str] = field(default_factory=dict)


def _json_load(path: Path) -> object:
    try:
        return read_json(path, what="VIA file", shape=object, error=InvalidViaError)
    except MissingInputError:
        raise InvalidViaError("VIA file not found", file=path) from None


def _attr_value(value: object) -> str:
    """VIA checkbox attributes are dicts of {option: true}; others are strings."""
    if isinstance(value, dict):
        chosen = [k for k, v in value.items() if v]
        return chosen[0] if len(chosen) == 1 else ",".join(chosen)
    return "" if value is None else str(value)


def _numbers(values: object, what: str, file: Path, image: str, region: int,
             per_point: int = 1) -> list[float]:
    """A list of finite numbers (VIA's coordinates), or :class:`InvalidViaError`; at most
    :data:`MAX_POINTS` vertices of ``per_point`` numbers each."""
    if not isinstance(values, list):
        raise InvalidViaError(f"{what} is {type(values).__name__}, not a list of numbers",
                              file=file, image=image, region=region)
    if len(values) > MAX_POINTS * per_point:
        raise InvalidViaError(f"{what} holds {len(values):,} values: more than {MAX_POINTS:,} "
                              "vertices in one polygon", file=file, image=image, region=region)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InvalidViaError(f"{what} holds {json_repr(v)}, not a number", file=file,
                                  image=image, region=region)
        if not math.isfinite(v):
            raise InvalidViaError(f"{what} holds a non-finite coordinate ({v})", file=file,
                                  image=image, region=region)
        out.append(float(v))
    return out


def check_region_count(count: int, file: Path, image: str) -> None:
    """:class:`InvalidViaError` when an image has more than :data:`MAX_REGIONS` regions."""
    if count > MAX_REGIONS:
        raise InvalidViaError(f"{count:,} regions in one image: more than {MAX_REGIONS:,}",
                              file=file, image=image, region=MAX_REGIONS)


def json_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def region_from_shape(index: int, shape: object, attributes: object, file: Path,
                       image: str) -> AnnotatedRegion:
    if not isinstance(shape, dict) or "name" not in shape:
        raise InvalidViaError("region without shape_attributes.name", file=file, image=image,
                              region=index)
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, dict):
        raise InvalidViaError(f"region_attributes is {type(attributes).__name__}, not an "
                              "object", file=file, image=image, region=index)
    name = str(shape["name"])
    attrs = {str(k): _attr_value(v) for k, v in attributes.items()}
    if name in ("polygon", "polyline"):
        for key in ("all_points_x", "all_points_y"):
            if key not in shape:
                raise InvalidViaError(f"{name} without key {key}", file=file, image=image,
                                      region=index)
        xs = _numbers(shape["all_points_x"], "all_points_x", file, image, index)
        ys = _numbers(shape["all_points_y"], "all_points_y", file, image, index)
        if len(xs) != len(ys):
            raise InvalidViaError("all_points_x and all_points_y differ in length", file=file,
                                  image=image, region=index)
        return AnnotatedRegion(index, name, xs, ys, attrs)
    params = {}
    for k, v in shape.items():
        if k == "name":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InvalidViaError(f"{name}.{k} is {json_repr(v)}, not a finite number",
                                  file=file, image=image, region=index)
        params[k] = float(v)
    return AnnotatedRegion(index, name, [], [], attrs, params)


def image_file_attributes(value: object, file: Path, image: str) -> dict[str, str]:
    """An image's ``file_attributes`` (absent or null: none)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidViaError(f"file_attributes is {type(value).__name__}, not an object",
                              file=file, image=image)
    return {str(k): _attr_value(v) for k, v in value.items()}


def recorded_size(value: object, file: Path, image: str) -> int:
    """VIA's recorded file size in bytes (-1: unknown)."""
    if value in ("", None):
        return -1
    try:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(value)
        return int(value)
    except ValueError:
        raise InvalidViaError(f"size {json_repr(value)} is not a number of bytes", file=file,
                              image=image) from None


def _read_via2_metadata(meta: dict, file: Path) -> list[AnnotatedImage]:
    images = []
    for key, entry in meta.items():
        if not isinstance(entry, dict) or "filename" not in entry:
            raise InvalidViaError("image entry without key 'filename'", file=file, image=str(key))
        name = entry["filename"]
        if not isinstance(name, str) or not name:
            raise InvalidViaError(f"filename {json_repr(name)} is not a file name", file=file,
                                  image=str(key))
        regions_raw = entry.get("regions", [])
        if regions_raw is None:
            regions_raw = []
        if isinstance(regions_raw, dict):  # VIA 1.x: {"0": {...}, "1": {...}}
            try:
                regions_raw = [regions_raw[k] for k in sorted(regions_raw, key=lambda k: int(k))]
            except ValueError:
                raise InvalidViaError("VIA 1 regions keyed by something other than numbers",
                                      file=file, image=name) from None
        if not isinstance(regions_raw, list):
            raise InvalidViaError(f"regions is {type(regions_raw).__name__}, not a list",
                                  file=file, image=name)
        check_region_count(len(regions_raw), file, name)
        regions = []
        for i, r in enumerate(regions_raw):
            if not isinstance(r, dict):
                raise InvalidViaError(f"region is {type(r).__name__}, not an object", file=file,
                                      image=name, region=i)
            regions.append(region_from_shape(i, r.get("shape_attributes"),
                                              r.get("region_attributes", {}), file, name))
        size = recorded_size(entry.get("size", entry.get("file_size", -1)), file, name)
        images.append(AnnotatedImage(name, size, regions, str(file),
                                image_file_attributes(entry.get("file_attributes"), file, name)))
    return images


_VIA3_SHAPES = {1: "point", 2: "rect", 3: "circle", 4: "ellipse", 5: "line", 6: "polyline",
                7: "polygon", 8: "extreme_rect", 9: "extreme_circle"}


def _read_via3(project: dict, file: Path) -> list[AnnotatedImage]:
    """VIA 3.x: shapes are ``xy`` arrays ``[shape_id, x1, y1, ...]``; attribute values of
    dropdown / radio attributes are option ids, resolved through ``attribute[aid].options``."""
    for key in ("file", "view", "metadata", "attribute"):
        if key not in project:
            raise InvalidViaError(f"VIA 3 project without key '{key}'", file=file)
    attributes = project["attribute"]
    files = project["file"]
    views = project["view"]
    vid_to_fname: dict[str, str] = {}
    for vid, view in views.items():
        fids = view.get("fid_list", [])
        if fids:
            f = files.get(str(fids[0]))
            if f is None:
                raise InvalidViaError(f"view {vid} names unknown file id {fids[0]}", file=file)
            vid_to_fname[str(vid)] = str(f.get("fname", f.get("src", "")))
    by_file: dict[str, list[AnnotatedRegion]] = {name: [] for name in vid_to_fname.values()}
    for mid, m in project["metadata"].items():  # the order VIA saved them in
        fname = vid_to_fname.get(str(m.get("vid")))
        if fname is None:
            raise InvalidViaError(f"metadata {mid} names unknown view {m.get('vid')}", file=file)
        xy = m.get("xy") or []
        if not xy:
            continue  # a file-level (temporal / whole-file) annotation: no shape
        shape = _VIA3_SHAPES.get(int(xy[0]), f"shape{xy[0]}")
        attrs = {}
        for aid, value in (m.get("av") or {}).items():
            a = attributes.get(str(aid), {})
            name = str(a.get("aname", aid))
            options = a.get("options") or {}
            attrs[name] = str(options.get(str(value), value)) if options else str(value)
        index = len(by_file[fname])
        check_region_count(index + 1, file, fname)
        if not isinstance(xy, list):
            raise InvalidViaError(f"xy is {type(xy).__name__}, not a list", file=file,
                                  image=fname, region=index)
        coords = _numbers(xy[1:], "xy", file, fname, index, per_point=2)
        if shape in ("polygon", "polyline"):
            by_file[fname].append(AnnotatedRegion(index, shape, coords[0::2], coords[1::2], attrs))
        elif shape == "rect":
            x, y, w, h = coords[:4]
            by_file[fname].append(AnnotatedRegion(index, "rect", [], [], attrs,
                                             {"x": x, "y": y, "width": w, "height": h}))
        elif shape == "ellipse":
            cx, cy, rx, ry = coords[:4]
            by_file[fname].append(AnnotatedRegion(index, "ellipse", [], [], attrs,
                                             {"cx": cx, "cy": cy, "rx": rx, "ry": ry}))
        elif shape == "circle":
            cx, cy, r = coords[:3]
            by_file[fname].append(AnnotatedRegion(index, "circle", [], [], attrs,
                                             {"cx": cx, "cy": cy, "r": r}))
        else:
            by_file[fname].append(AnnotatedRegion(index, shape, coords[0::2], coords[1::2], attrs))
    return [AnnotatedImage(name, -1, regions, str(file)) for name, regions in by_file.items()]


def _read_coco(data: dict, file: Path) -> list[AnnotatedImage]:
    """A COCO instances file (VIA's "Export Annotations (COCO format)", or any COCO file with
    polygons): one region per annotation, its polygon from ``segmentation`` (the largest part
    when there are several), its class in the region attribute named by the category's
    ``supercategory`` (VIA writes the attribute name there; ``category`` when it is empty),
    valued by the category's ``name`` (VIA writes the option's *description*).

    ``area`` and ``bbox`` of the file are ignored (VIA writes the box area there): they are
    recomputed from the polygon downstream like for every other format. A file that is COCO
    but holds no polygon at all (RLE masks, boxes only) is an error saying so."""
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise InvalidViaError(f"COCO file whose '{key}' is not a list", file=file)
    categories = {}
    for c in data.get("categories") or []:
        if not isinstance(c, dict) or "id" not in c:
            raise InvalidViaError(f"COCO category {json_repr(c)} without an id", file=file)
        categories[c["id"]] = (str(c.get("supercategory") or "category"), str(c.get("name", "")))
    images: dict[object, AnnotatedImage] = {}
    for im in data["images"]:
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or "id" not in im:
            raise InvalidViaError(f"COCO image {json_repr(im)} without id and file_name",
                                  file=file)
        images[im["id"]] = AnnotatedImage(im["file_name"], -1, [], str(file))
    kinds = set()
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            raise InvalidViaError(f"COCO annotation {k} names no image of the file", file=file)
        img = images[ann["image_id"]]
        seg = ann.get("segmentation")
        index = len(img.regions)
        check_region_count(index + 1, file, img.filename)
        if isinstance(seg, dict):
            kinds.add("RLE masks")
            continue
        parts = [p for p in (seg or []) if isinstance(p, list) and p]
        if not parts:
            kinds.add("boxes only" if ann.get("bbox") else "no shape")
            continue
        if sum(len(p) for p in parts) > 2 * MAX_POINTS:
            raise InvalidViaError(f"segmentation of more than {MAX_POINTS:,} vertices",
                                  file=file, image=img.filename, region=index)
        if any(len(p) % 2 for p in parts):
            raise InvalidViaError("segmentation with an odd number of coordinates", file=file,
                                  image=img.filename, region=index)
        coords = [_numbers(p, "segmentation", file, img.filename, index, 2) for p in parts]
        best = max(coords, key=lambda c: abs(_shoelace(c[0::2], c[1::2])))
        attribute, name = categories.get(ann.get("category_id"), ("category", ""))
        img.regions.append(AnnotatedRegion(index, "polygon", best[0::2], best[1::2],
                                      {attribute: name}))
    if data["annotations"] and not any(im.regions for im in images.values()):
        raise InvalidViaError(f"COCO file without polygons ({', '.join(sorted(kinds))}): "
                              "spinepipe needs polygon segmentations", file=file)
    return list(images.values())


def _shoelace(xs: Sequence[float], ys: Sequence[float]) -> float:
    return 0.5 * sum(xs[i - 1] * ys[i] - xs[i] * ys[i - 1] for i in range(len(xs)))


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """The VIA files named by ``paths``: a file as it is, a folder as all its ``.json`` and
    ``.csv`` files (sorted). :class:`~converters.core.errors.MissingInputError` when none;
    :class:`InvalidViaError` for one that is not a regular file (a FIFO would block)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in (".json", ".csv"))
        else:
            files.append(path)
    for f in files:
        kind = special_kind(f)
        if kind and kind != "missing":  # a missing file: read_via says "not found"
            raise InvalidViaError(f"not a regular file ({kind})", file=f)
    if not files:
        raise MissingInputError("no VIA file found", file=", ".join(map(str, paths)))
    return files


def read_via(path: str | Path) -> tuple[str, list[AnnotatedImage]]:
    """Read any VIA export; returns (format name, images).

    Formats: ``via2-project`` (``_via_img_metadata``), ``via2-annotations`` (the metadata
    object alone, keyed by filename + size), ``via1`` (regions as a dict), ``via3-project``
    (``project`` / ``file`` / ``view`` / ``metadata`` / ``attribute``), ``via-csv`` (bare
    ``undefined`` cells read as "not set"), ``coco`` (VIA's COCO export or any COCO
    instances file with polygons).
    """
    path = Path(path)
    try:
        return _read_any(path)
    except UnicodeDecodeError as exc:
        raise InvalidViaError(f"not UTF-8 text (byte {exc.start})", file=path) from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        # any other structure VIA never writes: one line, never a traceback
        raise InvalidViaError(f"unexpected structure ({type(exc).__name__}: {exc})"
                              .splitlines()[0][:200], file=path) from None


def _read_any(path: Path) -> tuple[str, list[AnnotatedImage]]:
    if path.suffix.lower() == ".csv":
        from converters.annotations.via_csv import read_via_csv  # it reads through this module
        return "via-csv", read_via_csv(path)
    data = _json_load(path)
    if not isinstance(data, dict):
        raise InvalidViaError("top level is not a JSON object", file=path)
    if "_via_img_metadata" in data:
        meta = data["_via_img_metadata"]
        if not isinstance(meta, dict):
            raise InvalidViaError("'_via_img_metadata' is not an object", file=path)
        return "via2-project", _read_via2_metadata(meta, path)
    if {"file", "view", "metadata"} <= set(data) or ("project" in data and "file" in data):
        return "via3-project", _read_via3(data, path)
    if "images" in data and "annotations" in data:
        return "coco", _read_coco(data, path)
    if data and all(isinstance(v, dict) and "filename" in v for v in data.values()):
        via1 = any(isinstance(v.get("regions"), dict) for v in data.values())
        return ("via1" if via1 else "via2-annotations"), _read_via2_metadata(data, path)
    if not data:
        return "via2-annotations", []
    raise InvalidViaError("unknown VIA version (no '_via_img_metadata', no VIA 3 'file'/"
                          "'view'/'metadata', no images keyed by file name)", file=path)
