"""DICOMweb (PS3.18) with dicomweb-client as the client, checked against the DICOM side.

One archive is filled with C-STORE (pynetdicom); every QIDO-RS search is compared
with the C-FIND of the same keys, every WADO-RS retrieve with the stored files
and with C-GET, and STOW-RS stores are looked up with C-FIND afterwards.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless
from pynetdicom import AE
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as STUDY_FIND,
    StudyRootQueryRetrieveInformationModelGet as STUDY_GET, Verification)

from tests.integration.test_retrieve import fill, get
from tests.support import LOOPBACK, ServerThread, make_config
from tools.generate_data import generate_study

EXPLICIT_LE = "1.2.840.10008.1.2.1"
MULTIPART_DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'

STUDIES = [
    (21, "tiny", 2, 3, dict(PatientID="WPAT1", StudyDate="20240105", AccessionNumber="WACC1",
                            InstitutionName="NORTH CLINIC")),
    (22, "mr", 1, 2, dict(PatientID="WPAT1", StudyDate="20240212", AccessionNumber="WACC2",
                          rows=64, columns=64, InstitutionName="SOUTH CLINIC")),
    (23, "us", 1, 2, dict(PatientID="WPAT2", StudyDate="20240131", AccessionNumber="WACC3",
                          rows=48, columns=64, frames=3, InstitutionName="NORTH CLINIC")),
]


def _j2k_study() -> list[Dataset]:
    """pydicom's MR in JPEG 2000 Lossless, plus a copy of it made into a 2nd instance."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    ds.PatientID = "WPAT3"
    second = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    second.PatientID = "WPAT3"
    second.SOPInstanceUID = ds.SOPInstanceUID + ".2"
    second.file_meta.MediaStorageSOPInstanceUID = second.SOPInstanceUID
    return [ds, second]


@pytest.fixture(scope="module")
def studies():
    generated = [generate_study(seed, profile=profile, series=series, instances_per_series=n,
                                **kw) for seed, profile, series, n, kw in STUDIES]
    return generated + [_j2k_study()]


@pytest.fixture(scope="module")
def server(tmp_path_factory, studies):
    data = tmp_path_factory.mktemp("dicomweb") / "data"
    running = ServerThread(make_config(data, web={"cors_origins": ["http://viewer.test"]},
                                       codec={"workers": 1})).start()
    fill(running.port, [ds for study in studies[:-1] for ds in study])
    fill(running.port, studies[-1])  # one association per transfer syntax of a SOP class
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return DICOMwebClient(f"http://{LOOPBACK}:{server.web_port}/dicomweb")


@pytest.fixture(scope="module")
def base(server):
    return f"http://{LOOPBACK}:{server.web_port}/dicomweb"


# --- the DICOM side, for comparison --------------------------------------------------------
def cfind(port: int, level: str, **keys) -> list[Dataset]:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(STUDY_FIND)
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    found = []
    for status, ds in assoc.send_c_find(identifier, STUDY_FIND):
        if status.Status in (0xFF00, 0xFF01):
            found.append(ds)
        else:
            assert status.Status == 0x0000, hex(status.Status)
    assoc.release()
    return found


def echo_ok(port: int) -> bool:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS")
    try:
        return assoc.is_established and assoc.send_c_echo().Status == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()


def json_value(result: dict, keyword: str):
    element = result.get(f"{pydicom.datadict.tag_for_keyword(keyword):08X}", {})
    values = element.get("Value", [])
    values = [v["Alphabetic"] if isinstance(v, dict) else v for v in values]
    return "\\".join(str(v) for v in values)


def dicom_value(ds: Dataset, keyword: str) -> str:
    if keyword not in ds or ds[keyword].value in (None, ""):
        return ""
    value = ds[keyword].value
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def same_as_cfind(results: list[dict], found: list[Dataset], unique: str,
                  keywords: list[str]) -> None:
    by_uid = {json_value(r, unique): r for r in results}
    assert set(by_uid) == {str(ds[unique].value) for ds in found}
    assert len(by_uid) == len(results)
    for ds in found:
        result = by_uid[str(ds[unique].value)]
        for keyword in keywords:
            assert json_value(result, keyword) == dicom_value(ds, keyword), keyword


