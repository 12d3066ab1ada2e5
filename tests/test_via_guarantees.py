"""VIA's formats read and written by hand (converters/annotations/via.py, via_csv.py,
via_project.py; issue 30's mutation modules via, via-csv and via-project).

Class of defect guarded: a VIA file read differently from what VIA means by it, or a hostile
one read at all. Per format: VIA 2 projects and annotation exports (sizes as numbers, strings,
empty or missing; file attributes; checkbox values), VIA 1 (regions keyed "0", "1", ... "10"
in numeric order), VIA 3 (shape ids, option ids resolved to names, whole-file annotations),
COCO (the largest part of a polygon, the class from the category), VIA's CSV (its quoting,
bare ``undefined``, a BOM); every non-polygon shape's parameters; the writer's exact project
and its round trip; the image location VIA is told; and for every malformed value the one
:class:`InvalidViaError` that names the file, image and region. Expected values are written
here by hand from VIA's formats, never taken from the reader.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from converters.annotations import via, via_csv
from converters.core.errors import InvalidViaError, MissingInputError
from converters.annotations.via import (DEFAULT_CLASS_OPTIONS, MAX_POINTS, MAX_REGIONS,
                                        expand_inputs, read_via)
from converters.annotations.via_project import (ProjectImage, ProjectRegion, polygon_region,
                                                via2_project, via_filepath)


def _write(tmp_path: Path, data, name: str = "v.json") -> Path:
    path = tmp_path / name
    if isinstance(data, (bytes, str)):
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    else:
        path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _read(tmp_path: Path, data, name: str = "v.json"):
    return read_via(_write(tmp_path, data, name))


def _error(tmp_path: Path, data, name: str = "v.json") -> InvalidViaError:
    path = _write(tmp_path, data, name)
    with pytest.raises(InvalidViaError) as info:
        read_via(path)
    assert info.value.file == str(path)
    return info.value


def _poly(xs, ys, **attributes):
    return {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
            "region_attributes": attributes}


def _project(*entries):
    return {"_via_img_metadata": {f"{e['filename']}{e.get('size', '')}": e for e in entries}}


def _shapes(images):
    return [(i.filename, i.size, [(r.shape, r.xs, r.ys, r.attributes, r.params)
                                  for r in i.regions], i.file_attributes) for i in images]


# --------------------------------------------------------------------------------------------
# writing


def test_the_written_project_is_what_via_saves():
    img = ProjectImage("a.png", 1234, (ProjectRegion((1, 5, 3), (2, 2, 9), {"class": "lumbar"}),),
                   {"view": "lateral"})
    project = via2_project([img, ProjectImage("b.png")], name="study",
                           class_attribute="kind", default_filepath="/png/")
    assert list(project) == ["_via_settings", "_via_img_metadata", "_via_attributes",
                             "_via_data_format_version", "_via_image_id_list"]
    assert project["_via_data_format_version"] == "2.0.10"
    assert project["_via_image_id_list"] == ["a.png1234", "b.png-1"]
    assert project["_via_img_metadata"]["a.png1234"] == {
        "filename": "a.png", "size": 1234, "file_attributes": {"view": "lateral"},
        "regions": [{"shape_attributes": {"name": "polygon", "all_points_x": [1, 5, 3],
                                          "all_points_y": [2, 2, 9]},
                     "region_attributes": {"class": "lumbar"}}]}
    assert project["_via_img_metadata"]["b.png-1"]["regions"] == []
    settings = project["_via_settings"]
    assert settings["project"] == {"name": "study"}
    assert settings["core"] == {"buffer_size": 18, "filepath": {}, "default_filepath": "/png/"}
    assert settings["ui"]["image"]["region_label"] == "kind"
    assert settings["ui"]["image"]["region_color"] == "kind"
    assert project["_via_attributes"] == {
        "region": {"kind": {"type": "dropdown", "description": "vertebra or implant class",
                            "options": DEFAULT_CLASS_OPTIONS, "default_options": {}}},
        "file": {}}
    assert via2_project([], class_options={})["_via_attributes"]["region"]["class"][
        "options"] == {}
    assert via2_project([])["_via_settings"]["core"]["default_filepath"] == ""
    assert via2_project([])["_via_settings"]["project"]["name"] == "spinepipe"


def test_written_projects_read_back_as_written(tmp_path):
    images = [ProjectImage("a.png", 10, (ProjectRegion((1, 5, 3), (2, 2, 9), {"class": "sacrum"}),
                                     ProjectRegion((0, 4, 4), (0, 0, 4), {})), {"q": "good"}),
              ProjectImage("b b.png", -1)]
    fmt, read = _read(tmp_path, via2_project(images))
    assert fmt == "via2-project"
    assert _shapes(read) == [
        ("a.png", 10, [("polygon", [1.0, 5.0, 3.0], [2.0, 2.0, 9.0], {"class": "sacrum"}, {}),
                       ("polygon", [0.0, 4.0, 4.0], [0.0, 0.0, 4.0], {}, {})], {"q": "good"}),
        ("b b.png", -1, [], {})]
    assert [r.index for r in read[0].regions] == [0, 1]
    assert read[0].source == str(tmp_path / "v.json")


@pytest.mark.parametrize("location, written", [
    ("", ""), ("   ", ""), ("/data/png", "/data/png/"), (" /data/png/ ", "/data/png/"),
    ("C:\\data\\png", "C:\\data\\png\\"), ("C:\\data\\png\\", "C:\\data\\png\\"),
    ("http://host/png", "http://host/png/"), ("C:\\data/png", "C:\\data/png/"),
    ("http:\\\\host", "http:\\\\host\\"), ("png", "png/"),
])
def test_the_image_location_ends_with_the_separator_via_needs(location, written):
    assert via_filepath(location) == written


def test_polygon_region_rounds_to_pixels_and_drops_repeats_and_the_closing_point():
    r = polygon_region([(0.4, 0.6), (0.2, 1.4), (10.5, 0), (11.5, 0), (10, 10), (0, 1)],
                       **{"class": "cage"})
    # Python rounds halves to even: 10.5 -> 10, 11.5 -> 12; (0, 1) repeats the first vertex
    assert (r.xs, r.ys, r.attributes) == ((0, 10, 12, 10), (1, 0, 0, 10), {"class": "cage"})
    assert polygon_region([(3, 4)]) == ProjectRegion((3,), (4,), {})
    assert polygon_region([(3, 4), (3.2, 4.2)]) == ProjectRegion((3,), (4,), {})
    assert polygon_region([(1, 1), (2, 2), (1, 1)]).xs == (1, 2)
    assert polygon_region([]) == ProjectRegion((), (), {})


# --------------------------------------------------------------------------------------------
# VIA 2 and VIA 1 JSON


@pytest.mark.parametrize("entry, size", [
    ({"size": 1234}, 1234), ({"size": "1234"}, 1234), ({"size": ""}, -1), ({"size": None}, -1),
    ({}, -1), ({"file_size": 77}, 77), ({"size": 5, "file_size": 77}, 5), ({"size": -1}, -1),
])
def test_the_recorded_file_size_as_via_writes_it(tmp_path, entry, size):
    fmt, images = _read(tmp_path, {"_via_img_metadata": {"k": dict(filename="a.png", **entry)}})
    assert fmt == "via2-project" and [(i.filename, i.size) for i in images] == [("a.png", size)]


@pytest.mark.parametrize("size", [True, 1.5, "12kB", [], {}])
def test_a_size_that_is_not_a_number_of_bytes_is_refused(tmp_path, size):
    err = _error(tmp_path, {"_via_img_metadata": {"k": {"filename": "a.png", "size": size}}})
    assert err.message == f"size {via.json_repr(size)} is not a number of bytes"
    assert err.image == "a.png" and err.region is None


def test_attribute_values_strings_checkboxes_and_unset(tmp_path):
    region = _poly([0, 4, 4], [0, 0, 4], **{
        "class": "lumbar", "one": {"a": True, "b": False}, "two": {"a": True, "b": True},
        "none": {"a": False}, "null": None, "n": 3})
    entry = {"filename": "a.png", "size": 1, "regions": [region],
             "file_attributes": {"view": {"lateral": True}, "q": None, "k": 2}}
    _, [img] = _read(tmp_path, _project(entry))
    assert img.regions[0].attributes == {"class": "lumbar", "one": "a", "two": "a,b",
                                         "none": "", "null": "", "n": "3"}
    assert img.file_attributes == {"view": "lateral", "q": "", "k": "2"}


def test_absent_or_null_parts_are_empty(tmp_path):
    entries = [{"filename": "a.png", "regions": None, "file_attributes": None},
               {"filename": "b.png"},
               {"filename": "c.png", "regions": [{"shape_attributes": {
                   "name": "polygon", "all_points_x": [1, 2, 3], "all_points_y": [4, 5, 6]},
                   "region_attributes": None}, {"shape_attributes": {
                       "name": "polygon", "all_points_x": [1, 2, 3],
                       "all_points_y": [4, 5, 6]}}]}]
    _, images = _read(tmp_path, _project(*entries))
    assert _shapes(images) == [
        ("a.png", -1, [], {}), ("b.png", -1, [], {}),
        ("c.png", -1, [("polygon", [1.0, 2.0, 3.0], [4.0, 5.0, 6.0], {}, {})] * 2, {})]


def test_via1_regions_keyed_by_number_in_numeric_order(tmp_path):
    regions = {str(k): _poly([k, k + 1, k], [0, 0, 1], id=str(k)) for k in (10, 2, 0, 1)}
    fmt, [img] = _read(tmp_path, {"a.png5": {"filename": "a.png", "size": 5,
                                             "regions": regions}})
    assert fmt == "via1"
    assert [r.attributes["id"] for r in img.regions] == ["0", "1", "2", "10"]
    assert [r.index for r in img.regions] == [0, 1, 2, 3] and img.regions[3].xs[0] == 10.0
    err = _error(tmp_path, {"a.png5": {"filename": "a.png", "regions": {"x": _poly(
        [0, 1, 1], [0, 0, 1])}}})
    assert err.message == "VIA 1 regions keyed by something other than numbers"
    assert err.image == "a.png"


def test_which_format_a_json_file_is(tmp_path):
    entry = {"filename": "a.png", "size": 3, "regions": [_poly([0, 1, 1], [0, 0, 1])]}
    assert _read(tmp_path, {"a.png3": entry})[0] == "via2-annotations"
    assert _read(tmp_path, {})[0:2] == ("via2-annotations", [])
    assert _read(tmp_path, {"file": {}, "view": {}, "metadata": {}, "attribute": {}}) == (
        "via3-project", [])
    assert _read(tmp_path, {"project": {}, "file": {}, "view": {}, "metadata": {},
                            "attribute": {}}) == ("via3-project", [])
    assert _read(tmp_path, {"images": [], "annotations": []}) == ("coco", [])
    assert _read(tmp_path, {"_via_img_metadata": {}, "images": [],
                            "annotations": []}) == ("via2-project", [])
    for unknown in ({"a": {"filename": "a.png"}, "b": {"name": "b.png"}}, {"images": []},
                    {"file": {}, "view": {}}, {"a": 1}):
        err = _error(tmp_path, unknown)
        assert err.message.startswith("unknown VIA version (no '_via_img_metadata'")
    assert _error(tmp_path, [1]).message == "top level is not a JSON object"
    assert _error(tmp_path, {"_via_img_metadata": []}).message == (
        "'_via_img_metadata' is not an object")
    missing = tmp_path / "none.json"
    with pytest.raises(InvalidViaError) as info:
        read_via(missing)
    assert info.value.message == "VIA file not found" and info.value.file == str(missing)


@pytest.mark.parametrize("entry, message, image", [
    ([], "image entry without key 'filename'", "k"),
    ({"size": 1}, "image entry without key 'filename'", "k"),
    ({"filename": ""}, "filename '' is not a file name", "k"),
    ({"filename": 7}, "filename 7 is not a file name", "k"),
    ({"filename": "a.png", "regions": "x"}, "regions is str, not a list", "a.png"),
    ({"filename": "a.png", "regions": [[]]}, "region is list, not an object", "a.png"),
    ({"filename": "a.png", "file_attributes": []}, "file_attributes is list, not an object",
     "a.png"),
])
def test_a_malformed_image_entry_is_named(tmp_path, entry, message, image):
    err = _error(tmp_path, {"_via_img_metadata": {"k": entry}})
    assert (err.message, err.image) == (message, image)
    assert err.region == (0 if message.startswith("region is") else None)


# --------------------------------------------------------------------------------------------
# regions: polygons, other shapes, malformed values


def _region_error(tmp_path, region) -> InvalidViaError:
    err = _error(tmp_path, _project({"filename": "a.png", "size": 1,
                                     "regions": [_poly([0, 1, 1], [0, 0, 1]), region]}))
    assert (err.image, err.region) == ("a.png", 1)
    return err


@pytest.mark.parametrize("shape, message", [
    ({}, "region without shape_attributes.name"),
    ([], "region without shape_attributes.name"),
    ({"name": "polygon", "all_points_y": [1]}, "polygon without key all_points_x"),
    ({"name": "polyline", "all_points_x": [1]}, "polyline without key all_points_y"),
    ({"name": "polygon", "all_points_x": "1,2", "all_points_y": [1, 2]},
     "all_points_x is str, not a list of numbers"),
    ({"name": "polygon", "all_points_x": [1, 2], "all_points_y": None},
     "all_points_y is NoneType, not a list of numbers"),
    ({"name": "polygon", "all_points_x": [1, True], "all_points_y": [1, 2]},
     "all_points_x holds True, not a number"),
    ({"name": "polygon", "all_points_x": [1, "2"], "all_points_y": [1, 2]},
     "all_points_x holds '2', not a number"),
    ({"name": "polygon", "all_points_x": [1, [2]], "all_points_y": [1, 2]},
     "all_points_x holds [2], not a number"),
    ({"name": "polygon", "all_points_x": [1, 2, 3], "all_points_y": [1, 2]},
     "all_points_x and all_points_y differ in length"),
    ({"name": "rect", "x": 1, "y": True, "width": 2, "height": 2},
     "rect.y is True, not a finite number"),
    ({"name": "circle", "cx": 1, "cy": "2", "r": 2}, "circle.cy is '2', not a finite number"),
])
def test_a_malformed_region_is_named_with_its_image_and_index(tmp_path, shape, message):
    err = _region_error(tmp_path, {"shape_attributes": shape, "region_attributes": {}})
    assert err.message == message


def test_non_finite_coordinates_are_refused(tmp_path):
    path = tmp_path / "v.json"
    for bad in ("NaN", "Infinity", "-Infinity"):
        path.write_text('{"_via_img_metadata": {"k": {"filename": "a.png", "regions": [{'
                        '"shape_attributes": {"name": "polygon", "all_points_x": [1, 2, '
                        + bad + '], "all_points_y": [1, 2, 3]}}]}}}', encoding="utf-8")
        with pytest.raises(InvalidViaError) as info:
            read_via(path)
        assert "non-finite coordinate" in info.value.message
        assert (info.value.file, info.value.image, info.value.region) == (str(path), "a.png", 0)
        path.write_text('{"_via_img_metadata": {"k": {"filename": "a.png", "regions": [{'
                        '"shape_attributes": {"name": "ellipse", "cx": ' + bad + '}}]}}}',
                        encoding="utf-8")
        with pytest.raises(InvalidViaError) as info:
            read_via(path)
        assert "not a finite number" in info.value.message and info.value.image == "a.png"


def test_region_attributes_that_are_not_an_object_are_refused(tmp_path):
    err = _region_error(tmp_path, {"shape_attributes": {"name": "point", "cx": 1, "cy": 2},
                                   "region_attributes": ["lumbar"]})
    assert err.message == "region_attributes is list, not an object"


def test_every_via2_shape_is_read_with_its_parameters(tmp_path):
    regions = [
        {"shape_attributes": {"name": "rect", "x": 1, "y": 2, "width": 3.5, "height": 4}},
        {"shape_attributes": {"name": "circle", "cx": 5, "cy": 6, "r": 7}},
        {"shape_attributes": {"name": "ellipse", "cx": 5, "cy": 6, "rx": 7, "ry": 8,
                              "theta": 0.5}},
        {"shape_attributes": {"name": "point", "cx": 9, "cy": 10}},
        {"shape_attributes": {"name": "polyline", "all_points_x": [1, 2],
                              "all_points_y": [3, 4]}, "region_attributes": {"c": "rod"}},
    ]
    _, [img] = _read(tmp_path, _project({"filename": "a.png", "regions": regions}))
    assert _shapes([img])[0][2] == [
        ("rect", [], [], {}, {"x": 1.0, "y": 2.0, "width": 3.5, "height": 4.0}),
        ("circle", [], [], {}, {"cx": 5.0, "cy": 6.0, "r": 7.0}),
        ("ellipse", [], [], {}, {"cx": 5.0, "cy": 6.0, "rx": 7.0, "ry": 8.0, "theta": 0.5}),
        ("point", [], [], {}, {"cx": 9.0, "cy": 10.0}),
        ("polyline", [1.0, 2.0], [3.0, 4.0], {"c": "rod"}, {})]
    assert all(type(v) is float for r in img.regions for v in [*r.xs, *r.ys,
                                                               *r.params.values()])
    assert [r.index for r in img.regions] == [0, 1, 2, 3, 4]


def test_the_limits_on_vertices_and_regions_are_inclusive(tmp_path):
    xs = list(range(MAX_POINTS))
    _, [img] = _read(tmp_path, _project({"filename": "a.png", "regions": [_poly(xs, xs)]}))
    assert len(img.regions[0].xs) == MAX_POINTS
    err = _error(tmp_path, _project({"filename": "a.png", "regions": [
        _poly(xs + [1], xs + [1])]}))
    assert err.message == (f"all_points_x holds {MAX_POINTS + 1:,} values: more than "
                           f"{MAX_POINTS:,} vertices in one polygon")
    assert (err.image, err.region) == ("a.png", 0)
    many = [{"shape_attributes": {"name": "point", "cx": 1, "cy": 1}}] * MAX_REGIONS
    _, [img] = _read(tmp_path, _project({"filename": "a.png", "regions": many}))
    assert len(img.regions) == MAX_REGIONS
    err = _error(tmp_path, _project({"filename": "a.png", "regions": many + many[:1]}))
    assert err.message == f"{MAX_REGIONS + 1:,} regions in one image: more than {MAX_REGIONS:,}"
    assert (err.image, err.region) == ("a.png", MAX_REGIONS)


# --------------------------------------------------------------------------------------------
# VIA 3


def _via3(metadata, files=None, views=None, attributes=None):
    return {"project": {"pname": "p"},
            "file": files if files is not None else {"1": {"fid": 1, "fname": "a.png"},
                                                     "2": {"fid": 2, "src": "b.png"}},
            "view": views if views is not None else {"1": {"fid_list": [1]},
                                                     "2": {"fid_list": ["2"]},
                                                     "3": {"fid_list": []}},
            "attribute": attributes if attributes is not None else {
                "1": {"aname": "class", "type": 3, "options": {"0": "lumbar", "1": "sacrum"}},
                "2": {"aname": "note", "type": 1}},
            "metadata": metadata}


def test_via3_shapes_option_ids_and_whole_file_annotations(tmp_path):
    metadata = {
        "1_a": {"vid": "1", "xy": [7, 1, 2, 3, 4, 5, 6], "av": {"1": "1", "2": "hi"}},
        "1_b": {"vid": "1", "xy": [2, 10, 20, 30, 40], "av": {"1": "0"}},
        "1_c": {"vid": "1", "xy": [3, 5, 6, 7]},
        "1_d": {"vid": "1", "xy": [4, 5, 6, 7, 8], "av": None},
        "1_e": {"vid": "1", "xy": [], "av": {"2": "whole file"}},
        "2_a": {"vid": "2", "xy": [1, 8, 9], "av": {"1": "7", "9": "x"}},
        "2_b": {"vid": "2", "xy": [6, 1, 2, 3, 4]},
        "2_c": {"vid": "2", "xy": [10, 1, 2]},
        "2_d": {"vid": "2", "xy": [5, 1, 2, 3, 4]},
        "2_e": {"vid": "2", "xy": [8, 1, 2, 3, 4]},
        "2_f": {"vid": "2", "xy": [9, 1, 2, 3, 4]},
    }
    files = {"1": {"fid": 1, "fname": "a.png"}, "2": {"fid": 2, "src": "b.png"},
             "3": {"fid": 3, "fname": "c.png"}}
    views = {"1": {"fid_list": [1]}, "2": {"fid_list": ["2"]}, "3": {"fid_list": []},
             "4": {"fid_list": [3]}}
    fmt, images = _read(tmp_path, _via3(metadata, files, views))
    assert fmt == "via3-project"
    assert _shapes(images) == [
        ("a.png", -1, [
            ("polygon", [1.0, 3.0, 5.0], [2.0, 4.0, 6.0], {"class": "sacrum", "note": "hi"}, {}),
            ("rect", [], [], {"class": "lumbar"}, {"x": 10.0, "y": 20.0, "width": 30.0,
                                                   "height": 40.0}),
            ("circle", [], [], {}, {"cx": 5.0, "cy": 6.0, "r": 7.0}),
            ("ellipse", [], [], {}, {"cx": 5.0, "cy": 6.0, "rx": 7.0, "ry": 8.0})], {}),
        ("b.png", -1, [
            ("point", [8.0], [9.0], {"class": "7", "9": "x"}, {}),
            ("polyline", [1.0, 3.0], [2.0, 4.0], {}, {}),
            ("shape10", [1.0], [2.0], {}, {}),
            ("line", [1.0, 3.0], [2.0, 4.0], {}, {}),
            ("extreme_rect", [1.0, 3.0], [2.0, 4.0], {}, {}),
            ("extreme_circle", [1.0, 3.0], [2.0, 4.0], {}, {})], {}),
        ("c.png", -1, [], {})]
    assert [r.index for r in images[0].regions] == [0, 1, 2, 3]
    assert [r.index for r in images[1].regions] == [0, 1, 2, 3, 4, 5]
    assert all(type(v) is float for i in images for r in i.regions
               for v in [*r.xs, *r.ys, *r.params.values()])
    assert {i.source for i in images} == {str(tmp_path / "v.json")}


@pytest.mark.parametrize("project, message", [
    ({"file": {}, "view": {}, "metadata": {}}, "VIA 3 project without key 'attribute'"),
    ({"project": {}, "file": {}, "view": {}, "attribute": {}},
     "VIA 3 project without key 'metadata'"),
    ({"project": {}, "file": {}, "metadata": {}, "attribute": {}},
     "VIA 3 project without key 'view'"),
    (_via3({}, views={"5": {"fid_list": [9]}}), "view 5 names unknown file id 9"),
    (_via3({"m": {"vid": "7", "xy": [7, 1, 2]}}), "metadata m names unknown view 7"),
    (_via3({"m": {"xy": [7, 1, 2]}}), "metadata m names unknown view None"),
    (_via3({"m": {"vid": "1", "xy": [7, 1, "2"]}}), "xy holds '2', not a number"),
])
def test_a_malformed_via3_project_is_named(tmp_path, project, message):
    assert _error(tmp_path, project).message == message


def test_via3_limits_and_hostile_values(tmp_path):
    many = {f"m{k}": {"vid": "1", "xy": [1, k, k]} for k in range(MAX_REGIONS + 1)}
    _, images = _read(tmp_path, _via3(dict(list(many.items())[:MAX_REGIONS])))
    assert len(images[0].regions) == MAX_REGIONS
    err = _error(tmp_path, _via3(many))
    assert err.message.startswith(f"{MAX_REGIONS + 1:,} regions in one image")
    assert err.image == "a.png"
    coords = [1.0] * (2 * MAX_POINTS)
    _, images = _read(tmp_path, _via3({"m": {"vid": "1", "xy": [7, *coords]}}))
    assert len(images[0].regions[0].xs) == MAX_POINTS
    err = _error(tmp_path, _via3({"m": {"vid": "1", "xy": [7, *coords, 1.0, 1.0]}}))
    assert "more than 10,000 vertices" in err.message and err.region == 0
    err = _error(tmp_path, _via3({"m": {"vid": "1", "xy": [7, 1, None]}}))
    assert (err.message, err.image, err.region) == ("xy holds None, not a number", "a.png", 0)
    err = _error(tmp_path, _via3({"m": {"vid": "1", "xy": "7,1,2"}}))
    assert (err.message, err.image, err.region) == ("xy is str, not a list", "a.png", 0)
    err = _error(tmp_path, _via3({"m": {"vid": "1", "xy": ["x", 1, 2]}}))
    assert err.message == ("unexpected structure (ValueError: invalid literal for int() "
                           "with base 10: 'x')")
    err = _error(tmp_path, _via3({"m": {"vid": "1", "xy": {"a": 1}}}))
    assert err.message == "unexpected structure (KeyError: 0)" and err.region is None


# --------------------------------------------------------------------------------------------
# COCO


def test_coco_polygons_their_largest_part_and_the_class_from_the_category(tmp_path):
    # the largest part by area whatever its orientation and place (a 2 x 2 triangle far
    # from the origin against a 10 x 10 square listed the other way round)
    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": "b", "file_name": "b.png"},
                       {"id": 3, "file_name": "c.png"}],
            "categories": [{"id": 1, "name": "sacrum (S1)", "supercategory": "class"},
                           {"id": 2, "name": "rod", "supercategory": ""}, {"id": 3}],
            "annotations": [
                {"image_id": 1, "category_id": 1,
                 "segmentation": [[100, 100, 102, 100, 102, 102], [0, 0, 0, 10, 10, 10, 10, 0],
                                  []]},
                {"image_id": 1, "category_id": 2, "segmentation": [[5, 5, 6, 5, 6, 6]]},
                {"image_id": 1, "category_id": 3, "segmentation": [[1, 1, 2, 1, 2, 2]]},
                {"image_id": "b", "category_id": 9, "segmentation": [[1, 2, 3, 4, 5, 7]]},
                {"image_id": "b", "segmentation": {"counts": "x", "size": [2, 2]}},
                {"image_id": "b", "segmentation": [], "bbox": [1, 2, 3, 4]}]}
    fmt, images = _read(tmp_path, coco)
    assert fmt == "coco"
    assert _shapes(images) == [
        ("a.png", -1, [
            ("polygon", [0.0, 0.0, 10.0, 10.0], [0.0, 10.0, 10.0, 0.0],
             {"class": "sacrum (S1)"}, {}),
            ("polygon", [5.0, 6.0, 6.0], [5.0, 5.0, 6.0], {"category": "rod"}, {}),
            ("polygon", [1.0, 2.0, 2.0], [1.0, 1.0, 2.0], {"category": ""}, {})], {}),
        ("b.png", -1, [("polygon", [1.0, 3.0, 5.0], [2.0, 4.0, 7.0], {"category": ""}, {})],
         {}), ("c.png", -1, [], {})]
    assert all(type(v) is float for i in images for r in i.regions for v in [*r.xs, *r.ys])
    assert {i.source for i in images} == {str(tmp_path / "v.json")}
    assert [r.index for r in images[0].regions] == [0, 1, 2]


@pytest.mark.parametrize("coco, message", [
    ({"images": {}, "annotations": []}, "COCO file whose 'images' is not a list"),
    ({"images": [], "annotations": None}, "COCO file whose 'annotations' is not a list"),
    ({"images": [], "annotations": [], "categories": [{"name": "x"}]},
     "COCO category {'name': 'x'} without an id"),
    ({"images": [], "annotations": [], "categories": ["x"]}, "COCO category 'x' without an id"),
    ({"images": ["a.png"], "annotations": []}, "COCO image 'a.png' without id and file_name"),
    ({"images": [{"id": 1}], "annotations": []},
     "COCO image {'id': 1} without id and file_name"),
    ({"images": [{"file_name": "a.png"}], "annotations": []},
     "COCO image {'file_name': 'a.png'} without id and file_name"),
    ({"images": [{"id": 1, "file_name": 3}], "annotations": []},
     "COCO image {'id': 1, 'file_name': 3} without id and file_name"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 2}]},
     "COCO annotation 0 names no image of the file"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [[1]]},
     "COCO annotation 0 names no image of the file"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [
        {"image_id": 1, "segmentation": {"counts": "x"}}, {"image_id": 1, "bbox": [1, 1, 2, 2]},
        {"image_id": 1, "segmentation": [[]]}]},
     ("COCO file without polygons (RLE masks, boxes only, no shape): spinepipe needs polygon "
     "segmentations")),
])
def test_a_malformed_coco_file_is_named(tmp_path, coco, message):
    assert _error(tmp_path, coco).message == message


def test_coco_polygon_limits_and_odd_coordinates(tmp_path):
    def coco(*parts):
        return {"images": [{"id": 1, "file_name": "a.png"}],
                "annotations": [{"image_id": 1, "segmentation": [[0, 0, 1, 0, 1, 1]]},
                                {"image_id": 1, "segmentation": list(parts)}]}
    # refused, one line naming the image and region, in any part (the largest or not)
    for parts in ([[0, 0, 4, 0, 4, 4, 9]], [[0, 0, 9, 0, 9, 9], [0, 0, 1, 0, 1]]):
        err = _error(tmp_path, coco(*parts))
        assert (err.message, err.image, err.region) == (
            "segmentation with an odd number of coordinates", "a.png", 1)
    half = [1.0] * MAX_POINTS
    _, [img] = _read(tmp_path, coco(half, half))
    assert len(img.regions[1].xs) == MAX_POINTS // 2
    err = _error(tmp_path, coco(half, half + [1.0, 1.0]))
    assert err.message == "segmentation of more than 10,000 vertices"
    assert (err.image, err.region) == ("a.png", 1)
    _, [img] = _read(tmp_path, coco(half + half))          # one part of 10,000 vertices
    assert len(img.regions[1].xs) == MAX_POINTS
    err = _error(tmp_path, coco([0, 0, 1, "x"]))
    assert (err.message, err.image, err.region) == (
        "segmentation holds 'x', not a number", "a.png", 1)
    many = {"images": [{"id": 1, "file_name": "a.png"}],
            "annotations": [{"image_id": 1, "segmentation": [[0, 0, 1, 0, 1, 1]]}]
            * (MAX_REGIONS + 1)}
    err = _error(tmp_path, many)
    assert err.message.startswith("10,001 regions") and err.region == MAX_REGIONS
    assert err.image == "a.png"
    many["annotations"].pop()
    _, [img] = _read(tmp_path, many)
    assert len(img.regions) == MAX_REGIONS


# --------------------------------------------------------------------------------------------
# VIA's CSV export


HEADER = "filename,file_size,file_attributes,region_count,region_id,region_shape_attributes," \
         "region_attributes\n"


def _cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def test_csv_as_via_quotes_it_with_undefined_and_file_attributes(tmp_path):
    rows = [
        ["a b.png", "1234", '{"view":"lateral"}', "2", "0",
         '{"name":"polygon","all_points_x":[1,5,3],"all_points_y":[2,2,9]}',
         '{"class":"lumbar","note":"said \\"undefined\\", then, undefined"}'],
        ["a b.png", "1234", '{"view":"lateral"}', "2", "1",
         '{"name":"rect","x":1,"y":2,"width":3,"height":4}', '{"class":undefined}'],
        ["c.png", "", "{}", "0", "0", "{}", "{}"],
    ]
    text = HEADER + "".join(",".join(_cell(c) for c in row) + "\n" for row in rows)
    fmt, images = _read(tmp_path, "\ufeff" + text, "v.csv")
    assert fmt == "via-csv"
    assert _shapes(images) == [
        ("a b.png", 1234, [
            ("polygon", [1.0, 5.0, 3.0], [2.0, 2.0, 9.0],
             {"class": "lumbar", "note": 'said "undefined", then, undefined'}, {}),
            ("rect", [], [], {"class": ""}, {"x": 1.0, "y": 2.0, "width": 3.0,
                                             "height": 4.0})], {"view": "lateral"}),
        ("c.png", -1, [], {})]
    assert [r.index for r in images[0].regions] == [0, 1]
    assert csv.field_size_limit() == 131072          # the reader's limit is given back


def test_undefined_becomes_null_outside_strings_only():
    f = via_csv._js_undefined_to_null
    assert f('{"a":undefined,"b":"undefined","c":[undefined]}') == \
        '{"a":null,"b":"undefined","c":[null]}'
    assert f('{"a":"x\\"undefined\\\\","b":undefined}') == '{"a":"x\\"undefined\\\\","b":null}'
    assert f('{"a":"\\\\"}undefined') == '{"a":"\\\\"}null'
    assert f("no such word") == "no such word"
    assert f("undefinedundefined") == "nullnull"


@pytest.mark.parametrize("text, message, image", [
    ("filename,file_size,region_shape_attributes\n", ("VIA CSV without column "
     "'region_attributes'"), None),
    ("", "VIA CSV without column 'file_size'", None),
    (HEADER + ',1,{},0,0,{},{}\n', "CSV line 2 without a filename", None),
    (HEADER + 'a.png,1,{},0,0,"{""name"":",{}\n', ("malformed JSON in CSV line 2: Expecting "
     "value"), "a.png"),
    (HEADER + 'a.png,1,{},0,0,{},{}\na.png,1,{},0,0,[1],{}\n',
     "region_shape_attributes in CSV line 3 is not an object", "a.png"),
    (HEADER + 'a.png,1,[1],0,0,{},{}\n', "file_attributes is list, not an object", "a.png"),
    (HEADER + 'a.png,x,{},0,0,{},{}\n', "size 'x' is not a number of bytes", "a.png"),
    (HEADER + 'a.png,1,{},0,0,' + "[" * 300 + "]" * 300 + ',{}\n',
     "JSON in CSV line 2 nested deeper than 64 levels", "a.png"),
    (HEADER + 'a.png,1,{},0,0,{},"{""a"":1}"x"\n', "malformed JSON in CSV line 2: Extra data",
     "a.png"),
])
def test_a_malformed_csv_is_named_with_its_line(tmp_path, text, message, image):
    err = _error(tmp_path, text, "v.csv")
    assert (err.message, err.image) == (message, image)


def test_a_csv_the_system_cannot_read_is_refused_naming_it(tmp_path, monkeypatch):
    """An I/O error on opening (a permission, a failing disk: tests run as root, so it is
    raised here) is one line naming the file, with the system's reason."""
    path = tmp_path / "v.csv"
    path.write_text(HEADER, encoding="utf-8")

    def refuse(*_args, **_kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(via_csv, "open_input", refuse)
    with pytest.raises(InvalidViaError) as info:
        read_via(path)
    assert (info.value.message, info.value.file) == (
        "cannot read the VIA file (Permission denied)", str(path))


def test_a_csv_that_is_not_utf8_or_not_a_file(tmp_path):
    err = _error(tmp_path, HEADER.encode() + b'a\xff.png,1,{},0,0,{},{}\n', "v.csv")
    assert err.message.startswith("not UTF-8 text (byte ")
    missing = tmp_path / "none.csv"
    with pytest.raises(InvalidViaError) as info:
        read_via(missing)
    assert (info.value.message, info.value.file) == ("VIA file not found", str(missing))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(InvalidViaError) as info:
        read_via(tmp_path / "dir.csv")
    assert info.value.file == str(tmp_path / "dir.csv") and "folder" in info.value.message


# --------------------------------------------------------------------------------------------
# the files named


def test_expand_inputs_takes_a_folder_s_via_files_sorted_and_files_as_they_are(tmp_path):
    for name in ("b.json", "a.CSV", "c.Json", "d.png", "e.txt"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "sub").mkdir()
    other = tmp_path / "sub" / "x.json"
    other.write_text("{}")
    got = expand_inputs([tmp_path, other, tmp_path / "missing.json"])
    assert got == [tmp_path / "a.CSV", tmp_path / "b.json", tmp_path / "c.Json", other,
                   tmp_path / "missing.json"]
    assert expand_inputs([other, tmp_path]) == [other, tmp_path / "a.CSV",
                                                tmp_path / "b.json", tmp_path / "c.Json"]
    fifo = tmp_path / "f.json"
    os.mkfifo(fifo)
    with pytest.raises(InvalidViaError) as info:
        expand_inputs([other, fifo])
    assert info.value.message == "not a regular file (FIFO)" and info.value.file == str(fifo)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError) as info:
        expand_inputs([tmp_path / "empty"])
    assert info.value.message == "no VIA file found"
    assert info.value.file == str(tmp_path / "empty")


