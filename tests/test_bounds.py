"""Bounded resources (issue 21, item 7): hostile sizes end in one line, in bounded memory and
time, never in a traceback, gigabytes or a run that never ends.

- a pixel bomb (a 600-byte JPEG 2000 file claiming 16000 x 16000 pixels, in its header or in
  its codestream only) is refused by export before decoding, with the child process's peak
  memory measured (``wait4``'s ``ru_maxrss``), and ``export.max_pixels`` is honoured;
- VIA files nested 100,000 deep (JSON, and JSON inside a CSV cell), CSV fields beyond
  Python's 131,072-character default (accepted up to ``MAX_CSV_FIELD``, refused beyond), and
  images with more regions or polygons with more vertices than the documented limits; a
  polygon crossing itself thousands of times (shapely's repair would take minutes: dropped,
  the crossings counted through an index up to the limit); ``convert.ellipse_points`` bounded;
- overlaps found through the spatial index equal a brute-force comparison of every pair, on
  random polygons, in the library and through ``spinepipe convert`` (the speed itself is in
  benchmarks/bench_convert.py, not here);
- QA drawings of degenerate images (16 x 60000, 20000 x 16, 1 x 1, no regions);
- FIFOs named ``*.dcm`` / ``*.json`` (export and convert used to block forever: the commands
  run in a child process with a timeout, so a hang fails the test instead of the suite), and
  symbolic links (followed to a regular file; a broken one fails).

Commands run as a user runs them: the installed ``spinepipe`` in a child process where a hang
or the memory is the point, else in-process through ``pipeline.cli.main``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import JPEG2000Lossless
from shapely.geometry import Polygon

from conftest import dicom_image
from converters.annotations import coco
from converters.core import records
from converters.annotations import via, via_csv
from converters.core.errors import InvalidDicomError, InvalidViaError
from converters.dicom.pixels import MAX_PIXELS, check_pixel_budget
from pipeline.cli import main

NO_PARAMS = "/nonexistent/params.yaml"
SPINEPIPE = Path(sys.executable).with_name("spinepipe")  # the installed console script
COMMAND = [str(SPINEPIPE)] if SPINEPIPE.exists() else [sys.executable, "-m", "pipeline.cli"]


def one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit 1 with exactly one ``Error:`` line and no traceback; returns that line."""
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def run_child(args: list[str], tmp_path: Path, timeout: float = 120) -> tuple[int, str, int]:
    """``spinepipe ARGS`` in a child process: (exit status, stderr, peak memory in bytes).
    A child still running after ``timeout`` seconds is killed and the test fails (a hang)."""
    err_file = tmp_path / f"stderr.{time.monotonic_ns()}"
    with open(err_file, "wb") as err:
        proc = subprocess.Popen([*COMMAND, *args], stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            pytest.fail(f"spinepipe {' '.join(args[:1])} still running after {timeout} s (hangs)")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err_file.read_text(), usage.ru_maxrss * 1024  # Linux: kilobytes


# --------------------------------------------------------------------------------------------
# 1. pixel bombs


def j2k_codestream(width: int, height: int) -> bytes:
    """A valid lossless JPEG 2000 codestream of a ``width`` x ``height`` 8-bit image, one
    tile, no wavelet levels, every code-block empty (mid-grey): about 70 bytes, whatever the
    size it claims. Decoders allocate the whole image."""
    siz = struct.pack(">HHIIIIIIIIHBBB", 41, 0, width, height, 0, 0, width, height, 0, 0,
                      1, 7, 1, 1)
    cod = struct.pack(">HBBHBBBBBB", 12, 0, 0, 1, 0, 0, 4, 4, 0, 1)  # LRCP, 1 layer, 5/3
    qcd = struct.pack(">HBB", 4, 0x40, 8 << 3)                       # no quantization
    body = b"\x00"                                                   # one empty packet
    sot = struct.pack(">HHIBB", 10, 0, 12 + 2 + len(body), 0, 1)
    return (b"\xff\x4f\xff\x51" + siz + b"\xff\x52" + cod + b"\xff\x5c" + qcd + b"\xff\x90"
            + sot + b"\xff\x93" + body + b"\xff\xd9")


def j2k_object(rows: int, columns: int, coded: tuple[int, int] | None = None, **extra):
    """A de-identified CR object, JPEG 2000 lossless, whose header claims ``rows`` x
    ``columns`` and whose codestream claims ``coded`` (width, height; default: the same)."""
    ds = dicom_image(8, PatientID="SP0001", PatientIdentityRemoved="YES", **extra)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([j2k_codestream(*(coded or (columns, rows)))])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def test_the_codestream_helper_makes_a_decodable_image():
    """The bomb is real: the same 70-byte codestream at a small size decodes (pydicom +
    OpenJPEG) to the size it claims."""
    ds = j2k_object(48, 64)
    assert ds.pixel_array.shape == (48, 64) and int(ds.pixel_array.max()) == 128


@pytest.mark.parametrize("where", ["header", "codestream"])
def test_export_refuses_a_pixel_bomb_before_decoding(tmp_path, where):
    src = tmp_path / "anon"
    src.mkdir()
    if where == "header":
        ds = j2k_object(16000, 16000)
    else:  # the header says 8 x 8; the decoder allocates what the codestream says
        ds = j2k_object(8, 8, coded=(16000, 16000))
    ds.save_as(src / "bomb.dcm", enforce_file_format=True)
    assert (src / "bomb.dcm").stat().st_size < 2700
    code, err, peak = run_child(["export", "-i", str(src), "-o", str(tmp_path / "png"),
                                 "--params", NO_PARAMS, "--quiet", "--workers", "1"], tmp_path)
    one_line_error(code, err, "1 file(s) failed to export")
    (reason,) = [line for line in err.splitlines() if "failed:" in line]
    assert "bomb.dcm" in reason and "64,000,000" in reason and "export.max_pixels" in reason
    assert ("Rows (0028,0010), Columns (0028,0011)" in reason if where == "header"
            else "16000x16000" in reason and "(7FE0,0010)" in reason), reason
    assert peak < 1024 ** 3, f"peak memory {peak / 1024 ** 2:.0f} MiB"  # decoding: ~2.6 GiB
    assert not list((tmp_path / "png").glob("*.png"))


def test_max_pixels_is_a_param_and_frames_and_samples_count(tmp_path, capsys):
    src = tmp_path / "anon"
    src.mkdir()
    dicom_image(8, PatientID="SP0001", PatientIdentityRemoved="YES").save_as(
        src / "a.dcm", enforce_file_format=True)
    params = tmp_path / "params.yaml"
    params.write_text("export:\n  max_pixels: 63\n")  # the image has 64
    args = ["export", "-i", str(src), "-o", str(tmp_path / "png"), "--quiet", "--workers", "1"]
    code, err = cli(capsys, *args, "--params", str(params))
    one_line_error(code, err, "1 file(s) failed")
    assert "8x8 pixels" in err and "at most 63 are decoded (export.max_pixels)" in err
    params.write_text("export:\n  max_pixels: 64\n")
    assert cli(capsys, *args, "--params", str(params))[0] == 0
    assert len(list((tmp_path / "png").glob("*.png"))) == 1
    # the library check, for anonymize and others: frames and samples multiply
    ds = dicom_image(8, NumberOfFrames="5", Rows=4000, Columns=4000)
    assert 16_000_000 * 5 > MAX_PIXELS
    with pytest.raises(InvalidDicomError, match=r"4000x4000 pixels x 5 frame\(s\)"):
        check_pixel_budget(ds, file="x.dcm")
    assert check_pixel_budget(dicom_image(8, NumberOfFrames="2", SamplesPerPixel=3)) == 384
    bad = dicom_image(8)
    bad[0x00280008] = RawDataElement(Tag(0x00280008), "IS", 4, b"many", 0, False, True)
    with pytest.raises(InvalidDicomError, match="NumberOfFrames is not a number"):
        check_pixel_budget(bad)


# --------------------------------------------------------------------------------------------
# 2. VIA files: depth, CSV field size, regions and vertices


def _image_folder(tmp_path: Path, height: int = 100, width: int = 60) -> Path:
    images = tmp_path / "img"
    images.mkdir(exist_ok=True)
    cv2.imwrite(str(images / "a.png"), np.full((height, width), 90, np.uint8))
    return images


def _region(xs, ys, **attrs) -> dict:
    return {"shape_attributes": {"name": "polygon", "all_points_x": list(xs),
                                 "all_points_y": list(ys)},
            "region_attributes": {"class": "lumbar", **attrs}}


def _via_json(tmp_path: Path, regions: list, name: str = "a.png") -> Path:
    path = tmp_path / "via.json"
    path.write_text(json.dumps({"_via_img_metadata": {name: {
        "filename": name, "size": -1, "regions": regions, "file_attributes": {}}}}))
    return path


def _convert(capsys, tmp_path: Path, via_file: Path, images: Path) -> tuple[int, str]:
    return cli(capsys, "convert", "--input", str(via_file), "--images", str(images),
               "--output", str(tmp_path / "out"), "--params", NO_PARAMS, "--quiet",
               "--workers", "1")


CSV_HEAD = ("filename,file_size,file_attributes,region_count,region_id,"
            "region_shape_attributes,region_attributes\n")


def _csv_row(shape: str, attrs: str) -> str:
    q = lambda text: '"' + text.replace('"', '""') + '"'  # noqa: E731
    return f"a.png,-1,{{}},1,0,{q(shape)},{q(attrs)}\n"


def test_via_json_nested_100000_deep_is_one_line(tmp_path, capsys):
    images = _image_folder(tmp_path)
    deep = tmp_path / "via.json"
    deep.write_text('{"_via_img_metadata": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code, err = _convert(capsys, tmp_path, deep, images)
    one_line_error(code, err, f"nested deeper than {records.MAX_JSON_DEPTH} levels", "via.json")
    # deep, within Python's recursion limit, inside a region attribute: refused all the same
    note: list = []
    for _ in range(100):
        note = [note]
    deep.write_text(json.dumps({"_via_img_metadata": {"a.png": {
        "filename": "a.png", "regions": [_region([1, 9, 9], [1, 1, 9], note=note)]}}}))
    code, err = _convert(capsys, tmp_path, deep, images)
    one_line_error(code, err, "nested deeper", "via.json")
    # and in a CSV cell
    csv_file = tmp_path / "via.csv"
    csv_file.write_text(CSV_HEAD + _csv_row("[" * 100_000 + "]" * 100_000, "{}"))
    code, err = _convert(capsys, tmp_path, csv_file, images)
    one_line_error(code, err, "nested deeper", "via.csv", "image a.png")


def test_csv_fields_beyond_131072_characters(tmp_path, capsys):
    images = _image_folder(tmp_path)
    shape = json.dumps({"name": "polygon", "all_points_x": [1, 30, 30],
                        "all_points_y": [1, 1, 50]})
    csv_file = tmp_path / "via.csv"
    # an annotator's long note: past Python's csv default limit (131,072), within spinepipe's
    csv_file.write_text(CSV_HEAD + _csv_row(shape, json.dumps({"class": "lumbar",
                                                               "note": "x" * 200_000})))
    code, err = _convert(capsys, tmp_path, csv_file, images)
    assert code == 0, err
    assert len(json.loads((tmp_path / "out" / "coco.json").read_text())["annotations"]) == 1
    # beyond MAX_CSV_FIELD: one line naming the file and the line, and the limit is restored
    before = csv.field_size_limit()
    csv_file.write_text(CSV_HEAD + _csv_row(shape, json.dumps({
        "class": "lumbar", "note": "x" * (via_csv.MAX_CSV_FIELD + 1)})))
    code, err = _convert(capsys, tmp_path, csv_file, images)
    one_line_error(code, err, "malformed CSV at line 2: a field longer than 1,048,576 "
                   "characters", "via.csv")
    assert csv.field_size_limit() == before


def test_too_many_regions_or_vertices_are_one_line(tmp_path, capsys):
    images = _image_folder(tmp_path)
    tiny = _region([1, 3, 3], [1, 1, 3])
    via_file = _via_json(tmp_path, [tiny] * (via.MAX_REGIONS + 1))
    code, err = _convert(capsys, tmp_path, via_file, images)
    one_line_error(code, err, "10,001 regions in one image: more than 10,000", "via.json",
                   "image a.png", "region 10000")
    t = np.linspace(0, 2 * np.pi, via.MAX_POINTS + 1, endpoint=False)
    big = _region(np.round(30 + 25 * np.cos(t), 3).tolist(),
                  np.round(50 + 40 * np.sin(t), 3).tolist())
    via_file = _via_json(tmp_path, [tiny, big])
    code, err = _convert(capsys, tmp_path, via_file, images)
    one_line_error(code, err, "more than 10,000 vertices in one polygon", "image a.png",
                   "region 1")
    # VIA 3 and COCO files too
    via3 = tmp_path / "via3.json"
    xy = [7] + [v for k in range(via.MAX_POINTS + 1) for v in (k % 50, k // 200)]
    via3.write_text(json.dumps({
        "project": {}, "attribute": {}, "file": {"1": {"fname": "a.png"}},
        "view": {"1": {"fid_list": ["1"]}}, "metadata": {"m": {"vid": "1", "xy": xy}}}))
    one_line_error(*_convert(capsys, tmp_path, via3, images), "vertices", "via3.json")
    coco_file = tmp_path / "coco.json"
    coco_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}], "categories": [],
        "annotations": [{"id": k, "image_id": 1, "segmentation": [[1, 1, 3, 1, 3, 3]]}
                        for k in range(via.MAX_REGIONS + 1)]}))
    one_line_error(*_convert(capsys, tmp_path, coco_file, images), "regions in one image",
                   "coco.json")
    # exactly at the limits: converted
    at_limit = _region(np.round(30 + 25 * np.cos(t[:-1]), 3).tolist(),
                       np.round(50 + 40 * np.sin(t[:-1]), 3).tolist())
    code, err = _convert(capsys, tmp_path, _via_json(tmp_path, [at_limit]), images)
    assert code == 0, err


