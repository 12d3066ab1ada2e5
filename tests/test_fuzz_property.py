"""Property-based fuzz (hypothesis) of the two kinds of foreign input: DICOM headers and VIA files
(issue #21, item 8).

Generated inputs go through the commands a user runs, in-process (``pipeline.cli.main``):

- **DICOM**: Part 10 files built from a small valid CR object whose identifying attributes
  carry the marker :data:`MARK`, plus random elements of random VRs (the dictionary's or a wrong
  one, invalid VR codes), overlong values, odd lengths, sequences nested three deep (defined and
  undefined lengths), private blocks, unknown public tags, invalid UIDs, traversal strings,
  NUL bytes, non-ASCII text, huge Rows / Columns over tiny pixel data, hostile file meta; some
  files also get raw byte-level mutations. Run through ``spinepipe anonymize`` then
  ``spinepipe export``.
- **VIA**: VIA 2 JSON projects, VIA CSV exports and COCO files of random structure (missing
  keys, wrong types, nesting up to 100,000 deep, huge numbers, ``NaN`` / ``Infinity`` tokens,
  polygons of 0 to 100,000 points, file names with ``../``, absolute paths and NUL bytes,
  invalid UTF-8, CSV fields over the field limit), referring to 64 x 64 PNGs. Run through
  ``spinepipe convert`` (sometimes ``--strict``) and ``spinepipe validate``.

Properties, for every example and every command:

1. exit status 0, or 1 with exactly one ``Error:`` line; never a traceback (an exception
   escaping ``main`` fails the example);
2. nothing outside the command's output folders changes: the *whole* temporary root of the
   test (every file and folder, content hash, mode, symbolic links by their target, never
   followed) is compared before and after each command; the workspace sits six folders below
   that root, so every ``../`` the generators use stays inside what is watched, and absolute
   paths point into the root (``{ROOT}``) or at ``/etc/passwd`` (its hash is compared too);
3. DICOM: the marker planted in the identifying attributes (and in random text values) is in
   no byte of any file anonymize or export wrote (the private folder, which holds the ledger
   of original identifiers by design, is not an output).

Each command must also reach both outcomes often enough (a generator that only makes broken
files tests little): most VIA files are what VIA writes, hostile in one respect ("names",
"edits") or in many ("wild"), see :data:`MODES`.

Reproducible: ``derandomize=True`` and no example database, so CI runs the same examples on
every machine. The attack classes of issue #21 are tried first on every run as explicit
``@example`` cases (:data:`DICOM_CASES`, :data:`VIA_CASES`); a failure prints the falsifying
example, which is added there once minimised.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import os
import shutil
import struct
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pydicom
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from conftest import dicom_image
from pipeline.cli import main

NO_PARAMS = "/nonexistent/params.yaml"
MARK = "ZQXMARK"  # planted in identifying values; must appear in no output byte
PASSWD = Path("/etc/passwd")


def fuzz_settings(examples: int):
    return settings(derandomize=True, database=None, deadline=None, max_examples=examples,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


# --------------------------------------------------------------------------------------------
# the properties


def snapshot(root: Path, content: bool = True) -> dict[str, str]:
    """Everything under ``root``: relative path -> kind, mode and content hash (links by their
    target, never followed; folders too, so a folder created outside counts). Without
    ``content``, a file is known by size, modification time and inode instead of its hash
    (a write in place changes the time, a rename the inode): for large trees."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder, name)
            st_ = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = f"dir:{st_.st_mode:o}"
            elif p.is_file() and content:
                out[rel] = f"file:{st_.st_mode:o}:" + hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_file():
                out[rel] = f"file:{st_.st_mode:o}:{st_.st_size}:{st_.st_mtime_ns}:{st_.st_ino}"
            else:
                out[rel] = f"special:{st_.st_mode:o}"
    return out


def changed_outside(before: dict, after: dict, allowed: list[str]) -> list[str]:
    def inside(rel: str) -> bool:
        return any(rel == a or rel.startswith(a + "/") for a in allowed)
    return sorted(k for k in set(before) | set(after)
                  if not inside(k) and before.get(k) != after.get(k))


def passwd_hash() -> str:
    return hashlib.sha256(PASSWD.read_bytes()).hexdigest() if PASSWD.exists() else "absent"