# --------------------------------------------------------------------------------------------
# the writer against the project the real VIA 2.0.10 saved (tests/data/via_2.0.10/)


def test_the_written_project_equals_the_one_via_2_0_10_saved():
    from conftest import data_file
    path = data_file("via_2.0.10") / "via_2.0.10_phantom.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    _, images = read_via(path)
    assert len(images) == 4 and sum(len(i.regions) for i in images) == 11
    ours = via2_project(
        [ProjectImage(i.filename, i.size, tuple(polygon_region(list(zip(r.xs, r.ys)),
                                                           **r.attributes) for r in i.regions),
                  i.file_attributes) for i in images],
        name=saved["_via_settings"]["project"]["name"],
        default_filepath=saved["_via_settings"]["core"]["default_filepath"])
    assert json.dumps(ours) == json.dumps(saved)      # keys, order, values and types


def test_csv_empty_cells_and_file_attributes_of_the_first_row(tmp_path):
    text = HEADER + "".join(",".join(_cell(c) for c in row) + "\n" for row in [
        ["a.png", "5", "", "2", "0", "", ""],
        ["a.png", "5", '{"view":"lateral"}', "2", "0",
         '{"name":"point","cx":1,"cy":2}', ""],
        ["a.png", "5", '{"view":"ap","extra":"1"}', "2", "1",
         '{"name":"point","cx":3,"cy":4}', '{"class":"screw"}'],
        ["b.png", "6", "", "0", "0", "", '{"class":"rod"}'],
    ])
    _, images = _read(tmp_path, text, "v.csv")
    assert _shapes(images) == [
        ("a.png", 5, [("point", [], [], {}, {"cx": 1.0, "cy": 2.0}),
                      ("point", [], [], {"class": "screw"}, {"cx": 3.0, "cy": 4.0})],
         {"view": "lateral"}),
        ("b.png", 6, [], {})]


