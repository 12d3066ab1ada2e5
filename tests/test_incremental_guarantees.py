"""Guarantees of incremental re-runs (converters/core/incremental.py and convert's use of it).

Class of defect guarded: a re-run that keeps a stale output (a mask drawn from the old
polygons, an output someone replaced by a link), one that redoes or deletes what it must
not (another VIA file's images), a damaged or hostile state file that makes a run
delete outside its outputs, and a re-run that rewrites what it leaves the same (new
modification times ripple down the chain: the next stage's signatures change, its state file
changes, DVC retrains every model on identical images). The convert tests compare an incremental re-run with a fresh
conversion of the same inputs, byte for byte: the re-run must be indistinguishable.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from converters.annotations.convert import STATE_FILE, ConvertConfig, convert
from converters.core.errors import InvalidImageError
from converters.core.incremental import VERSION, IncrementalState, file_signature
from converters.core.files import TEMP_MARK, output_root
from converters.dicom.anonymize import anonymize_tree
from converters.dicom.deid_table import AnonymizeConfig
from converters.dicom.export import ExportConfig, export_tree
from converters.dicom.ledger import load_or_create_salt, prepare_private
from converters.phantom.writing import PhantomConfig, generate


# --------------------------------------------------------------------------------------------
# the state itself


@pytest.fixture
def root(tmp_path):
    with output_root(tmp_path / "out") as out:
        yield out


def _touch(root: Path, *names: str) -> None:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"x")


def test_an_item_is_up_to_date_only_with_its_signature_and_every_output(root):
    state = IncrementalState(root / "state.json")
    _touch(root, "masks/a.png", "qa/a.png")
    state.record("via.json", "a", [1, 2], ["masks/a.png", "qa/a.png"], facts={"n": 3})
    assert state.up_to_date("via.json", "a", [1, 2], root)["facts"] == {"n": 3}
    assert state.up_to_date("via.json", "a", [1, 3], root) is None      # input changed
    assert state.up_to_date("other.json", "a", [1, 2], root) is None    # another group
    assert state.up_to_date("via.json", "b", [1, 2], root) is None      # never done
    (root / "qa/a.png").unlink()
    assert state.up_to_date("via.json", "a", [1, 2], root) is None      # an output is gone
    (root / "qa/a.png").symlink_to(root / "masks/a.png")
    assert state.up_to_date("via.json", "a", [1, 2], root) is None      # a link is no output


def test_the_state_survives_a_save_and_a_reload(root):
    state = IncrementalState(root / "state.json")
    _touch(root, "masks/a.png")
    state.record("g", "a", [5], ["masks/a.png"])
    state.record("g", "failed", [6], [])
    state.forget("g", "failed")                         # failures are never recorded
    state.forget("g", "never-done")                     # a first failure: nothing to drop
    state.save()
    again = IncrementalState(root / "state.json")
    assert again.up_to_date("g", "a", [5], root) is not None
    assert again.up_to_date("g", "failed", [6], root) is None
    assert again.outputs() == ["masks/a.png"]
    assert json.loads((root / "state.json").read_text())["version"] == VERSION


def test_prune_returns_only_outputs_no_remaining_entry_claims(root):
    state = IncrementalState(root / "state.json")
    state.record("g1", "a", [1], ["masks/a.png", "shared.csv"])
    state.record("g1", "b", [1], ["masks/b.png"])
    state.record("g2", "c", [1], ["masks/c.png", "shared.csv"])
    state.record("g1", "d", [1], ["masks/d.png"])
    assert state.prune("g1", ["b"]) == ["masks/a.png", "masks/d.png"]
    assert state.outputs() == ["masks/b.png", "masks/c.png", "shared.csv"]
    assert state.prune("g1", ["b"]) == []               # nothing left to remove
    assert state.prune("g3", []) == []                  # an unknown group removes nothing


@pytest.mark.parametrize("damage", [
    "not json", "[]", '{"version": 1, "groups": {}}', '{"version": 2, "groups": []}',
    '{"version": 2, "groups": {"g": []}}',
    '{"version": 2, "groups": {"g": {"a": []}}}',
    '{"version": 2, "groups": {"g": {"a": {"sig": 1, "outputs": []}}}}',
    '{"version": 2, "groups": {"g": {"a": {"sig": [1], "outputs": "masks/a.png"}}}}',
    '{"version": 2, "groups": {"g": {"a": {"sig": [1], "outputs": ["/etc/passwd"]}}}}',
    '{"version": 2, "groups": {"g": {"a": {"sig": [1], "outputs": ["../outside.png"]}}}}',
    '{"version": 2, "groups": {"g": {"a": {"sig": [1], "outputs": ["masks/../../x"]}}}}',
    '{"version": 2, "groups": {"g": {"a": {"sig": [1], "outputs": ["masks//a.png"]}}}}',
    '{"version": 2, "groups": {"g": {"a": {"sig": [1], "outputs": ["./a.png"]}}}}',
    '{"version": 2, "groups": {"g": {"a": {"sig": [1], "outputs": ["a\\u0000.png"]}}}}',
    '{"version": 2, "groups": {"g": {"a": {"sig": [1], "outputs": [""]}}}}',
    '{"version": 2, "groups": {"g": {"a": {"sig": [1], "outputs": [7]}}}}',
])
def test_a_damaged_state_redoes_everything_and_deletes_nothing(root, damage):
    (root / "state.json").write_text(damage)
    state = IncrementalState(root / "state.json")
    assert state.data == {"version": VERSION, "groups": {}}
    assert state.prune("g", []) == []


def test_a_well_formed_state_is_kept(root):
    good = {"version": VERSION, "groups": {"g": {"a": {"sig": [1], "outputs": ["m/a.png"],
                                                       "facts": {}}}}}
    (root / "state.json").write_text(json.dumps(good))
    assert IncrementalState(root / "state.json").data == good


def test_a_state_read_by_a_loader_that_fails_redoes_everything(root):
    def loader(path):
        raise ValueError("damaged")
    state = IncrementalState(root / "s.json", loader=loader)
    assert state.data == {"version": VERSION, "groups": {}}
    kept = {"version": VERSION, "groups": {"g": {"old": {"sig": [0], "outputs": ["o.png"]}}}}
    (root / "s.json").write_text(json.dumps(kept))
    written = {}
    state = IncrementalState(root / "s.json", loader=lambda p: json.loads(p.read_text()),
                             writer=lambda p, obj: written.update({p: obj}))
    assert state.data == kept                            # what the loader read is used
    state.record("g", "a", [1], [])
    state.save()
    assert written[root / "s.json"]["groups"]["g"] == {
        "old": {"sig": [0], "outputs": ["o.png"]}, "a": {"sig": [1], "outputs": []}}


def test_the_file_signature_follows_size_time_and_options(tmp_path):
    f = tmp_path / "a.dcm"
    f.write_bytes(b"abc")
    os.utime(f, ns=(1, 10**18))
    sig = file_signature(f, "opt")
    assert sig == [3, 10**18, "opt"]
    assert file_signature(f, "other") != sig
    os.utime(f, ns=(1, 10**18 + 1))
    assert file_signature(f, "opt") != sig


def test_the_default_writer_writes_compact_json(root):
    state = IncrementalState(root / "state.json")
    state.record("g", "a", [1], ["m/a.png"])
    state.save()
    text = (root / "state.json").read_text()
    assert json.loads(text) == state.data and "\n" not in text.strip()


# --------------------------------------------------------------------------------------------
# convert's re-runs: the same outputs as a fresh conversion


@pytest.fixture(scope="module")
def annotated(small_phantom, tiny_dataset, tmp_path_factory):
    """The small phantom's PNGs and its VIA project, split into two VIA files."""
    root = tmp_path_factory.mktemp("incremental")
    shutil.copytree(tiny_dataset / "images", root / "png")
    via = json.loads((small_phantom / "annotations" / "via_project.json").read_text())
    keys = sorted(via["_via_img_metadata"])
    assert len(keys) == 6
    for name, part in (("a.json", keys[:4]), ("b.json", keys[4:])):
        sub = dict(via, _via_img_metadata={k: via["_via_img_metadata"][k] for k in part})
        (root / name).write_text(json.dumps(sub))
    return root


