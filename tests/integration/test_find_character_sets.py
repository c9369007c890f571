"""Specific Character Set in C-FIND: requests in ISO_IR 100, ISO_IR 192 and ISO 2022 IR 87
match names stored in any of them; responses say which character set they use."""
from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as STUDY_ROOT

from tests.support import LOOPBACK, ServerThread, make_config, run_tool
from tools.generate_data import PatientInfo, generate_study

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JAPANESE = ["", "ISO 2022 IR 87"]  # PS3.5 H.3.1: ASCII, then JIS X 0208 by escape sequences
YAMADA = "Yamada^Tarou=山田^太郎=やまだ^たろう"

#: accession → (patient name, character set of the stored files).
PATIENTS = {
    "ACC_L": ("Müller^Jürgen", "ISO_IR 100"),
    "ACC_U": ("Gómez^María", "ISO_IR 192"),
    "ACC_J": (YAMADA, "\\ISO 2022 IR 87"),
    "ACC_S": ("SMITH^JOHN", None),
}


def _filled_server(data_dir, fuzzy: bool) -> ServerThread:
    server = ServerThread(make_config(data_dir, query={"fuzzy_person_names": fuzzy})).start()
    ae = AE(ae_title="FILLSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", EXPLICIT_LE)
    assoc = ae.associate(LOOPBACK, server.port, ae_title="PACS")
    for seed, (accession, (name, charset)) in enumerate(PATIENTS.items()):
        patient = PatientInfo(f"P{seed}", name, "19700101", "O", charset)
        for ds in generate_study(seed, profile="tiny", series=1, instances_per_series=1,
                                 patient=patient, AccessionNumber=accession,
                                 PerformingPhysicianName="Schäfer^Jörg"):
            assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    return server


@pytest.fixture(scope="module", params=[False, True], ids=["exact", "fuzzy"])
def archive(request, tmp_path_factory):
    """The PATIENTS stored once per module (queries change nothing), with exact and
    with fuzzy person-name matching."""
    server = _filled_server(tmp_path_factory.mktemp("charsets") / "data", request.param)
    yield server
    server.stop()


def request(charset, **keys) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.AccessionNumber = ""
    for name, value in keys.items():
        setattr(ds, name, value)
    return ds


def find(port: int, identifier: Dataset) -> dict[str, Dataset]:
    """accession → response of a successful C-FIND."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS")
    matches, final = [], None
    for status, ds in assoc.send_c_find(identifier, STUDY_ROOT):
        if status.Status in (0xFF00, 0xFF01):
            matches.append(ds)
        else:
            final = status.Status
    assoc.release()
    assert final == 0x0000
    return {m.AccessionNumber: m for m in matches}


def test_latin1_request_matches_a_utf8_stored_name(archive):
    found = find(archive.port, request("ISO_IR 100", PatientName="Gómez^María"))
    assert list(found) == ["ACC_U"]
    assert found["ACC_U"].SpecificCharacterSet == "ISO_IR 192"
    assert str(found["ACC_U"].PatientName) == "Gómez^María"


def test_utf8_request_matches_a_latin1_stored_name(archive):
    found = find(archive.port, request("ISO_IR 192", PatientName="Müller*"))
    assert list(found) == ["ACC_L"]
    assert str(found["ACC_L"].PatientName) == "Müller^Jürgen"


def test_latin1_wildcard_inside_a_name(archive):
    found = find(archive.port, request("ISO_IR 100", PatientName="*ürg*"))
    assert list(found) == ["ACC_L"]


@pytest.mark.parametrize("charset, key", [
    (JAPANESE, YAMADA),
    (JAPANESE, "=山田*"),
    (JAPANESE, "==やまだ^たろう"),
    ("ISO_IR 192", "=山田^太郎"),
    ("ISO_IR 192", "Yamada^Tarou"),
])
def test_japanese_name_stored_in_iso_2022_ir_87(archive, charset, key):
    found = find(archive.port, request(charset, PatientName=key))
    assert list(found) == ["ACC_J"]
    assert found["ACC_J"].SpecificCharacterSet == "ISO_IR 192"
    assert str(found["ACC_J"].PatientName) == YAMADA


def test_ascii_responses_declare_no_character_set(archive):
    found = find(archive.port, request("ISO_IR 100", PatientName="SMITH^JOHN"))
    assert list(found) == ["ACC_S"] and "SpecificCharacterSet" not in found["ACC_S"]


def test_a_name_read_from_the_stored_file_is_decoded_with_the_file_charset(archive):
    found = find(archive.port, request("ISO_IR 100", PerformingPhysicianName="Schäfer*"))
    assert set(found) == set(PATIENTS)
    assert {str(m.PerformingPhysicianName) for m in found.values()} == {"Schäfer^Jörg"}


def test_fuzzy_matching_folds_across_character_sets(archive):
    found = find(archive.port, request("ISO_IR 100", PatientName="MÜLLER"))
    fuzzy = archive.config.query.fuzzy_person_names
    assert list(found) == (["ACC_L"] if fuzzy else [])


@pytest.mark.parametrize("charset, key, accession", [
    ("ISO_IR 100", "Gómez*", "ACC_U"),
    (JAPANESE, "=山田*", "ACC_J"),
])
def test_findscu_query_file_in_another_character_set(archive, tmp_path, charset, key,
                                                     accession):
    query = request(charset, PatientName=key)
    query_file = tmp_path / "query.dcm"
    query.save_as(query_file, implicit_vr=False, little_endian=True)
    assert key.encode("latin-1" if charset == "ISO_IR 100" else "iso2022_jp") \
        in query_file.read_bytes()  # the request really is in that character set
    out = tmp_path / "responses"
    out.mkdir()
    run_tool("findscu", "-S", "-aec", "PACS", "-X", "-od", str(out), LOOPBACK,
             str(archive.port), str(query_file))
    responses = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
    assert [r.AccessionNumber for r in responses] == [accession]
    assert responses[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(responses[0].PatientName) == PATIENTS[accession][0]


def test_findscu_undeclared_utf8_key_is_read_as_utf8(archive, tmp_path):
    """findscu -k on a UTF-8 terminal sends UTF-8 without Specific Character Set."""
    out = tmp_path / "responses"
    out.mkdir()
    run_tool("findscu", "-S", "-aec", "PACS", "-X", "-od", str(out),
             "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=Müller*",
             "-k", "AccessionNumber", LOOPBACK, str(archive.port))
    responses = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
    assert [r.AccessionNumber for r in responses] == ["ACC_L"]
