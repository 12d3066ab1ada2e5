"""The study writes itself up (train/report/study.py, issue 26): methods.md, the dataset card and
the model cards say what the records say, change when a record changes, say "not recorded" when
one is missing, never execute a config and never pass a record's HTML into the page.

The records are the ones the pipeline writes, made here small: a phantom anonymized and exported
(tests/conftest.py ingest_chain: real anonymize and export reports, provenance records), and
convert's, split's and a trained run's records written in the shapes those stages write."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import ingest_chain
from train.report.study import (NOT_RECORDED, TO_COMPLETE, Run, Sources, dataset_card_md,
                                gather, methods_md, model_card_md, read_config, read_run,
                                render_html)

CONFIG = """\
img_scale = (
    256,
    640,
)
model = dict(
    backbone=dict(depth=18, type='ResNet'),
    type='MaskRCNN')
optim_wrapper = dict(
    optimizer=dict(lr=0.02, momentum=0.9, type='SGD', weight_decay=0.0001), type='OptimWrapper')
spinepipe = dict(family='instance', name='Mask R-CNN')
train_cfg = dict(max_epochs=20, type='EpochBasedTrainLoop', val_interval=4)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(keep_ratio=True, scale=(256, 640), type='Resize'),
    dict(prob=0.5, type='RandomFlip'),
]
"""

LOG = """\
12/03 21:40:22 - mmengine - INFO -
System environment:
    CUDA available: False
12/03 21:44:34 - mmengine - INFO - Epoch(train) [20][10/14]
"""


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Sources:
    from converters.phantom.writing import PhantomConfig, generate
    root = tmp_path_factory.mktemp("study")
    generate(PhantomConfig(n=4, seed=2, height=320, width=128, burned_in_share=0),
             root / "raw", workers=1)
    ingest_chain(root / "raw", root)
    processed = root / "processed"
    processed.mkdir()
    (processed / "report.json").write_text(json.dumps({
        "formats": {"data/annotations/a.json": "via2-project"}, "images": 4, "annotations": 24,
        "counts": {"unannotated_image": 1, "self_intersection_repaired": 2}, "problems": []}))
    (processed / "images.csv").write_text(
        "file_name,patient,implants,overlap\na.png,P1,1,0\nb.png,P1,0,1\nc.png,P2,2,1\n")
    (processed / "coco.json").write_text(json.dumps({
        "categories": [{"id": 1, "name": "lumbar"}, {"id": 2, "name": "sacrum"}],
        "annotations": [{"segmentation": [[0, 0, 1, 0, 1, 1, 0, 1]]},
                        {"segmentation": [[0, 0, 2, 0, 2, 2, 0, 2, 1, 3, 0, 3]]}]}))
    splits = root / "splits"
    splits.mkdir()
    (splits / "splits.json").write_text(json.dumps({"seed": 7, "k": 3, "strata": "overlap",
                                                    "test": [], "folds": []}))
    (splits / "summary.json").write_text(json.dumps({
        "test": {"images": 2, "patients": 1},
        "fold0": {"train": {"images": 5}, "val": {"images": 3}},
        "fold1": {"train": {"images": 6}, "val": {"images": 2}}}))
    run = root / "models" / "mask_rcnn" / "fold0"
    run.mkdir(parents=True)
    (run / "config.py").write_text(CONFIG)
    (run / "metrics.json").write_text(json.dumps({"metric": "coco/segm_mAP", "best": 0.8141}))
    (run / "train.log").write_text(LOG)
    (run / "best.pth").write_bytes(b"weights")
    return Sources(anon=root / "anon", png=root / "png", processed=processed, splits=splits,
                   models=root / "models", phantom_truth=root / "raw" / "truth.json")


def _methods(src: Sources) -> str:
    runs = [read_run(src.models, "mask_rcnn", 0)]
    return methods_md(gather(src), runs, "| table 1 |", ["a note"], 0.05)


def test_every_number_is_the_records(records):
    text = _methods(records)
    anon = json.loads((records.anon / "report.json").read_text())
    counts = anon["counts"]
    provenance = [json.loads(p.read_text()) for p in (records.png / "provenance").glob("*.json")]
    assert f"comprised {len(provenance)} radiographs of " \
           f"{len({p['patient'] for p in provenance})} patients" in text
    assert ", ".join(f"{v} {k}" for k, v in counts.items()) in text
    assert f"`{anon['action_table']}`" in text
    rows = {p["rows"] for p in provenance}
    assert f"{min(rows)} x" in text
    assert "Of the 3 annotated images, 2 (67 %) show implants and 2 (67 %) overlapping" in text
    assert "24 instances on 4 images, 5.0 points per polygon on average (range 4-6)" in text
    assert "unannotated image: 1; self intersection repaired: 2" in text
    assert "A fixed test set of 2 images (1 patients)" in text and "3 folds" in text
    assert "stratified by overlap (seed 7)" in text
    assert "Each fold trained on 5-6 images and validated on 2-3." in text
    assert "Folds trained and evaluated in this run: 0 of 3 (not a full cross-validation" in text
    assert "| Mask R-CNN (fold 0) | MaskRCNN | ResNet-18 | 256 x 640 | 20 epochs | SGD " \
           "\\(lr 0.02, momentum 0.9, weight\\_decay 0.0001\\) | Resize, RandomFlip | best " \
           "validation coco/segm\\_mAP \\(0.8141\\) | 4.2 min | CPU |" in text
    assert "Trained from scratch (no checkpoint loaded, no pre-trained backbone): Mask R-CNN " \
           "fold 0." in text
    assert "synthetic phantom" in text            # the phantom's truth is there
    assert f"Eligibility criteria, clinical setting and collection period: {TO_COMPLETE}" in text
    assert f"Ethics approval and informed consent (or its waiver): {TO_COMPLETE}" in text


def test_a_changed_record_changes_the_text(records, tmp_path):
    """The number of quarantined images and a model's schedule, changed in their records."""
    src = Sources(**{k: Path(shutil.copytree(v, tmp_path / k)) if Path(v).is_dir()
                     else v for k, v in vars(records).items()})
    before = _methods(src)
    report = json.loads((src.anon / "report.json").read_text())
    report["counts"]["quarantined"] = 41
    (src.anon / "report.json").write_text(json.dumps(report))
    config = src.models / "mask_rcnn" / "fold0" / "config.py"
    config.write_text(CONFIG.replace("max_epochs=20", "max_epochs=73"))
    after = _methods(src)
    assert "41 quarantined" in after and "41 quarantined" not in before
    assert "73 epochs" in after and "20 epochs" in before and "20 epochs" not in after