def run_confined(capsys, root: Path, args: list[str], allowed: list[Path]) -> int:
    """``spinepipe ARGS`` in-process; asserts properties 1 and 2; returns the exit status."""
    capsys.readouterr()
    before, passwd = snapshot(root), passwd_hash()
    try:
        code = main(args)
    except BaseException as exc:  # a traceback: the bug this test exists to find
        raise AssertionError(f"{args[0]}: {type(exc).__name__}: {exc}") from exc
    captured = capsys.readouterr()
    err = captured.err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in err + captured.out, err
    assert (code == 0 and not errors) or (code == 1 and len(errors) == 1), \
        f"{args[0]}: exit {code}, stderr:\n{err}"
    rel = [str(p.relative_to(root)) for p in allowed]
    changed = changed_outside(before, snapshot(root), rel)
    assert changed == [], f"{args[0]} wrote outside {rel}: {changed}"
    assert passwd_hash() == passwd, f"{args[0]} changed {PASSWD}"
    return code


def workspace(root: Path) -> Path:
    """A fresh workspace six folders below the watched root (every ``../`` of the generators
    stays inside the root); the root also holds a file and a link an escape could hit."""
    deep = root / "d1" / "d2" / "d3" / "d4" / "d5"
    deep.mkdir(parents=True, exist_ok=True)
    (root / "victim.txt").write_text("keep me")
    if not (root / "link_out").is_symlink():
        (root / "link_out").symlink_to("/nonexistent-target")
    ws = deep / "ws"
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir()
    return ws


def with_root(data: bytes, root: Path) -> bytes:
    return data.replace(b"{ROOT}", str(root).encode())


# --------------------------------------------------------------------------------------------
# DICOM: element specs (tag, VR, value bytes or items) encoded as explicit VR little endian

LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
TEXT_VRS = ["AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
            "UI", "UR", "UT"]
BINARY_VRS = ["AT", "FD", "FL", "OB", "OD", "OF", "OL", "OV", "OW", "SL", "SS", "SV", "UL",
              "US", "UV"]
BAD_VRS = ["ZZ", "  ", "ob", "\x00\x00"]
KNOWN = ["PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "IssuerOfPatientID",
         "InstitutionName", "ReferringPhysicianName", "AccessionNumber", "StudyDescription",
         "ImageComments", "StationName", "StudyID", "OperatorsName", "DeviceSerialNumber",
         "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel",
         "NumberOfFrames", "PixelRepresentation", "PhotometricInterpretation",
         "PlanarConfiguration", "RescaleSlope", "RescaleIntercept", "WindowCenter",
         "WindowWidth", "WindowCenterWidthExplanation", "BurnedInAnnotation", "SOPClassUID",
         "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
         "Modality", "BodyPartExamined", "ImageType", "PixelSpacing", "SpecificCharacterSet",
         "StudyDate", "ContentDate", "AcquisitionDateTime", "StudyTime", "PixelData",
         "ReferencedImageSequence", "SourceImageSequence", "AnatomicRegionSequence",
         "DerivationCodeSequence", "VOILUTSequence", "ModalityLUTSequence", "CodeValue",
         "CodingSchemeDesignator", "CodeMeaning", "TextValue", "ReferencedSOPInstanceUID",
         "LUTExplanation", "PatientSex", "PatientAge", "ViewPosition", "Laterality"]
KNOWN_TAGS = [int(Tag(k)) for k in KNOWN]
UNKNOWN_PUBLIC = [0x00189FF0, 0x00287777, 0x40101234, 0x00080001, 0x7FE00020]
HOSTILE_TEXT = ["../../x", "../../../../ESCAPED", "/etc/passwd", "{ROOT}/ABS_ESCAPED",
                "a\x00b", "\x00", "", " ", "\\", "^^^^", "=", "M\u00fcller^J\u00fcrgen",
                "\u674e^\u96f7", "\u202eevil", "1..2", "1.2.840.10008.9/../../../x", ".1",
                "1.2.", "0.0", "9" * 65, "20250230", "-1", "65535", "1e309", "NaN", "YES",
                "NO", "MONOCHROME1", "1.2.840.10008.1.2.4.90", "1.2.840.10008.5.1.4.1.1.1",
                "CR", "LSPINE", MARK, f"{MARK}^PATIENT", f"../{MARK}", f"{MARK}\x00x"]

texts = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=24),
    st.builds(lambda s, n: s * n, st.sampled_from(["x", "9", "A^", "../", MARK]),
              st.sampled_from([17, 65, 1025, 40_000])),  # overlong for every VR
)
text_bytes = st.builds(
    lambda s, enc, pad: (s.encode(enc, "replace") + pad),
    texts, st.sampled_from(["utf-8", "latin-1", "utf-16-le", "ascii"]),
    st.sampled_from([b"", b" ", b"\x00"]))  # odd lengths left as they are, or padded