def _outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def _fresh(annotated: Path, vias: list[Path], tmp: Path) -> dict[str, bytes]:
    convert(vias, annotated / "png", tmp / "fresh", ConvertConfig(qa=False))
    return _outputs(tmp / "fresh")


def _shift_first_region(via_file: Path, dx: int) -> str:
    via = json.loads(via_file.read_text())
    key = sorted(via["_via_img_metadata"])[0]
    shape = via["_via_img_metadata"][key]["regions"][0]["shape_attributes"]
    shape["all_points_x"] = [x + dx for x in shape["all_points_x"]]
    via_file.write_text(json.dumps(via))
    return Path(via["_via_img_metadata"][key]["filename"]).stem


def test_a_changed_polygon_is_redrawn_and_nothing_else(annotated, tmp_path):
    vias = [tmp_path / "a.json", tmp_path / "b.json"]
    for v in vias:
        shutil.copy(annotated / v.name, v)
    out = tmp_path / "out"
    first = convert(vias, annotated / "png", out, ConvertConfig(qa=False))
    assert first.rendered == first.images == 6
    before = _outputs(out)
    inodes = {p: os.stat(out / p).st_ino for p in before}
    stem = _shift_first_region(vias[0], 6)
    second = convert(vias, annotated / "png", out, ConvertConfig(qa=False))
    assert second.rendered == 1
    after = _outputs(out)
    assert after == _fresh(annotated, vias, tmp_path)       # no stale mask survives
    assert after[f"masks/{stem}.png"] != before[f"masks/{stem}.png"]
    untouched = [p for p in before if stem not in p]
    assert len(untouched) == 10
    assert all(os.stat(out / p).st_ino == inodes[p] for p in untouched)  # not rewritten