STUDY_KEYS = ["PatientID", "PatientName", "StudyDate", "AccessionNumber", "ModalitiesInStudy",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]


# --- QIDO-RS -------------------------------------------------------------------------------
@pytest.mark.parametrize("filters", [
    {},
    {"PatientID": "WPAT1"},
    {"StudyDate": "20240101-20240131"},
    {"StudyDate": "20240201-"},
    {"AccessionNumber": "WACC*"},
    {"ModalitiesInStudy": "MR"},
])
def test_search_for_studies_equals_cfind(server, client, filters):
    results = client.search_for_studies(search_filters=filters)
    found = cfind(server.port, "STUDY", **{**{k: "" for k in STUDY_KEYS},
                                           "StudyInstanceUID": "", **filters})
    assert found
    same_as_cfind(results, found, "StudyInstanceUID", STUDY_KEYS)


def test_search_with_a_uid_list(server, client, studies):
    wanted = [studies[0][0].StudyInstanceUID, studies[2][0].StudyInstanceUID]
    results = client.search_for_studies(search_filters={"StudyInstanceUID": ",".join(wanted)})
    assert {json_value(r, "StudyInstanceUID") for r in results} == set(wanted)


def test_search_patient_name_wildcard(server, client, studies):
    name = str(studies[0][0].PatientName)
    prefix = name[:3] + "*"
    results = client.search_for_studies(search_filters={"PatientName": prefix})
    found = cfind(server.port, "STUDY", StudyInstanceUID="", PatientName=prefix)
    assert {json_value(r, "StudyInstanceUID") for r in results} == \
        {ds.StudyInstanceUID for ds in found}
    assert studies[0][0].StudyInstanceUID in {json_value(r, "StudyInstanceUID") for r in results}


def test_includefield_reads_attributes_the_index_lacks(server, client):
    results = client.search_for_studies(fields=["InstitutionName", "StudyDescription"])
    found = cfind(server.port, "STUDY", StudyInstanceUID="", InstitutionName="",
                  StudyDescription="")
    same_as_cfind(results, found, "StudyInstanceUID", ["InstitutionName", "StudyDescription"])
    assert {json_value(r, "InstitutionName") for r in results} >= {"NORTH CLINIC",
                                                                  "SOUTH CLINIC"}
    matched = client.search_for_studies(search_filters={"InstitutionName": "NORTH*"})
    assert len(matched) == 2


def test_includefield_all(server, base, studies):
    response = requests.get(f"{base}/studies/{studies[0][0].StudyInstanceUID}/series",
                            params={"includefield": "all"}, timeout=30)
    assert response.status_code == 200
    results = response.json()
    assert len(results) == 2
    for key in ("00100020", "00080050", "00080060", "0020000E", "00201209", "00081190"):
        assert key in results[0], key


def test_limit_and_offset_page_through_every_study(server, client):
    everything = {json_value(r, "StudyInstanceUID") for r in client.search_for_studies()}
    pages = [client.search_for_studies(limit=2, offset=offset) for offset in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 2, 0]
    paged = [json_value(r, "StudyInstanceUID") for p in pages for r in p]
    assert len(paged) == len(set(paged)) == len(everything) == 4
    assert set(paged) == everything


