"""The one write path, tested as a class (issue #21 item 8, issue #30 item 5;
converters/core/files.py).

For *every* stage that writes (phantom, retrieve, anonymize, export, phantom-annotations, agreement,
convert, split, train, evaluate, propose, to-seg, to-sr, report, store), the stage is run once on a
fresh workspace and what it wrote is listed; then, on another fresh workspace, a symbolic link
pointing outside is planted at *every* one of those paths (every file, then every folder below
the output root) and the stage is run again. Whatever the stage answers (done, or one
``Error:`` line), nothing outside its output folders may change (the attacked workspace, the
folder the links point to and every workspace of the chain are watched), no link it did not
create may be followed or left in place of an output, and no traceback may appear. Deletes
driven by a crafted state file, outputs inside inputs, two writers on one output and the
umask are tested here too.

The chain is the demo's, as small as it runs: 14 phantom images of 128 x 320, a real Orthanc
(retrieve reads it, store writes to it), one U-Net trained for 2 iterations on one fold
(train's time is mostly its imports), evaluated; to-seg and the report also read a second
evaluation, of the true masks given as predictions (``evaluate --predictions``), so that
to-seg writes SEG objects whatever the tiny model predicts (and to-sr its measures' reports). MMEngine names a run's log folder
by the clock (``YYYYmmdd_HHMMSS``): links are planted at the names of the next two minutes too,
so the run being attacked meets them.

Every command runs in-process through ``pipeline.cli.main``, as the user runs it, from the
workspace (as DVC runs a stage from the project's root).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import stat
import time
from io import StringIO
from pathlib import Path

import pydicom
import pytest

from conftest import Orthanc
from converters.core import files as io
from converters.dicom.ledger import load_or_create_salt, prepare_private
from converters.core.paths import UnsafePathError
from pipeline.cli import main
from test_fuzz_property import changed_outside
from test_fuzz_property import snapshot as tree_state

PARAMS_TEXT = """\
phantom: {{n: 14, seed: 5, height: 320, width: 128, burned_in_share: 0.0}}
annotator: {{holdout: 0, readers: 3, double_read_share: 0.5}}
split: {{k: 2, test_size: 3, seed: 0}}
retrieve: {{enabled: true, port: {port}, timeout_s: 30, retries: 0, backoff_s: 0.01}}
train:
  preset: tiny
  images: png
  masks: processed/masks
  splits: splits
  presets:
    tiny:
      img_scale: [96, 240]
      crop_size: [96, 96]
      augment: []
      models:
        unet: {{options: {{model.backbone.base_channels: 8, model.decode_head.in_channels: 8,
               model.decode_head.channels: 8, model.auxiliary_head.in_channels: 16,
               model.auxiliary_head.channels: 8, train_cfg.max_iters: 2,
               train_cfg.val_interval: 2, default_hooks.checkpoint.interval: 2}}}}