def test_a_missing_record_is_said_not_to_be_there(records, tmp_path):
    src = Sources(anon=tmp_path / "none", png=tmp_path / "none", processed=tmp_path / "none",
                  splits=tmp_path / "none", models=tmp_path / "none",
                  phantom_truth=tmp_path / "none.json")
    text = methods_md(gather(src), [read_run(src.models, "unet", 0)], "", [], 0.05)
    for section in ("Images", "De-identification", "Export", "Annotation", "Data partition"):
        assert f"{section}: {NOT_RECORDED}" in text, section
    assert "| U-Net (fold 0) |" in text or "| unet (fold 0) |" in text
    assert "synthetic" not in text
    card = dataset_card_md(gather(src))
    assert NOT_RECORDED in card and "Synthetic" not in card


def test_a_config_is_read_as_data_never_run(tmp_path):
    marker = tmp_path / "ran"
    config = tmp_path / "config.py"
    config.write_text(f"import os\nos.system('touch {marker}')\n"
                      f"train_cfg = dict(max_iters=__import__('os').system('touch {marker}'))\n"
                      "img_scale = (1, 2)\nmodel = dict(type='X', backbone=[1, 2])\n")
    values = read_config(config)
    assert not marker.exists()
    assert values == {"img_scale": [1, 2], "model": {"type": "X", "backbone": [1, 2]}}
    assert read_config(tmp_path / "missing.py") == {}
    (tmp_path / "bad.py").write_text("x = (")
    assert read_config(tmp_path / "bad.py") == {}


