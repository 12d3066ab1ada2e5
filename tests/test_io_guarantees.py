"""Guarantees of the one write and delete path (converters/core/files.py) that mutation testing
found unguarded (issue 30).

Class of defect guarded: a read or a move that follows a link planted by someone else, a move
or a delete that lands relative to the working directory or creates folders, a count of
removed temporary files that lies, a half-written file left in place after a failure, and
outputs created with the wrong mode.
"""
from __future__ import annotations

import json
import os
import stat

import pytest

from converters.core.errors import OutputFolderError, UnsafeLocationError
from converters.core.unchanged import keepable
from converters.core.files import (TEMP_MARK, atomic_path, check_apart, is_own_file,
                                   link_into_place, move_into_place, output_root, prepare_output, read_own,
                                   remove_output, remove_stale_temps, temp_name, within,
                                   write_bytes, write_json, write_text)
from converters.core.paths import UnsafePathError


@pytest.fixture
def out(tmp_path, monkeypatch):
    """An output root, with the working directory elsewhere (nothing may land there)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with output_root(tmp_path / "out") as root:
        yield root
    assert list(cwd.iterdir()) == []


def test_is_own_file_only_for_a_regular_file(out, tmp_path):
    (out / "a.png").write_bytes(b"x")
    (out / "link.png").symlink_to(out / "a.png")
    (out / "dir").mkdir()
    assert is_own_file(out / "a.png")
    assert not is_own_file(out / "link.png")
    assert not is_own_file(out / "dir")
    assert not is_own_file(out / "missing.png")
    assert not is_own_file(tmp_path / "no" / "such" / "folder")


def test_read_own_refuses_a_link_and_reads_the_file(out, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (out / "state.json").symlink_to(secret)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        read_own(out / "state.json")
    (out / "real.json").write_bytes(b"abc")
    assert read_own(out / "real.json") == b"abc"
    assert read_own(out / "missing.json") is None
    with pytest.raises(IsADirectoryError):
        read_own(out)                                # other errors are not called links


def test_move_into_place_in_a_nested_folder(out):
    final = out / "a" / "b" / "x.png"
    tmp = temp_name(final)
    write_bytes(tmp, b"mask")
    move_into_place(tmp, final)
    assert final.read_bytes() == b"mask"
    assert sorted(p.name for p in (out / "a" / "b").iterdir()) == ["x.png"]


def test_move_into_place_refuses_other_folders_and_bad_paths(out):
    write_bytes(out / "a" / "t.png", b"x")
    with pytest.raises(RuntimeError, match="different folders"):
        move_into_place(out / "a" / "t.png", out / "b" / "t.png")
    with pytest.raises(UnsafePathError, match="'.*out/a/../../x.png'"):
        move_into_place(out / "a" / ".." / ".." / "t.png", out / "a" / ".." / ".." / "x.png")


def test_link_into_place_names_the_same_file_twice_and_replaces_a_planted_link(out, tmp_path):
    victim = tmp_path / "victim.pth"
    victim.write_bytes(b"theirs")
    write_bytes(out / "run" / "best_epoch_3.pth", b"weights")
    (out / "run" / "best.pth").symlink_to(victim)        # planted at the name: replaced
    link_into_place(out / "run" / "best_epoch_3.pth", out / "run" / "best.pth")
    assert os.path.samefile(out / "run" / "best.pth", out / "run" / "best_epoch_3.pth")
    assert not (out / "run" / "best.pth").is_symlink() and victim.read_bytes() == b"theirs"
    assert sorted(p.name for p in (out / "run").iterdir()) == ["best.pth", "best_epoch_3.pth"]


def test_link_into_place_refuses_a_link_as_source_and_other_folders(out, tmp_path):
    (tmp_path / "outside.pth").write_bytes(b"x")
    write_bytes(out / "run" / "metrics.json", b"{}")
    (out / "run" / "best_epoch_1.pth").symlink_to(tmp_path / "outside.pth")
    with pytest.raises(UnsafePathError, match="best_epoch_1.pth.*not a regular file"):
        link_into_place(out / "run" / "best_epoch_1.pth", out / "run" / "best.pth")
    with pytest.raises(RuntimeError, match="different folders"):
        link_into_place(out / "run" / "metrics.json", out / "other" / "best.pth")
    assert sorted(p.name for p in (out / "run").iterdir()) == ["best_epoch_1.pth",
                                                                "metrics.json"]


def test_link_into_place_copies_where_hard_links_are_not_allowed(out, monkeypatch):
    write_bytes(out / "run" / "best_epoch_2.pth", b"weights")

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "link", refuse)
    link_into_place(out / "run" / "best_epoch_2.pth", out / "run" / "best.pth")
    assert (out / "run" / "best.pth").read_bytes() == b"weights"
    assert not os.path.samefile(out / "run" / "best.pth", out / "run" / "best_epoch_2.pth")
    assert sorted(p.name for p in (out / "run").iterdir()) == ["best.pth", "best_epoch_2.pth"]


def test_a_temporary_name_is_unpredictable_and_recognised(out):
    a, b = temp_name(out / "x.png"), temp_name(out / "x.png")
    assert a != b and a.parent == out and a.suffix == ".png"
    assert a.name.startswith(".x.png.") and TEMP_MARK in a.name


def test_remove_stale_temps_counts_what_it_removed(out, tmp_path):
    for rel in (".a.png.1.ab.sp-tmp.png", "m/.b.png.9.cd.sp-tmp.png", "m/n/.c.sp-tmp"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"half")
    (out / "m" / "keep.png").write_bytes(b"done")
    (out / "m" / "sp-tmp-but-not-hidden.png").write_bytes(b"done")
    assert remove_stale_temps(out) == 3
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == \
        ["m/keep.png", "m/sp-tmp-but-not-hidden.png"]
    assert remove_stale_temps(out) == 0


def test_remove_stale_temps_older_than_leaves_writes_in_progress(out):
    """``older_than_s``: only temporary names last modified longer ago (another process may be
    writing the young one now)."""
    import time
    old, young = out / "m" / ".a.npy.1.sp-tmp", out / "m" / ".b.npy.2.sp-tmp"
    old.parent.mkdir()
    for f in (old, young):
        f.write_bytes(b"half")
    os.utime(old, (time.time() - 7200,) * 2)
    assert remove_stale_temps(out, older_than_s=3600) == 1
    assert not old.exists() and young.exists()
    assert remove_stale_temps(out) == 1 and not young.exists()


def test_within_resolves_links_on_both_sides(tmp_path):
    (tmp_path / "data" / "png").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    assert within(tmp_path / "alias" / "png", tmp_path / "data")
    assert within(tmp_path / "data", tmp_path / "alias")          # the same folder
    assert not within(tmp_path / "data", tmp_path / "data" / "png")
    assert not within(tmp_path / "database", tmp_path / "data")  # a prefix is not a parent


def test_remove_output_creates_nothing_and_leaves_non_files(out, tmp_path):
    assert remove_output(out, "no/such/file.png") is False
    assert list(out.iterdir()) == []
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"keep")
    (out / "link.png").symlink_to(outside)
    (out / "d").mkdir()
    for rel in ("link.png", "d", str(outside), "../outside.png", "", "d/../link.png"):
        assert remove_output(out, rel) is False
    assert outside.read_bytes() == b"keep" and (out / "link.png").is_symlink()
    (out / "d" / "f.png").write_bytes(b"x")
    assert remove_output(out, "d/f.png") is True and not (out / "d" / "f.png").exists()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(out):
    write_text(out / "r.json", "old")
    with pytest.raises(ValueError):
        with atomic_path(out / "r.json") as tmp:
            tmp.write_text("half")
            raise ValueError("interrupted")
    assert (out / "r.json").read_text() == "old"
    assert [p.name for p in out.iterdir()] == ["r.json"]


def test_modes_follow_the_umask_and_the_private_mode(out):
    old = os.umask(0o027)
    try:
        write_bytes(out / "pub" / "a.png", b"x")
        write_bytes(out / "priv.json", b"x", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((out / "pub" / "a.png").stat().st_mode) == 0o640
    assert stat.S_IMODE((out / "pub").stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "priv.json").stat().st_mode) == 0o600


def test_outputs_and_inputs_stay_apart(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for output, inputs in ((tmp_path / "in" / "sub", [tmp_path / "in"]),
                           (tmp_path / "in", [tmp_path / "in" / "sub"]),
                           (tmp_path / "in", [tmp_path / "x", tmp_path / "in"])):
        with pytest.raises(UnsafeLocationError):
            check_apart(output, inputs)
    check_apart(tmp_path / "out", [tmp_path / "in", tmp_path / "in2"])


def test_prepare_output_refuses_a_file_and_closes_a_private_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file"):
        prepare_output(tmp_path / "f")
    (tmp_path / "p").mkdir(mode=0o755)
    prepare_output(tmp_path / "p", private=True)
    assert stat.S_IMODE((tmp_path / "p").stat().st_mode) == 0o700
    assert list((tmp_path / "p").iterdir()) == []            # the write probe is gone
    with pytest.raises(RuntimeError, match="outside every output root"):
        write_bytes(tmp_path / "q" / "x", b"x")


def test_without_a_umask_outputs_are_0666_and_folders_0777(tmp_path):
    old = os.umask(0)
    try:
        with output_root(tmp_path / "out") as out:
            write_bytes(out / "f" / "a.bin", b"x")
            write_text(out / "b.txt", "x")
            write_json(out / "c.json", {})
            write_text(out / "d.txt", "x", mode=0o600)
            write_json(out / "e.json", {}, mode=0o640)
        prepare_output(tmp_path / "plain")
    finally:
        os.umask(old)
    modes = {n: stat.S_IMODE((tmp_path / n).stat().st_mode) for n in
             ("out/f/a.bin", "out/b.txt", "out/c.json", "out/d.txt", "out/e.json", "out/f",
              "out", "plain")}
    assert modes == {"out/f/a.bin": 0o666, "out/b.txt": 0o666, "out/c.json": 0o666,
                     "out/d.txt": 0o600, "out/e.json": 0o640, "out/f": 0o777, "out": 0o777,
                     "plain": 0o777}


def test_json_and_text_outputs_are_utf8_one_space_indented(out):
    write_json(out / "a.json", {"name": "Hôpital", "n": [1]})
    assert (out / "a.json").read_bytes() == \
        '{\n "name": "Hôpital",\n "n": [\n  1\n ]\n}\n'.encode("utf-8")
    write_json(out / "b.json", {"a": 1}, indent=None)
    assert (out / "b.json").read_text() == '{"a": 1}\n'
    write_text(out / "c.txt", "é")
    assert (out / "c.txt").read_bytes() == b"\xc3\xa9"


def test_a_null_byte_in_an_output_name_is_refused_as_unsafe(out):
    with pytest.raises(UnsafePathError):
        write_bytes(out / "a\x00b.png", b"x")
    with pytest.raises(UnsafePathError):
        write_bytes(out / "d\x00" / "b.png", b"x")


def test_a_folder_that_cannot_be_made_is_named_with_the_reason(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="\\(Not a directory\\)") as err:
        prepare_output(tmp_path / "file" / "out")
    assert err.value.file == str(tmp_path / "file" / "out")


def test_outputs_and_inputs_apart_say_which_is_inside_which(tmp_path):
    with pytest.raises(UnsafeLocationError, match="output folder .* is inside the input"):
        check_apart(tmp_path / "in" / "out", [tmp_path / "in"])
    with pytest.raises(UnsafeLocationError, match="input .* is inside the output folder"):
        check_apart(tmp_path / "out", [tmp_path / "out" / "in"])


def test_a_move_into_a_missing_folder_creates_nothing(out):
    with pytest.raises(FileNotFoundError):
        move_into_place(out / "gone" / ".x.sp-tmp.png", out / "gone" / "x.png")
    assert not (out / "gone").exists()


def test_a_root_opened_by_a_relative_path_stays_where_it_was_opened(tmp_path, monkeypatch):
    """A library or test process that changes folder between two runs: the second root of the
    same relative name is its own, and the first one's files are untouched."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        with output_root("out"):
            write_text("out/x.txt", name)
    assert (tmp_path / "a" / "out" / "x.txt").read_text() == "a"
    assert (tmp_path / "b" / "out" / "x.txt").read_text() == "b"