evaluate: {{device: cpu}}
propose: {{enabled: true, model: unet, fold: 0, device: cpu}}
"""
RUN = "{w}/models/unet/fold0"

#: stage -> (argv with {w} for the workspace, output roots below {w})
STAGES = {
    "phantom": (["phantom", "--output", "{w}/raw"], ["raw"]),
    "retrieve": (["retrieve", "--output", "{w}/retrieved", "--state",
                  "{w}/retrieve_state/state.json", "--manifest", "{w}/manifest.csv"],
                 ["retrieved", "retrieve_state"]),
    "anonymize": (["anonymize", "--input", "{w}/raw/dicom", "--output", "{w}/anon",
                   "--private", "{w}/private", "--workers", "1"], ["anon", "private"]),
    "export": (["export", "--input", "{w}/anon", "--output", "{w}/png", "--workers", "1"],
               ["png"]),
    "phantom-annotations": (["phantom-annotations", "--via", "{w}/raw/annotations/via_project.json",
                             "--png", "{w}/png", "--private", "{w}/private",
                             "--output", "{w}/ann"], ["ann"]),
    "convert": (["convert", "--input", "{w}/ann", "--images", "{w}/png", "--output",
                 "{w}/processed", "--workers", "1"], ["processed"]),
    "agreement": (["agreement", "--input", "{w}/ann", "--images", "{w}/png", "--output",
                   "{w}/agreement"], ["agreement"]),
    "split": (["split", "--input", "{w}/processed", "--output", "{w}/splits"], ["splits"]),
    "train": (["train", "--model", "unet", "--fold", "0", "--work-dir", RUN],
              ["models/unet/fold0"]),
    "evaluate": (["evaluate", "--model", "unet", "--fold", "0", "--run-dir", RUN, "--test",
                  "{w}/splits/test/coco.json", "--masks", "{w}/processed/masks", "--images",
                  "{w}/png", "--output", "{w}/eval/unet/fold0"],
                 ["eval/unet"]),   # the evaluation folder and its metrics file beside it
    "propose": (["propose", "--models-root", "{w}/models", "--images", "{w}/png", "--output",
                 "{w}/proposals/proposals.json"], ["proposals"]),
    "to-seg": (["to-seg", "--model", "pspnet", "--fold", "0", "--input", "{w}/truth",
                "--run-dir", RUN, "--dicom", "{w}/anon", "--images", "{w}/png", "--output",
                "{w}/seg", "--force"],
               ["seg"]),
    "to-sr": (["to-sr", "--model", "pspnet", "--fold", "0", "--input", "{w}/eval/pspnet/fold0",
               "--run-dir", RUN, "--dicom", "{w}/anon", "--images", "{w}/png", "--seg", "{w}/seg",
               "--output", "{w}/sr", "--force"],
              ["sr"]),
    "report": (["report", "--input", "{w}/eval", "--output", "{w}/reports", "--images", "{w}/png",
                "--masks", "{w}/processed/masks", "--model", "unet", "--model", "pspnet"],
               ["reports"]),
    "store": (["store", "--input", "{w}/seg"], ["seg"]),  # its resume state: in what it sends
}
ORDER = list(STAGES)
#: stages that write no sub-folder (nothing for the folder test to replace by a link)
FLAT = ["agreement", "propose", "to-seg", "to-sr", "store"]
#: files a stage reads back that the chain's run did not create (the salt exists before)
READ_BACK = {"anonymize": [Path("private/salt")]}
#: MMEngine's run folders are named by the clock
STAMP = re.compile(r"\d{8}_\d{6}")


def run(stage: str, w: Path, capsys=None) -> tuple[int, str]:
    """``spinepipe STAGE`` on the workspace ``w``, from ``w``: (exit status, stderr)."""
    argv = [a.format(w=w) for a in STAGES[stage][0]]
    err = StringIO()
    with contextlib.chdir(w), contextlib.redirect_stderr(err):
        code = main([*argv, "--params", str(w / "params.yaml"), "--quiet"])
    if capsys:
        capsys.readouterr()
    return code, err.getvalue()


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
def pacs(tmp_path_factory):
    """A real Orthanc: retrieve's source (the phantom's originals), store's destination."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.kill()