def test_a_record_s_html_never_reaches_the_page():
    html = render_html("Manufacturer: <script>alert(1)</script> and <b>bold</b>\n")
    assert "<script>" not in html and "&lt;script&gt;" in html and "<b>" not in html
    assert "<table>" in render_html("| a | b |\n| --- | --- |\n| 1 | 2 |\n")


def test_a_model_card_carries_its_run_and_its_test_results(records):
    facts = gather(records)
    run = read_run(records.models, "mask_rcnn", 0)
    assert run.checkpoint_sha256 == hashlib.sha256(b"weights").hexdigest()
    t1 = pd.DataFrame({"images": [18], "mean_iou_mean": [0.9164], "mean_iou_sd": [0.0266],
                       "recognition_rate": [0.8889], "recognition_rate_ci_low": [0.672],
                       "recognition_rate_ci_high": [0.969],
                       "composite_recognition_rate": [0.7778],
                       "composite_recognition_rate_ci_low": [0.548],
                       "composite_recognition_rate_ci_high": [0.91]}, index=["mask_rcnn"])
    sub = pd.DataFrame([{"model": "mask_rcnn", "subgroup": "overlaps", "images": 11,
                         "composite": 7}])
    per_image = pd.DataFrame({"model": ["mask_rcnn"] * 3, "missed": ["L4", "L4;L5", ""],
                              "shifted": ["", "L1", ""]})
    agreement = {"groups": {"lordosis_deg": {"mae": 0.42, "bias": 0.04,
                                             "measurable_rate": 0.6667}}}
    card = model_card_md([run], facts, t1, sub, agreement, per_image, "small test set")
    assert "# Model card: Mask R-CNN" in card
    assert f"SHA-256 `{run.checkpoint_sha256}`" in card and "from scratch" in card
    assert "mean IoU 91.6 % (SD 2.7) over 18 test images (folds 0 pooled)" in card
    assert "recognition rate 89 % (95 % CI 67-97 %)" in card
    assert "overlaps: 7 of 11 test images" in card
    assert "MAE 0.42 deg, bias 0.04 deg, measurable on 67 % of the images" in card
    assert "Levels missed on the test images: L4 (2), L5 (1); images with a level shifted: 1" \
        in card
    assert "Fold 0: 5 training and 3 validation images." in card
    assert "Not for clinical decision-making" in card and "small test set" in card
    unknown = model_card_md(Run("unet", 0), facts, t1.iloc[0:0], sub.iloc[0:0], None,
                            per_image.iloc[0:0], None)
    assert f"Metrics: {NOT_RECORDED}" in unknown


def _copy(records: Sources, tmp_path: Path) -> Sources:
    return Sources(**{k: (Path(shutil.copytree(v, tmp_path / k, symlinks=True))
                          if Path(v).is_dir() else v) for k, v in vars(records).items()})


def _first_provenance(src: Sources) -> Path:
    return sorted((src.png / "provenance").glob("*.json"))[0]


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