def _star(n: int, cx: float = 30, cy: float = 50, r: float = 25) -> tuple[list, list]:
    """A polygon through ``n`` points of a circle, each edge jumping half-way round: it
    crosses itself about n^2 / 4 times (shapely's make_valid: 6 s at 101 vertices)."""
    t = 2 * np.pi * np.arange(n) * (n // 2) / n
    return np.round(cx + r * np.cos(t), 3).tolist(), np.round(cy + r * np.sin(t), 3).tolist()


def test_a_polygon_crossing_itself_thousands_of_times_is_dropped(tmp_path):
    images = _image_folder(tmp_path)
    via_file = _via_json(tmp_path, [_region([1, 9, 9], [1, 1, 9]), _region(*_star(301)),
                                    _region([20, 40, 20, 40], [60, 80, 80, 60])])  # a bow tie
    code, err, _ = run_child(["convert", "-i", str(via_file), "--images", str(images), "-o",
                              str(tmp_path / "out"), "--params", NO_PARAMS, "--quiet",
                              "--workers", "1"], tmp_path, timeout=60)
    assert code == 0, err
    problems = json.loads((tmp_path / "out" / "report.json").read_text())["problems"]
    crossing = [(p["region"], p["severity"], p["message"]) for p in problems
                if p["kind"] == "self_intersection"]
    assert crossing[0][:2] == (1, "error") and "more than 100 times" in crossing[0][2]
    assert crossing[1][:2] == (2, "warning") and "repaired" in crossing[1][2]  # as before
    anns = json.loads((tmp_path / "out" / "coco.json").read_text())["annotations"]
    assert [a["via_region"] for a in anns] == [0, 2]


@pytest.mark.parametrize("seed", range(5))
def test_crossings_are_counted_as_every_pair_of_edges_would(seed):
    from converters.annotations.regions import count_crossings
    from shapely.geometry import LineString
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 12, size=(int(rng.integers(4, 40)), 2)).astype(float)
    pts = pts[np.r_[True, (np.diff(pts, axis=0) != 0).any(axis=1)]]  # no repeated neighbours
    n = len(pts)
    edges = [LineString([pts[i], pts[(i + 1) % n]]) for i in range(n)]
    brute = sum(edges[i].intersects(edges[j]) for i in range(n) for j in range(i + 2, n)
                if not (i == 0 and j == n - 1))
    assert count_crossings(pts, 10 ** 9) == brute
    assert count_crossings(pts, 3) == brute if brute <= 3 else count_crossings(pts, 3) > 3