def test_changed_options_or_image_redraw_every_affected_image(annotated, tmp_path):
    via = tmp_path / "a.json"
    shutil.copy(annotated / "a.json", via)
    png = tmp_path / "png"
    shutil.copytree(annotated / "png", png)
    out = tmp_path / "out"
    assert convert([via], png, out, ConvertConfig(qa=False)).rendered == 4
    assert convert([via], png, out, ConvertConfig(qa=False)).rendered == 0
    assert convert([via], png, out, ConvertConfig(qa=True)).rendered == 4
    assert (out / "qa").is_dir() and len(list((out / "qa").glob("*.png"))) >= 4
    one = sorted(png.glob("*.png"))[0]
    os.utime(one, ns=(1, one.stat().st_mtime_ns + 10**9))
    assert convert([via], png, out, ConvertConfig(qa=True)).rendered == 1


def test_an_image_dropped_from_one_via_file_loses_only_its_outputs(annotated, tmp_path):
    vias = [tmp_path / "a.json", tmp_path / "b.json"]
    for v in vias:
        shutil.copy(annotated / v.name, v)
    out = tmp_path / "out"
    convert(vias, annotated / "png", out, ConvertConfig(qa=False))
    via = json.loads(vias[0].read_text())
    dropped = sorted(via["_via_img_metadata"])[0]
    stem = Path(via["_via_img_metadata"].pop(dropped)["filename"]).stem
    vias[0].write_text(json.dumps(via))
    convert(vias[:1], annotated / "png", out, ConvertConfig(qa=False))  # b.json not given
    left = {p.stem for p in (out / "masks").glob("*.png")}
    assert stem not in left and not (out / "overlaps" / f"{stem}.png").exists()
    assert len(left) == 5                                    # b.json's two images kept
    state = json.loads((out / STATE_FILE).read_text())
    assert sum(len(g) for g in state["groups"].values()) == 5
    assert all(not g.startswith("/") for g in state["groups"])  # relative to the output


def test_an_output_replaced_by_a_link_is_redrawn(annotated, tmp_path):
    via = tmp_path / "a.json"
    shutil.copy(annotated / "a.json", via)
    out = tmp_path / "out"
    convert([via], annotated / "png", out, ConvertConfig(qa=False))
    victim = sorted((out / "masks").glob("*.png"))[0]
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"not a mask")
    victim.unlink()
    victim.symlink_to(outside)
    assert convert([via], annotated / "png", out, ConvertConfig(qa=False)).rendered == 1
    assert not victim.is_symlink() and outside.read_bytes() == b"not a mask"