def _after(stage: str, base: Path, pacs: Orthanc) -> None:
    """What the chain needs beside the stages' own outputs."""
    if stage == "phantom":  # the archive on the PACS, and a manifest of its patients
        pacs.store(base / "raw" / "dicom")
        # a private folder with its salt, as a curator's is after the first run: every
        # workspace makes the same pseudonyms, so the paths anonymize writes are known
        load_or_create_salt(prepare_private(base / "private"))
        ids = sorted({pydicom.dcmread(p).PatientID for p in (base / "raw").rglob("*.dcm")})
        assert ids
        (base / "manifest.csv").write_text("PatientID\n" + "\n".join(ids) + "\n")
    if stage == "evaluate":  # a second evaluation: the true masks as external predictions
        test = json.loads((base / "splits" / "test" / "coco.json").read_text())
        names = [im["file_name"] for im in test["images"]]
        assert names
        (base / "truth" / "predictions").mkdir(parents=True)
        for name in names:
            shutil.copy(base / "processed" / "masks" / name, base / "truth" / "predictions" / name)
        with contextlib.chdir(base):
            assert main(["evaluate", "--model", "pspnet", "--fold", "0", "--predictions",
                         str(base / "truth"), "--test", str(base / "splits/test/coco.json"),
                         "--masks", str(base / "processed/masks"), "--output",
                         str(base / "eval/pspnet/fold0"), "--params", str(base / "params.yaml"),
                         "--images", str(base / "png"), "--quiet"]) == 0
        # to-seg reads it as an evaluation folder (evaluate keeps no copy of predictions
        # it was given)
        shutil.copy(base / "eval/pspnet/fold0/per_image.csv", base / "truth")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, pacs) -> dict:
    """stage -> a workspace holding the outputs of every stage before it (plus one with all);
    every workspace lies below ``chain["base"].parent``. ``chain["written"][stage]``: the
    files and the folders the stage wrote below its roots (relative paths), listed when the
    chain ran it."""
    root = tmp_path_factory.mktemp("chain")
    base = root / "base"
    base.mkdir()
    (base / "params.yaml").write_text(PARAMS_TEXT.format(port=pacs.dicom_port))
    spaces: dict = {"base": base, "written": {}}
    for stage in ORDER + ["all"]:
        spaces[stage] = root / f"before-{stage}"
        shutil.copytree(base, spaces[stage], symlinks=True)
        if stage == "all":
            break
        before = set(base.rglob("*"))
        code, err = run(stage, base)
        assert code == 0, f"{stage}: {err}"
        roots = [base / r for r in STAGES[stage][1]]
        new = [p for p in base.rglob("*")
               if p not in before and any(r in p.parents for r in roots)]
        spaces["written"][stage] = ([p.relative_to(base) for p in new if p.is_file()],
                                    [p.relative_to(base) for p in new if p.is_dir()])
        _after(stage, base, pacs)
    return spaces


def fresh(chain, stage: str, tmp_path: Path) -> Path:
    w = tmp_path / "w"
    shutil.copytree(chain[stage], w, symlinks=True)
    return w


def written(chain, stage: str) -> tuple[list[Path], list[Path]]:
    """Files and folders the stage writes below its roots (from the chain's run)."""
    files, folders = chain["written"][stage]
    assert files, f"{stage} wrote nothing"
    return files, folders


def with_next_stamps(paths: list[Path], seconds: int = 120) -> list[Path]:
    """``paths``, and each path naming a clock time (MMEngine's run folder) at every second of
    the next ``seconds`` too: the run being attacked names its folder then. (A slower run
    meets fewer of these links; the other paths are attacked whatever the clock.)"""
    now = time.time()
    stamps = [time.strftime("%Y%m%d_%H%M%S", time.localtime(now + s)) for s in range(seconds)]
    extra = []
    for p in paths:
        found = STAMP.search(str(p))
        if found:
            extra += [Path(str(p).replace(found.group(), s)) for s in stamps]
    return list(dict.fromkeys(paths + extra))


def watch(chain, stage: str, w: Path, tmp_path: Path, victim: Path) -> dict:
    roots = [w / r for r in STAGES[stage][1]]
    return {"victim": snapshot(victim, []),
            "around": snapshot(tmp_path, roots + [victim]),
            "chain": tree_state(chain["base"].parent, content=False)}