def test_csv_limit_on_regions_is_inclusive_and_names_the_image(tmp_path):
    row = '"a.png",1,"{}",1,0,"{""name"":""point"",""cx"":1,""cy"":1}","{}"\n'
    _, [img] = _read(tmp_path, HEADER + row * MAX_REGIONS, "v.csv")
    assert len(img.regions) == MAX_REGIONS
    err = _error(tmp_path, HEADER + row * (MAX_REGIONS + 1), "v.csv")
    assert (err.message, err.image, err.region) == (
        f"{MAX_REGIONS + 1:,} regions in one image: more than {MAX_REGIONS:,}", "a.png",
        MAX_REGIONS)


def test_a_malformed_csv_region_is_named_with_its_file_image_and_index(tmp_path):
    rows = ['"a.png",1,"{}",2,0,"{""name"":""point"",""cx"":1,""cy"":1}","{}"',
            ('"a.png",1,"{}",2,1,"{""name"":""polygon"",""all_points_x"":[1,2],'
            '""all_points_y"":[1]}","{}"')]
    err = _error(tmp_path, HEADER + "\n".join(rows) + "\n", "v.csv")
    assert (err.message, err.image, err.region) == (
        "all_points_x and all_points_y differ in length", "a.png", 1)


@pytest.mark.parametrize("value, shown", [
    ("a" * 38, "'" + "a" * 38 + "'"),                     # 40 characters: whole
    ("a" * 39, "'" + "a" * 36 + "..."),                   # 41: cut to 37 and "..."
    (None, "None"), (1.5, "1.5"),
])
def test_a_hostile_value_is_quoted_in_at_most_40_characters(value, shown):
    assert via.json_repr(value) == shown and len(shown) <= 40