def test_images_that_do_not_decode_stop_the_run_and_leave_the_last_outputs(annotated, tmp_path):
    via = tmp_path / "a.json"
    shutil.copy(annotated / "a.json", via)
    png = tmp_path / "png"
    shutil.copytree(annotated / "png", png)
    out = tmp_path / "out"
    convert([via], png, out, ConvertConfig(qa=True))
    before = _outputs(out)
    state = (out / STATE_FILE).read_bytes()
    broken = sorted(png.glob("*.png"))[:4]
    assert len(broken) == 4
    for p in broken[:2]:                                 # the header stays: the size is read
        p.write_bytes(p.read_bytes()[:60])
    for p in broken[2:]:
        os.utime(p, ns=(1, p.stat().st_mtime_ns + 10**9))   # changed too: redrawn this run
    with pytest.raises(InvalidImageError, match="does not decode") as err:
        convert([via], png, out, ConvertConfig(qa=True))
    assert "(and 1 more image(s))" in str(err.value)
    assert _outputs(out) == before and (out / STATE_FILE).read_bytes() == state
    assert not [p for p in out.rglob("*") if TEMP_MARK in p.name]
    shutil.copy(annotated / "png" / broken[1].name, broken[1])      # one left broken
    with pytest.raises(InvalidImageError) as err:
        convert([via], png, out, ConvertConfig(qa=True))
    assert "does not decode" in str(err.value) and "more image" not in str(err.value)


def test_a_deleted_overlay_is_redrawn(annotated, tmp_path):
    via = tmp_path / "a.json"
    shutil.copy(annotated / "a.json", via)
    out = tmp_path / "out"
    convert([via], annotated / "png", out, ConvertConfig(qa=True))
    sorted((out / "qa").glob("*.png"))[0].unlink()
    assert convert([via], annotated / "png", out, ConvertConfig(qa=True)).rendered == 1


def test_the_same_configuration_in_another_order_redoes_nothing(annotated, tmp_path):
    via = tmp_path / "a.json"
    shutil.copy(annotated / "a.json", via)
    out = tmp_path / "out"
    cfg = ConvertConfig(qa=False)
    convert([via], annotated / "png", out, cfg)
    reordered = ConvertConfig(qa=False, class_map=dict(reversed(cfg.class_map.items())))
    assert list(reordered.class_map) != list(cfg.class_map)
    assert convert([via], annotated / "png", out, reordered).rendered == 0


def test_the_state_does_not_depend_on_the_working_directory(annotated, tmp_path, monkeypatch):
    via = tmp_path / "a.json"
    shutil.copy(annotated / "a.json", via)
    out = tmp_path / "out"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    convert([Path("a.json")], annotated / "png", out, ConvertConfig(qa=False))
    assert list(json.loads((out / STATE_FILE).read_text())["groups"]) == ["../a.json"]
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert convert([via], annotated / "png", out, ConvertConfig(qa=False)).rendered == 0


def test_progress_is_reported_per_rendered_image(annotated, tmp_path):
    via = tmp_path / "a.json"
    shutil.copy(annotated / "a.json", via)
    seen = []
    report = convert([via], annotated / "png", tmp_path / "out", ConvertConfig(qa=False),
                     workers=2, progress=lambda done, total: seen.append((done, total)))
    assert report.rendered == 4 and seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


# --------------------------------------------------------------------------------------------
# the chain: a stage re-run that writes the same bytes


def _files(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folders``: its inode and modification time."""
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns)
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_stage_re_run_that_writes_the_same_bytes_changes_no_file_downstream(tmp_path):
    """DVC re-runs a stage whose code changed: the phantom writes the same archive again. Every
    file of the archive, of the anonymized tree and of the export (PNGs, provenance, the export's
    state) keeps its inode and modification time, so DVC sees the images unchanged and does not
    retrain (it did: the export's state records its inputs' mtimes)."""
    cfg = PhantomConfig(n=4, seed=3, height=256, width=128, burned_in_share=0.0)
    raw, anon, png = tmp_path / "raw", tmp_path / "anon", tmp_path / "png"
    private = prepare_private(tmp_path / "private")
    salt = load_or_create_salt(private)

    def chain() -> None:
        generate(cfg, raw, workers=1)
        anonymize_tree(raw / "dicom", anon, private, salt, AnonymizeConfig(ocr=False))
        export_tree(anon, png, ExportConfig())

    chain()
    before = _files(raw, anon, png)
    assert any(p.endswith(".png") for p in before) and any(".export_state" in p for p in before)
    chain()                                   # the phantom's files themselves stay
    assert _files(raw, anon, png) == before
    shutil.rmtree(raw)                        # DVC deletes a stage's outputs before it runs:
    chain()                                   # new archive files, anonymize redoes every one
    assert _files(anon, png) == {k: v for k, v in before.items() if not k.startswith(str(raw))}