#: a record damaged as a hostile or broken file would be -> what the texts must then not claim
DAMAGES = {
    "spacing_empty": lambda s: _edit_json(_first_provenance(s),
                                          lambda d: d.update(pixel_spacing_mm=[])),
    "spacing_words": lambda s: _edit_json(_first_provenance(s),
                                          lambda d: d.update(pixel_spacing_mm=["a", "b"])),
    "patient_list": lambda s: _edit_json(_first_provenance(s), lambda d: d.update(patient=["a"])),
    "counts_list": lambda s: _edit_json(s.anon / "report.json", lambda d: d.update(counts=[1])),
    "options_list": lambda s: _edit_json(s.anon / "report.json", lambda d: d.update(options=[1])),
    "export_options_text": lambda s: _edit_json(s.png / "report.json",
                                                lambda d: d.update(options="x")),
    "convert_counts_list": lambda s: _edit_json(s.processed / "report.json",
                                                lambda d: d.update(counts=[1])),
    "coco_segmentation_number": lambda s: _edit_json(
        s.processed / "coco.json", lambda d: d["annotations"][0].update(segmentation=5)),
    "fold_without_images": lambda s: _edit_json(
        s.splits / "summary.json", lambda d: d.update(fold0={"train": []})),
    "log_not_a_date": lambda s: (s.models / "mask_rcnn" / "fold0" / "train.log").write_text(
        "13/45 25:61:61 - mmengine - INFO -\n13/46 25:61:61 - mmengine - INFO -\n"),
    "config_deep": lambda s: (s.models / "mask_rcnn" / "fold0" / "config.py").write_text(
        "x = " + "+".join(["1"] * 200000) + "\n"),
    "config_fifo": lambda s: ((s.models / "mask_rcnn" / "fold0" / "config.py").unlink(),
                              __import__("os").mkfifo(s.models / "mask_rcnn" / "fold0" /
                                                      "config.py")),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_record_says_not_recorded_and_never_fails(records, tmp_path, damage):
    src = _copy(records, tmp_path)
    DAMAGES[damage](src)
    text = _methods(src)                  # no exception, no hang (a FIFO is not waited on)
    card = dataset_card_md(gather(src))
    assert "None" not in text and "None" not in card
    assert NOT_RECORDED in text + card or damage in ("spacing_empty", "spacing_words",
                                                     "coco_segmentation_number")
    run = read_run(src.models, "mask_rcnn", 0)
    assert model_card_md([run], gather(src), pd.DataFrame(), pd.DataFrame(), None,
                         pd.DataFrame(), None).startswith("# Model card")


def test_synthetic_only_when_the_phantom_wrote_cases(records, tmp_path):
    """phantom.enabled false still writes an empty truth.json: real data then, never called
    synthetic."""
    empty = tmp_path / "truth.json"
    empty.write_text("{}")
    src = Sources(**{**vars(records), "phantom_truth": empty})
    assert not gather(src).synthetic and "synthetic" not in _methods(src)
    assert gather(records).synthetic


def test_a_link_out_of_the_de_identified_tree_is_not_read(records, tmp_path):
    """The manufacturer comes from the de-identified headers only: an output entry that is a
    link to an identifiable original (the private folder lies beside the tree) is skipped."""
    import pydicom
    src = _copy(records, tmp_path)
    original = next((tmp_path.parent / "study0" / "raw" / "dicom").rglob("*.dcm"), None) or \
        next(Path(records.phantom_truth).parent.joinpath("dicom").rglob("*.dcm"))
    ds = pydicom.dcmread(original)
    ds.Manufacturer = "St Elsewhere Hospital"
    leak = tmp_path / "outside.dcm"
    ds.save_as(leak)
    (src.anon / "leak.dcm").symlink_to(leak)
    _edit_json(src.anon / "report.json", lambda d: d["outputs"].append("leak.dcm"))
    assert "Elsewhere" not in _methods(src)


def test_a_record_value_cannot_add_links_images_or_cells(records, tmp_path):
    src = _copy(records, tmp_path)
    _edit_json(src.processed / "coco.json", lambda d: d["categories"][0].update(
        name="![](https://tracker.example/p.png) [x](https://evil.example/) a|b"))
    html = render_html(_methods(src))
    assert "<img" not in html and "<a " not in html and "tracker.example" in html
    config = src.models / "mask_rcnn" / "fold0" / "config.py"
    config.write_text(CONFIG.replace("type='ResNet'", "type='![](https://t.example/x.png)'"))
    card = model_card_md([read_run(src.models, "mask_rcnn", 0)], gather(src), pd.DataFrame(),
                         pd.DataFrame(), None, pd.DataFrame(), None)
    assert "t.example" in card and "![](" not in card      # the .md is rendered where it is read


def test_a_pretrained_start_and_every_fold_are_said(records, tmp_path):
    src = _copy(records, tmp_path)
    run1 = src.models / "mask_rcnn" / "fold1"
    shutil.copytree(src.models / "mask_rcnn" / "fold0", run1)
    (run1 / "config.py").write_text(CONFIG.replace("max_epochs=20", "max_epochs=30")
                                    + "load_from = '/ckpt/mask_rcnn_coco.pth'\n")
    runs = [read_run(src.models, "mask_rcnn", k) for k in (0, 1)]
    assert runs[1].initialized_from == "load_from mask_rcnn_coco.pth"
    text = methods_md(gather(src), runs, "", [], 0.05, match_iou=0.5)
    assert "Mask R-CNN fold 1 started from load\\_from mask\\_rcnn\\_coco.pth." in text
    assert "Trained from scratch (no checkpoint loaded, no pre-trained backbone): Mask R-CNN " \
           "fold 0." in text
    assert "mask IoU of at least 0.5" in text
    card = model_card_md(runs, gather(src), pd.DataFrame(), pd.DataFrame(), None,
                         pd.DataFrame(), None)
    assert "- fold 0:" in card and "- fold 1:" in card and "30 epochs" in card


def test_training_time_is_the_last_run_s(tmp_path):
    """train.log is appended to by every run: the last block's time, not both runs'."""
    run = tmp_path / "m" / "fold0"
    run.mkdir(parents=True)
    (run / "20270227_230000").mkdir()
    (run / "train.log").write_text(
        "01/10 10:00:00 - mmengine - INFO -\nSystem environment:\n"
        "01/10 10:05:00 - mmengine - INFO - done\n"
        "02/28 23:00:00 - mmengine - INFO -\nSystem environment:\n    CUDA available: False\n"
        "03/01 01:00:00 - mmengine - INFO - done\n")
    assert read_run(tmp_path, "m", 0).training_minutes == pytest.approx(120)


@pytest.mark.parametrize("extra, world, said", [
    ("", None, "SGD (lr 0.02, momentum 0.9, weight_decay 0.0001, batch 8)"),
    # train.gpu_memory_gb: MMEngine scaled the rate by batch x processes / base
    ("auto_scale_lr = dict(enable=True, base_batch_size=2)\n", 2,
     "SGD (lr 0.16, momentum 0.9, weight_decay 0.0001, batch 8 x 2 processes)"),
    ("auto_scale_lr = dict(enable=False, base_batch_size=16)\n"
     "optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic', optimizer=dict("
     "type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001))\n", None,
     "SGD (lr 0.02, momentum 0.9, weight_decay 0.0001, batch 8, mixed precision)"),
])
def test_the_optimizer_is_said_as_it_ran(tmp_path, extra, world, said):
    run = tmp_path / "m" / "fold0"
    run.mkdir(parents=True)
    (run / "config.py").write_text(CONFIG + "train_dataloader = dict(batch_size=8)\n" + extra)
    if world:
        (run / "metrics.json").write_text(json.dumps({"world_size": world}))
    assert read_run(tmp_path, "m", 0).optimizer == said


def test_the_readers_and_the_ground_truth_are_counted_from_images_csv(records, tmp_path):
    src = Sources(**{k: Path(shutil.copytree(v, tmp_path / k)) if Path(v).is_dir()
                     else v for k, v in vars(records).items()})
    assert "reader(s) annotated" not in _methods(src)   # a table without the readers' columns
    (src.processed / "images.csv").write_text(
        "file_name,implants,overlap,readers,ground_truth\n"
        "a.png,0,0,ann ben cy,consensus\nb.png,1,0,ann,ann\nc.png,0,1,ann ben,adjudicated\n"
        "d.png,0,0,ben cy,consensus\n")
    text = _methods(src)
    assert "3 reader(s) annotated; 3 image(s) were read by two or more" in text
    assert "consensus on 2 image(s)" in text and "adjudication on 1" in text
    assert "one reader's polygons on 1" in text
    assert "one polygon)" in text              # coco.json without these images: no count
    (src.processed / "coco.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"},
                   {"id": 3, "file_name": "d.png"}],
        "annotations": [{"image_id": 1, "segmentation": [[0, 0, 1, 0, 1, 1, 0, 1]]},
                        {"image_id": 3, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2, 1, 3]]},
                        {"image_id": 2, "segmentation": [list(range(40))]}]}))
    # the most points of a consensus image's polygon (a.png, d.png), not the one reader's b.png
    assert "one polygon of at most 5 points)" in _methods(src)
    # images without names, on both sides, are no consensus images; a polygon of two points
    # is none
    (src.processed / "images.csv").write_text(
        "readers,ground_truth\nann ben,consensus\n")
    (src.processed / "coco.json").write_text(json.dumps({
        "images": [{"id": 1}, {"id": 2, "file_name": ""}],
        "annotations": [{"image_id": 1, "segmentation": [list(range(40))]},
                        {"image_id": 2, "segmentation": [list(range(40))]}]}))
    assert "one polygon)" in _methods(src)
    (src.processed / "images.csv").write_text(
        "file_name,readers,ground_truth\na.png,ann ben,consensus\n")
    (src.processed / "coco.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [{"image_id": 1, "segmentation": [[1, 2, 3, 4]]}]}))
    assert "one polygon)" in _methods(src)


# --------------------------------------------------------------------------------------------
# the CLAIM checklist and the parameter counts (issue 26)


def _claim_rows(text: str) -> dict[str, list[str]]:
    """Item number -> its table cells (number, section, item, answer, methods.md)."""
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")
            and not line.startswith(("| #", "| ---"))]
    return {r[0].strip("| "): [c.strip("| ") for c in r] for r in rows}