def test_a_long_hostile_value_is_cut_in_the_message(tmp_path):
    err = _error(tmp_path, {"_via_img_metadata": {"k": {"filename": "a.png",
                                                         "size": "9" * 50 + "x"}}})
    assert err.message == "size '" + "9" * 36 + "... is not a number of bytes"


def test_unreadable_or_malformed_files_are_one_line_naming_the_file(tmp_path):
    err = _error(tmp_path, b'{"a\xff": 1}')
    assert err.message == "VIA file: not UTF-8 text (byte 3)"
    err = _error(tmp_path, '{"a": ')
    assert err.message == "VIA file: malformed JSON at line 1, column 7: Expecting value"
    err = _error(tmp_path, HEADER.encode() + b'a\xff.png,1,{},0,0,{},{}\n', "v.csv")
    assert err.message == f"not UTF-8 text (byte {len(HEADER) + 1})"
    fmt, images = _read(tmp_path, HEADER + 'a.png,1,{},0,0,{},{}\n', "V.CSV")
    assert fmt == "via-csv" and [i.filename for i in images] == ["a.png"]


def test_an_unexpected_structure_is_cut_to_one_line_of_200_characters(tmp_path):
    err = _error(tmp_path, _via3({"m": {"vid": "1", "xy": ["x" * 300, 1, 2]}}))
    assert err.message.startswith("unexpected structure (ValueError: invalid literal")
    assert len(err.message) == 200


