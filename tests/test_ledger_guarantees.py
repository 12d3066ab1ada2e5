"""Guarantees of the private folder and the pseudonym ledger (converters/dicom/ledger.py).

Class of defect guarded: a salt that is recreated, readable by others or accepted when
damaged; pseudonyms or date shifts that change between runs, collide across identity kinds or
leave their documented range; a ledger entry overwritten, merged or silently accepted when it
contradicts the first record; re-identification that trusts an edited ledger.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import stat

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from converters.core.errors import InvalidDicomError, InvalidLedgerError, UnsafeLocationError
from converters.dicom.ledger import (LEDGER_VERSION, date_shift_days, identity_key, load_ledger,
                                     load_or_create_salt, load_salt, mac, patient_identity,
                                     patient_pseudonym, prepare_private, pseudonym_of,
                                     read_private_json, record_instance, verified_identity,
                                     write_private_json)

SALT = bytes(range(32))


@pytest.fixture
def private(tmp_path):
    return prepare_private(tmp_path / "private")


def test_the_private_folder_is_closed_and_refused_inside_public_trees(tmp_path, private):
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    with pytest.raises(UnsafeLocationError):
        prepare_private(tmp_path / "out" / "private", forbidden=[tmp_path / "out"])
    with pytest.raises(UnsafeLocationError):
        prepare_private(tmp_path / "out", forbidden=[tmp_path / "out"])
    with pytest.raises(UnsafeLocationError, match="data/"):
        prepare_private(tmp_path / "data" / "private")
    assert prepare_private(tmp_path / "elsewhere", forbidden=[tmp_path / "out"]).is_dir()


def test_the_salt_is_made_once_private_and_kept(private):
    salt = load_or_create_salt(private)
    assert len(salt) == 32
    assert stat.S_IMODE((private / "salt").stat().st_mode) == 0o600
    assert load_or_create_salt(private) == salt == load_salt(private)
    assert load_or_create_salt(prepare_private(private.parent / "x")) != salt  # random


@pytest.mark.parametrize("content", ["", "zz", "00" * 15])
def test_a_damaged_salt_is_refused_not_replaced(private, content):
    (private / "salt").write_text(content)
    for load in (load_or_create_salt, load_salt):
        with pytest.raises(InvalidLedgerError, match="salt is damaged"):
            load(private)
    assert (private / "salt").read_text() == content
    (private / "salt").write_text("00" * 16)
    assert load_salt(private) == bytes(16)


def test_reidentification_never_creates_a_salt(private):
    with pytest.raises(InvalidLedgerError, match="no salt"):
        load_salt(private)
    assert not (private / "salt").exists()


def test_private_json_round_trip_and_damage(private):
    assert read_private_json(private / "x.json", {"d": 1}) == {"d": 1}
    write_private_json(private / "x.json", {"b": 1, "a": [2]})
    assert read_private_json(private / "x.json", None) == {"a": [2], "b": 1}
    assert stat.S_IMODE((private / "x.json").stat().st_mode) == 0o600
    (private / "x.json").write_bytes(b"{not json")
    with pytest.raises(InvalidLedgerError) as err:
        read_private_json(private / "x.json", None)
    assert err.value.file == str(private / "x.json")


def test_mac_is_hmac_sha256_with_a_domain():
    assert mac(SALT, "patient", "123") == hmac.new(SALT, b"patient\x00123",
                                                   hashlib.sha256).digest()
    assert mac(SALT, "patient", "123") != mac(SALT, "patient-study", "123")


def test_identity_keys_of_each_kind():
    assert identity_key("123", ("", "", ""), "1.2") == "id:123"
    assert identity_key("", ("A", "", ""), "1.2") == "study:1.2"
    assert identity_key("123", ("", "U", "ISO"), "1.2") == \
        "issuer:" + json.dumps(["", "U", "ISO", "123"])


def test_pseudonyms_are_stable_keyed_and_separate_per_kind():
    p = pseudonym_of(SALT, "id:123")
    assert re.fullmatch(r"SP[0-9A-F]{10}", p)
    assert p == "SP" + mac(SALT, "patient", "123").hex()[:10].upper()
    assert patient_pseudonym(SALT, "123") == p
    assert pseudonym_of(bytes(32), "id:123") != p
    assert pseudonym_of(SALT, "study:123") == "SP" + mac(SALT, "patient-study",
                                                         "123").hex()[:10].upper()
    issuer = "issuer:" + json.dumps(["A", "", "", "123"])
    assert pseudonym_of(SALT, issuer) == "SP" + mac(SALT, "patient-issuer",
                                                    json.dumps(["A", "", "", "123"])
                                                    ).hex()[:10].upper()
    assert patient_pseudonym(SALT, "123", ("A", "", "")) == pseudonym_of(SALT, issuer)


def test_date_shifts_are_per_patient_within_one_to_ten_years():
    shifts = [date_shift_days(SALT, f"id:{i}") for i in range(300)]
    assert all(-3650 <= s <= -365 for s in shifts)
    assert min(shifts) < -3500 and max(shifts) > -500      # the whole range is used
    value = int.from_bytes(mac(SALT, "dates", "1")[:4], "big")
    assert date_shift_days(SALT, "id:1") == -(365 + value % 3286)
    study = int.from_bytes(mac(SALT, "dates-study", "1")[:4], "big")
    assert date_shift_days(SALT, "study:1") == -(365 + study % 3286)


def _ds(**values) -> Dataset:
    ds = Dataset()
    for k, v in values.items():
        setattr(ds, k, v)
    return ds


def test_patient_identity_reads_issuer_and_falls_back_to_the_study():
    item = _ds(UniversalEntityID=" U1 ", UniversalEntityIDType="ISO")
    ds = _ds(PatientID=" 123 ", IssuerOfPatientID="HOSP",
             IssuerOfPatientIDQualifiersSequence=Sequence([item]), StudyInstanceUID="1.2")
    ident = patient_identity(ds)
    assert ident.patient_id == "123" and ident.issuer == ("HOSP", "U1", "ISO")
    assert ident.key == "issuer:" + json.dumps(["HOSP", "U1", "ISO", "123"])
    no_id = patient_identity(_ds(IssuerOfPatientID="HOSP", StudyInstanceUID="1.2"))
    assert no_id.key == "study:1.2" and no_id.issuer == ("", "", "")
    with pytest.raises(InvalidDicomError) as err:
        patient_identity(_ds(PatientName="X"), file="a.dcm")
    assert err.value.file == "a.dcm" and err.value.tag == "(0010,0020)"


def _row(pseudonym="SP1", key="id:1", sop="9.1", new_sop="8.1", **extra):
    row = {"pseudonym": pseudonym, "patient_key": key, "patient_id": key[3:],
           "issuer": ("", "", ""), "date_shift_days": -400, "sop_instance_uid": sop,
           "new_sop_instance_uid": new_sop, "patient_name": "DOE^J",
           "patient_birth_date": "19600101", "patient_sex": "F",
           "series_instance_uid": "7.1", "study_date": "20200101",
           "study_instance_uid": "6.1"}
    row.update(extra)
    return row


def test_a_ledger_never_overwrites_and_records_conflicts_once():
    ledger = {"version": LEDGER_VERSION, "patients": {}, "instances": {}}
    assert record_instance(ledger, _row(), "a.dcm") == ""
    first = json.loads(json.dumps(ledger))
    assert ledger["patients"]["SP1"]["source"] == "a.dcm"
    assert ledger["instances"]["8.1"]["sop_instance_uid"] == "9.1"
    note = record_instance(ledger, _row(new_sop="8.2", sop="9.2", patient_name="ROE^J"), "b.dcm")
    assert "SP1" in note
    record_instance(ledger, _row(new_sop="8.3", sop="9.3", patient_name="ROE^J"), "c.dcm")
    patient = ledger["patients"]["SP1"]
    assert patient["patient_name"] == "DOE^J"                 # the first record stays
    assert patient["conflicts"] == [{"patient_name": "ROE^J", "patient_birth_date": "19600101",
                                     "patient_sex": "F", "source": "b.dcm"}]
    assert record_instance(ledger, _row(), "a-again.dcm") == ""  # the same object again
    assert ledger["instances"]["8.1"] == first["instances"]["8.1"]


def test_a_ledger_refuses_collisions_and_changes_nothing():
    ledger = {"version": LEDGER_VERSION, "patients": {}, "instances": {}}
    record_instance(ledger, _row(), "a.dcm")
    before = json.dumps(ledger, sort_keys=True)
    with pytest.raises(InvalidLedgerError, match="a.dcm.*b.dcm"):
        record_instance(ledger, _row(key="id:2", new_sop="8.9"), "b.dcm")
    with pytest.raises(InvalidLedgerError, match="8.1"):
        record_instance(ledger, _row(pseudonym="SP2", key="id:2"), "c.dcm")
    with pytest.raises(InvalidLedgerError, match="8.1"):
        record_instance(ledger, _row(sop="9.9"), "d.dcm")
    assert json.dumps(ledger, sort_keys=True) == before


def test_load_ledger_versions(private):
    assert load_ledger(private) == {"version": LEDGER_VERSION, "patients": {}, "instances": {}}
    (private / "ledger.json").write_text(json.dumps({"version": 3, "patients": {},
                                                     "instances": {}}))
    with pytest.raises(InvalidLedgerError, match="version 3"):
        load_ledger(private)
    (private / "ledger.json").write_text(json.dumps({"patients": []}))
    with pytest.raises(InvalidLedgerError, match="not a pseudonym ledger"):
        load_ledger(private)
    old = {"patients": {"SPA": {"patient_id": "7"}, "SPB": {"patient_id": ""}},
           "instances": {"8.1": {"pseudonym": "SPA"}}}
    (private / "ledger.json").write_text(json.dumps(old))
    up = load_ledger(private)
    assert up["version"] == LEDGER_VERSION
    assert up["patients"]["SPA"]["key"] == "id:7" and not up["patients"]["SPA"].get("pooled")
    assert up["patients"]["SPB"]["pooled"] is True
    assert up["instances"]["8.1"]["patient_key"] == "id:7"


def _ledger():
    key = "id:1"
    ledger = {"version": LEDGER_VERSION, "patients": {}, "instances": {}}
    record_instance(ledger, _row(pseudonym=pseudonym_of(SALT, key), key=key), "a.dcm")
    return ledger, pseudonym_of(SALT, key)


def test_reidentification_accepts_only_a_consistent_ledger():
    ledger, p = _ledger()
    patient, inst = verified_identity(ledger, "8.1", p, SALT)
    assert patient["patient_id"] == "1" and inst["sop_instance_uid"] == "9.1"
    with pytest.raises(InvalidLedgerError, match="no entry"):
        verified_identity(ledger, "8.2", p, SALT)
    with pytest.raises(InvalidLedgerError, match="carries patient"):
        verified_identity(ledger, "8.1", "SP0000000000", SALT)
    with pytest.raises(InvalidLedgerError, match="does not match its key"):
        verified_identity(ledger, "8.1", p, bytes(32))          # another salt
    for tamper in ({"patient_id": "2"}, {"key": "id:2"}, {"key": ""}, {"pooled": True}):
        edited, p = _ledger()
        edited["patients"][p].update(tamper)
        with pytest.raises(InvalidLedgerError, match="refused"):
            verified_identity(edited, "8.1", p, SALT)
    old, p = _ledger()
    del old["instances"]["8.1"]["study_date"]
    with pytest.raises(InvalidLedgerError, match="predates"):
        verified_identity(old, "8.1", p, SALT)


def test_keys_and_pseudonyms_of_ids_with_colons_and_non_ascii_issuers():
    # a Patient ID may hold ":"; the key's kind is what precedes the first one
    assert pseudonym_of(SALT, "id:12:34") == "SP" + mac(SALT, "patient", "12:34").hex()[:10].upper()
    assert date_shift_days(SALT, "id:12:34") == date_shift_days(SALT, "id:" + "12:34")
    assert date_shift_days(SALT, "id:12:34") == \
        -(365 + int.from_bytes(mac(SALT, "dates", "12:34")[:4], "big") % 3286)
    key = identity_key("7", ("Hôpital", "", ""), "")
    assert key.isascii() and key == 'issuer:["H\\u00f4pital", "", "", "7"]'


def test_every_error_names_the_file_it_is_about(private):
    (private / "ledger.json").write_text("{broken")
    for call in (lambda: load_ledger(private), lambda: read_private_json(private / "ledger.json",
                                                                        None)):
        with pytest.raises(InvalidLedgerError, match="cannot read \\(JSONDecodeError\\)") as err:
            call()
        assert err.value.file == str(private / "ledger.json")
    for bad in ({"patients": {}}, {"version": 9, "patients": {}, "instances": {}}):
        (private / "ledger.json").write_text(json.dumps(bad))
        with pytest.raises(InvalidLedgerError) as err:
            load_ledger(private)
        assert err.value.file == str(private / "ledger.json")
    with pytest.raises(InvalidLedgerError) as err:
        load_salt(private)
    assert err.value.file == str(private / "salt")
    (private / "salt").write_text("00")
    with pytest.raises(InvalidLedgerError) as err:
        load_salt(private)
    assert err.value.file == str(private / "salt")


def test_a_private_folder_inside_a_public_tree_is_named(tmp_path):
    with pytest.raises(UnsafeLocationError, match="must not be inside .*out"):
        prepare_private(tmp_path / "out" / "p", forbidden=[tmp_path / "out"])


def test_an_old_ledger_upgrade_records_what_it_assumed(private):
    old = {"patients": {"SPA": {"patient_id": "7", "source": "first.dcm"}, "SPB": {},
                        "SPC": {"key": "id:9", "patient_id": "9"}, "SPD": "damaged"},
           "instances": {"8.1": {"pseudonym": "SPA"}, "8.2": {"pseudonym": "SPB",
                                                              "source": "b.dcm"},
                         "8.3": {"pseudonym": "SPX"}, "8.4": {"pseudonym": "SPC",
                                                             "patient_key": "id:9"}}}
    (private / "ledger.json").write_text(json.dumps(old))
    up = load_ledger(private)
    a, b = up["patients"]["SPA"], up["patients"]["SPB"]
    assert (a["key"], a["issuer"], a["legacy"], a["source"]) == ("id:7", ["", "", ""], True,
                                                                  "first.dcm")
    assert (b["key"], b["issuer"], b["legacy"], b["source"], b["pooled"]) == \
        ("id:", ["", "", ""], True, "an earlier run", True)
    assert up["patients"]["SPC"] == {"key": "id:9", "patient_id": "9"}    # left as it was
    assert up["patients"]["SPD"] == "damaged"
    inst = up["instances"]
    assert (inst["8.1"]["patient_key"], inst["8.1"]["source"]) == ("id:7", "an earlier run")
    assert (inst["8.2"]["patient_key"], inst["8.2"]["source"]) == ("id:", "b.dcm")
    assert inst["8.3"]["patient_key"] == ""                     # its patient is unknown
    assert inst["8.4"] == {"pseudonym": "SPC", "patient_key": "id:9"}


def test_a_new_entry_records_every_field_and_blanks_what_is_missing():
    ledger = {"version": LEDGER_VERSION, "patients": {}, "instances": {}}
    row = _row(issuer=("H", "U", "ISO"), date_shift_days=-999)
    del row["patient_sex"]                                  # study_time etc.: never given
    record_instance(ledger, row, "a.dcm")
    assert ledger["patients"]["SP1"] == {
        "key": "id:1", "patient_id": "1", "issuer": ["H", "U", "ISO"], "patient_name": "DOE^J",
        "patient_birth_date": "19600101", "patient_sex": "", "date_shift_days": -999,
        "source": "a.dcm"}
    inst = ledger["instances"]["8.1"]
    assert inst["study_time"] == "" and inst["accession_number"] == ""
    assert inst["series_instance_uid"] == "7.1" and inst["source"] == "a.dcm"
    assert set(inst) == {"pseudonym", "patient_key", "source", "sop_instance_uid",
                         "study_instance_uid", "new_study_instance_uid", "accession_number",
                         "series_instance_uid", "new_series_instance_uid", "study_date",
                         "study_time", "study_id", "referring_physician_name"}


def test_details_missing_on_both_sides_are_no_conflict_and_repeats_are_kept_once():
    ledger = {"version": LEDGER_VERSION, "patients": {}, "instances": {}}
    row = _row()
    del row["patient_sex"]
    record_instance(ledger, row, "a.dcm")
    del ledger["patients"]["SP1"]["patient_sex"]            # an older entry without it
    again = _row(new_sop="8.2", sop="9.2")
    del again["patient_sex"]
    assert record_instance(ledger, again, "b.dcm") == ""
    changed = _row(new_sop="8.3", sop="9.3", patient_sex="M")
    assert record_instance(ledger, changed, "c.dcm")
    ledger["patients"]["SP1"]["conflicts"][0].pop("patient_name")  # an older conflict
    record_instance(ledger, _row(new_sop="8.4", sop="9.4", patient_sex="M"), "d.dcm")
    record_instance(ledger, _row(new_sop="8.5", sop="9.5", patient_sex="M",
                                 patient_name=""), "e.dcm")
    assert [c["source"] for c in ledger["patients"]["SP1"]["conflicts"]] == ["c.dcm", "d.dcm"]


def test_refusals_name_the_first_record_or_say_it_is_older():
    ledger = {"version": LEDGER_VERSION, "patients": {}, "instances": {}}
    record_instance(ledger, _row(), "a.dcm")
    del ledger["patients"]["SP1"]["source"]
    del ledger["instances"]["8.1"]["source"]
    with pytest.raises(InvalidLedgerError) as err:
        record_instance(ledger, _row(key="id:2", new_sop="8.9"), "b.dcm")
    assert "patient of an earlier run, and b.dcm" in str(err.value)
    assert "before identity keys" not in str(err.value)
    with pytest.raises(InvalidLedgerError) as err:
        record_instance(ledger, _row(pseudonym="SP2", key="id:2"), "c.dcm")
    assert "recorded for an earlier run (patient SP1)" in str(err.value)
    ledger["patients"]["SP1"]["legacy"] = True
    with pytest.raises(InvalidLedgerError, match="before identity keys: anonymize into a new "
                                                 "output with a new private folder"):
        record_instance(ledger, _row(key="id:2", new_sop="8.9"), "b.dcm")


def test_reidentification_reads_older_entries_and_names_the_recorded_patient():
    ledger, p = _ledger()
    patient, inst = verified_identity(ledger, "8.1", p)     # without the salt: no HMAC check
    assert patient["key"] == "id:1"
    with pytest.raises(InvalidLedgerError, match=f"records it for {p}"):
        verified_identity(ledger, "8.1", "SP0000000000")
    ledger2, p2 = _ledger()
    ledger2["patients"][p2]["issuer"] = None                 # an entry without an issuer
    assert verified_identity(ledger2, "8.1", p2, SALT)[0]["patient_id"] == "1"
    key = "study:6.1"
    nopid = {"version": LEDGER_VERSION, "patients": {}, "instances": {}}
    record_instance(nopid, _row(pseudonym=pseudonym_of(SALT, key), key=key, patient_id=""),
                    "a.dcm")
    del nopid["patients"][pseudonym_of(SALT, key)]["patient_id"]
    assert verified_identity(nopid, "8.1", pseudonym_of(SALT, key), SALT)[1]["sop_instance_uid"] \
        == "9.1"
    del nopid["instances"]["8.1"]["study_instance_uid"]
    with pytest.raises(InvalidLedgerError, match="does not match its key"):
        verified_identity(nopid, "8.1", pseudonym_of(SALT, key), SALT)
    with pytest.raises(InvalidLedgerError, match="no entry"):
        verified_identity({}, "8.1", p)
    orphan, p3 = _ledger()
    orphan["patients"].clear()
    with pytest.raises(InvalidLedgerError, match="predates"):
        verified_identity(orphan, "8.1", p3)


def test_private_json_is_sorted_and_indented(private):
    write_private_json(private / "x.json", {"b": {"d": 1, "c": 2}, "a": 1})
    assert (private / "x.json").read_text() == '{\n "a": 1,\n "b": {\n  "c": 2,\n  "d": 1\n }\n}'


def test_more_ledger_edges_are_refused_in_words(private):
    (private / "ledger.json").mkdir()
    with pytest.raises(InvalidLedgerError, match="cannot read \\(IsADirectoryError\\)") as err:
        load_ledger(private)
    assert err.value.file == str(private / "ledger.json")
    with pytest.raises(InvalidDicomError, match="neither a Patient ID nor a Study Instance UID"):
        patient_identity(_ds(PatientName="X"), file="a.dcm")
    ledger, p = _ledger()
    del ledger["patients"]
    with pytest.raises(InvalidLedgerError, match="predates"):
        verified_identity(ledger, "8.1", p)
    ledger, p = _ledger()
    with pytest.raises(InvalidLedgerError, match="^SOP Instance UID 8.1 carries patient"):
        verified_identity(ledger, "8.1", "SP0000000000")


def test_an_issuer_keyed_patient_is_reidentified_with_its_issuer():
    issuer = ("HOSP", "U1", "ISO")
    key = identity_key("1", issuer, "6.1")
    ledger = {"version": LEDGER_VERSION, "patients": {}, "instances": {}}
    p = pseudonym_of(SALT, key)
    record_instance(ledger, _row(pseudonym=p, key=key, issuer=issuer, patient_id="1"), "a.dcm")
    assert verified_identity(ledger, "8.1", p, SALT)[0]["issuer"] == list(issuer)
    ledger["patients"][p]["issuer"] = ["OTHER", "U1", "ISO"]
    with pytest.raises(InvalidLedgerError, match="does not match its key"):
        verified_identity(ledger, "8.1", p, SALT)


def test_a_conflict_blanks_the_details_the_later_object_lacks():
    ledger = {"version": LEDGER_VERSION, "patients": {}, "instances": {}}
    record_instance(ledger, _row(), "a.dcm")
    later = _row(new_sop="8.2", sop="9.2", patient_name="ROE^J")
    del later["patient_sex"]
    record_instance(ledger, later, "b.dcm")
    assert ledger["patients"]["SP1"]["conflicts"] == [
        {"patient_name": "ROE^J", "patient_birth_date": "19600101", "patient_sex": "",
         "source": "b.dcm"}]