def test_series_and_instances_equal_cfind(server, client, studies):
    study = studies[0][0].StudyInstanceUID
    series = client.search_for_series(study)
    found = cfind(server.port, "SERIES", StudyInstanceUID=study, SeriesInstanceUID="",
                  Modality="", SeriesNumber="", NumberOfSeriesRelatedInstances="")
    same_as_cfind(series, found, "SeriesInstanceUID",
                  ["Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances"])
    series_uid = studies[0][0].SeriesInstanceUID
    instances = client.search_for_instances(study, series_uid)
    found = cfind(server.port, "IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series_uid,
                  SOPInstanceUID="", SOPClassUID="", InstanceNumber="", Rows="", Columns="")
    same_as_cfind(instances, found, "SOPInstanceUID",
                  ["SOPClassUID", "InstanceNumber", "Rows", "Columns"])
    assert len(client.search_for_instances(study)) == 6
    # Across studies (relational): every MR series, every instance of one patient.
    mr = client.search_for_series(search_filters={"Modality": "MR"})
    assert {json_value(r, "StudyInstanceUID") for r in mr} == \
        {studies[1][0].StudyInstanceUID, studies[3][0].StudyInstanceUID}
    assert len(client.search_for_instances(search_filters={"PatientID": "WPAT1"})) == 8


def test_search_results_carry_retrieve_urls(server, base, studies):
    results = requests.get(f"{base}/studies", params={"PatientID": "WPAT2"}, timeout=30).json()
    assert json_value(results[0], "RetrieveURL") == \
        f"{base}/studies/{studies[2][0].StudyInstanceUID}"