def check_nothing_outside(chain, stage: str, w: Path, tmp_path: Path, victim: Path,
                          before: dict, planted: dict[str, Path], code: int, err: str) -> None:
    """No traceback, one ``Error:`` line or none, no link followed, nothing changed outside
    the stage's roots (in the attacked workspace and around it, and in the chain)."""
    assert "Traceback" not in err, err
    assert code in (0, 1), err
    if code == 1:
        assert len([l for l in err.splitlines() if l.startswith("Error:")]) == 1, err
    after = watch(chain, stage, w, tmp_path, victim)
    followed = sorted(str(planted.get(k.split("/")[0], k)) for k in
                      set(before["victim"]) | set(after["victim"])
                      if before["victim"].get(k) != after["victim"].get(k))
    assert followed == [], f"{stage} wrote through the links planted at {followed[:10]}"
    around = sorted(k for k in set(before["around"]) | set(after["around"])
                    if before["around"].get(k) != after["around"].get(k))
    assert around == [], f"{stage} changed files outside its output folders: {around[:10]}"
    chained = changed_outside(before["chain"], after["chain"], [])
    assert chained == [], f"{stage} changed the chain's workspaces: {chained[:10]}"


def plant(w: Path, victim: Path, rels: list[Path], folders: bool) -> dict[str, Path]:
    """A link at each of ``rels`` (shallowest first; none below a link already planted) to
    its own file or folder in ``victim``; returns victim entry -> the path of its link."""
    planted = {}
    for i, rel in enumerate(sorted(rels, key=lambda p: len(p.parts))):
        if any(parent.is_symlink() for parent in (w / rel).parents):
            continue  # below a folder already replaced by a link
        target = victim / f"v{i}"
        if folders:
            target.mkdir()
            (target / "keep.txt").write_text("precious")
        else:
            target.write_text("precious")
            (w / rel).unlink(missing_ok=True)  # a file read back (the salt) exists before
        (w / rel).parent.mkdir(parents=True, exist_ok=True)
        (w / rel).symlink_to(target, target_is_directory=folders)
        planted[target.name] = rel
    return planted


def _path_id(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]


def renamed(rel: Path, stage: str, base: Path, w: Path) -> Path:
    """``rel``, listed in the chain's ``base``, as the stage names it in the workspace ``w``:
    a name derived from an output folder's absolute path (anonymize's state file is named by
    a hash of its output folder) is that of ``w``'s folder."""
    text = str(rel)
    for root in STAGES[stage][1]:
        text = text.replace(_path_id(base / root), _path_id(w / root))
    return Path(text)


def named(stage: str, rel: Path, err: str) -> bool:
    """Whether ``err`` names ``rel`` (from the workspace, or from its output root; a quoted
    path cut short, as long UIDs are, counts when it is a prefix of ``rel`` or below it)."""
    roots = [Path(r) for r in STAGES[stage][1] if Path(r) in rel.parents]
    forms = [str(rel), *(str(rel.relative_to(r)) for r in roots)]
    quoted = re.findall(r"'([^']{20,})'", err)
    return any(f in err or any(f.startswith(q) or q.startswith(f + "/") for q in quoted)
               for f in forms)


def attack(chain, stage: str, rels: list[Path], folders: bool, tmp_path: Path,
           capsys) -> None:
    """Links at every one of ``rels`` in a fresh workspace, the stage run, and its answer
    checked. The stage may refuse a link with one line naming it (an input it reads back:
    its state, the ledger, a log; or a folder): the attack is then repeated, on a fresh
    workspace, with links at every path not refused yet, until the stage completes, so that
    a refusal early in a run never hides a link followed later. When it completes, no link
    may be left where it wrote."""
    todo = list(rels)
    for attempt in range(len(rels) + 1):
        w = fresh(chain, stage, tmp_path / f"attack{attempt}")
        victim = tmp_path / f"victim{attempt}"
        victim.mkdir()
        names = {renamed(rel, stage, chain["base"], w): rel for rel in with_next_stamps(todo)}
        planted = plant(w, victim, list(names), folders)
        before = watch(chain, stage, w, tmp_path, victim)
        code, err = run(stage, w, capsys)
        check_nothing_outside(chain, stage, w, tmp_path, victim, before, planted, code, err)
        if code == 0:  # a link at a final name is replaced (a folder rebuilt), not followed
            left = [str(p) for p in planted.values() if names[p] in rels and (w / p).is_symlink()]
            assert left == [], f"{stage} left links in place of what it writes: {left[:10]}"
            return
        refused = {STAMP.sub("*", str(names[p])) for p in planted.values() if named(stage, p, err)}
        assert refused and ("symbolic link" in err or "outside the output folder" in err), \
            f"{stage} failed without naming a link it refused: {err}"
        todo = [rel for rel in todo if STAMP.sub("*", str(rel)) not in refused]
    raise AssertionError(f"{stage} never completed")  # each attempt refuses one path or more