def test_a_write_of_the_same_bytes_leaves_the_file_untouched(out):
    """A re-run that writes what is there keeps the file, inode and mtime (the next stage's
    size + mtime signatures and DVC's hashes then see nothing new); other bytes, another mode,
    or a link or FIFO at the name are replaced as before."""
    target = out / "sub" / "a.json"
    write_json(target, {"a": 1})
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    before = os.stat(target)
    write_json(target, {"a": 1})
    with atomic_path(target) as tmp:
        tmp.write_text('{\n "a": 1\n}\n')
    move_src = temp_name(target)
    write_bytes(move_src, target.read_bytes())
    move_into_place(move_src, target)
    after = os.stat(target)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, 1_000_000_000)
    assert sorted(os.listdir(out / "sub")) == ["a.json"]          # no temporary left
    write_json(target, {"a": 2})                                  # other bytes, same size
    assert json.loads(target.read_text()) == {"a": 2} and os.stat(target).st_ino != before.st_ino
    os.chmod(target, 0o600)
    ino = os.stat(target).st_ino
    write_json(target, {"a": 2})                                  # same bytes, another mode
    assert os.stat(target).st_ino != ino and stat.S_IMODE(os.stat(target).st_mode) != 0o600


@pytest.mark.parametrize("planted", ["link", "hard link", "fifo"])
def test_a_link_or_fifo_holding_the_same_bytes_is_replaced_not_kept(out, tmp_path, planted):
    outside = tmp_path / "outside.json"
    outside.write_text('{\n "a": 1\n}\n')
    os.chmod(outside, 0o666 & ~_umask())
    target = out / "a.json"
    if planted == "link":
        target.symlink_to(outside)
    elif planted == "hard link":
        os.link(outside, target)
    else:
        os.mkfifo(target)
    write_json(target, {"a": 1})                                  # no hang on the FIFO
    assert stat.S_ISREG(os.lstat(target).st_mode) and json.loads(target.read_text()) == {"a": 1}
    assert outside.read_text() == '{\n "a": 1\n}\n'
    assert os.stat(target).st_ino != os.stat(outside).st_ino


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_only_an_output_of_the_same_owner_group_mode_and_one_name_is_kept(out):
    """keepable: a file another user or group owns there (bytes predicted, e.g. the phantom's)
    is replaced, not kept: they could change it later behind the signatures' back."""
    (out / "a").write_bytes(b"x")
    mine = os.stat(out / "a")

    def other(**changes) -> os.stat_result:
        fields = {"st_mode": 0, "st_ino": 1, "st_dev": 2, "st_nlink": 3, "st_uid": 4,
                  "st_gid": 5, "st_size": 6}
        values = [getattr(mine, k) for k in fields]
        for key, value in changes.items():
            values[list(fields).index(key)] = value
        return os.stat_result(values + [0, 0, 0])

    assert keepable(other(), mine)
    for change in ({"st_uid": mine.st_uid + 1}, {"st_gid": mine.st_gid + 1},
                   {"st_size": mine.st_size + 1}, {"st_nlink": 2},
                   {"st_mode": mine.st_mode ^ 0o020}):
        assert not keepable(other(**change), mine), change