binary_bytes = st.one_of(
    st.binary(max_size=24),
    st.builds(lambda v: struct.pack("<H", v), st.integers(0, 65535)),
    st.builds(lambda v: struct.pack("<I", v), st.sampled_from([0, 1, 2 ** 31, 2 ** 32 - 1])),
    st.builds(lambda v: struct.pack("<d", v), st.sampled_from(
        [0.0, -1.0, 1e308, float("nan"), float("inf")])),
)
tags = st.one_of(
    st.sampled_from(KNOWN_TAGS),
    st.sampled_from(UNKNOWN_PUBLIC),
    st.builds(lambda g, e: (g << 16) | e, st.sampled_from([0x0009, 0x0029, 0x0019]),
              st.sampled_from([0x0010, 0x0011, 0x1000, 0x1001, 0x10FF, 0x1100])),  # private
)


def _vr_for(tag: int, choice: str | None) -> str:
    if choice is not None:
        return choice
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "LO" if (tag >> 16) % 2 else "UN"  # private creators are LO
    return vr.split(" or ")[0]


@st.composite
def elements(draw, depth: int = 0) -> tuple:
    """One element spec: (tag, VR, value) with value bytes or a list of items (SQ)."""
    tag = draw(tags)
    vr = _vr_for(tag, draw(st.one_of(st.none(), st.sampled_from(TEXT_VRS + BINARY_VRS +
                                                                ["SQ", "UN"] + BAD_VRS))))
    if vr == "SQ":
        if depth >= 3:
            return tag, vr, []
        items = draw(st.lists(st.lists(elements(depth + 1), max_size=4), max_size=3))
        return tag, vr, items
    if vr in TEXT_VRS or vr == "UN" or vr in BAD_VRS:
        return tag, vr, draw(text_bytes)
    return tag, vr, draw(binary_bytes)


def encode_items(items: list, undefined: bool, root: Path) -> bytes:
    out = b""
    for item in items:
        body = b"".join(encode_element(e, root, undefined) for e in item)
        if undefined:
            out += b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + body + b"\xfe\xff\x0d\xe0\0\0\0\0"
        else:
            out += b"\xfe\xff\x00\xe0" + struct.pack("<I", len(body)) + body
    return out


def encode_element(spec: tuple, root: Path, undefined: bool = False) -> bytes:
    """Explicit VR little endian bytes of an element inside a sequence item."""
    tag, vr, value = spec
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("latin-1")
    if vr == "SQ":
        body = encode_items(value, undefined, root)
        if undefined:
            return head + b"\0\0\xff\xff\xff\xff" + body + b"\xfe\xff\xdd\xe0\0\0\0\0"
        return head + b"\0\0" + struct.pack("<I", len(body)) + body
    value = with_root(value, root)
    if vr in LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    value = value[:0xFFFF]
    return head + struct.pack("<H", len(value)) + value


def raw_element(spec: tuple, root: Path, undefined: bool) -> RawDataElement:
    """A top-level element as pydicom writes it, byte for byte (whatever its VR or value)."""
    tag, vr, value = spec
    if vr == "SQ":
        data = encode_items(value, undefined, root)
        length = 0xFFFFFFFF if undefined else len(data)
    else:
        data = with_root(value, root)
        if vr not in LONG_VRS:
            data = data[:0xFFFF]
        length = len(data)
    return RawDataElement(Tag(tag), vr, length, data, 0, False, True)


def base_dataset() -> bytes:
    """The valid CR object every example starts from: the marker in every identifying
    attribute, a nested sequence and the file meta."""
    item = Dataset()
    item.PatientName = f"{MARK}^NESTED"
    item.ReferencedSOPInstanceUID = "1.2.3.4.5.6"
    ds = dicom_image(8, ReferencedImageSequence=Sequence([item]), StudyDate="20200101")
    ds.PatientName, ds.PatientID = f"{MARK}^PATIENT", f"{MARK}ID"
    ds.OtherPatientIDs, ds.IssuerOfPatientID = f"{MARK}OTHER", f"{MARK}ISSUER"
    ds.InstitutionName, ds.StationName = f"{MARK} HOSPITAL", f"{MARK}ST"
    ds.ReferringPhysicianName, ds.AccessionNumber = f"{MARK}^DOCTOR", f"{MARK}ACC"
    ds.StudyDescription, ds.ImageComments = f"{MARK} study", f"{MARK} comment"
    ds.file_meta.ImplementationVersionName = MARK
    ds.file_meta.SourceApplicationEntityTitle = MARK
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


BASE_DICOM = base_dataset()
PIXEL_DATA = 0x7FE00010
SYNTAXES = [None, "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.90", "1.2.3", "../../x", ""]
pixel_overrides = st.one_of(st.none(), st.tuples(
    st.sampled_from([0, 1, 8, 60000, 65535]), st.sampled_from([0, 1, 8, 60000, 65535]),
    st.sampled_from([0, 1, 7, 128, 129])))  # Rows, Columns, pixel data bytes
