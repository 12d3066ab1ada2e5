"""Guarantees of converters/core/paths.py that mutation testing found unguarded (issue 30).

Class of defect guarded: a value from data (a UID, a name, a VIA file name) accepted or refused
at the wrong length, a trailing ``..`` that climbs out of the output folder, and an error that
no longer tells the user which value and which file it is about.
"""
from __future__ import annotations

import pytest

from converters.core.paths import (UnsafePathError, check_name, check_uid, confined, is_safe_name,
                                   is_uid)


def test_uid_of_exactly_64_characters_is_valid_and_65_is_not():
    # PS3.5 9.1: "shall not exceed 64 total characters"
    uid64 = "1." + "2" * 62
    assert len(uid64) == 64
    assert is_uid(uid64)
    assert not is_uid(uid64 + "3")
    assert check_uid(uid64, "SOPInstanceUID") == uid64


def test_name_of_exactly_128_characters_is_safe_and_129_is_not():
    name128 = "a" * 128
    assert is_safe_name(name128)
    assert not is_safe_name(name128 + "a")
    assert check_name(name128, "image stem") == name128


@pytest.mark.parametrize("check, bad, what", [
    (check_uid, "1..2/../x", "StudyInstanceUID"),
    (check_name, "../etc", "pseudonym"),
])
def test_refusal_names_the_value_and_the_file(check, bad, what):
    with pytest.raises(UnsafePathError) as err:
        check(bad, what, file="batch1/img.dcm", tag="(0020,000D)")
    assert err.value.file == "batch1/img.dcm" and err.value.tag == "(0020,000D)"
    assert what in str(err.value) and repr(bad) in str(err.value)
    assert "in batch1/img.dcm" in str(err.value)


def test_trailing_dotdot_cannot_climb_out(tmp_path):
    root = tmp_path / "out"
    (root / "a").mkdir(parents=True)
    for parts in (("..",), ("a", "..", ".."), ("a", "..", "..", "..")):
        with pytest.raises(UnsafePathError, match="outside the output folder"):
            confined(root, *parts)


def test_trailing_dotdot_that_stays_inside_is_the_root_itself(tmp_path):
    root = tmp_path / "out"
    (root / "a" / "b").mkdir(parents=True)
    assert confined(root, "a", "..") == root / "a" / ".."
    assert confined(root, "a", "b", "..") == root / "a" / "b" / ".."


def test_refusal_of_a_way_out_names_the_path_and_the_file(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    with pytest.raises(UnsafePathError) as err:
        confined(root, "..", "ESCAPED", file="via.json", image="img1")
    assert "'../ESCAPED'" in str(err.value)
    assert err.value.file == "via.json" and err.value.image == "img1"


def test_a_link_at_the_final_name_is_left_to_the_write_path(tmp_path):
    # the write replaces a link planted at the output's name (converters.core.files), so the check
    # must not refuse the output because of where that link points
    root = tmp_path / "out"
    root.mkdir()
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"keep")
    (root / "mask.png").symlink_to(outside)
    assert confined(root, "mask.png") == root / "mask.png"
    (root / "sub").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError):                 # a linked folder is refused
        confined(root, "sub", "mask.png")