def test_ellipse_points_are_bounded_in_params(tmp_path, capsys):
    images = _image_folder(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("convert:\n  shapes_to_polygons: true\n  ellipse_points: 100000000\n")
    code, err = cli(capsys, "convert", "--input", str(_via_json(tmp_path, [])), "--images",
                    str(images), "--output", str(tmp_path / "out"), "--params", str(params))
    one_line_error(code, err, "key 'convert.ellipse_points' must be <= 10000", "params.yaml")


# --------------------------------------------------------------------------------------------
# 3. overlaps through the spatial index equal every pair compared


def _random_polygons(rng: np.random.Generator, n: int, extent: float) -> list[Polygon]:
    polys = []
    for _ in range(n):
        cx, cy, r = rng.uniform(0, extent), rng.uniform(0, extent), rng.uniform(1, 12)
        t = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 9))))
        p = Polygon(np.c_[cx + r * np.cos(t), cy + r * np.sin(t)])
        if rng.random() < 0.1:  # some share an edge with the previous one: touching, no area
            x0, y0, x1, y1 = polys[-1].bounds if polys else (0, 0, 5, 5)
            p = Polygon([(x1, y0), (x1 + 4, y0), (x1 + 4, y1), (x1, y1)])
        polys.append(p)
    return polys


def _brute_labels(polys: list[Polygon], labels: list[str]) -> list[str]:
    pairs = set()
    for a in range(len(polys)):
        for b in range(a + 1, len(polys)):
            if polys[a].intersects(polys[b]) and polys[a].intersection(polys[b]).area > 0:
                pairs.add("/".join(sorted((labels[a], labels[b]))))
    return sorted(pairs)


