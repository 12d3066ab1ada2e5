"""Files the real VIA 2.0.10 wrote (``tests/data/via_2.0.10/``, made by its ``make_fixtures.py``:
polygons clicked with the mouse in VIA's own page in headless Chromium, then *Project > Save* and
*Annotation > Export Annotations* as csv, json and COCO), read as they are.

Guards against the class of defect that files the project writes itself cannot reveal: a reader
or a converter that agrees with the project's own idea of VIA's formats but not with what VIA
really writes (its CSV quoting and bare ``undefined``, its annotations-only JSON, its COCO
categories named by option descriptions and box areas, an unpicked dropdown, the file size it
records, an image left without regions). The expected polygons below are the vertices
``make_fixtures.py`` clicked (its ``DRAWING`` / ``UNSET``), stated here again, not taken from
any reader.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import data_file

from converters.annotations.via import read_via
from pipeline.cli import main

NO_PARAMS = "/nonexistent/params.yaml"
NAME = "via_2.0.10_phantom"

#: per image, in sorted file-name order: (class option picked in VIA, vertices clicked)
DRAWN: list[list[tuple[str, list[tuple[int, int]]]]] = [
    [
        ("lumbar", [(40, 40), (88, 44), (86, 72), (38, 68)]),
        ("lumbar", [(38, 80), (86, 84), (84, 112), (36, 108)]),
        ("lumbar", [(36, 120), (60, 118), (84, 124), (86, 138), (82, 152), (34, 148)]),
        ("lumbar", [(34, 160), (82, 164), (80, 194), (32, 190)]),
        ("lumbar", [(32, 202), (80, 206), (78, 236), (30, 232)]),
        ("sacrum", [(30, 246), (80, 250), (90, 272), (60, 300), (34, 286)]),
    ],
    [
        ("lumbar", [(44, 60), (92, 64), (90, 96), (42, 92)]),
        ("lumbar", [(42, 110), (90, 114), (88, 146), (40, 142)]),
        ("sacrum", [(40, 170), (70, 168), (96, 178), (100, 206), (80, 236), (52, 232), (38, 200)]),
    ],
    [],
    [
        ("lumbar", [(30, 100), (80, 96), (84, 130), (34, 134)]),
        ("cage", [(50, 150), (70, 150), (70, 160), (50, 160)]),
    ],
]
#: drawn on the last image after the first save, its class never picked
UNSET = [(20, 200), (60, 200), (60, 240), (20, 240)]
#: VIA's COCO export names categories by the option descriptions of the exported project
DESCRIPTION = {"lumbar": "lumbar vertebra (L1-L5)", "sacrum": "sacrum (S1)",
               "cage": "interbody cage"}
#: the file each VIA output went to, and the format read_via must name it
EXPORTS = {"project": (f"{NAME}.json", "via2-project"),
           "json": (f"{NAME}_json.json", "via2-annotations"),
           "csv": (f"{NAME}_csv.csv", "via-csv"),
           "coco": (f"{NAME}_coco.json", "coco")}
UNSET_EXPORTS = (f"{NAME}_unset.json", f"{NAME}_unset_json.json", f"{NAME}_unset_csv.csv")


def folder() -> Path:
    return data_file("via_2.0.10")


def pngs() -> list[Path]:
    found = sorted(folder().glob("*.png"))
    assert len(found) == len(DRAWN), found
    return found


def shoelace(points: list[tuple[int, int]]) -> float:
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1)
                         in zip(points, points[1:] + points[:1])))


def perimeter(points: list[tuple[int, int]]) -> float:
    return sum(float(np.hypot(x1 - x0, y1 - y0)) for (x0, y0), (x1, y1)
               in zip(points, points[1:] + points[:1]))


def read_as_drawn(name: str) -> tuple[str, dict[str, list]]:
    """read_via of one file: its format and, per file name, [(attributes, vertices)]."""
    fmt, images = read_via(folder() / name)
    assert len(images) == len(DRAWN), (name, [i.filename for i in images])
    read = {i.filename: [(r.attributes, list(zip(r.xs, r.ys))) for r in i.regions
                         if r.shape == "polygon"] for i in images}
    assert all(len(i.regions) == len(read[i.filename]) for i in images), "non-polygon shapes"
    return fmt, read


@pytest.mark.parametrize("export", sorted(EXPORTS))
def test_each_export_reads_the_polygons_as_drawn(export):
    name, fmt_expected = EXPORTS[export]
    fmt, read = read_as_drawn(name)
    assert fmt == fmt_expected
    assert sorted(read) == [p.name for p in pngs()]
    for png, drawn in zip(pngs(), DRAWN):
        want = [({"class": DESCRIPTION[c] if export == "coco" else c}, [(float(x), float(y))
                 for x, y in pts]) for c, pts in drawn]
        assert read[png.name] == want, (export, png.name)


@pytest.mark.parametrize("export", ["project", "json", "csv"])
def test_via_records_each_image_by_its_file_size(export):
    """VIA 2 keys images by name + size: the reader keeps the size VIA wrote (the PNG's)."""
    _, images = read_via(folder() / EXPORTS[export][0])
    assert {i.filename: i.size for i in images} == {p.name: p.stat().st_size for p in pngs()}


def test_an_unpicked_class_is_read_as_not_set_and_validate_refuses_it(capsys):
    for name in UNSET_EXPORTS:
        _, read = read_as_drawn(name)
        last = read[pngs()[-1].name]
        assert len(last) == len(DRAWN[-1]) + 1, name
        attributes, points = last[-1]
        assert points == [(float(x), float(y)) for x, y in UNSET], name
        assert attributes.get("class", "") == "", (name, attributes)  # {} (JSON), "" (CSV)
        code = main(["validate", "--input", str(folder() / name), "--images", str(folder()),
                     "--params", NO_PARAMS, "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1, (name, err)
        assert err[-1] == (f"Error: 1 problem(s) that lose annotations (unknown_class), in "
                           f"{folder() / name}"), err
        assert err[0].endswith("10 instances: 3 lumbar_count, 2 missing_sacrum, "
                               "1 unknown_class"), err


def test_convert_drops_only_the_unpicked_region(tmp_path):
    """Not strict: the rest converts; the problem names the file, image and region."""
    name = UNSET_EXPORTS[2]  # the CSV, where VIA wrote {"class":undefined}
    code = main(["convert", "--input", str(folder() / name), "--images", str(folder()),
                 "--output", str(tmp_path / "out"), "--params", NO_PARAMS, "--quiet",
                 "--workers", "1"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["annotations"] == 10
    lost = [p for p in report["problems"] if p["severity"] == "error"]
    assert [(p["kind"], Path(p["file"]).name, p["image"], p["region"]) for p in lost] == \
        [("unknown_class", name, pngs()[-1].name, len(DRAWN[-1]))]


@pytest.mark.parametrize("export", sorted(EXPORTS))
def test_validate_passes_each_export_with_the_drawing_s_warnings(export, capsys):
    """Image 2 has two vertebrae, image 3 none, image 4 one and no sacrum: three
    lumbar_count and two missing_sacrum warnings; ten vertebrae and sacra; exit 0."""
    code = main(["validate", "--input", str(folder() / EXPORTS[export][0]),
                 "--images", str(folder()), "--params", NO_PARAMS, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 0, err
    assert err == "validate: 4 images, 10 instances: 3 lumbar_count, 2 missing_sacrum", err


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    """``spinepipe convert`` of each real export, in its own output folder."""
    root = tmp_path_factory.mktemp("via_real")
    outs = {}
    for export, (name, _) in sorted(EXPORTS.items()):
        outs[export] = root / export
        code = main(["convert", "--input", str(folder() / name), "--images", str(folder()),
                     "--output", str(outs[export]), "--params", NO_PARAMS, "--quiet",
                     "--workers", "1"])
        assert code == 0, export
    return outs


def instances(out: Path) -> list[tuple]:
    coco = json.loads((out / "coco.json").read_text())
    names = {i["id"]: i["file_name"] for i in coco["images"]}
    return sorted((names[a["image_id"]], a["via_region"], a["category_id"], a["level"],
                   tuple(a["segmentation"][0]), a["area"]) for a in coco["annotations"])


def test_convert_of_the_saved_project_gives_the_drawn_instances(converted):
    coco = json.loads((converted["project"] / "coco.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == [p.name for p in pngs()]
    assert [(i["width"], i["height"], i["n_implants"]) for i in coco["images"]] == \
        [(128, 320, 0), (128, 320, 0), (128, 320, 0), (128, 320, 1)]  # the cage counts
    category = {"lumbar": 1, "sacrum": 2}
    want = sorted((png.name, k, category[c], tuple(float(v) for xy in pts for v in xy),
                   shoelace(pts)) for png, drawn in zip(pngs(), DRAWN)
                  for k, (c, pts) in enumerate(drawn) if c in category)
    got = instances(converted["project"])
    assert len(got) == len(want) == 10
    assert [g[:3] + g[4:] for g in got] == want
    levels = {(g[0], g[1]): g[3] for g in got}
    first, second = pngs()[0].name, pngs()[1].name
    assert [levels[(first, k)] for k in range(6)] == ["L1", "L2", "L3", "L4", "L5", "S1"]
    assert [levels[(second, k)] for k in range(3)] == ["L4", "L5", "S1"]  # from S1 upwards


def test_convert_masks_cover_the_drawn_areas(converted):
    """Per image and class, the mask's pixel count is the drawn polygons' area to within
    half their perimeter (the boundary pixels), each polygon's centre has its class, and
    nothing is set outside the drawn polygons' boxes."""
    value = {"lumbar": 1, "sacrum": 2}
    for png, drawn in zip(pngs(), DRAWN):
        mask = cv2.imread(str(converted["project"] / "masks" / png.name), cv2.IMREAD_UNCHANGED)
        assert mask is not None and mask.shape == (320, 128), png.name
        boxes = np.zeros_like(mask, bool)
        for cls, v in value.items():
            polys = [pts for c, pts in drawn if c == cls]
            area = sum(shoelace(p) for p in polys)
            slack = 0.5 * sum(perimeter(p) for p in polys) + 1
            assert abs(int((mask == v).sum()) - area) <= slack, (png.name, cls)
            for p in polys:
                xs, ys = [x for x, _ in p], [y for _, y in p]
                assert mask[round(np.mean(ys)), round(np.mean(xs))] == v, (png.name, cls)
                boxes[min(ys):max(ys) + 1, min(xs):max(xs) + 1] = True
        assert not mask[~boxes].any(), png.name
        assert set(np.unique(mask)) <= {0, 1, 2}, png.name
    assert not cv2.imread(str(converted["project"] / "masks" / pngs()[2].name),
                          cv2.IMREAD_UNCHANGED).any()  # the image left without regions


def test_every_export_converts_to_the_same_dataset(converted):
    """JSON, CSV and COCO (its categories mapped back from the descriptions, its box areas
    replaced by the polygons') give the project's instances and the same masks."""
    ref = instances(converted["project"])
    assert len(ref) == 10
    for export in ("json", "csv", "coco"):
        got = instances(converted[export])
        assert got == ref, export
        for png in pngs():
            a = cv2.imread(str(converted["project"] / "masks" / png.name), cv2.IMREAD_UNCHANGED)
            b = cv2.imread(str(converted[export] / "masks" / png.name), cv2.IMREAD_UNCHANGED)
            assert a is not None and b is not None and np.array_equal(a, b), (export, png.name)
    via_coco = json.loads((folder() / EXPORTS["coco"][0]).read_text())
    l3 = DRAWN[0][2][1]  # VIA wrote the 6-point L3's box area; convert, the polygon's
    xs, ys = [x for x, _ in l3], [y for _, y in l3]
    box = (max(xs) - min(xs)) * (max(ys) - min(ys))
    assert [a["area"] for a in via_coco["annotations"]][2] == box != shoelace(l3)