@pytest.mark.parametrize("stage", ORDER)
def test_a_link_planted_at_every_file_a_stage_writes_is_never_followed(chain, stage,
                                                                        tmp_path, capsys):
    files, _ = written(chain, stage)
    attack(chain, stage, files + READ_BACK.get(stage, []), False, tmp_path, capsys)


@pytest.mark.parametrize("stage", ["retrieve", "anonymize", "export", "convert"])
def test_outputs_replaced_by_links_are_written_anew_on_a_rerun(chain, stage, tmp_path, capsys):
    """The incremental stages: after a complete run, every output (not the stage's own state)
    is replaced by a link to a copy outside; the re-run must not take a link for its output."""
    w = fresh(chain, stage, tmp_path)
    code, err = run(stage, w, capsys)
    assert code == 0, err
    roots = [w / r for r in STAGES[stage][1]]
    outputs = [p for r in roots for p in r.rglob("*") if p.is_file() and
               not p.name.startswith(".") and r.name not in ("private", "retrieve_state")]
    assert outputs, f"{stage} wrote nothing"
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
    left = [str(p.relative_to(w)) for p in outputs if p.is_symlink()]
    assert left == [], f"{stage} took links for its outputs: {left[:10]}"


@pytest.mark.parametrize("stage", [s for s in ORDER if s not in FLAT])
def test_a_link_planted_at_every_folder_a_stage_writes_is_never_followed(chain, stage,
                                                                          tmp_path, capsys):
    """Refused with one line, or (a stage that rebuilds its output folder whole) replaced by
    a real folder: never followed, never left in place."""
    _, folders = written(chain, stage)
    assert folders, f"{stage} writes no sub-folder: list it in FLAT"
    attack(chain, stage, folders, True, tmp_path, capsys)


@pytest.mark.parametrize("stage, state", [("export", "png/.export_state.json"),
                                          ("convert", "processed/.convert_state.json")])
def test_a_crafted_state_file_deletes_nothing_outside(chain, stage, state, tmp_path, capsys):
    w = fresh(chain, "all", tmp_path)
    victim = w / "victim.txt"
    victim.write_text("precious")
    data = json.loads((w / state).read_text())
    assert data["groups"], state
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
    shutil.rmtree(w / "private")  # made by this run
    old = os.umask(0o022)
    try:
        code, err = run("anonymize", w, capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    dcm = next((w / "anon").rglob("*.dcm"))
    assert stat.S_IMODE(dcm.stat().st_mode) == 0o644
    assert stat.S_IMODE((w / "private").stat().st_mode) == 0o700
    private = [p for p in (w / "private").rglob("*") if p.is_file()]
    assert private, "nothing written to the private folder"
    for p in private:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def _anonymize_in_child(w: str, src: str, queue) -> None:
    queue.put(main(["anonymize", "--input", src, "--output", f"{w}/anon", "--private",
                    f"{w}/private", "--params", f"{w}/params.yaml", "--quiet", "--workers", "1"]))


def test_two_runs_racing_on_one_output_lose_nothing(chain, tmp_path):
    """Two anonymize processes, two batches, one output and one private folder, started
    together: both finish, and the ledger and the output hold every object of both."""
    w = fresh(chain, "anonymize", tmp_path)
    files = sorted((w / "raw" / "dicom").rglob("*.dcm"))
    assert len(files) >= 2
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