@pytest.mark.parametrize("seed", range(6))
def test_overlap_labels_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    polys = _random_polygons(rng, 300, extent=[60, 150, 400][seed % 3])
    distinct = [f"p{i:03d}" for i in range(len(polys))]   # every pair is its own label
    assert coco.overlap_labels(polys, distinct) == _brute_labels(polys, distinct)
    levels = ["L1", "L2", "L3", "L4", "L5", "S1"]           # as convert labels them
    few = [levels[i] if i < 6 else "?" for i in rng.permutation(len(polys))]
    assert coco.overlap_labels(polys, few) == _brute_labels(polys, few)
    assert coco.overlap_labels(polys[:1], distinct[:1]) == []


def _brute_map(height: int, width: int, windows) -> np.ndarray | None:
    out = np.zeros((height, width), np.uint8)
    full = []
    for w in windows:
        m = np.zeros((height, width), np.uint8)
        if w is not None:
            m[w[0], w[1]] = w[2]
        full.append(m)
    for a in range(len(full)):
        for b in range(a + 1, len(full)):
            out |= full[a] & full[b]
    return out if out.any() else None


@pytest.mark.parametrize("seed", range(4))
def test_overlap_map_equals_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    h, w = 90, 70
    polys = _random_polygons(rng, 40, extent=[60, 200, 70, 65][seed])
    windows = [coco.rasterize_window(coco.flat(*p.exterior.xy), h, w) for p in polys]
    windows.insert(3, None)
    got, want = coco.overlap_map(h, w, windows), _brute_map(h, w, windows)
    assert (got is None and want is None) or np.array_equal(got, want)
    assert coco.overlap_map(h, w, windows[:1]) is None


