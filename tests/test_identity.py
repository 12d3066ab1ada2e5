"""Identities that never merge (issue 21): patients keyed by issuer + Patient ID (without an
ID, by study), a ledger that refuses to map two identities to one pseudonym or one object and
never overwrites an entry, and re-identification that checks the identity before writing.

Real pydicom objects through :func:`converters.dicom.anonymize.anonymize_tree` and the real CLI;
re-identification through each writer that can re-identify, :func:`train.infer.to_seg.write_segs`
and :func:`train.infer.to_sr.write_srs` (what ``spinepipe to-seg / to-sr --reidentify`` run), and
:func:`converters.dicom.seg.reidentified_source`.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from conftest import dicom_image
from converters.dicom.deid_table import AnonymizeConfig
from converters.dicom.anonymize import anonymize_tree, patient_pseudonym
from converters.core.errors import (InvalidDicomError, InvalidLedgerError, InvalidTableError,
                                    MissingInputError)
from converters.core.paths import UnsafePathError
from converters.dicom.export import ExportConfig, export_tree
from converters.dicom.ledger import (load_ledger, load_or_create_salt, prepare_private,
                                     write_private_json)
from converters.dicom.seg import reidentified_source
from pipeline.cli import main
from converters.spine.measures import COLUMNS, measures_csv
from train.infer.to_seg import write_segs
from train.infer.to_sr import write_srs

#: every writer of objects that can point to the original patient: (writer, record key)
WRITERS = {"seg": (write_segs, "seg"), "sr": (write_srs, "sr")}

NO_PARAMS = "/nonexistent/params.yaml"


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _patient(name: str, sop: str, study: str, **extra) -> Dataset:
    return dicom_image(32, PatientName=name, SOPInstanceUID=sop, StudyInstanceUID=study,
                       SeriesInstanceUID=study + ".1", **extra)


def _run(tmp_path: Path, private: str = "private", out: str = "out"):
    priv = prepare_private(tmp_path / private)
    report = anonymize_tree(tmp_path / "in", tmp_path / out, priv, load_or_create_salt(priv),
                            AnonymizeConfig())
    return report, priv


def test_same_id_from_two_issuers_is_two_patients(tmp_path):
    """12345 of hospital A and 12345 of hospital B (by Issuer of Patient ID, or only by the
    qualifiers' Universal Entity ID) are three patients, with three ledger entries."""
    qualified = Dataset()
    qualified.UniversalEntityID = "2.16.840.1.113883.3.999"
    qualified.UniversalEntityIDType = "ISO"
    _save(_patient("ALPHA^ANNA", "1.2.3.1", "1.2.3.10", PatientID="12345",
                   IssuerOfPatientID="HOSP_A"), tmp_path / "in" / "a.dcm")
    _save(_patient("BETA^BERT", "1.2.3.2", "1.2.3.20", PatientID="12345",
                   IssuerOfPatientID="HOSP_B"), tmp_path / "in" / "b.dcm")
    _save(_patient("GAMMA^GINA", "1.2.3.3", "1.2.3.30", PatientID="12345",
                   IssuerOfPatientIDQualifiersSequence=Sequence([qualified])),
          tmp_path / "in" / "c.dcm")
    report, priv = _run(tmp_path)
    assert report.counts == {"anonymized": 3}
    ledger = load_ledger(priv)
    assert len(ledger["patients"]) == 3
    assert {p["patient_name"] for p in ledger["patients"].values()} == \
        {"ALPHA^ANNA", "BETA^BERT", "GAMMA^GINA"}
    assert len({r["output"].split("/")[0] for r in report.private_rows.values()}) == 3
    by_instance = {i["sop_instance_uid"]: ledger["patients"][i["pseudonym"]]["patient_name"]
                   for i in ledger["instances"].values()}
    assert by_instance == {"1.2.3.1": "ALPHA^ANNA", "1.2.3.2": "BETA^BERT",
                           "1.2.3.3": "GAMMA^GINA"}


def test_without_an_id_each_study_is_its_own_patient(tmp_path):
    """Two patients without a Patient ID (two studies) are never pooled; two images of one
    study without an ID stay one patient."""
    _save(_patient("ALPHA^ANNA", "1.2.3.1", "1.2.3.10", PatientID=""), tmp_path / "in" / "a.dcm")
    _save(_patient("BETA^BERT", "1.2.3.2", "1.2.3.20", PatientID=""), tmp_path / "in" / "b.dcm")
    _save(_patient("BETA^BERT", "1.2.3.3", "1.2.3.20", PatientID=""), tmp_path / "in" / "c.dcm")
    report, priv = _run(tmp_path)
    assert report.counts == {"anonymized": 3}
    folder = {k: r["output"].split("/")[0] for k, r in report.private_rows.items()}
    assert folder["a.dcm"] != folder["b.dcm"] == folder["c.dcm"]
    ledger = load_ledger(priv)
    assert sorted(p["patient_name"] for p in ledger["patients"].values()) == \
        ["ALPHA^ANNA", "BETA^BERT"]


def test_issuer_less_pseudonyms_did_not_change():
    """An ID without an issuer keeps the pseudonym it always had (HMAC of the ID alone), so
    archives anonymized before issuers were read keep their pseudonyms."""
    salt = b"\x07" * 32
    old = "SP" + hmac.new(salt, b"patient\x00MRN998877", hashlib.sha256).hexdigest()[:10].upper()
    assert patient_pseudonym(salt, "MRN998877") == old


def _crafted_collision(tmp_path: Path) -> Path:
    """A ledger whose entry for the pseudonym of ID 12345 belongs to another identity."""
    priv = prepare_private(tmp_path / "private")
    salt = load_or_create_salt(priv)
    write_private_json(priv / "ledger.json", {"version": 2, "instances": {}, "patients": {
        patient_pseudonym(salt, "12345"): {
            "key": "issuer:[\"HOSP_Z\", \"\", \"\", \"12345\"]", "patient_id": "12345",
            "issuer": ["HOSP_Z", "", ""], "patient_name": "ZETA^ZOE",
            "patient_birth_date": "", "patient_sex": "", "date_shift_days": -400,
            "source": "old/zeta.dcm"}}})
    return priv


def test_the_ledger_refuses_two_identities_for_one_pseudonym(tmp_path, capsys):
    priv = _crafted_collision(tmp_path)
    before = (priv / "ledger.json").read_bytes()
    _save(_patient("ALPHA^ANNA", "1.2.3.1", "1.2.3.10", PatientID="12345"),
          tmp_path / "in" / "alpha.dcm")
    code = main(["anonymize", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                 "--private", str(priv), "--params", NO_PARAMS, "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "alpha.dcm" in errors[0] and "Traceback" not in err
    (detail,) = [line for line in err.splitlines() if "failed: alpha.dcm" in line]
    assert "old/zeta.dcm" in detail and "refused" in detail   # names both files
    assert not list((tmp_path / "out").rglob("*.dcm"))
    ledger = json.loads((priv / "ledger.json").read_text())
    assert json.loads(before)["patients"] == ledger["patients"]   # nothing overwritten
    assert ledger["instances"] == {}


def test_the_ledger_refuses_one_object_for_two_patients(tmp_path):
    """Two files with one SOP Instance UID but two patients: the second is refused, naming
    the first; the first keeps its entry."""
    _save(_patient("ALPHA^ANNA", "1.2.3.1", "1.2.3.10", PatientID="111"),
          tmp_path / "in" / "a.dcm")
    _save(_patient("BETA^BERT", "1.2.3.1", "1.2.3.10", PatientID="222"),
          tmp_path / "in" / "b.dcm")
    report, priv = _run(tmp_path)
    rows = report.private_rows
    assert rows["a.dcm"]["status"] == "anonymized"
    assert rows["b.dcm"]["status"] == "failed" and "a.dcm" in rows["b.dcm"]["reason"] \
        and "b.dcm" in rows["b.dcm"]["reason"]
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 1
    ledger = load_ledger(priv)
    (inst,) = ledger["instances"].values()
    assert ledger["patients"][inst["pseudonym"]]["patient_name"] == "ALPHA^ANNA"


def test_a_changed_name_for_one_identity_keeps_the_first_and_reports(tmp_path):
    """Never overwritten: the first record stays, the other values are listed as a conflict
    and the run says so (a note, not a failure)."""
    _save(_patient("ALPHA^ANNA", "1.2.3.1", "1.2.3.10", PatientID="111"),
          tmp_path / "in" / "a.dcm")
    _save(_patient("ALPHA-MEYER^ANNA", "1.2.3.2", "1.2.3.20", PatientID="111"),
          tmp_path / "in" / "b.dcm")
    report, priv = _run(tmp_path)
    assert report.counts == {"anonymized": 2}
    assert "differ" in report.private_rows["b.dcm"]["note"]
    assert any(line.startswith("  note: b.dcm") for line in report.detail_lines())
    (patient,) = load_ledger(priv)["patients"].values()
    assert patient["patient_name"] == "ALPHA^ANNA"
    assert patient["conflicts"] == [{"patient_name": "ALPHA-MEYER^ANNA",
                                     "patient_birth_date": "", "patient_sex": "",
                                     "source": "b.dcm"}]


def _project(tmp_path: Path) -> tuple[Path, Path, Path, list[str]]:
    """Two patients anonymized, and a semantic model's "predictions" for their images."""
    _save(_patient("ALPHA^ANNA", "1.2.3.1", "1.2.3.10", PatientID="111"),
          tmp_path / "in" / "a.dcm")
    _save(_patient("BETA^BERT", "1.2.3.2", "1.2.3.20", PatientID="222"),
          tmp_path / "in" / "b.dcm")
    report, priv = _run(tmp_path)
    assert report.counts == {"anonymized": 2}
    exported = export_tree(tmp_path / "out", tmp_path / "png", ExportConfig()).exported
    assert len(exported) == 2           # with their provenance records (to-seg reads them)
    ev = tmp_path / "eval"
    (ev / "predictions").mkdir(parents=True)
    images = []
    for name in sorted(exported.values()):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 1
        cv2.imwrite(str(ev / "predictions" / name), mask)
        images.append(name)
    with (ev / "per_image.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file_name", "predicted"])
        writer.writeheader()
        writer.writerows({"file_name": n, "predicted": 1} for n in images)
    # their measures (one number each; the rest withheld), as evaluate writes them
    rows = [{**{c: None for c in COLUMNS}, "file_name": n, "lordosis_deg": 40.0 + k,
             "not_measurable": "L3: missing"} for k, n in enumerate(images)]
    (ev / "measures.csv").write_text(measures_csv(rows))
    return priv, tmp_path / "out", ev, images


def _reidentify(priv: Path, anon: Path, ev: Path, kind: str = "seg") -> dict:
    writer, _ = WRITERS[kind]
    return writer(ev, anon, anon.parent / "png", priv / kind, model="unet", fold=0,
                  private=priv, reidentify=True)


@pytest.mark.parametrize("kind", WRITERS)
def test_reidentification_attaches_each_patient_to_their_own_study(tmp_path, kind):
    priv, anon, ev, _ = _project(tmp_path)
    record = _reidentify(priv, anon, ev, kind)
    objects = [pydicom.dcmread(priv / kind / r[kind]) for r in record["images"]]
    names = {str(ds.PatientName) for ds in objects}
    assert names == {"ALPHA^ANNA", "BETA^BERT"} and len(objects) == 2
    originals = {str(ds.SOPInstanceUID): ds for ds in
                 (pydicom.dcmread(p) for p in (tmp_path / "in").glob("*.dcm"))}
    for ds in objects:    # each object in the study of the image it refers to
        refs = [i.ReferencedSOPInstanceUID for s in ds.get("ReferencedSeriesSequence", [])
                for i in s.ReferencedInstanceSequence] + \
               [i.ReferencedSOPInstanceUID
                for e in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                for s in e.ReferencedSeriesSequence for i in s.ReferencedSOPSequence]
        (source,) = [originals[u] for u in refs if u in originals]
        assert (ds.PatientName, ds.StudyInstanceUID) == (source.PatientName,
                                                         source.StudyInstanceUID)


@pytest.mark.parametrize("damage, error, message", [
    ("missing", MissingInputError, "provenance record not found"),
    ("other_image", InvalidTableError, "provenance record of 'x.png'"),
    ("outside", UnsafePathError, "outside the output folder"),
    ("no_source", InvalidTableError, "no 'source' key"),
    ("gone", MissingInputError, "no anonymized DICOM"),
    ("swapped", InvalidDicomError, "differs from the image's provenance record"),
    # the other image's source and UIDs under this image's name: the name gives it away
    ("swapped_whole", InvalidTableError, "provenance record of another radiograph"),
    ("other_patient", InvalidDicomError, "Patient ID differs"),
])
@pytest.mark.parametrize("kind", WRITERS)
def test_each_image_s_source_is_the_one_its_provenance_record_names(tmp_path, damage, error,
                                                                    message, kind):
    """to-seg and to-sr find a PNG's DICOM through export's record, never by its name: a record that
    is missing, of another image, pointing outside the DICOM tree or at another object is one
    error naming it, and nothing is written: the damaged record is the last image's, so a
    writer that wrote as it went would already have written the first image's object."""
    priv, anon, ev, images = _project(tmp_path)
    record = tmp_path / "png" / "provenance" / f"{Path(images[-1]).stem}.json"
    data = json.loads(record.read_text())
    other = json.loads((record.parent / f"{Path(images[0]).stem}.json").read_text())
    if damage == "missing":
        record.unlink()
    elif damage == "other_image":
        data["image"] = "x.png"
    elif damage == "outside":
        data["source"] = "../in/a.dcm"
    elif damage == "no_source":
        del data["source"]
    elif damage == "gone":
        (anon / data["source"]).unlink()
    elif damage == "swapped":           # the other image's DICOM under this image's record
        data["source"] = other["source"]
    elif damage == "swapped_whole":
        data.update({k: other[k] for k in ("source", "sop_instance_uid", "patient")})
    else:      # a record whose patient matches its name, over a DICOM of another patient
        src = anon / data["source"]
        ds = pydicom.dcmread(src)
        ds.PatientID = other["patient"]
        ds.save_as(src)
    if record.exists():
        record.write_text(json.dumps(data))
    with pytest.raises(error, match=message):
        WRITERS[kind][0](ev, anon, tmp_path / "png", tmp_path / kind, model="unet", fold=0)
    assert not list((tmp_path / kind).glob("*.dcm"))


@pytest.mark.parametrize("kind", WRITERS)
def test_reidentification_without_a_ledger_names_the_stage_that_makes_it(tmp_path, kind):
    priv, anon, ev, _ = _project(tmp_path)
    (priv / "ledger.json").unlink()
    with pytest.raises(MissingInputError) as info:
        _reidentify(priv, anon, ev, kind)
    assert info.value.produced_by == "anonymize" and info.value.file == str(priv / "ledger.json")
    assert not (priv / kind).exists() or not list((priv / kind).glob("*.dcm"))
    assert load_ledger(priv) == {"version": 2, "patients": {}, "instances": {}}  # anonymize's


@pytest.mark.parametrize("tamper", ["instance_points_to_another_patient",
                                    "patient_id_edited", "pseudonym_entry_swapped"])
@pytest.mark.parametrize("kind", WRITERS)
def test_reidentification_refuses_a_mismatched_identity(tmp_path, tamper, kind):
    """The ledger no longer agrees with the anonymized object: nothing is written, one
    InvalidLedgerError; never the other patient's name on a SEG."""
    priv, anon, ev, _ = _project(tmp_path)
    ledger = json.loads((priv / "ledger.json").read_text())
    alpha = next(k for k, p in ledger["patients"].items() if p["patient_name"] == "ALPHA^ANNA")
    beta = next(k for k in ledger["patients"] if k != alpha)
    inst = next(i for i in ledger["instances"].values() if i["pseudonym"] == alpha)
    if tamper == "instance_points_to_another_patient":
        inst["pseudonym"] = beta
    elif tamper == "patient_id_edited":
        ledger["patients"][alpha]["patient_id"] = "222"
    else:   # the two patient entries exchanged: each pseudonym now names the other person
        ledger["patients"][alpha], ledger["patients"][beta] = \
            ledger["patients"][beta], ledger["patients"][alpha]
    write_private_json(priv / "ledger.json", ledger)
    with pytest.raises(InvalidLedgerError, match="refused"):
        _reidentify(priv, anon, ev, kind)
    assert not (priv / kind).exists() or not list((priv / kind).glob("*.dcm"))
    source = next(pydicom.dcmread(p) for p in anon.rglob("*.dcm")
                  if pydicom.dcmread(p).PatientID == alpha)
    with pytest.raises(InvalidLedgerError, match="refused"):
        reidentified_source(source, load_ledger(priv), load_or_create_salt(priv))


def test_an_old_ledger_is_upgraded_and_its_pooled_entry_never_reidentified(tmp_path):
    """A version-1 ledger (pseudonyms from the Patient ID alone): an entry with an ID gets
    its key; the entry of patients without an ID (pooled) refuses re-identification."""
    priv = prepare_private(tmp_path / "private")
    salt = load_or_create_salt(priv)
    pooled, known = patient_pseudonym(salt, ""), patient_pseudonym(salt, "111")
    row = {"sop_instance_uid": "1.2.3.1", "study_instance_uid": "1.2.3.10",
           "new_study_instance_uid": "2.25.1", "accession_number": "",
           "series_instance_uid": "1.2.3.10.1", "new_series_instance_uid": "2.25.2",
           "study_date": "", "study_time": "", "study_id": "", "referring_physician_name": ""}
    write_private_json(priv / "ledger.json", {
        "patients": {pooled: {"patient_id": "", "patient_name": "WHO^EVER", "date_shift_days": 0},
                     known: {"patient_id": "111", "patient_name": "ALPHA^ANNA",
                             "date_shift_days": 0}},
        "instances": {"2.25.10": {**row, "pseudonym": pooled},
                      "2.25.11": {**row, "sop_instance_uid": "1.2.3.2", "pseudonym": known}}})
    ledger = load_ledger(priv)
    assert ledger["version"] == 2 and ledger["patients"][known]["key"] == "id:111"
    anonymized = dicom_image(8, SOPInstanceUID="2.25.11", PatientID=known)
    assert reidentified_source(anonymized, ledger, salt).PatientName == "ALPHA^ANNA"
    pooled_object = dicom_image(8, SOPInstanceUID="2.25.10", PatientID=pooled)
    with pytest.raises(InvalidLedgerError, match="pooled"):
        reidentified_source(pooled_object, ledger, salt)


def test_a_report_of_an_object_without_type_2_patient_attributes(tmp_path):
    """An archive's object need not carry an empty Patient's Birth Date or Study ID: the SR
    writes them empty (Type 2) instead of failing in highdicom."""
    priv, anon, ev, images = _project(tmp_path)
    assert all("PatientBirthDate" not in pydicom.dcmread(p) for p in anon.rglob("*.dcm"))
    record = write_srs(ev, anon, tmp_path / "png", tmp_path / "sr", model="unet", fold=0)
    for row in record["images"]:
        sr = pydicom.dcmread(tmp_path / "sr" / row["sr"])
        assert sr.PatientBirthDate == "" and sr.PatientID.startswith("SP")