mutations = st.lists(st.tuples(st.sampled_from(["byte", "word", "delete", "insert", "truncate"]),
                               st.integers(0, 2 ** 16), st.integers(0, 2 ** 32 - 1)), max_size=4)


@st.composite
def dicom_files(draw) -> dict:
    return {"elements": draw(st.lists(elements(), max_size=8)),
            "undefined": draw(st.booleans()),
            "syntax": draw(st.sampled_from(SYNTAXES)),
            "pixels": draw(pixel_overrides),
            "mutations": draw(st.one_of(st.just([]), mutations))}


def mutate(data: bytes, edits: list) -> bytes:
    """Raw byte edits after the preamble (the header is where they matter)."""
    out = bytearray(data)
    for kind, where, value in edits:
        at = 128 + where % max(1, len(out) - 128)
        if kind == "byte":
            out[at:at + 1] = bytes([value & 0xFF])
        elif kind == "word":
            out[at:at + 4] = value.to_bytes(4, "little")
        elif kind == "delete":
            del out[at:at + 1 + value % 16]
        elif kind == "insert":
            out[at:at] = value.to_bytes(4, "little") * (1 + value % 3)
        else:
            out = out[:at]
    return bytes(out)


def meta_bytes(meta: Dataset, syntax: str | None, root: Path) -> bytes:
    """The file meta group, encoded here so that any Transfer Syntax UID can be claimed
    (pydicom would transcode or refuse)."""
    if syntax is not None:
        meta.TransferSyntaxUID = syntax
    body = b""
    for elem in meta:
        if elem.tag.element == 0:
            continue
        value = elem.value if isinstance(elem.value, bytes) else str(elem.value).encode()
        value += (b"\0" if elem.VR == "UI" else b" ") * (len(value) % 2)
        body += encode_element((int(elem.tag), elem.VR, value), root)
    return encode_element((0x00020000, "UL", struct.pack("<I", len(body))), root) + body


def build_dicom(spec: dict, root: Path) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(BASE_DICOM))
    if spec["pixels"] is not None:
        rows, cols, size = spec["pixels"]
        ds.Rows, ds.Columns, ds.PixelData = rows, cols, bytes(size)
    for e in spec["elements"]:  # raw, as they are: pydicom would parse a private one
        ds._dict[Tag(e[0])] = raw_element(e, root, spec["undefined"] and e[0] != PIXEL_DATA)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    for tag in sorted(ds.keys()):  # element by element: write_dataset would parse the charset
        write_data_element(body, ds.get_item(tag), ["iso8859"])
    data = b"\0" * 128 + b"DICM" + meta_bytes(ds.file_meta, spec["syntax"], root)
    return mutate(data + body.getvalue(), spec["mutations"])


def marker_leaks(folders: list[Path]) -> list[str]:
    return [str(p) for f in folders if f.is_dir() for p in f.rglob("*")
            if p.is_file() and not p.is_symlink() and MARK.encode() in p.read_bytes()]


DICOM_EXAMPLES = 400


def dicom_case(root: Path, capsys, spec: dict) -> tuple[int, int]:
    """One DICOM example through anonymize and export; (their exit statuses)."""
    ws = workspace(root)
    (ws / "in").mkdir()
    (ws / "in" / "x.dcm").write_bytes(build_dicom(spec, root))
    anon, private, png = ws / "anon", ws / "private", ws / "png"
    common = ["--params", NO_PARAMS, "--quiet", "--workers", "1"]
    first = run_confined(capsys, root, ["anonymize", "--input", str(ws / "in"), "--output",
                                        str(anon), "--private", str(private), *common],
                         [anon, private])
    second = run_confined(capsys, root, ["export", "--input", str(anon), "--output", str(png),
                                         *common], [png])
    assert marker_leaks([anon, png]) == []
    if first == 0 and second == 0:
        assert list(png.glob("*.png")) or not list(anon.rglob("*.dcm")), "nothing exported"
    return first, second


def spec_of(elements: list = (), pixels=None, syntax=None, undefined=False) -> dict:
    return {"elements": list(elements), "undefined": undefined, "syntax": syntax,
            "pixels": pixels, "mutations": []}


def enc(text: str) -> bytes:
    return text.encode()