def test_no_via_file_in_several_folders_names_them_all(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(MissingInputError) as info:
        expand_inputs([tmp_path / "a", tmp_path / "b"])
    assert info.value.file == f"{tmp_path / 'a'}, {tmp_path / 'b'}"


def test_csv_line_breaks_inside_a_quoted_cell_are_kept(tmp_path):
    # VIA quotes the file name as it is; a record ends at CRLF or LF outside quotes only
    text = HEADER.replace("\n", "\r\n") + '"a\r\nb.png",1,"{}",0,0,"{}","{}"\r\n' \
        + '"c\rd.png",2,"{}",0,0,"{}","{}"\n'
    _, images = _read(tmp_path, text, "v.csv")
    assert [(i.filename, i.size) for i in images] == [("a\r\nb.png", 1), ("c\rd.png", 2)]


def test_via3_numbers_beyond_a_shape_s_own_are_ignored(tmp_path):
    metadata = {"r": {"vid": "1", "xy": [2, 1, 2, 3, 4, 99]},
                "e": {"vid": "1", "xy": [4, 5, 6, 7, 8, 99]},
                "c": {"vid": "1", "xy": [3, 5, 6, 7, 99]}}
    _, images = _read(tmp_path, _via3(metadata))
    assert [r.params for r in images[0].regions] == [
        {"x": 1.0, "y": 2.0, "width": 3.0, "height": 4.0},
        {"cx": 5.0, "cy": 6.0, "rx": 7.0, "ry": 8.0}, {"cx": 5.0, "cy": 6.0, "r": 7.0}]