def test_every_claim_item_has_an_answer_or_is_left_to_the_authors(records):
    from train.report.claim import claim_checklist_md
    text = claim_checklist_md(gather(records), [read_run(records.models, "mask_rcnn", 0)],
                              0.05, 0.5)
    rows = _claim_rows(text)
    assert list(rows) == [str(k) for k in range(1, 43)]        # CLAIM 2020: 42 items, in order
    for number, cells in rows.items():
        answer = cells[3]
        assert answer and "None" not in answer and "{" not in answer, (number, answer)
    left = [n for n, c in rows.items() if c[3] == TO_COMPLETE]
    # what no record can answer is left to the authors, never invented
    assert {"1", "2", "3", "4", "15", "19", "32", "34", "38", "39", "40", "41", "42"} <= set(left)
    assert "stratified by overlap (seed 7)" in rows["20"][3]
    assert rows["21"][3].startswith("patient")
    assert "mask IoU >= 0.5" in rows["28"][3] and "significance level 0.05" in rows["29"][3]
    anon = json.loads((records.anon / "report.json").read_text())
    assert f"`{anon['action_table']}`" in rows["12"][3]
    assert rows["12"][4] == "De-identification" and rows["20"][4] == "Data partition"
    # every section a row points at is one methods.md has
    methods = _methods(records)
    for cells in rows.values():
        if cells[4] != "-":
            assert f"## {cells[4]}\n" in methods, cells


