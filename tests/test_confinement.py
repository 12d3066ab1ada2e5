"""The one write path, tested as a class (issue #21, item 8; converters/io.py).

For every stage that needs no trained model, the stage is run once on a fresh workspace and
what it wrote is listed; then, on another fresh workspace, a symbolic link pointing outside
is planted at *every* one of those paths (every file, then every folder below the output
root) and the stage is run again. Whatever the stage answers (done, or one ``Error:`` line),
nothing outside its output folders may change, no link it did not create may be followed,
and no traceback may appear. Deletes driven by a crafted state file, outputs inside inputs,
two writers on one output and the umask are tested here too.

Every command runs in-process through ``pipeline.cli.main``, as the user runs it.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import stat
from pathlib import Path

import pytest

from converters import io
from converters.paths import UnsafePathError
from pipeline.cli import main

PARAMS_TEXT = """\
phantom: {n: 14, seed: 5, height: 320, width: 128, burned_in_share: 0.0}
annotator: {holdout: 0}
split: {k: 2, test_size: 3, seed: 0}
"""

#: stage -> (argv with {w} for the workspace, output roots below {w})
STAGES = {
    "phantom": (["phantom", "--output", "{w}/raw"], ["raw"]),
    "anonymize": (["anonymize", "--input", "{w}/raw/dicom", "--output", "{w}/anon",
                   "--private", "{w}/private", "--workers", "1"], ["anon", "private"]),
    "export": (["export", "--input", "{w}/anon", "--output", "{w}/png", "--workers", "1"],
               ["png"]),
    "phantom-annotations": (["phantom-annotations", "--via", "{w}/raw/annotations/via_project.json",
                             "--png", "{w}/png", "--private", "{w}/private",
                             "--output", "{w}/ann/via.json"], ["ann"]),
    "convert": (["convert", "--input", "{w}/ann", "--images", "{w}/png", "--output",
                 "{w}/processed", "--workers", "1"], ["processed"]),
    "split": (["split", "--input", "{w}/processed", "--output", "{w}/splits"], ["splits"]),
}
ORDER = list(STAGES)


def run(stage: str, w: Path, capsys) -> tuple[int, str]:
    argv = [a.format(w=w) for a in STAGES[stage][0]]
    code = main([*argv, "--params", str(w / "params.yaml"), "--quiet"])
    return code, capsys.readouterr().err


def snapshot(root: Path, skip: list[Path]) -> dict[str, str]:
    """Relative path -> content hash (or link target) of everything under ``root`` except
    the ``skip`` folders."""
    out = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d not in skip]
        for name in files + [d for d in dirs if (here / d).is_symlink()]:
            p = here / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """stage -> a workspace holding the outputs of every stage before it (plus one with all)."""
    base = tmp_path_factory.mktemp("chain")
    (base / "params.yaml").write_text(PARAMS_TEXT)
    spaces = {}
    for stage in ORDER + ["all"]:
        spaces[stage] = tmp_path_factory.mktemp(f"before-{stage}")
        shutil.copytree(base, spaces[stage], dirs_exist_ok=True, symlinks=True)
        if stage == "all":
            break
        argv = [a.format(w=base) for a in STAGES[stage][0]]
        assert main([*argv, "--params", str(base / "params.yaml"), "--quiet"]) == 0, stage
    return spaces


def fresh(chain, stage: str, tmp_path: Path) -> Path:
    w = tmp_path / "w"
    shutil.copytree(chain[stage], w, symlinks=True)
    return w


def written(chain, stage: str, tmp_path: Path, capsys) -> tuple[list[Path], list[Path]]:
    """Files and folders the stage writes below its roots, from one clean run."""
    w = fresh(chain, stage, tmp_path / "listing")
    before = {p for p in w.rglob("*")}
    code, err = run(stage, w, capsys)
    assert code == 0, err
    roots = [w / r for r in STAGES[stage][1]]
    new = [p for p in w.rglob("*") if p not in before and any(r in p.parents for r in roots)]
    files = [p.relative_to(w) for p in new if p.is_file()]
    folders = [p.relative_to(w) for p in new if p.is_dir()]
    assert files, f"{stage} wrote nothing"
    return files, folders


def check_nothing_outside(stage: str, w: Path, victim: Path, before: dict, code: int,
                          err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 1), err
    if code == 1:
        assert len([l for l in err.splitlines() if l.startswith("Error:")]) == 1, err
    roots = [w / r for r in STAGES[stage][1]]
    assert snapshot(victim, []) == before["victim"], f"{stage} wrote through a planted link"
    assert snapshot(w, roots) == before["workspace"], f"{stage} changed a file outside its output"


@pytest.mark.parametrize("stage", ORDER)
def test_a_link_planted_at_every_file_a_stage_writes_is_never_followed(chain, stage, tmp_path,
                                                                        capsys):
    files, _ = written(chain, stage, tmp_path, capsys)
    w = fresh(chain, stage, tmp_path / "attack")
    victim = tmp_path / "victim"
    victim.mkdir()
    for i, rel in enumerate(files):
        target = victim / f"v{i}"
        target.write_text("precious")
        (w / rel).parent.mkdir(parents=True, exist_ok=True)
        (w / rel).symlink_to(target)
    before = {"victim": snapshot(victim, []),
              "workspace": snapshot(w, [w / r for r in STAGES[stage][1]])}
    code, err = run(stage, w, capsys)
    check_nothing_outside(stage, w, victim, before, code, err)
    if code == 0:  # a link at a final name is replaced, not followed
        for rel in files:
            assert not (w / rel).is_symlink(), f"{rel} left as a link"
    else:  # or an input the stage reads back (its state, the ledger) was a link: refused
        assert "link" in err, err


@pytest.mark.parametrize("stage", ["anonymize", "export", "convert"])
def test_outputs_replaced_by_links_are_written_anew_on_a_rerun(chain, stage, tmp_path, capsys):
    """The incremental stages: after a complete run, every output (not the stage's own state)
    is replaced by a link to a file outside; the re-run must not take a link for its output."""
    w = fresh(chain, stage, tmp_path)
    code, err = run(stage, w, capsys)
    assert code == 0, err
    roots = [w / r for r in STAGES[stage][1]]
    outputs = [p for r in roots for p in r.rglob("*") if p.is_file() and
               not p.name.startswith(".") and r.name != "private"]
    victim = tmp_path / "victim"
    victim.mkdir()
    for i, p in enumerate(outputs):
        target = victim / f"v{i}"
        target.write_bytes(p.read_bytes())
        p.unlink()
        p.symlink_to(target)
    before = snapshot(victim, [])
    code, err = run(stage, w, capsys)
    assert code == 0, err
    assert snapshot(victim, []) == before
    assert [p for p in outputs if p.is_symlink()] == []


# phantom-annotations writes one file into its folder (no sub-folder to replace by a link)
@pytest.mark.parametrize("stage", [s for s in ORDER if s != "phantom-annotations"])
def test_a_link_planted_at_every_folder_a_stage_writes_is_refused(chain, stage, tmp_path,
                                                                   capsys):
    _, folders = written(chain, stage, tmp_path, capsys)
    assert folders, f"{stage} writes no sub-folder: list it without this test"
    w = fresh(chain, stage, tmp_path / "attack")
    victim = tmp_path / "victim"
    victim.mkdir()
    for i, rel in enumerate(sorted(folders, key=lambda p: len(p.parts))):
        if any(parent.is_symlink() for parent in (w / rel).parents):
            continue  # below a folder already replaced by a link
        target = victim / f"d{i}"
        target.mkdir()
        (target / "keep.txt").write_text("precious")
        (w / rel).parent.mkdir(parents=True, exist_ok=True)
        (w / rel).symlink_to(target, target_is_directory=True)
    before = {"victim": snapshot(victim, []),
              "workspace": snapshot(w, [w / r for r in STAGES[stage][1]])}
    code, err = run(stage, w, capsys)
    check_nothing_outside(stage, w, victim, before, code, err)
    assert code == 1 and ("symbolic link" in err or "outside the output folder" in err), err


@pytest.mark.parametrize("stage, state", [("export", "png/.export_state.json"),
                                          ("convert", "processed/.convert_state.json")])
def test_a_crafted_state_file_deletes_nothing_outside(chain, stage, state, tmp_path, capsys):
    w = fresh(chain, "all", tmp_path)
    victim = w / "victim.txt"
    victim.write_text("precious")
    data = json.loads((w / state).read_text())
    for group in data["groups"].values():
        group["ghost"] = {"sig": [0], "outputs": ["../victim.txt", str(victim)]}
    (w / state).write_text(json.dumps(data))
    code, err = run(stage, w, capsys)
    assert code == 0, err
    assert victim.read_text() == "precious"


def test_delete_path_touches_regular_files_below_the_root_only(tmp_path):
    out = tmp_path / "out"
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    with io.output_root(out):
        (out / "d").mkdir()
        (out / "f.txt").write_text("f")
        (out / "link").symlink_to(outside)
        (out / "dlink").symlink_to(tmp_path, target_is_directory=True)
        assert not io.remove_output(out, "../outside.txt")
        assert not io.remove_output(out, str(outside))
        assert not io.remove_output(out, "link") and outside.exists() and (out / "link").is_symlink()
        assert not io.remove_output(out, "dlink/outside.txt") and outside.exists()
        assert not io.remove_output(out, "d")
        assert io.remove_output(out, "f.txt") and not (out / "f.txt").exists()


def test_writes_below_no_root_are_a_bug_and_dotdot_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="outside every output root"):
        io.write_text(tmp_path / "nowhere" / "x.txt", "x")
    with io.output_root(tmp_path / "out"):
        with pytest.raises(UnsafePathError):
            io.write_text(tmp_path / "out" / ".." / "escape.txt", "x")
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("inside", ["output_in_input", "input_in_output", "same"])
def test_an_output_inside_an_input_is_refused(chain, inside, tmp_path, capsys):
    w = fresh(chain, "all", tmp_path)
    src, out = {"output_in_input": (w / "anon", w / "anon" / "png"),
                "input_in_output": (w / "out" / "anon", w / "out"),
                "same": (w / "anon", w / "anon")}[inside]
    if inside == "input_in_output":
        shutil.copytree(w / "anon", src)
    before = snapshot(w, [])
    code = main(["export", "--input", str(src), "--output", str(out), "--params",
                 str(w / "params.yaml"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "inside" in err, err
    assert len([l for l in err.splitlines() if l.startswith("Error:")]) == 1
    assert snapshot(w, []) == before


def test_outputs_keep_the_umask_and_the_private_folder_stays_closed(chain, tmp_path, capsys):
    w = fresh(chain, "anonymize", tmp_path)
    old = os.umask(0o022)
    try:
        code, err = run("anonymize", w, capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    dcm = next((w / "anon").rglob("*.dcm"))
    assert stat.S_IMODE(dcm.stat().st_mode) == 0o644
    assert stat.S_IMODE((w / "private").stat().st_mode) == 0o700
    for p in (w / "private").iterdir():
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def _anonymize_in_child(w: str, src: str, queue) -> None:
    queue.put(main(["anonymize", "--input", src, "--output", f"{w}/anon", "--private",
                    f"{w}/private", "--params", f"{w}/params.yaml", "--quiet", "--workers", "1"]))


def test_two_runs_racing_on_one_output_lose_nothing(chain, tmp_path):
    """Two anonymize processes, two batches, one output and one private folder, started
    together: both finish, and the ledger and the output hold every object of both."""
    w = fresh(chain, "anonymize", tmp_path)
    files = sorted((w / "raw" / "dicom").rglob("*.dcm"))
    halves = [w / "batch_a", w / "batch_b"]
    for i, f in enumerate(files):
        dest = halves[i % 2] / f.name
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(f, dest)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_anonymize_in_child, args=(str(w), str(h), queue)) for h in halves]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [queue.get(timeout=5) for _ in procs] == [0, 0]
    ledger = json.loads((w / "private" / "ledger.json").read_text())
    n_images = len(list((w / "anon").rglob("*.dcm")))
    assert n_images == len(files)
    assert len(ledger["instances"]) == len(files)
