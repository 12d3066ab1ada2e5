"""Measures back to the clinic (converters/dicom/sr.py, train/infer/to_sr.py, spinepipe to-sr /
store): each radiograph's clinical measures as a DICOM Measurement Report (Comprehensive SR, TID
1500), read back by highdicom and by dcmtk's dsrdump, checked by dciodvfy, stored to a real
Orthanc and found there under the study."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pycocotools import mask as mask_utils

from conftest import Orthanc, ingest_chain, dcmtk
from converters.annotations.coco import rasterize
from converters.core.provenance import pixel_spacing, read_record
from converters.dicom.sr_codes import GROUPS
from converters.spine.levels import levels_bottom_up
from converters.spine.measures import COLUMNS, MEASURES, image_measures, measures_csv
from converters.spine.refine import MeasuresConfig
from test_anonymize import _leak_scan
from train.evaluation.evaluate import endplates_record

SPINEPIPE = str(Path(sys.executable).parent / "spinepipe")
N_IMAGES = 4

#: the codes a report must carry, written out from PS3.16 / SNOMED CT / UCUM themselves (not
#: read from the product's table): (scheme, value) of the measurement, its unit
ANGLE = ("SCT", "285285000")          # Cobb angle
HEIGHT = ("DCM", "121207")            # Height
SLIP = ("99SPINEPIPE", "SLIP")        # private: the Taillard slip percentage
UNITS = {"deg": "deg", "mm": "mm", "pct": "%"}
SIDE_CODES = {"anterior": "255549009", "middle": "26216008", "posterior": "255551008"}
LEVEL_CODES = {"L1": "66794005", "L2": "14293000", "L3": "36470004", "L4": "11994002",
               "L5": "49668003", "S1": "54735007"}


def _expected(column: str) -> tuple[str, tuple[str, str], str, str | None]:
    """(group tracking identifier, measurement code, UCUM unit, side) of a measures.csv
    column, from the column's name alone."""
    parts = column.split("_")
    unit = UNITS[parts[-1]]
    if column == "lordosis_deg":
        return "lordosis L1-S1", ANGLE, unit, None
    if parts[0] == "seg":
        return f"segmental {parts[1]}-{parts[2]}", ANGLE, unit, None
    if parts[0] == "disc":
        return f"disc {parts[1]}-{parts[2]}", HEIGHT, unit, parts[3]
    if parts[0] == "body":
        return f"body {parts[1]}", HEIGHT, unit, parts[2]
    return f"slip {parts[1]}-{parts[2]}", SLIP, unit, None