def test_the_checklist_follows_its_records(records, tmp_path):
    from train.report.claim import claim_checklist_md
    src = _copy(records, tmp_path)
    before = _claim_rows(claim_checklist_md(gather(src), [read_run(src.models, "mask_rcnn", 0)],
                                            0.05))
    metrics = src.models / "mask_rcnn" / "fold0" / "metrics.json"
    _edit_json(metrics, lambda m: m.update(parameters=43_719_345,
                                           software={"torch": "2.13.0", "mmdet": "3.3.0"}))
    (src.processed / "images.csv").write_text(
        "file_name,implants,overlap,readers,ground_truth\n"
        "a.png,0,0,ann ben,consensus\nb.png,1,0,ann,ann\n")
    after = _claim_rows(claim_checklist_md(gather(src), [read_run(src.models, "mask_rcnn", 0)],
                                           0.05))
    assert f"parameters {NOT_RECORDED}" in before["22"][3]
    assert "43,719,345 parameters" in after["22"][3]
    assert "mmdet 3.3.0" in after["23"][3] and "torch 2.13.0" in after["23"][3]
    assert before["18"][3] == f"readers: {NOT_RECORDED}"       # images.csv without readers
    assert "1 image(s) read by two or more readers" in after["18"][3]
    assert "resolved by consensus on 1 image(s)" in after["18"][3]
    nothing = Sources(anon=tmp_path / "no", png=tmp_path / "no", processed=tmp_path / "no",
                      splits=tmp_path / "no", models=tmp_path / "no",
                      phantom_truth=tmp_path / "no.json")
    empty = _claim_rows(claim_checklist_md(gather(nothing), [], 0.05))
    assert len(empty) == 42 and NOT_RECORDED in empty["7"][3] and NOT_RECORDED in empty["12"][3]
    assert NOT_RECORDED in empty["22"][3]


