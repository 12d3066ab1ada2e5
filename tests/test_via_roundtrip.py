"""The annotators' round trip with the real VIA 2.0.10: files built exactly as VIA writes them
(its via.js: Project > Save, "Export Annotations" as JSON / CSV / COCO) convert to the same
COCO as the JSON export of the same drawing; a renamed class attribute is found or refused;
an empty result from annotated regions is never a success; the exported project tells VIA
where the images are; ``spinepipe validate`` and ``--strict`` report every problem.

How VIA 2.0.10 writes each file (read from via.js, functions named in each builder):
- CSV (``pack_via_metadata('csv')``): per region ``filename,size,"file_attrs",count,id,
  "shape","attrs"``; each cell is ``map_to_json``: ``JSON.stringify`` per key and per value, so
  a dropdown never picked is a bare ``undefined``; quotes doubled (``escape_for_csv``).
- COCO (``export_project_to_coco_format``): categories named by the option *description*,
  ``supercategory`` = the attribute name, sequential ids; ``area`` = the bounding box area;
  regions whose class was never picked are left out.
- JSON (``pack_via_metadata('json')``): ``_via_img_metadata`` alone; unset dropdowns absent.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from converters.annotations.convert import ConvertConfig, convert
from converters.annotations.via import DEFAULT_CLASS_OPTIONS
from converters.annotations.via_project import ProjectImage, polygon_region, via2_project
from pipeline.cli import main

NO_PARAMS = "/nonexistent/params.yaml"


def _drawing(tmp_path: Path) -> tuple[Path, list[ProjectImage]]:
    """Two images, five lumbar bodies and a sacrum each; one region whose class the
    annotator forgot to pick (no 'class' key, as VIA keeps it)."""
    images = tmp_path / "png"
    images.mkdir()
    out = []
    for k, name in enumerate(("SP01_1.2.3.png", "SP02_1.2.4.png")):
        cv2.imwrite(str(images / name), np.full((200, 90), 80 + k, np.uint8))
        regions = [polygon_region([(20 + k, y), (60, y + 2), (62, y + 24), (21, y + 22)],
                                  **{"class": "lumbar"}) for y in (10, 40, 70, 100, 130)]
        regions.append(polygon_region([(15, 165), (70, 160), (45, 195)], **{"class": "sacrum"}))
        regions.append(polygon_region([(70, 20), (85, 20), (80, 35)]))  # class never picked
        out.append(ProjectImage(name, (images / name).stat().st_size, tuple(regions)))
    return images, out


def _project(drawing: list[ProjectImage], attribute: str = "class") -> dict:
    renamed = [ProjectImage(i.filename, i.size, tuple(
        type(r)(r.xs, r.ys, {attribute: v for v in r.attributes.values()}) for r in i.regions))
        for i in drawing]
    return via2_project(renamed, class_attribute=attribute)


def _js(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def via_csv(project: dict) -> str:
    """VIA 2.0.10 ``pack_via_metadata('csv')``, line for line."""
    attr = next(iter(project["_via_attributes"]["region"]))
    lines = ["filename,file_size,file_attributes,region_count,region_id,"
             "region_shape_attributes,region_attributes"]
    for meta in project["_via_img_metadata"].values():
        prefix = f'{meta["filename"]},{meta["size"]},"{{}}"'
        for i, r in enumerate(meta["regions"]):
            shape = "{" + ",".join(f"{_js(k)}:{_js(v)}" for k, v in r["shape_attributes"].items()) + "}"
            value = r["region_attributes"].get(attr)
            attrs = "{" + f"{_js(attr)}:" + (_js(value) if value is not None else "undefined") + "}"
            lines.append(",".join([prefix, str(len(meta["regions"])), str(i),
                                   '"' + shape.replace('"', '""') + '"',
                                   '"' + attrs.replace('"', '""') + '"']))
    return "\n".join(lines)


def via_coco(project: dict, images: Path) -> dict:
    """VIA 2.0.10 ``export_project_to_coco_format``: description-named categories, box areas."""
    attr, spec = next(iter(project["_via_attributes"]["region"].items()))
    cats, cat_id = [], {}
    for k, (option, description) in enumerate(spec["options"].items(), 1):
        cats.append({"supercategory": attr, "id": k, "name": description})
        cat_id[option] = k
    coco = {"info": {"version": "1.0"}, "images": [], "annotations": [],
            "licenses": [{"id": 0, "name": "Unknown License", "url": ""}], "categories": cats}
    for n, img_id in enumerate(project["_via_image_id_list"], 1):
        meta = project["_via_img_metadata"][img_id]
        h, w = cv2.imread(str(images / meta["filename"]), cv2.IMREAD_UNCHANGED).shape[:2]
        coco["images"].append({"id": n, "width": w, "height": h, "file_name": meta["filename"],
                               "license": 0, "flickr_url": meta["filename"],
                               "coco_url": meta["filename"], "date_captured": ""})
        for r in meta["regions"]:
            xs, ys = r["shape_attributes"]["all_points_x"], r["shape_attributes"]["all_points_y"]
            value = r["region_attributes"].get(attr)
            if value not in cat_id:
                continue  # VIA skips what it cannot categorize
            seg = [v for xy in zip(xs, ys) for v in xy]
            bw, bh = max(xs) - min(xs), max(ys) - min(ys)
            coco["annotations"].append({
                "segmentation": [seg], "area": bw * bh, "bbox": [min(xs), min(ys), bw, bh],
                "iscrowd": 0, "id": len(coco["annotations"]) + 1, "image_id": n,
                "category_id": cat_id[value]})
    return coco


def _instances(out: Path) -> list[tuple]:
    coco = json.loads((out / "coco.json").read_text())
    names = {i["id"]: i["file_name"] for i in coco["images"]}
    return sorted((names[a["image_id"]], a["category_id"], a["level"], tuple(a["segmentation"][0]),
                   round(a["area"], 6), tuple(a["bbox"])) for a in coco["annotations"])


def _shoelace(seg) -> float:
    x, y = np.array(seg[0::2]), np.array(seg[1::2])
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


@pytest.fixture()
def drawing(tmp_path):
    images, drawn = _drawing(tmp_path)
    project = _project(drawn)
    reference = tmp_path / "export.json"  # "Export Annotations (as json)"
    reference.write_text(json.dumps(project["_via_img_metadata"]))
    convert([reference], images, tmp_path / "ref", ConvertConfig(qa=False))
    return tmp_path, images, project, _instances(tmp_path / "ref")


def test_every_file_via_writes_converts_to_the_same_coco(drawing):
    tmp_path, images, project, expected = drawing
    assert len(expected) == 12  # the forgotten class is dropped, everything else kept
    files = {
        "project.json": json.dumps(project),
        "export.csv": via_csv(project),
        "export_coco.json": json.dumps(via_coco(project, images)),
        "renamed.json": json.dumps(_project(
            [ProjectImage(m["filename"], m["size"], tuple(
                polygon_region(list(zip(r["shape_attributes"]["all_points_x"],
                                        r["shape_attributes"]["all_points_y"])),
                               **r["region_attributes"]) for r in m["regions"]))
             for m in project["_via_img_metadata"].values()], attribute="type")),
    }
    assert "undefined" in files["export.csv"] and '""class"":undefined' in files["export.csv"]
    coco_file = json.loads(files["export_coco.json"])
    assert coco_file["categories"][0]["name"] == DEFAULT_CLASS_OPTIONS["lumbar"]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        report = convert([tmp_path / name], images, tmp_path / name.replace(".", "_"),
                         ConvertConfig(qa=False))
        assert _instances(tmp_path / name.replace(".", "_")) == expected, name
        if name != "export_coco.json":  # VIA's COCO export leaves the unset region out
            assert report.counts().get("unknown_class") == 2, name
        if name == "renamed.json":
            assert report.class_attribute == "type" and report.class_attribute_detected
            saved = json.loads((tmp_path / "renamed_json" / "report.json").read_text())
            assert saved["class_attribute"] == "type" and saved["class_attribute_detected"]
    # areas are the polygons', never VIA's box areas
    for (_, _, _, seg, area, _) in _instances(tmp_path / "export_coco_json"):
        assert area == pytest.approx(_shoelace(seg), rel=0.005)
    assert any(a["area"] > 1.2 * _shoelace(a["segmentation"][0])
               for a in coco_file["annotations"])  # what was in the file was the box area


def test_a_class_attribute_that_matches_nothing_is_a_clear_error(drawing, capsys):
    tmp_path, images, project, _ = drawing
    for meta in project["_via_img_metadata"].values():
        for r in meta["regions"]:
            r["region_attributes"] = {"label": "vertebra", "reader": "AB"}
    (tmp_path / "odd.json").write_text(json.dumps(project))
    code = main(["convert", "--input", str(tmp_path / "odd.json"), "--images", str(images),
                 "--output", str(tmp_path / "out"), "--params", NO_PARAMS, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "Traceback" not in err
    for needle in ("no region carries the class attribute 'class'", "'label' ('vertebra')",
                   "'reader' ('AB')", "convert.class_attribute", "odd.json"):
        assert needle in err, err
    assert not (tmp_path / "out").exists()


def test_annotated_regions_never_become_an_empty_dataset(drawing, capsys):
    tmp_path, images, project, _ = drawing
    for meta in project["_via_img_metadata"].values():
        for r in meta["regions"]:
            r["region_attributes"] = {"class": "vertebra"}  # nothing in class_map
    (tmp_path / "none.json").write_text(json.dumps(project))
    code = main(["convert", "--input", str(tmp_path / "none.json"), "--images", str(images),
                 "--output", str(tmp_path / "out"), "--params", NO_PARAMS, "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "14 region(s) but not one instance survived" in err
    assert "14 unknown_class" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_coco_without_polygons_says_so(tmp_path, capsys):
    images = tmp_path / "png"
    images.mkdir()
    for kind, ann in (("RLE masks", {"segmentation": {"size": [4, 4], "counts": "0"}}),
                      ("boxes only", {"bbox": [1, 1, 2, 2]})):
        f = tmp_path / "coco.json"
        f.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                                 "annotations": [{"id": 1, "image_id": 1, "category_id": 1, **ann}],
                                 "categories": [{"id": 1, "name": "lumbar"}]}))
        code = main(["convert", "--input", str(f), "--images", str(images), "--output",
                     str(tmp_path / "out"), "--params", NO_PARAMS, "--quiet"])
        err = capsys.readouterr().err
        assert code == 1 and f"COCO file without polygons ({kind})" in err, err


@pytest.mark.parametrize("location, written", [
    ("/srv/spine/png", "/srv/spine/png/"),                      # a folder on the annotators' side
    ("https://pacs.example.org/png", "https://pacs.example.org/png/"),  # a web server
    ("C:\\data\\png", "C:\\data\\png\\"),                      # a Windows folder
    ("/already/", "/already/"),
])
def test_export_tells_via_where_the_images_are(tmp_path, capsys, location, written):
    from conftest import dicom_image
    anon = tmp_path / "anon"
    anon.mkdir()
    dicom_image(16, PatientIdentityRemoved="YES", PatientID="SP0011223344").save_as(
        anon / "a.dcm", enforce_file_format=True)
    code = main(["export", "--input", str(anon), "--output", str(tmp_path / "png"),
                 "--via-image-path", location, "--params", NO_PARAMS, "--quiet"])
    assert code == 0, capsys.readouterr().err
    project = json.loads((tmp_path / "png" / "via_project.json").read_text())
    assert project["_via_settings"]["core"]["default_filepath"] == written
    # what VIA's Project > Load requires (via.js project_open_parse_json_file)
    assert project["_via_settings"] and project["_via_img_metadata"] and project["_via_attributes"]
    for img_id in project["_via_image_id_list"]:
        meta = project["_via_img_metadata"][img_id]
        assert {"filename", "size", "regions", "file_attributes"} <= set(meta)
        assert (tmp_path / "png" / meta["filename"]).is_file()
    # the same from params.yaml
    (tmp_path / "params.yaml").write_text(f"export:\n  via_image_path: {json.dumps(location)}\n")
    assert main(["export", "--input", str(anon), "--output", str(tmp_path / "png2"),
                 "--params", str(tmp_path / "params.yaml"), "--quiet"]) == 0
    project = json.loads((tmp_path / "png2" / "via_project.json").read_text())
    assert project["_via_settings"]["core"]["default_filepath"] == written


def test_strict_reports_every_problem_and_writes_nothing_else(drawing, capsys):
    tmp_path, images, project, _ = drawing
    (tmp_path / "p.json").write_text(json.dumps(project))
    code = main(["convert", "--input", str(tmp_path / "p.json"), "--images", str(images),
                 "--output", str(tmp_path / "out"), "--strict", "--params", NO_PARAMS])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and lines[-1].startswith("Error: 2 problem(s) with --strict (2 unknown_class")
    assert sum(l.startswith("  error: unknown_class") for l in lines) == 2  # the locations
    listed = tmp_path / "out.problems.json"
    assert json.loads(listed.read_text())["counts"] == {"unknown_class": 2}
    assert not (tmp_path / "out").exists()
    code = main(["convert", "--input", str(tmp_path / "p.json"), "--images", str(images),
                 "--output", str(tmp_path / "out2"), "--strict", "--problems-file",
                 str(tmp_path / "elsewhere.json"), "--params", NO_PARAMS, "--quiet"])
    assert code == 1 and len(json.loads((tmp_path / "elsewhere.json").read_text())["problems"]) == 2


def test_validate_clean_warnings_errors_and_malformed(drawing, capsys):
    tmp_path, images, project, _ = drawing
    before = {p for p in tmp_path.rglob("*")}

    def validate(name: str, *extra: str) -> tuple[int, str]:
        code = main(["validate", "--input", str(tmp_path / name), "--images", str(images),
                     "--params", NO_PARAMS, *extra])
        return code, capsys.readouterr().err

    clean = json.loads(json.dumps(project))
    for meta in clean["_via_img_metadata"].values():
        meta["regions"] = meta["regions"][:6]  # without the forgotten class
    (tmp_path / "clean.json").write_text(json.dumps(clean))
    code, err = validate("clean.json")
    assert code == 0 and "validate: 2 images, 12 instances: no problem" in err
    warn = json.loads(json.dumps(clean))
    first = next(iter(warn["_via_img_metadata"].values()))
    first["regions"] = first["regions"][1:]  # four lumbar vertebrae: a warning
    (tmp_path / "warn.json").write_text(json.dumps(warn))
    code, err = validate("warn.json")
    assert code == 0 and "lumbar_count" in err and "warning" in err
    assert validate("warn.json", "--strict")[0] == 1
    (tmp_path / "forgot.json").write_text(json.dumps(project))
    code, err = validate("forgot.json")
    assert code == 1 and "unknown_class" in err and err.strip().splitlines()[-1].startswith(
        "Error: 2 problem(s) that lose annotations (unknown_class)")
    (tmp_path / "bad.json").write_text('{"_via_img_metadata": {"x": {"filename": "a", "regions": 3}}}')
    code, err = validate("bad.json")
    assert code == 1 and err.strip().count("\n") == 0 and "regions is int" in err
    assert {p for p in tmp_path.rglob("*")} - before == {tmp_path / n for n in (
        "clean.json", "warn.json", "forgot.json", "bad.json")}  # validate wrote nothing