def _reported_columns() -> list[str]:
    """The measures.csv columns a report carries (lengths in mm: the phantom has a spacing)."""
    return [c for c in MEASURES if not c.endswith("_px") and not c.startswith("meyerding")]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A phantom archive anonymized and exported; an instance model's evaluation made from
    the true polygons (levels assigned as the product does), measured by the product on the
    exported images (endplates refined), one image without any prediction (every measure
    withheld); and to-seg's SEG objects of it."""
    from converters.phantom.writing import PhantomConfig, generate
    root = tmp_path_factory.mktemp("sr")
    generate(PhantomConfig(n=N_IMAGES, seed=5, height=900, width=360, burned_in_share=0),
             root / "raw", workers=1)
    ingest_chain(root / "raw", root)
    via = json.loads((root / "via.json").read_text())["_via_img_metadata"]
    ev = root / "eval" / "mask_rcnn" / "fold0"
    ev.mkdir(parents=True)
    results, rows, plates = [], [], {}
    for k, im in enumerate(sorted(via.values(), key=lambda i: i["filename"])):
        name = im["filename"]
        image = cv2.imread(str(root / "png" / name), cv2.IMREAD_UNCHANGED)
        regions = [r for r in im["regions"]
                   if r["region_attributes"]["class"] in ("lumbar", "sacrum")] if k else []
        polys = [np.array(list(zip(r["shape_attributes"]["all_points_x"],
                                   r["shape_attributes"]["all_points_y"])), float)
                 for r in regions]
        classes = [r["region_attributes"]["class"] for r in regions]
        levels = levels_bottom_up(classes, [p.mean(axis=0) for p in polys],
                                  [len(p) for p in polys]) if polys else []
        outlines = []
        for cls, level, poly in zip(classes, levels, polys):
            m = rasterize(poly.ravel().tolist(), *image.shape[:2]).astype(bool)
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            results.append({"file_name": name, "category_id": 1 if cls == "lumbar" else 2,
                            "segmentation": rle, "score": 0.9, "level": level})
            outlines.append((level, poly))
        spacing = pixel_spacing(read_record(root / "png", name))
        assert spacing is not None
        row, spine = image_measures(outlines, spacing, refine=MeasuresConfig(), image=image,
                                    image_name=name)
        rows.append({"file_name": name, **row})
        plates[name] = {"prediction": endplates_record(spine), "truth": {}}
    (ev / "instances.json").write_text(json.dumps(results))
    (ev / "measures.csv").write_text(measures_csv(rows))
    (ev / "endplates.json").write_text(json.dumps(plates))
    with (ev / "per_image.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file_name", "predicted"])
        w.writeheader()
        w.writerows({"file_name": r["file_name"], "predicted": int(i > 0)}
                    for i, r in enumerate(rows))
    proc = _run(root, "to-seg", "--model", "mask_rcnn", "--fold", "0", "--input", str(ev),
                "--dicom", "anon", "--images", "png", "--output", "seg", "--force")
    assert proc.returncode == 0, proc.stderr
    return root


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SPINEPIPE, *args, "--quiet"], capture_output=True, text=True,
                          cwd=root, timeout=300)


def _to_sr(root: Path, output: str = "sr", *extra: str) -> subprocess.CompletedProcess:
    return _run(root, "to-sr", "--model", "mask_rcnn", "--fold", "0", "--input",
                "eval/mask_rcnn/fold0", "--dicom", "anon", "--images", "png", "--seg", "seg",
                "--output", output, "--force", *extra)


def _reports(root: Path) -> dict[str, Path]:
    """image name -> its SR file, written by to-sr if an earlier test has not."""
    record = root / "sr" / "to_sr.json"
    if not record.is_file():
        proc = _to_sr(root)
        assert proc.returncode == 0, proc.stderr
    return {r["image"]: root / "sr" / r["sr"] for r in json.loads(record.read_text())["images"]}


def _measures(root: Path) -> dict[str, dict[str, str]]:
    with (root / "eval" / "mask_rcnn" / "fold0" / "measures.csv").open() as fh:
        return {r["file_name"]: r for r in csv.DictReader(fh)}


def _code(c) -> tuple[str, str]:
    return (c.scheme_designator, c.value)