def test_the_parameter_count_is_said_in_the_methods_and_the_card(records, tmp_path):
    src = _copy(records, tmp_path)
    _edit_json(src.models / "mask_rcnn" / "fold0" / "metrics.json",
               lambda m: m.update(parameters=1_234_567))
    run = read_run(src.models, "mask_rcnn", 0)
    assert run.parameters == 1_234_567
    assert "1,234,567 parameters" in methods_md(gather(src), [run], "", [], 0.05)
    card = model_card_md([run], gather(src), pd.DataFrame(), pd.DataFrame(), None,
                         pd.DataFrame(), None)
    assert "1,234,567 parameters" in card
    _edit_json(src.models / "mask_rcnn" / "fold0" / "metrics.json",
               lambda m: m.update(parameters="many", software=["x"]))
    odd = read_run(src.models, "mask_rcnn", 0)
    assert odd.parameters is None and odd.software is None


NOT_WORDS = {"best": None, "parameters": True, "software": {"torch": None}}


def test_values_that_are_no_words_are_never_printed(records, tmp_path):
    """null, booleans, NaN and containers where a record has a word or a number: "not
    recorded", never "None", "nan" or "True" (a run with no validation score writes best null)."""
    src = _copy(records, tmp_path)
    _edit_json(src.models / "mask_rcnn" / "fold0" / "metrics.json",
               lambda m: m.update(best=None))
    _edit_json(src.anon / "report.json", lambda r: r["counts"].update(odd=None))
    _edit_json(src.processed / "report.json", lambda r: r.update(images=float("nan"),
                                                                annotations=True))
    for p in (src.png / "provenance").glob("*.json"):
        _edit_json(p, lambda r: r.update(modality=None))
    (src.models / "mask_rcnn" / "fold0" / "config.py").write_text(
        CONFIG.replace("type='SGD', ", "").replace("type='ResNet'", "type=None"))
    run = read_run(src.models, "mask_rcnn", 0)
    assert run.picked_by == "best validation coco/segm_mAP" and run.optimizer is None
    assert run.backbone is None
    from train.report.claim import claim_checklist_md
    facts = gather(src)
    texts = [methods_md(facts, [run], "", [], 0.05, match_iou=True),
             model_card_md([run], facts, pd.DataFrame(), pd.DataFrame(), None, pd.DataFrame(),
                           None),
             dataset_card_md(facts), claim_checklist_md(facts, [run], 0.05, float("nan"))]
    for text in texts:
        words = set(re.findall(r"[A-Za-z]+", text))
        assert not words & {"None", "nan", "NaN", "True", "False"}, words & {"None", "nan"}
    assert "matching threshold not recorded" in texts[3]
    assert "threshold not recorded" in texts[0]


def test_where_the_weights_started_is_unknown_without_a_config(records, tmp_path):
    src = _copy(records, tmp_path)
    (src.models / "mask_rcnn" / "fold0" / "config.py").unlink()
    run = read_run(src.models, "mask_rcnn", 0)
    text = methods_md(gather(src), [run], "", [], 0.05)
    assert "Trained from scratch" not in text and "no leaf config read" in text
    from train.report.claim import claim_checklist_md
    rows = _claim_rows(claim_checklist_md(gather(src), [run], 0.05))
    assert "from scratch" not in rows["24"][3] and NOT_RECORDED in rows["24"][3]


@pytest.mark.parametrize("load", ["LoadImageFromFile", "mmcv.LoadImageFromFile",
                                  "CachedLoadImageFromFile', cache_dir='/c"])
def test_the_input_is_what_the_training_loader_resized_to(tmp_path, load):
    """A leaf config carries its bases' ``img_scale`` and ``train_pipeline`` variables; the
    training ran the dataloader's pipeline (the demo preset's smaller scale). Loading steps
    (the image cache's too, however named) are not augmentations."""
    run = tmp_path / "m" / "fold0"
    run.mkdir(parents=True)
    (run / "config.py").write_text(
        CONFIG + "train_dataloader = dict(dataset=dict(type='RepeatDataset', dataset=dict("
        f"pipeline=[dict(type='{load}'), dict(type='Resize', scale=(128, 320)), "
        "dict(type='PolygonsToBitmaps'), dict(type='PhotoMetricDistortion')])))\n")
    got = read_run(tmp_path, "m", 0)
    assert got.input_scale == "128 x 320"
    assert got.augmentation == "Resize, PhotoMetricDistortion"


