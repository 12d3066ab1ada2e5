"""Pipeline records read in one place (converters/core/records.py, issue #22 item 5).

The class: a JSON file that one stage writes and another reads (splits.json, the split's COCO
files, an evaluation's summary.json and instances.json) may be missing, truncated, replaced by
a FIFO, not UTF-8, nested without end, or of the wrong shape. Each damage, through
:func:`read_json` and through every reader that uses it, must give one line naming the file
(and, when missing, the stage that makes it), never a traceback and never an empty default.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from converters.core.errors import InvalidTableError, MissingInputError, SpinepipeError
from converters.core.records import read_json

#: damage -> (writer of the file, what the message must say)
DAMAGES = {
    "truncated": (lambda p: p.write_text('{"folds": [1, 2'), "malformed JSON at line 1"),
    "empty": (lambda p: p.write_text(""), "malformed JSON at line 1, column 1"),
    "not UTF-8": (lambda p: p.write_bytes(b'{"folds": "\xff\xfe"}'), "not UTF-8 text (byte 11)"),
    "too deep": (lambda p: p.write_text("[" * 100 + "]" * 100), "nested deeper than 64"),
    "array": (lambda p: p.write_text("[1, 2]"), "the top level is an array, not an object"),
    "null": (lambda p: p.write_text("null"), "the top level is null, not an object"),
    "no key": (lambda p: p.write_text('{"fold": []}'), "no 'folds' key"),
    "key of wrong type": (lambda p: p.write_text('{"folds": {"a": 1}}'),
                          "'folds' is an object, not an array"),
    "FIFO": (lambda p: os.mkfifo(p), "not a regular file (FIFO)"),
    "folder": (lambda p: p.mkdir(), "not a regular file (folder)"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_every_damage_is_one_line_naming_the_file(tmp_path, damage):
    path = tmp_path / "splits.json"
    make, says = DAMAGES[damage]
    make(path)
    with pytest.raises(InvalidTableError) as err:
        read_json(path, what="splits", made_by="split", keys={"folds": list})
    message = str(err.value)
    assert says in message
    assert message.startswith("splits: ") and message.endswith(f"in {path}")
    assert "\n" not in message


def test_a_missing_record_names_the_stage_that_makes_it(tmp_path):
    with pytest.raises(MissingInputError) as err:
        read_json(tmp_path / "splits.json", what="splits", made_by="split")
    assert err.value.produced_by == "split"
    assert str(err.value) == f"splits not found, in {tmp_path / 'splits.json'}"


def test_a_sound_record_comes_back_whole_and_the_error_class_is_the_callers(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('\ufeff{"folds": [[1], [2]], "extra": {"kept": true}}')  # BOM as Excel saves
    assert read_json(path, what="r", keys={"folds": list}) == {
        "folds": [[1], [2]], "extra": {"kept": True}}
    path.write_text('[{"a": 1}]')
    assert read_json(path, what="r", shape=list) == [{"a": 1}]
    with pytest.raises(SpinepipeError) as err:
        read_json(path, what="r", error=SpinepipeError)
    assert type(err.value) is SpinepipeError


# --------------------------------------------------------------------------------------------
# every reader of a pipeline record goes through it


def _damaged(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"images": [')
    return path


def test_the_split_stage_reads_the_coco_file_through_it(tiny_dataset, tmp_path):
    from pipeline.cli import main

    processed = tmp_path / "processed"
    processed.mkdir()
    rows = ["file_name,patient,implants,overlap"] + [
        f"{p.name},P{i},0,0" for i, p in enumerate(sorted((tiny_dataset / "images").iterdir()))]
    (processed / "images.csv").write_text("\n".join(rows) + "\n")
    coco = _damaged(processed / "coco.json")
    params = tmp_path / "params.yaml"
    params.write_text("split: {k: 2, test_size: 2, seed: 0}\n")
    code, out = _run(main, ["split", "--input", str(processed), "--output",
                            str(tmp_path / "splits"), "--params", str(params)])
    assert code == 1
    assert f"COCO annotations: malformed JSON at line 1, column 13: Expecting value, in {coco}" in out


def test_training_reads_the_splits_through_it(tmp_path):
    from train.fit.runner import TrainConfig, prepare_run

    splits = _damaged(tmp_path / "splits" / "splits.json")
    cfg = TrainConfig(splits=str(tmp_path / "splits"))
    with pytest.raises(InvalidTableError, match=f"splits: malformed JSON .*, in {splits}"):
        prepare_run("unet", 0, cfg, tmp_path / "run")
    splits.write_text('{"folds": 3}')
    with pytest.raises(InvalidTableError, match="splits: 'folds' is a number, not an array"):
        prepare_run("unet", 0, cfg, tmp_path / "run")


def test_evaluation_reads_the_test_set_and_the_predictions_through_it(tiny_dataset, tmp_path):
    from train.evaluation.evaluate import _predicted_instances
    from train.evaluation.test_set import TestSet

    coco = _damaged(tmp_path / "test.json")
    with pytest.raises(InvalidTableError, match=f"test set: malformed JSON .*, in {coco}"):
        TestSet.load(coco, tiny_dataset / "masks")
    coco.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(InvalidTableError, match="test set: no 'categories' key"):
        TestSet.load(coco, tiny_dataset / "masks")
    test = TestSet.load(tiny_dataset / "val.json", tiny_dataset / "masks")
    (tmp_path / "pred" / "instances.json").parent.mkdir()
    (tmp_path / "pred" / "instances.json").write_text('{"file_name": "x.png"}')
    with pytest.raises(InvalidTableError,
                       match="predicted instances: the top level is an object, not an array"):
        _predicted_instances(tmp_path / "pred", test)


def test_the_report_reads_each_summary_through_it(tmp_path):
    from train.evaluation.evaluate import PER_IMAGE_FIELDS
    from train.report.tables import load_evaluations

    fold = tmp_path / "eval" / "unet" / "fold0"
    fold.mkdir(parents=True)
    (fold / "per_image.csv").write_text(",".join(PER_IMAGE_FIELDS) + "\n")
    summary = _damaged(fold / "summary.json")
    with pytest.raises(InvalidTableError, match=f"evaluation summary: malformed JSON .*, in "
                                                f"{summary}"):
        load_evaluations(tmp_path / "eval")
    summary.unlink()
    with pytest.raises(MissingInputError, match="evaluation summary not found") as err:
        load_evaluations(tmp_path / "eval")
    assert err.value.produced_by == "evaluate"


def test_to_seg_reads_the_instances_through_it(tmp_path):
    from train.infer.to_seg import write_segs

    eval_dir = tmp_path / "eval" / "mask_rcnn" / "fold0"
    eval_dir.mkdir(parents=True)
    (eval_dir / "per_image.csv").write_text("file_name,predicted\nP1_1.2.3.png,1\n")
    instances = eval_dir / "instances.json"
    instances.write_text("\xff")
    with pytest.raises(InvalidTableError, match=f"predicted instances: .*, in {instances}"):
        write_segs(eval_dir, tmp_path / "dicom", tmp_path / "png", tmp_path / "seg",
                   model="mask_rcnn", fold=0)


def _run(main, argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main(argv)
    return code, " ".join(buf.getvalue().split())