def test_every_number_read_back_by_highdicom_with_its_code_unit_and_endplates(project):
    import highdicom as hd
    root = project
    reports = _reports(root)
    measures = _measures(root)
    plates = json.loads((root / "eval" / "mask_rcnn" / "fold0" / "endplates.json").read_text())
    segs = {r["image"]: r for r in json.loads((root / "seg" / "to_seg.json").read_text())["images"]}
    assert sorted(reports) == sorted(measures) and len(reports) == N_IMAGES
    n_checked = 0
    for image, path in reports.items():
        sr = hd.sr.srread(path)
        source = pydicom.dcmread(next((root / "anon").rglob(
            f"{Path(image).stem.split('_', 1)[1]}.dcm")))
        assert str(sr.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.33"   # Comprehensive SR
        assert (sr.PatientID, sr.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
        evidence = [i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                    for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence]
        assert source.SOPInstanceUID in evidence
        assert [(s.CodingSchemeDesignator) for s in sr.CodingSchemeIdentificationSequence] == \
            ["99SPINEPIPE"]
        report = hd.sr.MeasurementReport.from_sequence([sr])
        groups = {g.tracking_identifier: g for g in report.get_image_measurement_groups()}
        assert len(groups) == len(GROUPS)        # one group per GROUPS entry, measured or not
        found: dict[str, float] = {}
        seg_row = segs.get(image)
        for column in _reported_columns():
            name, code, unit, side = _expected(column)
            group = groups[name]
            cell = measures[image][column]
            candidates = [m for m in group.get_measurements()
                          if _code(m.name) == code and (side is None or any(
                              s.topographical_modifier is not None and
                              s.topographical_modifier.value == SIDE_CODES[side]
                              for s in m.finding_sites))]
            texts = [str(i.TextValue) for i in group[0].ContentSequence
                     if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "WITHHELD"]
            if cell == "":
                assert candidates == [], (image, column)
                assert any(t.startswith(f"{column}: ") and len(t) > len(column) + 3
                           for t in texts), (image, column, texts)
                continue
            assert len(candidates) == 1, (image, column)
            m = candidates[0]
            assert m.value == pytest.approx(float(cell), abs=1e-9), (image, column)
            assert (m.unit.scheme_designator, m.unit.value) == ("UCUM", unit)
            found[column] = m.value
            # measured between endplate lines on the source image's grid
            lines = [np.asarray(c.value) for c in m[0].ContentSequence
                     if c.ValueType == "SCOORD"]
            assert lines and all(line.shape == (2, 2) for line in lines)
            expected = [np.asarray(side_entry["endplate"]) for lv in plates[image]["prediction"]
                        for side_entry in plates[image]["prediction"][lv].values()
                        if "endplate" in side_entry]
            for line in lines:
                assert (line >= 0).all() and (line[:, 0] <= source.Columns).all() \
                    and (line[:, 1] <= source.Rows).all()
                assert any(np.allclose(line, e, atol=1e-3) for e in expected), (image, column)
            # and the levels' segments of the same prediction's SEG
            refs = [c for c in m[0].ContentSequence if c.ValueType == "IMAGE"]
            assert len(refs) == 1
            ref = refs[0].ReferencedSOPSequence[0]
            assert ref.ReferencedSOPInstanceUID == Path(seg_row["seg"]).stem
            labels = {i + 1: lbl for i, lbl in enumerate(seg_row["segments"])}
            numbers = ref.ReferencedSegmentNumber
            numbers = [numbers] if isinstance(numbers, int) else list(numbers)
            assert {labels[n] for n in numbers} == set(re.findall(r"L\d|S1", name))
        for pair in ("L1_L2", "L2_L3", "L3_L4", "L4_L5", "L5_S1"):
            grade = measures[image][f"meyerding_{pair}"]
            evals = groups[f"slip {pair.replace('_', '-')}"].get_qualitative_evaluations()
            slip = measures[image][f"slip_{pair}_pct"]
            if grade == "" or float(slip) < 0:      # no grade of a retrolisthesis
                assert evals == []
            else:
                assert [e.value.value for e in evals] == [f"MEYERDING-{int(grade)}"]
        n_checked += len(found)
    assert n_checked > 50      # the fixture's three measured images give most measures


def test_dsrdump_prints_every_number_with_its_code_and_unit(project):
    """dcmtk's dsrdump, a reader that is not highdicom, prints the content tree: its NUM items
    are exactly the numbers of measures.csv."""
    root = project
    measures = _measures(root)
    pattern = re.compile(r'NUM:\((\w+),(\w+),"[^"]*"\)="([^"]+)" \(([^,]+),UCUM,')
    for image, path in _reports(root).items():
        out = subprocess.run([dcmtk("dsrdump"), "+Pc", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "Imaging Measurement Report" in out.stdout
        printed = sorted((code, scheme, round(float(value), 4), unit)
                         for code, scheme, value, unit in pattern.findall(out.stdout))
        expected = []
        for column in _reported_columns():
            if measures[image][column] != "":
                _, (scheme, code), unit, _ = _expected(column)
                expected.append((code, scheme, round(float(measures[image][column]), 4), unit))
        assert printed == sorted(expected), image
        assert out.stdout.count("SCOORD:(") >= len(expected)


def test_dciodvfy_finds_no_error(project):
    root = project
    for path in list(_reports(root).values())[:2]:
        out = subprocess.run([dcmtk("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
        assert "Comprehensive" in text or "ComprehensiveSR" in text, text
        assert [line for line in text.splitlines() if line.startswith("Error")] == [], text


def test_an_image_without_measures_gets_a_report_that_says_why(project):
    import highdicom as hd
    root = project
    measures = _measures(root)
    empty = [n for n, r in measures.items() if all(r[c] == "" for c in MEASURES)]
    assert len(empty) == 1
    sr = hd.sr.srread(_reports(root)[empty[0]])
    report = hd.sr.MeasurementReport.from_sequence([sr])
    groups = report.get_image_measurement_groups()
    assert len(groups) == len(GROUPS) and all(g.get_measurements() == [] for g in groups)
    texts = [str(i.TextValue) for g in groups for i in g[0].ContentSequence
             if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "WITHHELD"]
    assert sorted(t.split(":", 1)[0] for t in texts) == sorted(_reported_columns())
    assert all("missing" in t for t in texts), texts[:3]
    record = json.loads((root / "sr" / "to_sr.json").read_text())
    row = next(r for r in record["images"] if r["image"] == empty[0])
    assert row["measures"] == 0 and row["withheld"] == len(_reported_columns())


def test_pseudonymized_reports_carry_no_original_identifier_and_rerun_is_identical(project):
    root = project
    reports = _reports(root)
    inputs = sorted((root / "raw" / "dicom").rglob("*.dcm"))
    assert _leak_scan(inputs, root / "sr") == []
    def content(folder: Path) -> dict[str, list]:
        """Every element, nested ones too, but dates and times of writing (the clock's)."""
        return {p.name: [(e.tag, str(e.value)) for e in pydicom.dcmread(p).iterall()
                         if e.VR != "SQ" and (e.VR not in ("DA", "TM", "DT")
                                              or e.keyword in ("StudyDate", "StudyTime"))]
                for p in folder.glob("*.dcm")}

    before = content(root / "sr")
    assert sorted(before) == sorted(p.name for p in reports.values())
    proc = _to_sr(root)
    assert proc.returncode == 0, proc.stderr
    assert content(root / "sr") == before      # the same UIDs, the same content tree


def test_a_gone_source_is_one_line_naming_it_and_nothing_is_written(project, tmp_path):
    root = project
    anon = tmp_path / "anon"
    shutil.copytree(root / "anon", anon)
    victim = sorted(anon.rglob("*.dcm"))[-1]
    victim.unlink()
    proc = _run(root, "to-sr", "--input", "eval/mask_rcnn/fold0", "--dicom", str(anon),
                "--images", "png", "--output", str(tmp_path / "out"), "--force")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert victim.name in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.dcm"))


def _edit_cell(csv_path: Path, line: int, column: str, value: str) -> None:
    text = csv_path.read_text().splitlines()
    header = text[0].split(",")
    cells = text[line].split(",")
    cells[header.index(column)] = value
    text[line] = ",".join(cells)
    csv_path.write_text("\n".join(text) + "\n")


def _measured_line(ev: Path) -> tuple[int, str]:
    """(line number in measures.csv, image) of the first image with a lordosis and a forward
    slip at L4-L5."""
    lines = (ev / "measures.csv").read_text().splitlines()
    header = lines[0].split(",")
    for n, line in enumerate(lines[1:], 1):
        cells = dict(zip(header, line.split(",")))
        if cells["lordosis_deg"] and cells["slip_L4_L5_pct"] and \
                float(cells["slip_L4_L5_pct"]) >= 0:
            return n, cells["file_name"]
    raise AssertionError("no measured image")


#: damage -> what the one-line error says
DAMAGES = {
    "number": "lordosis_deg is not a number",
    "cut_row": "fewer cells than the header",
    "missing_column": "no lordosis_deg column",
    "duplicate": "image listed twice",
    "unsafe_name": "image name",
    "implausible": "no measure of a spine",
    "grade": "is not the Meyerding grade",
    "endplate_off_grid": "off the",
    "endplate_not_points": "not two",
    "endplate_huge_int": "unreadable JSON",
    "endplate_missing": "endplate L1 superior: missing",
    "seg_name": "escape.dcm",
    "seg_other_image": "does not reference the radiograph",
    "seg_other_run": "of another run",
    "seg_missing": "to-seg record not found",
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_hostile_inputs_are_one_line_errors_and_nothing_is_written(project, tmp_path, damage):
    """Every input of to-sr, damaged: one line naming what is wrong, exit 1, no traceback and
    an output folder without a single report (everything is checked before the first write)."""
    root = project
    ev = tmp_path / "eval"
    shutil.copytree(root / "eval" / "mask_rcnn" / "fold0", ev)
    seg = tmp_path / "seg"
    shutil.copytree(root / "seg", seg)
    record = json.loads((seg / "to_seg.json").read_text())
    table = ev / "measures.csv"
    line, image = _measured_line(ev)
    plates = json.loads((ev / "endplates.json").read_text())
    if damage == "number":
        _edit_cell(table, line, "lordosis_deg", "inf")
    elif damage == "cut_row":     # a file cut inside a cell: the rest of the row is gone
        text = table.read_text().splitlines()
        cut = text[line].split(",")
        text[line] = ",".join(cut[:2])
        table.write_text("\n".join(text[:line + 1]))
    elif damage == "missing_column":
        rows = list(csv.DictReader(table.open()))
        with table.open("w", newline="") as fh:
            w = csv.DictWriter(fh, [c for c in rows[0] if c != "lordosis_deg"],
                               extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    elif damage == "duplicate":
        text = table.read_text().splitlines()
        table.write_text("\n".join(text + [text[line]]) + "\n")
    elif damage == "unsafe_name":
        _edit_cell(table, line, "file_name", "../../etc/passwd.png")
    elif damage == "implausible":
        _edit_cell(table, line, "lordosis_deg", "1e300")
    elif damage == "grade":       # a forward slip graded as a spondyloptosis
        _edit_cell(table, line, "meyerding_L4_L5", "5")
    elif damage.startswith("endplate"):
        plate = plates[image]["prediction"]["L1"]["superior"]
        if damage == "endplate_off_grid":
            plate["endplate"][0] = [1e300, -1e300]
        elif damage == "endplate_not_points":
            plate["endplate"] = [[1.0, "x"]]
        elif damage == "endplate_missing":
            del plates[image]["prediction"]["L1"]
        (ev / "endplates.json").write_text(json.dumps(plates))
        if damage == "endplate_huge_int":
            text = (ev / "endplates.json").read_text()
            (ev / "endplates.json").write_text(text.replace("[[", "[[" + "9" * 5000 + ", ", 1))
    elif damage == "seg_name":
        record["images"][1]["seg"] = "../../../escape.dcm"
    elif damage == "seg_other_image":   # a SEG of another radiograph named for this one
        record["images"][1]["seg"], record["images"][2]["seg"] = \
            record["images"][2]["seg"], record["images"][1]["seg"]
    elif damage == "seg_other_run":
        record["fold"] = 3
    elif damage == "seg_missing":
        shutil.rmtree(seg)
    if seg.exists():
        (seg / "to_seg.json").write_text(json.dumps(record))
    proc = _run(root, "to-sr", "--input", str(ev), "--dicom", "anon", "--images", "png",
                "--seg", str(seg), "--output", str(tmp_path / "out"), "--force")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert DAMAGES[damage] in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "escape.dcm").exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_an_evaluation_without_endplates_gives_reports_without_coordinates(project, tmp_path):
    """An evaluation made before spinepipe recorded endplates: the numbers, still pointing to
    the SEG's segments, without SCOORD; a measures.csv saved with a byte-order mark reads."""
    import highdicom as hd
    root = project
    ev = tmp_path / "eval"
    shutil.copytree(root / "eval" / "mask_rcnn" / "fold0", ev)
    (ev / "endplates.json").unlink()
    (ev / "measures.csv").write_text("\ufeff" + (ev / "measures.csv").read_text(),
                                     encoding="utf-8")
    proc = _run(root, "to-sr", "--input", str(ev), "--dicom", "anon", "--images", "png",
                "--seg", "seg", "--output", str(tmp_path / "out"), "--force")
    assert proc.returncode == 0, proc.stderr
    numbers = 0
    for f in (tmp_path / "out").glob("*.dcm"):
        report = hd.sr.MeasurementReport.from_sequence([hd.sr.srread(f)])
        for g in report.get_image_measurement_groups():
            for m in g.get_measurements():
                items = m[0].get("ContentSequence", [])
                assert [i.ValueType for i in items if i.ValueType == "SCOORD"] == []
                assert [i.ValueType for i in items if i.ValueType == "IMAGE"] == ["IMAGE"]
                numbers += 1
    assert numbers > 50


def test_the_folder_holds_what_its_record_lists_and_changed_numbers_are_new_objects(
        project, tmp_path):
    """A re-run after the evaluation changed: the report whose numbers changed is a new object
    (a new SOP Instance UID), the one of an image no longer evaluated is gone, the others are
    the same files; the folder holds exactly what to_sr.json lists (store sends the folder)."""
    root = project
    ev = tmp_path / "eval"
    shutil.copytree(root / "eval" / "mask_rcnn" / "fold0", ev)
    out = tmp_path / "out"

    def run() -> dict[str, str]:
        proc = _run(root, "to-sr", "--input", str(ev), "--dicom", "anon", "--images", "png",
                    "--seg", "seg", "--output", str(out), "--force")
        assert proc.returncode == 0, proc.stderr
        listed = {r["image"]: r["sr"] for r in json.loads((out / "to_sr.json").read_text())
                  ["images"]}
        assert sorted(p.name for p in out.glob("*.dcm")) == sorted(listed.values())
        return listed

    first = run()
    line, image = _measured_line(ev)
    lines = (ev / "measures.csv").read_text().splitlines()
    dropped = lines[-1].split(",")[0] if lines[-1].split(",")[0] != image else lines[-2].split(",")[0]
    _edit_cell(ev / "measures.csv", line, "lordosis_deg", "12.3456")
    kept = [x for x in (ev / "measures.csv").read_text().splitlines()
            if not x.startswith(dropped + ",")]
    (ev / "measures.csv").write_text("\n".join(kept) + "\n")
    second = run()
    assert dropped not in second and len(second) == len(first) - 1
    assert second[image] != first[image]
    assert all(second[k] == first[k] for k in second if k != image)
    assert pydicom.dcmread(out / second[image]).SOPInstanceUID == Path(second[image]).stem


def test_reidentified_reports_only_under_the_private_folder(project, tmp_path):
    """Refused before anything is read or written, also when the evaluation waits for
    annotations (to-sr would otherwise write its record saying so) and for to-seg alike."""
    root = project
    waiting = tmp_path / "waiting"
    waiting.mkdir()
    (waiting / "summary.json").write_text(json.dumps({"waiting_for_annotations": "none yet"}))
    for command in ("to-sr", "to-seg"):
        for out in ("data/sr_reid", "sr_reid", "private/../sr_reid"):
            for ev in ("eval/mask_rcnn/fold0", str(waiting)):
                proc = _run(root, command, "--model", "mask_rcnn", "--input", ev, "--dicom",
                            "anon", "--images", "png", "--output", out, "--reidentify",
                            "--private", "private")
                assert proc.returncode == 1, (command, out, ev, proc.stderr)
                assert "only under the private folder" in proc.stderr
                assert proc.stderr.count("\n") == 1
                assert not (root / out).exists()


def test_reidentified_seg_and_sr_stored_to_a_real_pacs_and_found_under_the_study(
        project, tmp_path):
    """Re-identified SEG and SR (the SR pointing to the re-identified SEG), stored by C-STORE to
    Orthanc, found by C-FIND under the original patient's study."""
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
    root = project
    proc = _run(root, "to-seg", "--model", "mask_rcnn", "--input", "eval/mask_rcnn/fold0",
                "--dicom", "anon", "--images", "png", "--output", "private/seg_sr",
                "--reidentify", "--private", "private")
    assert proc.returncode == 0, proc.stderr
    proc = _run(root, "to-sr", "--model", "mask_rcnn", "--input", "eval/mask_rcnn/fold0",
                "--dicom", "anon", "--images", "png", "--seg", "private/seg_sr",
                "--output", "private/sr", "--reidentify", "--private", "private")
    assert proc.returncode == 0, proc.stderr
    assert f"{N_IMAGES} re-identified DICOM SR" in proc.stderr
    assert f"{N_IMAGES - 1} pointing to a SEG" in proc.stderr    # one image had no prediction
    originals = {str(ds.SOPInstanceUID): ds for ds in
                 (pydicom.dcmread(f) for f in (root / "raw" / "dicom").rglob("*.dcm"))}
    files = sorted((root / "private" / "sr").glob("*.dcm"))
    assert len(files) == N_IMAGES
    for f in files:
        sr = pydicom.dcmread(f)
        ref = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        uids = [i.ReferencedSOPInstanceUID for s in ref for i in s.ReferencedSOPSequence]
        src = next(originals[u] for u in uids if u in originals)
        assert (sr.PatientID, sr.PatientName, sr.StudyInstanceUID) == \
            (src.PatientID, src.PatientName, src.StudyInstanceUID)
        assert "PatientIdentityRemoved" not in sr

    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        params = tmp_path / "params.yaml"
        params.write_text(f"retrieve:\n  port: {pacs.dicom_port}\n  timeout_s: 10\n")
        for folder, n in (("private/seg_sr", N_IMAGES - 1), ("private/sr", N_IMAGES)):
            proc = _run(root, "store", "--input", folder, "--params", str(params))
            assert proc.returncode == 0, proc.stderr
            assert f"store: {n} stored, 0 already there, 0 failed" in proc.stderr
        target = pydicom.dcmread(files[0])
        ae = AE(ae_title="SPINEPIPE")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.PatientID = target.PatientID
        query.StudyInstanceUID = target.StudyInstanceUID
        query.SeriesInstanceUID = ""
        query.SOPInstanceUID = ""
        query.SOPClassUID = ""
        query.Modality = ""
        found = []
        for series_uid in {target.SeriesInstanceUID}:
            query.SeriesInstanceUID = series_uid
            assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title="ORTHANC")
            assert assoc.is_established
            found += [ident for status, ident in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind) if ident is not None]
            assoc.release()
        assert [str(i.SOPInstanceUID) for i in found] == [str(target.SOPInstanceUID)]
        assert str(found[0].SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.33"
    finally:
        pacs.kill()


def test_every_code_is_the_standards_and_the_readme_lists_them():
    """Every standard code of the product's table is PS3.16's (pydicom's dictionary) with that
    meaning's scheme; every private one is declared under 99SPINEPIPE; README's table lists each
    (scheme, value) the product uses."""
    from pydicom.sr import _concepts_dict as concepts
    from converters.dicom.sr_codes import CODES, PRIVATE_SCHEME
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for key, (scheme, value, meaning) in CODES.items():
        if scheme == PRIVATE_SCHEME:
            assert scheme.startswith("99")
        elif scheme == "UCUM" and value.startswith("{"):
            assert re.fullmatch(r"\{[a-z]+\}", value)     # a UCUM annotation: a count of unity
        elif scheme == "UCUM":
            assert any(value in entry for entry in concepts.concepts["UCUM"].values()), value
        else:
            known = [m for entry in concepts.concepts[scheme].values()
                     for v, (m, _) in entry.items() if v == value]
            assert known, (key, scheme, value)
            assert any(meaning.lower() in m.lower() for m in known), (key, meaning, known)
        assert f"| {scheme} | `{value}` |" in readme, (key, scheme, value)
    assert COLUMNS  # the columns the reports draw on exist