def test_the_post_processing_is_said_from_the_evaluations_params(records):
    post = {"score_thr": 0.3, "nms_iou": 0.5, "min_area": 20, "largest_component": True,
            "containment_max": 0.5, "cross_class_iou": 0.45, "match_iou": 0.5}
    run = read_run(records.models, "mask_rcnn", 0)
    text = methods_md(gather(records), [run], "", [], 0.05, 0.5, post)
    assert "instances scored below 0.3 or smaller than 20 pixels dropped" in text
    assert "largest connected region" in text and "NMS at IoU 0.5" in text
    assert "with IoU above 0.45 dropped as the same object labelled twice" in text
    odd = methods_md(gather(records), [run], "", [], 0.05, 0.5,
                     {**post, "largest_component": False, "cross_class_iou": "x"})
    assert "largest connected region" not in odd
    assert f"IoU above {NOT_RECORDED} dropped" in odd
    assert f"Post-processing of the instance models' outputs: {NOT_RECORDED}" in \
        methods_md(gather(records), [run], "", [], 0.05)


def test_how_the_measures_were_made_is_said_from_the_evaluations_params(records):
    """The evaluations' ``params.measures``: the refinement's band and confidence, the
    plausibility limits, whether fused blobs were cut (an evaluation older than the switch:
    nothing said); unrefined said as such; none recorded, or junk, said as not recorded (never
    a default the run may not have used)."""
    from dataclasses import asdict

    from converters.spine.refine import MeasuresConfig

    run = read_run(records.models, "mask_rcnn", 0)
    facts = gather(records)
    m = asdict(MeasuresConfig(band_mm=5.0, min_confidence=0.35, max_segment_deg=40.0))
    text = methods_md(facts, [run], "", [], 0.05, 0.5, {}, m)
    assert "refined on the full-resolution image" in text and "within 5.0 mm" in text
    assert "less than 35 % of its length" in text and "exceeded 40.0 degrees" in text
    assert "within 6 % of a vertebral body's height" in text
    assert "searched again a disc's height lower, was seen along 70 % of its length" in text
    assert "ground truth's polygons refined" not in text
    assert "cut across the spine into its bodies" in text                 # split_fused
    whole = methods_md(facts, [run], "", [], 0.05, 0.5, {}, {**m, "split_fused": False})
    assert "cut across" not in whole and "was not measured, nor any level above it" in whole
    older = methods_md(facts, [run], "", [], 0.05, 0.5, {},
                       {k: v for k, v in m.items() if k != "split_fused"})
    assert "cut across" not in older and "was not measured, nor" not in older
    both = methods_md(facts, [run], "", [], 0.05, 0.5, {}, {**m, "refine": True})
    assert "the ground truth's polygons refined the same way" in both
    plain = methods_md(facts, [run], "", [], 0.05, 0.5, {}, {**m, "refine_predictions": False})
    assert "not refined on the image" in plain and "within 5.0 mm" not in plain
    assert "exceeded 40.0 degrees" in plain and "found on the image" not in plain  # no disc
    off = methods_md(facts, [run], "", [], 0.05, 0.5, {}, {**m, "max_segment_deg": 180.0,
                                                            "min_disc_ratio": 0.0})
    assert "No limit on the segmental angles" in off and "No check of the discs" in off
    assert "exceeded" not in off and "one edge taken for both" not in off
    assert "searched again" not in off and "searched again" not in plain
    junk = methods_md(facts, [run], "", [], 0.05, 0.5, {}, {**m, "max_segment_deg": "[x](y)",
                                                             "min_disc_ratio": None})
    assert "exceeded \\[x\\]\\(y\\) degrees" in junk and f"within {NOT_RECORDED} %" in junk
    assert f"plausibility limits of the measures: {NOT_RECORDED}" in \
        methods_md(facts, [run], "", [], 0.05)