def test_convert_with_many_regions_finds_every_overlap(tmp_path, capsys):
    """400 regions in one image through ``spinepipe convert``: the overlap map is where two
    rasterized instances meet, and the level pairs are those of every overlapping pair."""
    h, w = 400, 300
    images = _image_folder(tmp_path, h, w)
    rng = np.random.default_rng(7)
    regions = []
    for k in range(400):
        cx, cy, r = rng.uniform(10, w - 10), rng.uniform(10, h - 10), rng.uniform(3, 9)
        t = np.sort(rng.uniform(0, 2 * np.pi, 6))
        cls = "sacrum" if k == 0 else "lumbar"
        regions.append({**_region(np.round(cx + r * np.cos(t)).astype(int).tolist(),
                                  np.round(cy + r * np.sin(t)).astype(int).tolist()),
                        "region_attributes": {"class": cls}})
    code, err = _convert(capsys, tmp_path, _via_json(tmp_path, regions), images)
    assert code == 0, err
    out = tmp_path / "out"
    anns = json.loads((out / "coco.json").read_text())["annotations"]
    assert len(anns) > 350
    windows = [coco.rasterize_window(a["segmentation"][0], h, w) for a in anns]
    want = _brute_map(h, w, windows)
    assert want is not None
    assert np.array_equal(cv2.imread(str(out / "overlaps" / "a.png"), cv2.IMREAD_UNCHANGED), want)
    polys = [Polygon(np.reshape(a["segmentation"][0], (-1, 2))) for a in anns]
    labels = [a["level"] or "?" for a in anns]
    (row,) = csv.DictReader(io.StringIO((out / "images.csv").read_text()))
    assert row["overlap_pairs"].split() == _brute_labels(polys, labels)


# --------------------------------------------------------------------------------------------
# 4. QA drawings of degenerate sizes