#: cases every run tries first (hypothesis ``@example``): the attack classes of issue #21
DICOM_CASES = [
    spec_of(syntax=""),  # an empty Transfer Syntax UID
    spec_of(syntax="../../x"),
    spec_of(pixels=(65535, 65535, 7)),  # a huge image claimed over 7 bytes of pixels
    spec_of([(0x00090010, "LO", b"ACME 1.0"),  # private block, nested undefined lengths
             (0x00091000, "SQ", [[(0x00100010, "PN", enc(f"{MARK}^PRIV")),
                                  (0x00081115, "SQ", [[(0x00100020, "LO", enc(MARK))]])]])],
            undefined=True),
    spec_of([(0x00100010, "US", b"\x01\x00"),  # Patient's Name with a wrong VR
             (0x00189FF0, "LO", enc(MARK)),  # an unknown public tag
             (0x00081030, "UN", enc(f"{MARK} study"))]),  # a known text tag as UN
    spec_of([(0x00080018, "UI", b"../../../../ESCAPED\0")]),  # traversal as SOP Instance UID
    spec_of([(0x0020000D, "UI", b"{ROOT}/ABS_ESCAPED")]),  # an absolute path as Study UID
    spec_of([(0x00100020, "LO", b"../../x"), (0x00100010, "PN", b"a\x00b")]),
    spec_of([(0x00100020, "LO", "M\u00fcller\u202e".encode("utf-16-le"))]),
    spec_of([(0x00280010, "US", b"\xff\xff\xff")]),  # odd length, wrong VM
]


def test_dicom_headers_anonymize_and_export(tmp_path, capsys):
    """Properties 1-3 on :data:`DICOM_EXAMPLES` generated files; both outcomes of each
    command must occur often (a generator that only makes broken files tests little)."""
    outcomes: Counter = Counter()

    @fuzz_settings(DICOM_EXAMPLES)
    @given(spec=dicom_files())
    def case(spec):
        first, second = dicom_case(tmp_path, capsys, spec)
        outcomes[f"anonymize {first}"] += 1
        outcomes[f"export {second}"] += 1

    for spec in DICOM_CASES:
        case = example(spec=spec)(case)
    case()
    assert min(outcomes["anonymize 0"], outcomes["anonymize 1"], outcomes["export 0"]) \
        >= DICOM_EXAMPLES // 10 and outcomes["export 1"] >= 3, outcomes


def test_dicom_generator_reaches_both_outcomes(tmp_path, capsys):
    """The generator is neither too harsh nor too mild: the base object is anonymized and
    exported (exit 0) and a file with a wrong-VR pixel module fails with one line."""
    ws = workspace(tmp_path)
    (ws / "in").mkdir()
    (ws / "in" / "x.dcm").write_bytes(build_dicom(
        {"elements": [], "undefined": False, "syntax": None, "pixels": None,
         "mutations": []}, tmp_path))
    anon, private, png = ws / "anon", ws / "private", ws / "png"
    args = ["--params", NO_PARAMS, "--quiet", "--workers", "1"]
    assert run_confined(capsys, tmp_path, ["anonymize", "-i", str(ws / "in"), "-o", str(anon),
                                           "--private", str(private), *args],
                        [anon, private]) == 0
    assert run_confined(capsys, tmp_path, ["export", "-i", str(anon), "-o", str(png), *args],
                        [png]) == 0
    assert len(list(png.glob("*.png"))) == 1 and marker_leaks([anon, png]) == []
    ws = workspace(tmp_path)
    (ws / "in").mkdir()
    (ws / "in" / "x.dcm").write_bytes(build_dicom(
        {"elements": [(int(Tag("Rows")), "US", b"\xff\xff")], "undefined": False,
         "syntax": None, "pixels": None, "mutations": []}, tmp_path))
    assert run_confined(capsys, tmp_path, ["anonymize", "-i", str(ws / "in"), "-o",
                                           str(ws / "anon"), "--private", str(ws / "private"),
                                           *args], [ws / "anon", ws / "private"]) == 1


# --------------------------------------------------------------------------------------------
# VIA: JSON projects, CSV exports, COCO

IMAGES = ["a.png", "b.png"]
NAMES = IMAGES + ["../a.png", "../../../../img/a.png", "{ROOT}/d1/d2/d3/d4/d5/ws/img/a.png",
                  "/etc/passwd", "a.png\x00.txt", "", "img/../a.png", "\u00e4.png", "a.PNG",
                  "x" * 300 + ".png", "..", "."]
CLASSES = ["lumbar", "sacrum", "screw", "cage", "rod", "", "../x", "LUMBAR", "undefined"]
JUNK = [None, "", "abc", "../../../ESCAPED", "/etc/passwd", -1, 0, 3.5, 2 ** 70, -1e308,
        "__HUGE__", float("nan"), float("inf"), float("-inf"), True, [], {}, [[1, 2]], [None],
        {"a": [1, 2]}, "\u0000\u202e", "x" * 300, "undefined", "__DEEP__"]
DEPTHS = [1, 8, 63, 64, 65, 1000, 100_000]  # VIA writes at most 8 levels; the limit is 64

junk = st.sampled_from(JUNK)