def test_fuzzymatching_is_refused_with_a_warning(server, base):
    response = requests.get(f"{base}/studies", params={"fuzzymatching": "true"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["Warning"].startswith("299 ")


@pytest.mark.parametrize("params, message", [
    ({"NoSuchAttribute": "x"}, "NoSuchAttribute"),
    ({"limit": "-1"}, "limit"),
    ({"StudyDate": "2024-01-01"}, "StudyDate"),
    ({"includefield": "Nope"}, "Nope"),
])
def test_bad_searches_are_400_with_a_reason(server, base, params, message):
    response = requests.get(f"{base}/studies", params=params, timeout=30)
    assert response.status_code == 400
    assert message in response.json()["error"]


# --- WADO-RS: instances --------------------------------------------------------------------
def stored_file(server, sop_uid: str) -> bytes:
    record = server.archive.reader.instance(sop_uid)
    return server.archive.store.path_of(record.content_hash).read_bytes()


def multipart_parts(response) -> list[tuple[str, bytes]]:
    content_type = response.headers["Content-Type"]
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    parts = []
    for chunk in response.content.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        assert body.endswith(b"\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().strip().split("\r\n"))
        parts.append((headers["Content-Type"], body[:-2]))
    return parts


def test_retrieve_as_stored_gives_the_stored_files_byte_for_byte(server, base, studies):
    study = studies[0][0].StudyInstanceUID
    response = requests.get(f"{base}/studies/{study}", headers={"Accept": MULTIPART_DICOM_ANY},
                            timeout=60)
    assert response.status_code == 200
    parts = multipart_parts(response)
    assert len(parts) == 6
    for content_type, body in parts:
        ds = pydicom.dcmread(io.BytesIO(body))
        assert content_type == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
        assert body == stored_file(server, ds.SOPInstanceUID)


def test_retrieve_study_series_instance_equal_cget(server, client, studies):
    study = studies[0]
    _, via_get = get(server.port, STUDY_GET, _level("STUDY", StudyInstanceUID=study[0]
                                                    .StudyInstanceUID), {study[0].SOPClassUID})
    via_web = client.retrieve_study(study[0].StudyInstanceUID)
    assert {ds.SOPInstanceUID for ds in via_web} == set(via_get) == \
        {ds.SOPInstanceUID for ds in study}
    for ds in via_web:
        reference = via_get[ds.SOPInstanceUID]
        for element in reference:
            assert ds[element.tag].value == element.value, element.keyword
    series = client.retrieve_series(study[0].StudyInstanceUID, study[0].SeriesInstanceUID)
    assert len(series) == 3
    one = client.retrieve_instance(study[0].StudyInstanceUID, study[0].SeriesInstanceUID,
                                   study[0].SOPInstanceUID)
    assert one.PixelData == study[0].PixelData


def _level(name: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = name
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_jpeg2000_stored_is_retrievable_as_explicit_le(server, client, base, studies):
    original = studies[3][0]
    received = client.retrieve_instance(original.StudyInstanceUID, original.SeriesInstanceUID,
                                        original.SOPInstanceUID,
                                        media_types=(("application/dicom", EXPLICIT_LE),))
    assert received.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(received.pixel_array, original.pixel_array)
    # No transfer-syntax parameter: Explicit VR Little Endian (PS3.18 8.7.3.5.2).
    url = (f"{base}/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
           f"/instances/{original.SOPInstanceUID}")
    response = requests.get(url, headers={"Accept": 'multipart/related; '
                                                    'type="application/dicom"'}, timeout=60)
    [(content_type, body)] = multipart_parts(response)
    assert content_type == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    assert pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == EXPLICIT_LE
    as_stored = client.retrieve_instance(
        original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID,
        media_types=(("application/dicom", "*"),))
    assert as_stored.file_meta.TransferSyntaxUID == JPEG2000Lossless


def test_transcoding_accept_gives_equal_pixels(server, client, studies):
    original = studies[0][0]
    received = client.retrieve_instance(
        original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID,
        media_types=(("application/dicom", JPEG2000Lossless),))
    assert received.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert np.array_equal(received.pixel_array, original.pixel_array)


def test_a_syntax_that_would_lose_data_is_406(server, base, studies):
    original = studies[3][0]  # JPEG 2000 Lossless: never re-encoded as lossy JPEG
    url = (f"{base}/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
           f"/instances/{original.SOPInstanceUID}")
    response = requests.get(url, headers={
        "Accept": 'multipart/related; type="application/dicom"; '
                  'transfer-syntax=1.2.840.10008.1.2.4.50'}, timeout=30)
    assert response.status_code == 406
    assert "transfer-syntax=*" in response.json()["error"]
    assert requests.get(url, headers={"Accept": "text/html"}, timeout=30).status_code == 406


def test_unknown_and_invalid_uids(server, base, studies):
    assert requests.get(f"{base}/studies/1.2.3.4.5", timeout=30).status_code == 404
    for bad in ("1.2.x", "01.2", "1." * 40 + "1"):
        response = requests.get(f"{base}/studies/{bad}/series", timeout=30)
        assert response.status_code == 400, bad
        assert "not a valid UID" in response.json()["error"]
    study = studies[0][0]
    response = requests.get(f"{base}/studies/{study.StudyInstanceUID}/series/"
                            f"{studies[1][0].SeriesInstanceUID}/instances/"
                            f"{studies[1][0].SOPInstanceUID}", timeout=30)
    assert response.status_code == 404  # exists, but not in that study


# --- WADO-RS: metadata, frames, bulk data, rendered -----------------------------------------
def test_series_metadata_equals_the_stored_files_and_is_cached(server, client, studies):
    study = studies[0]
    metadata = client.retrieve_series_metadata(study[0].StudyInstanceUID,
                                               study[0].SeriesInstanceUID)
    originals = {ds.SOPInstanceUID: ds for ds in study}
    assert len(metadata) == 3
    for item in metadata:
        ds = Dataset.from_json(item, lambda uri: b"")
        original = originals[ds.SOPInstanceUID]
        for keyword in ("PatientName", "StudyDate", "Rows", "WindowCenter",
                        "ImagePositionPatient", "PixelSpacing", "InstitutionName"):
            assert ds[keyword].value == original[keyword].value, keyword
        assert "BulkDataURI" in item["7FE00010"]
        assert item["7FE00010"]["BulkDataURI"].endswith(
            f"/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010")
    services = _services(server)
    read = services.metadata.files_read
    again = client.retrieve_series_metadata(study[0].StudyInstanceUID,
                                            study[0].SeriesInstanceUID)
    assert again == metadata
    assert services.metadata.files_read == read  # answered from the cache
    study_meta = client.retrieve_study_metadata(study[0].StudyInstanceUID)
    assert len(study_meta) == 6
    one = client.retrieve_instance_metadata(study[0].StudyInstanceUID,
                                            study[0].SeriesInstanceUID, study[0].SOPInstanceUID)
    assert one == next(m for m in metadata if json_value(m, "SOPInstanceUID") ==
                       study[0].SOPInstanceUID)


def _services(server):
    """The WebServices of the running server (through the app's endpoints)."""
    for route in server.server.web.app.routes:
        endpoint = getattr(route, "endpoint", None)
        api = getattr(endpoint, "__self__", None)
        if api is not None and hasattr(api, "services"):
            return api.services
    raise AssertionError("no API routes")


def test_metadata_cache_follows_a_new_instance_in_the_series(server, client, studies):
    study = studies[2]
    before = client.retrieve_series_metadata(study[0].StudyInstanceUID,
                                             study[0].SeriesInstanceUID)
    seed, profile, series, _, kw = STUDIES[2]
    extra = generate_study(seed, profile=profile, series=series, instances_per_series=3,
                           **kw)[2]  # the 3rd instance of the same generated series
    assert extra.SeriesInstanceUID == study[0].SeriesInstanceUID
    client.store_instances([extra])
    services = _services(server)
    read = services.metadata.files_read
    after = client.retrieve_series_metadata(study[0].StudyInstanceUID,
                                            study[0].SeriesInstanceUID)
    assert len(after) == len(before) + 1
    assert services.metadata.files_read == read + 1  # only the new file was read


def test_frames_uncompressed_and_as_stored(server, client, studies):
    multi = studies[2][0]  # 3 frames, native
    frames = client.retrieve_instance_frames(multi.StudyInstanceUID, multi.SeriesInstanceUID,
                                             multi.SOPInstanceUID, [1, 3])
    expected = multi.pixel_array
    assert frames == [expected[0].tobytes(), expected[2].tobytes()]
    j2k = studies[3][0]
    decoded = client.retrieve_instance_frames(
        j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID, [1],
        media_types=(("application/octet-stream", EXPLICIT_LE),))
    assert decoded == [j2k.pixel_array.tobytes()]
    stored = client.retrieve_instance_frames(
        j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID, [1],
        media_types=(("image/jp2", JPEG2000Lossless),))
    assert stored == [next(pydicom.encaps.generate_frames(j2k.PixelData, number_of_frames=1))]


def test_frame_out_of_range_is_404_and_a_bad_list_400(server, base, studies):
    multi = studies[2][0]
    url = (f"{base}/studies/{multi.StudyInstanceUID}/series/{multi.SeriesInstanceUID}"
           f"/instances/{multi.SOPInstanceUID}/frames/")
    assert requests.get(url + "4", timeout=30).status_code == 404
    assert requests.get(url + "0", timeout=30).status_code == 400
    assert requests.get(url + "1,x", timeout=30).status_code == 400


def test_bulkdata_uri_from_metadata_gives_the_pixels(server, client, studies):
    multi = studies[2][0]
    metadata = client.retrieve_instance_metadata(multi.StudyInstanceUID,
                                                 multi.SeriesInstanceUID, multi.SOPInstanceUID)
    uri = metadata["7FE00010"]["BulkDataURI"]
    frames = client.retrieve_bulkdata(uri)
    assert b"".join(frames) == multi.pixel_array.tobytes()


def test_rendered_png_and_jpeg_with_window(server, client, studies):
    from PIL import Image

    original = studies[1][0]
    uids = (original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID)
    png = client.retrieve_instance_rendered(*uids, media_types=("image/png",))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (original.Columns, original.Rows)
    narrow = client.retrieve_instance_rendered(*uids, media_types=("image/png",),
                                               params={"window": "100,50,linear"})
    assert np.asarray(Image.open(io.BytesIO(narrow))).tolist() != np.asarray(image).tolist()
    jpeg = client.retrieve_instance_rendered(*uids, media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    multi = studies[2][0]
    frame = client.retrieve_instance_frames_rendered(
        multi.StudyInstanceUID, multi.SeriesInstanceUID, multi.SOPInstanceUID, [2],
        media_types=("image/png",))
    assert Image.open(io.BytesIO(frame)).size == (multi.Columns, multi.Rows)


def test_rendered_window_is_applied_exactly(server, base, studies):
    from PIL import Image

    original = studies[1][0]
    url = (f"{base}/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
           f"/instances/{original.SOPInstanceUID}/rendered")
    response = requests.get(url, params={"window": "500,200,linear"},
                            headers={"Accept": "image/png"}, timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
    got = np.asarray(Image.open(io.BytesIO(response.content))).astype(int)
    values = original.pixel_array * float(original.get("RescaleSlope", 1)) + \
        float(original.get("RescaleIntercept", 0))
    low, high = 500 - 0.5 - 199 / 2, 500 - 0.5 + 199 / 2
    expected = np.where(values <= low, 0, np.where(values > high, 255, np.rint(
        ((values - 499.5) / 199 + 0.5) * 255)))
    assert np.abs(got - expected).max() <= 1
    for bad in ("1", "a,b", "10,0", "10,20,cubic"):
        assert requests.get(url, params={"window": bad}, timeout=30).status_code == 400


# --- STOW-RS -------------------------------------------------------------------------------
def test_stow_stores_durably_and_cfind_finds_them(server, client):
    study = generate_study(31, profile="tiny", series=1, instances_per_series=3,
                           PatientID="WSTOW1")
    response = client.store_instances(study)
    assert len(response.ReferencedSOPSequence) == 3
    assert "FailedSOPSequence" not in response
    assert response.RetrieveURL.endswith(f"/studies/{study[0].StudyInstanceUID}")
    found = cfind(server.port, "IMAGE", StudyInstanceUID=study[0].StudyInstanceUID,
                  SeriesInstanceUID=study[0].SeriesInstanceUID, SOPInstanceUID="")
    assert {ds.SOPInstanceUID for ds in found} == {ds.SOPInstanceUID for ds in study}
    for ds in study:
        record = server.archive.reader.instance(ds.SOPInstanceUID)
        assert record.calling_ae_title == "DICOMWEB"
        path = server.archive.store.path_of(record.content_hash)
        assert pydicom.dcmread(path).PixelData == ds.PixelData
    # The same files again: identical re-sends, success.
    again = client.store_instances(study)
    assert len(again.ReferencedSOPSequence) == 3


def test_stow_duplicate_follows_the_duplicate_policy(server, base):
    study = generate_study(32, profile="tiny", series=1, instances_per_series=1)
    first = _post(base, [_part10(study[0])])
    assert first.status_code == 200
    changed = study[0].copy()
    changed.StudyDescription = "CHANGED"
    response = _post(base, [_part10(changed)])
    assert response.status_code == 202  # keep-first: stored as a conflict, with a warning
    item = response.json()["00081199"]["Value"][0]
    assert item["00081196"]["Value"] == [0xB000]
    found = cfind(server.port, "STUDY", StudyInstanceUID=study[0].StudyInstanceUID,
                  StudyDescription="")
    assert found[0].StudyDescription != "CHANGED"


def test_stow_reports_bad_parts_per_instance(server, base):
    good = generate_study(33, profile="tiny", series=1, instances_per_series=1)[0]
    boundary = "XYZBOUNDARY"
    body = _multipart([_part10(good), b"this is not DICOM at all" * 20,
                       b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x001.2\x00"
                       + b"\x08\x00\x16\x00"], boundary,
                      extra_part=(b"Content-Type: text/plain\r\n\r\nhello"))
    response = requests.post(f"{base}/studies", data=body, timeout=60, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert response.status_code == 202
    result = response.json()
    assert len(result["00081199"]["Value"]) == 1
    reasons = [item["00081197"]["Value"][0] for item in result["00081198"]["Value"]]
    assert len(reasons) == 3 and all(r >= 0xA000 or r in (0x0110, 0x0122) for r in reasons)
    assert cfind(server.port, "IMAGE", StudyInstanceUID=good.StudyInstanceUID,
                 SeriesInstanceUID=good.SeriesInstanceUID, SOPInstanceUID="")


def test_stow_to_a_study_url_refuses_other_studies(server, base):
    instance = generate_study(34, profile="tiny", series=1, instances_per_series=1)[0]
    response = _post(base, [_part10(instance)], study="1.2.826.0.1.3680043.99.1")
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC409]
    assert server.archive.reader.instance(instance.SOPInstanceUID) is None


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _multipart(parts: list[bytes], boundary: str, extra_part: bytes | None = None) -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + \
            b"\r\n"
    if extra_part is not None:
        out += f"--{boundary}\r\n".encode() + extra_part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _post(base: str, parts: list[bytes], study: str | None = None, **kwargs):
    boundary = "b0undary"
    url = f"{base}/studies" + (f"/{study}" if study else "")
    return requests.post(url, data=_multipart(parts, boundary), timeout=60, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        **kwargs)


# --- bad input --------------------------------------------------------------------------------
def _counts(server):
    stats = server.archive.reader.stats()
    return stats.instances, stats.blobs


def test_bad_uploads_store_nothing_and_dicom_keeps_serving(tmp_path):
    config = make_config(tmp_path / "data", web={"max_upload_bytes": 64 * 1024})
    running = ServerThread(config).start()
    try:
        base = f"http://{LOOPBACK}:{running.web_port}/dicomweb"
        small = generate_study(35, profile="tiny", series=1, instances_per_series=1)[0]
        multipart = 'multipart/related; type="application/dicom"; boundary=b0undary'
        cases = [
            ("wrong content type", {"Content-Type": "application/json"}, b"{}", 415),
            ("json parts", {"Content-Type": 'multipart/related; type="application/dicom+json";'
                                            ' boundary=x'}, b"--x--", 415),
            ("no boundary", {"Content-Type": 'multipart/related; type="application/dicom"'},
             b"", 400),
            ("not multipart at all", {"Content-Type": multipart}, b"garbage" * 100, 400),
            ("cut off", {"Content-Type": multipart},
             _multipart([_part10(small)], "b0undary")[:-40], 400),
            ("declared too big", {"Content-Type": multipart, "Content-Length": str(1 << 30)},
             b"", 413),
        ]
        for name, headers, body, status in cases:
            response = requests.post(f"{base}/studies", data=body, headers=headers, timeout=30)
            assert response.status_code == status, name
            assert response.json()["error"], name

        def endless():  # chunked, no Content-Length: cut off at the limit
            yield b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + _part10(small)
            for _ in range(200):
                yield b"\x00" * 4096

        response = requests.post(f"{base}/studies", data=endless(), timeout=30,
                                 headers={"Content-Type": multipart})
        assert response.status_code == 413
        assert _counts(running) == (0, 0)
        assert not any((tmp_path / "data" / "tmp").iterdir())  # no partial file left
        assert not any(p for p in (tmp_path / "data").rglob("*")
                       if p.is_file() and "objects" in p.parts)
        assert echo_ok(running.port)  # the DICOM side keeps serving
        fill(running.port, [small])
        assert cfind(running.port, "STUDY", StudyInstanceUID=small.StudyInstanceUID)
        ok = _post(base, [_part10(generate_study(36, profile="tiny", series=1,
                                                 instances_per_series=1)[0])])
        assert ok.status_code == 200
    finally:
        running.stop()


# --- authentication and CORS ----------------------------------------------------------------
def test_token_authentication_and_cors(tmp_path):
    import hashlib

    token = "s3cret-token"
    config = make_config(tmp_path / "data", web={
        "authentication": "token", "token_sha256": (hashlib.sha256(token.encode()).hexdigest(),),
        "cors_origins": ("http://viewer.test",)})
    running = ServerThread(config).start()
    try:
        base = f"http://{LOOPBACK}:{running.web_port}/dicomweb"
        missing = requests.get(f"{base}/studies", timeout=30)
        assert missing.status_code == 401 and "Bearer" in missing.headers["WWW-Authenticate"]
        wrong = requests.get(f"{base}/studies", timeout=30,
                             headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        headers = {"Authorization": f"Bearer {token}", "Origin": "http://viewer.test"}
        good = requests.get(f"{base}/studies", headers=headers, timeout=30)
        assert good.status_code == 200 and good.json() == []
        assert good.headers["Access-Control-Allow-Origin"] == "http://viewer.test"
        client = DICOMwebClient(base, headers={"Authorization": f"Bearer {token}"})
        assert client.search_for_studies() == []
        preflight = requests.options(f"{base}/studies", timeout=30, headers={
            "Origin": "http://viewer.test", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == "http://viewer.test"
        other = requests.get(f"{base}/studies", timeout=30, headers={
            "Authorization": f"Bearer {token}", "Origin": "http://elsewhere.test"})
        assert "Access-Control-Allow-Origin" not in other.headers
        unauthorized_cors = requests.get(f"{base}/studies", timeout=30,
                                         headers={"Origin": "http://viewer.test"})
        assert unauthorized_cors.status_code == 401
        assert unauthorized_cors.headers["Access-Control-Allow-Origin"] == "http://viewer.test"
    finally:
        running.stop()


def test_basic_authentication(tmp_path):
    from engine.web.auth import hash_password

    config = make_config(tmp_path / "data", web={
        "authentication": "basic", "user": "viewer",
        "password_hash": hash_password("correct horse", iterations=1000)})
    running = ServerThread(config).start()
    try:
        base = f"http://{LOOPBACK}:{running.web_port}/dicomweb"
        assert requests.get(f"{base}/studies", timeout=30).status_code == 401
        assert requests.get(f"{base}/studies", auth=("viewer", "wrong"),
                            timeout=30).status_code == 401
        assert requests.get(f"{base}/studies", auth=("someone", "correct horse"),
                            timeout=30).status_code == 401
        ok = requests.get(f"{base}/studies", auth=("viewer", "correct horse"), timeout=30)
        assert ok.status_code == 200
    finally:
        running.stop()


def test_cors_headers_for_the_allowed_origin(server, base):
    response = requests.get(f"{base}/studies", headers={"Origin": "http://viewer.test"},
                            timeout=30)
    assert response.headers["Access-Control-Allow-Origin"] == "http://viewer.test"
    assert "Warning" in response.headers.get("Access-Control-Expose-Headers", "")


def test_server_stops_cleanly_with_a_client_connected(tmp_path):
    running = ServerThread(make_config(tmp_path / "data", web={})).start()
    session = requests.Session()
    base = f"http://{LOOPBACK}:{running.web_port}/dicomweb"
    assert session.get(f"{base}/studies", timeout=30).status_code == 200  # kept alive
    running.stop()
    assert not running._thread.is_alive()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/studies", timeout=5)


def test_json_is_dicom_json(server, base):
    response = requests.get(f"{base}/studies", params={"PatientID": "WPAT1"}, timeout=30)
    assert response.headers["Content-Type"] == "application/dicom+json"
    results = json.loads(response.content)
    for result in results:
        assert result["00100010"]["vr"] == "PN"
        assert set(result["00100010"]["Value"][0]) <= {"Alphabetic", "Ideographic", "Phonetic"}
        assert isinstance(result["00201208"]["Value"][0], int)
        assert list(result) == sorted(result)


def test_viewer_routes_are_served_when_the_viewer_is_installed(server):
    import importlib.util

    if importlib.util.find_spec("engine.web.viewer") is None:
        pytest.skip("engine/web/viewer.py is not installed")
    response = requests.get(f"http://{LOOPBACK}:{server.web_port}/", timeout=30)
    assert response.status_code == 200
    assert "text/html" in response.headers["Content-Type"]