@pytest.mark.parametrize("height, width, region", [
    (60000, 16, ([2, 14, 14, 2], [10, 10, 50000, 50000])),   # the 16 x 60000 PNG
    (16, 20000, ([10, 19990, 19990], [2, 2, 14])),            # its transpose
    (1, 1, ([0, 1, 1], [0, 0, 1])),                           # one pixel
    (200, 100, None),                                         # no region at all
])
def test_qa_draws_degenerate_images(tmp_path, capsys, height, width, region):
    images = _image_folder(tmp_path, height, width)
    regions = [_region(*region)] if region else []
    extra = [] if region else [_region([1, 5, 5], [1, 1, 5])]  # another image has one
    if extra:
        cv2.imwrite(str(images / "b.png"), np.full((20, 20), 90, np.uint8))
    meta = {"a.png": {"filename": "a.png", "size": -1, "regions": regions}}
    meta.update({"b.png": {"filename": "b.png", "size": -1, "regions": extra}} if extra else {})
    via_file = tmp_path / "via.json"
    via_file.write_text(json.dumps({"_via_img_metadata": meta}))
    code, err = _convert(capsys, tmp_path, via_file, images)
    assert code == 0, err
    qa = tmp_path / "out" / "qa"
    overlay = cv2.imread(str(qa / "a.png"))
    assert overlay is not None and overlay.shape[0] <= 800 and overlay.shape[1] <= 3200
    sheet = cv2.imread(str(qa / "contact_000.png"))
    assert sheet is not None and sheet.shape[0] == 240 and sheet.shape[1] <= 8 * 960


# --------------------------------------------------------------------------------------------
# 5. inputs are regular files: FIFOs do not hang, links are followed to regular files only


def _export_input(tmp_path: Path) -> Path:
    src = tmp_path / "anon"
    src.mkdir()
    dicom_image(8, PatientID="SP0001", PatientIdentityRemoved="YES").save_as(
        src / "a.dcm", enforce_file_format=True)
    return src


def _export_child(src: Path, tmp_path: Path) -> tuple[int, str]:
    code, err, _ = run_child(["export", "-i", str(src), "-o", str(tmp_path / "png"),
                              "--params", NO_PARAMS, "--quiet", "--workers", "1"],
                             tmp_path, timeout=60)
    return code, err


def test_export_does_not_block_on_a_fifo_and_follows_links_to_files(tmp_path):
    src = _export_input(tmp_path)
    elsewhere = tmp_path / "cache" / "b.dcm"  # as DVC's symlink cache links tracked files
    elsewhere.parent.mkdir()
    dicom_image(8, PatientID="SP0002", PatientIdentityRemoved="YES",
                SOPInstanceUID="1.2.3.999.7").save_as(elsewhere, enforce_file_format=True)
    (src / "b.dcm").symlink_to(elsewhere)
    os.mkfifo(src / "pipe.dcm")
    code, err = _export_child(src, tmp_path)
    one_line_error(code, err, "1 file(s) failed to export")
    assert "failed: not a regular file (FIFO), in pipe.dcm" in err
    assert sorted(p.name[:6] for p in (tmp_path / "png").glob("*.png")) == ["SP0001", "SP0002"]


def test_export_names_a_broken_link_and_exports_the_rest(tmp_path):
    src = _export_input(tmp_path)
    (src / "gone.dcm").symlink_to(tmp_path / "nothing.dcm")
    code, err = _export_child(src, tmp_path)
    one_line_error(code, err, "1 file(s) failed to export")
    assert "failed: not a regular file (broken link), in gone.dcm" in err
    assert len(list((tmp_path / "png").glob("*.png"))) == 1


def test_convert_refuses_a_fifo_among_its_via_files(tmp_path):
    images = _image_folder(tmp_path)
    folder = tmp_path / "annotations"
    folder.mkdir()
    _via_json(tmp_path, [_region([1, 9, 9], [1, 1, 9])]).rename(folder / "a.json")
    os.mkfifo(folder / "b.json")
    for given in (folder, folder / "b.json"):
        code, err, _ = run_child(["convert", "-i", str(given), "--images", str(images),
                                  "-o", str(tmp_path / "out"), "--params", NO_PARAMS,
                                  "--quiet", "--workers", "1"], tmp_path, timeout=60)
        one_line_error(code, err, "not a regular file (FIFO)", "b.json")
    with pytest.raises(InvalidViaError, match="not a regular file"):
        via.read_via(folder / "b.json")  # the library, as well as the command