@st.composite
def good_polygons(draw) -> dict:
    """A polygon VIA could have drawn on a 64 x 64 image: 3 to 15 vertices in the image."""
    n = draw(st.integers(3, 15))
    x0, y0 = draw(st.integers(0, 40)), draw(st.integers(0, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    return {"name": "polygon",
            "all_points_x": [int(x0 + 10 + 10 * np.cos(a)) for a in angles],
            "all_points_y": [int(y0 + 10 + 10 * np.sin(a)) for a in angles]}


@st.composite
def wild_points(draw) -> tuple[list, list]:
    """Polygons of 0 to 100,000 vertices, inside or far outside the image, one bad value."""
    n = draw(st.one_of(st.sampled_from([0, 1, 2, 3, 9_999, 10_000, 10_001, 100_000]),
                       st.integers(0, 40)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    span = draw(st.sampled_from([64, 70, 100_000]))
    xs, ys = rng.integers(-4, span, n).tolist(), rng.integers(-4, span, n).tolist()
    if n and draw(st.booleans()):
        xs[draw(st.integers(0, n - 1))] = draw(junk)
    if draw(st.integers(0, 9)) == 0:
        ys = ys[:-1]  # x and y of different lengths
    return xs, ys


@st.composite
def wild_shapes(draw) -> object:
    kind = draw(st.sampled_from(["polygon", "polyline", "rect", "circle", "ellipse", "point",
                                 "junk"]))
    if kind in ("polygon", "polyline"):
        xs, ys = draw(wild_points())
        return {"name": kind, "all_points_x": xs, "all_points_y": ys}
    if kind == "junk":
        return draw(junk)
    keys = {"rect": ["x", "y", "width", "height"], "circle": ["cx", "cy", "r"],
            "ellipse": ["cx", "cy", "rx", "ry"], "point": ["cx", "cy"]}[kind]
    return {"name": kind, **{k: draw(st.one_of(st.integers(-10, 100), junk)) for k in keys}}


@st.composite
def regions(draw, wild: bool) -> dict:
    shape = draw(wild_shapes() if wild else good_polygons())
    attrs = draw(st.one_of(st.fixed_dictionaries({"class": st.sampled_from(CLASSES)}),
                           st.dictionaries(st.sampled_from(["class", "type", "", "../x"]),
                                           st.one_of(st.sampled_from(CLASSES), junk),
                                           max_size=2), junk)
                 if wild else st.fixed_dictionaries({"class": st.sampled_from(CLASSES[:2])}))
    return {"shape_attributes": shape, "region_attributes": attrs}


#: how hostile one generated file is: every property holds on each; "clean" files show
#: that a file VIA could have written converts (exit 0), so the checks run on both outcomes
MODES = ["clean", "clean", "names", "edits", "wild"]


@st.composite
def images(draw, mode: str) -> list[dict]:
    """The annotated images: what VIA writes, with hostile names ("names") or one region in
    three wild ("wild")."""
    names = st.sampled_from(IMAGES) if mode in ("clean", "edits") else st.one_of(
        st.sampled_from(IMAGES), st.sampled_from(NAMES), st.text(max_size=12))
    wild = [False] if mode != "wild" else [False, False, True]
    out = []
    for name in draw(st.lists(names, min_size=1, max_size=3)):
        regs = draw(st.lists(st.sampled_from(wild).flatmap(regions), min_size=1, max_size=8))
        size = draw(st.one_of(st.just(-1), st.integers(0, 9999),
                              *([junk] if mode == "wild" else [])))
        out.append({"filename": name, "size": size, "regions": regs, "file_attributes": {}})
    return out


def perturb(doc: object, edits: list, extra: list) -> object:
    """Apply hypothesis-drawn edits to a JSON document: at the node chosen by an index,
    put a hostile value, delete it, nest it one level deeper, multiply a list or add a key."""
    for op, where, value in edits:
        nodes = [(p, o) for p, o in _nodes(doc) if p]
        if not nodes:
            return doc
        path, node = nodes[where % len(nodes)]
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        if op == "junk":
            parent[key] = value
        elif op == "delete":
            del parent[key]
        elif op == "nest":
            parent[key] = [node]
        elif op == "multiply" and isinstance(node, list):
            parent[key] = node * 50
        elif op == "key" and isinstance(node, dict):
            node[str(value)[:20]] = copy.deepcopy(extra[where % len(extra)])
    return doc


def _nodes(obj, path=()):
    yield path, obj
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            yield from _nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nodes(v, path + (i,))


edits = st.lists(st.tuples(st.sampled_from(["junk", "delete", "nest", "multiply", "key"]),
                           st.integers(0, 10_000), junk), max_size=3)


def via2(entries: list[dict]) -> dict:
    return {"_via_settings": {"core": {"default_filepath": ""}},
            "_via_img_metadata": {f"{e['filename']}{e['size']}": e for e in entries},
            "_via_attributes": {"region": {"class": {
                "type": "dropdown", "options": {c: c for c in CLASSES[:5]}}}},
            "_via_image_id_list": [f"{e['filename']}{e['size']}" for e in entries]}


def coco(entries: list[dict]) -> dict:
    """What VIA's "Export Annotations (COCO format)" writes for ``entries``."""
    cats = [{"id": i, "name": c, "supercategory": "class"} for i, c in enumerate(CLASSES[:5], 1)]
    ids = {c["name"]: c["id"] for c in cats}
    anns = []
    for i, e in enumerate(entries):
        for r in e["regions"]:
            s = r["shape_attributes"]
            xs, ys = (s.get("all_points_x", []), s.get("all_points_y", [])) \
                if isinstance(s, dict) else ([], [])
            cls = r["region_attributes"].get("class") \
                if isinstance(r["region_attributes"], dict) else None
            anns.append({"id": len(anns), "image_id": i, "category_id": ids.get(cls, 0),
                         "segmentation": [[v for p in zip(xs, ys) for v in p]],
                         "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0})
    return {"info": {}, "images": [{"id": i, "file_name": e["filename"], "width": 64,
                                    "height": 64} for i, e in enumerate(entries)],
            "annotations": anns, "categories": cats}


def via_csv(entries: list[dict], junk_cells: list) -> str:
    """A VIA 2 CSV export (one row per region, each cell the JSON VIA writes, bare
    ``undefined`` for a class never set), with some cells replaced by hostile text."""
    header = ["filename", "file_size", "file_attributes", "region_count", "region_id",
              "region_shape_attributes", "region_attributes"]
    rows = [header]
    for e in entries:
        for i, r in enumerate(e["regions"]):
            rows.append([e["filename"], e["size"], "{}", len(e["regions"]), i,
                         json.dumps(r["shape_attributes"], allow_nan=True),
                         json.dumps(r["region_attributes"], allow_nan=True)
                         .replace('"undefined"', "undefined")])
    for where, text in junk_cells:
        row = rows[where % len(rows)]
        row[where % len(row)] = text
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


csv_junk = st.one_of(st.sampled_from(["", "undefined", '{"name":"polygon"', "{}", "[]", "NaN",
                                      "x" * 131_073, "x" * 1_048_577, '"', "\x00",
                                      '{"class":undefined}', "../../ESCAPED"]),
                     st.text(max_size=10))


@st.composite
def via_files(draw) -> dict:
    mode = draw(st.sampled_from(MODES))
    entries = draw(images(mode))
    kind = draw(st.sampled_from(["json", "json", "csv", "coco"]))
    hostile = mode in ("edits", "wild")
    if kind == "csv":
        cells = draw(st.lists(st.tuples(st.integers(0, 999), csv_junk), max_size=2))
        text, name = via_csv(entries, cells if hostile else []), "via.csv"
        cut = draw(st.one_of(st.none(), st.integers(0, len(text)))) if hostile else None
        text = text if cut is None else text[:cut] + draw(st.sampled_from(['"', ""]))
    else:
        doc = via2(entries) if kind == "json" else coco(entries)
        doc = perturb(doc, draw(edits) if hostile else [], [dict(e) for e in entries])
        text, name = json_text(doc, draw(st.sampled_from(DEPTHS))), "via.json"
    encodings = ["utf-8", "utf-8-sig"] + (["latin-1", "utf-16"] if mode == "wild" else [])
    return {"name": name, "text": text, "encoding": draw(st.sampled_from(encodings)),
            "strict": mode == "wild" and draw(st.booleans())}


def nest(value: object, depth: int) -> str:
    """JSON text of ``value`` wrapped in ``depth`` lists (no recursion, any depth)."""
    return "[" * depth + json.dumps(value, allow_nan=True) + "]" * depth


def json_text(doc: object, depth: int) -> str:
    text = json.dumps(doc, allow_nan=True)
    return text.replace('"__HUGE__"', "1e400").replace('"__DEEP__"', nest(0, depth))


VIA_EXAMPLES = 250


def via_case(root: Path, capsys, spec: dict) -> tuple[int, int]:
    """One VIA example through convert and validate; (their exit statuses)."""
    ws = workspace(root)
    (ws / "img").mkdir()
    for i, name in enumerate(IMAGES):
        cv2.imwrite(str(ws / "img" / name), np.full((64, 64), 60 + 80 * i, np.uint8))
    via = ws / spec["name"]
    via.write_bytes(with_root(spec["text"].encode(spec["encoding"], "replace"), root))
    out = ws / "out"
    strict = ["--strict"] if spec["strict"] else []
    common = ["--images", str(ws / "img"), "--params", NO_PARAMS, "--quiet"]
    first = run_confined(capsys, root, ["convert", "--input", str(via), "--output", str(out),
                                        "--workers", "1", *strict, *common],
                         [out, ws / "out.problems.json"])
    second = run_confined(capsys, root, ["validate", "--input", str(via), *strict, *common], [])
    return first, second


def via_spec(doc_or_text: object, name: str = "via.json", strict: bool = False) -> dict:
    text = doc_or_text if isinstance(doc_or_text, str) else json_text(doc_or_text, 1)
    return {"name": name, "text": text, "encoding": "utf-8", "strict": strict}


def one_image(name: str, xs: list, ys: list) -> dict:
    return via2([{"filename": name, "size": -1, "file_attributes": {}, "regions": [
        {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
         "region_attributes": {"class": "lumbar"}}]}])


_SQUARE = ([5, 30, 30, 5], [5, 5, 30, 30])
_CSV_HEAD = ("filename,file_size,file_attributes,region_count,region_id,"
             "region_shape_attributes,region_attributes\n")
#: cases every run tries first (hypothesis ``@example``): the attack classes of issue #21
VIA_CASES = [
    via_spec('{"_via_img_metadata": ' + nest(0, 100_000) + "}"),  # 100,000 deep
    via_spec(_CSV_HEAD + "a.png,0,{}," + "1" * 1_048_577 + ",0,{},{}\n", "via.csv"),
    via_spec(one_image("a.png", list(range(100_000)), list(range(100_000)))),
    via_spec(json_text(one_image("a.png", ["__HUGE__", 30, 30], [5, 5, 30]), 1)
             .replace("1e400", "NaN")),
    via_spec(json_text(one_image("a.png", [5, 30, "__HUGE__"], [5, 5, 30]), 1)),
    *[via_spec(one_image(name, *_SQUARE), strict=strict)
      for name in ("../../../../img/a.png", "{ROOT}/d1/d2/d3/d4/d5/ws/img/a.png",
                   "/etc/passwd", "a.png\x00.txt", "..") for strict in (False, True)],
    via_spec(coco([{"filename": "../a.png", "size": -1, "regions": [
        {"shape_attributes": {"name": "polygon", "all_points_x": _SQUARE[0],
                              "all_points_y": _SQUARE[1]},
         "region_attributes": {"class": "lumbar"}}]}])),
]


def test_via_files_convert_and_validate(tmp_path, capsys):
    """Properties 1-2 on :data:`VIA_EXAMPLES` generated VIA / CSV / COCO files; both outcomes
    of each command must occur."""
    outcomes: Counter = Counter()

    @fuzz_settings(VIA_EXAMPLES)
    @given(spec=via_files())
    def case(spec):
        first, second = via_case(tmp_path, capsys, spec)
        outcomes[f"convert {first}"] += 1
        outcomes[f"validate {second}"] += 1

    for spec in VIA_CASES:
        case = example(spec=spec)(case)
    case()
    assert min(outcomes[f"{c} {k}"] for c in ("convert", "validate") for k in (0, 1)) >= 5, \
        outcomes


def test_via_generator_reaches_both_outcomes(tmp_path, capsys):
    """A well-formed project converts (exit 0); one whose regions are a string fails (exit 1,
    one line): the properties are checked on both paths."""
    good = {"_via_img_metadata": {"a.png-1": {"filename": "a.png", "size": -1, "regions": [
        {"shape_attributes": {"name": "polygon", "all_points_x": [5, 40, 40, 5],
                              "all_points_y": [y, y, y + 8, y + 8]},
         "region_attributes": {"class": "lumbar"}} for y in (2, 12, 22, 32, 42)] + [
        {"shape_attributes": {"name": "polygon", "all_points_x": [5, 40, 20],
                              "all_points_y": [52, 52, 62]},
         "region_attributes": {"class": "sacrum"}}]}}}
    bad = {"_via_img_metadata": {"a.png-1": {"filename": "a.png", "regions": "x"}}}
    for doc, expected in ((good, 0), (bad, 1)):
        ws = workspace(tmp_path)
        (ws / "img").mkdir()
        cv2.imwrite(str(ws / "img" / "a.png"), np.full((64, 64), 60, np.uint8))
        (ws / "via.json").write_text(json.dumps(doc))
        args = ["--input", str(ws / "via.json"), "--images", str(ws / "img"), "--params",
                NO_PARAMS, "--quiet"]
        assert run_confined(capsys, tmp_path, ["convert", *args, "--output", str(ws / "out"),
                                               "--workers", "1"], [ws / "out"]) == expected
        assert run_confined(capsys, tmp_path, ["validate", *args], []) == expected
