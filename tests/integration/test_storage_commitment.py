"""Storage Commitment Push Model SCP with pynetdicom as the modality.

The report says "committed" only for instances the archive reads back intact:
unknown, corrupted and wrong-class references come back in the Failed SOP
Sequence with the right Failure Reason.
"""
from __future__ import annotations

import threading

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_context, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

from tests.support import LOOPBACK, ServerThread, free_port, make_config
from tools.generate_data import generate_study

EXPLICIT_LE = "1.2.840.10008.1.2.1"
WELL_KNOWN = "1.2.840.10008.1.20.1.1"


@pytest.fixture
def study():
    return generate_study(31, profile="tiny", series=1, instances_per_series=3)


@pytest.fixture
def modality_port():
    return free_port()


@pytest.fixture
def archive(tmp_path, study, modality_port):
    config = make_config(tmp_path / "data", retrieve={"destinations": {
        "MODALITY": f"{LOOPBACK}:{modality_port}"}})
    running = ServerThread(config).start()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(study[0].SOPClassUID, EXPLICIT_LE)
    assoc = ae.associate(LOOPBACK, running.port, ae_title="PACS")
    for ds in study:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    yield running
    running.stop()


def request(references) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = generate_uid()
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


class Reports:
    """Collects N-EVENT-REPORTs received by the modality."""

    def __init__(self) -> None:
        self.received: list[tuple[int, Dataset]] = []
        self.arrived = threading.Event()

    def handler(self, event):
        ds = event.event_information
        self.received.append((event.request.EventTypeID, ds))
        self.arrived.set()
        return 0x0000, None


def commit_same_association(port: int, action: Dataset, action_type: int = 1):
    reports = Reports()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS",
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
    assert assoc.is_established
    status, _ = assoc.send_n_action(action, action_type, StorageCommitmentPushModel, WELL_KNOWN)
    if status.Status == 0x0000:
        assert reports.arrived.wait(20), "no N-EVENT-REPORT on the same association"
    assoc.release()
    return status, reports.received


def test_committed_on_the_same_association(archive, study):
    refs = [(ds.SOPClassUID, ds.SOPInstanceUID) for ds in study]
    action = request(refs)
    status, received = commit_same_association(archive.port, action)
    assert status.Status == 0x0000
    ((event_type, report),) = received
    assert event_type == 1
    assert report.TransactionUID == action.TransactionUID
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID)
            for i in report.ReferencedSOPSequence] == refs
    assert "FailedSOPSequence" not in report
    assert report.RetrieveAETitle == "PACS"


def test_failures_unknown_corrupted_and_wrong_class(archive, study):
    corrupted = study[1]
    record = archive.archive.reader.instance(corrupted.SOPInstanceUID)
    path = archive.archive.store.path_of(record.content_hash)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit of pixel data
    path.chmod(0o640)
    path.write_bytes(bytes(data))
    unknown = (study[0].SOPClassUID, generate_uid())
    wrong_class = ("1.2.840.10008.5.1.4.1.1.4", study[2].SOPInstanceUID)
    action = request([(study[0].SOPClassUID, study[0].SOPInstanceUID), unknown,
                      (corrupted.SOPClassUID, corrupted.SOPInstanceUID), wrong_class])
    status, received = commit_same_association(archive.port, action)
    assert status.Status == 0x0000
    ((event_type, report),) = received
    assert event_type == 2
    assert [i.ReferencedSOPInstanceUID for i in report.ReferencedSOPSequence] == \
        [study[0].SOPInstanceUID]
    failures = {i.ReferencedSOPInstanceUID: i.FailureReason for i in report.FailedSOPSequence}
    assert failures == {unknown[1]: 0x0112, corrupted.SOPInstanceUID: 0x0110,
                        study[2].SOPInstanceUID: 0x0119}


def test_report_on_a_new_association_after_release(archive, study, modality_port):
    reports = Reports()
    listener = AE(ae_title="MODALITY")
    context = build_context(StorageCommitmentPushModel)
    context.scu_role, context.scp_role = True, True
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    listener.add_supported_context(Verification)
    server = listener.start_server((LOOPBACK, modality_port), block=False,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(StorageCommitmentPushModel)
        # The report may still win the race with our release and come on this association
        # (PS3.4 allows either); it is collected the same way then.
        assoc = ae.associate(LOOPBACK, archive.port, ae_title="PACS",
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
        action = request([(ds.SOPClassUID, ds.SOPInstanceUID) for ds in study])
        status, _ = assoc.send_n_action(action, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assoc.release()  # right away: the report normally comes on a new association
        assert status.Status == 0x0000
        assert reports.arrived.wait(20), "no report on a new association"
        ((event_type, report),) = reports.received
        assert event_type == 1
        assert report.TransactionUID == action.TransactionUID
        assert len(report.ReferencedSOPSequence) == len(study)
    finally:
        server.shutdown()


def _without_transaction_uid() -> Dataset:
    ds = Dataset()
    ds.ReferencedSOPSequence = []
    return ds


@pytest.mark.parametrize("action_type, action, status", [
    (2, None, 0x0123),                       # no such action
    (1, _without_transaction_uid(), 0x0115),  # no Transaction UID, no references
])
def test_bad_n_action(archive, study, action_type, action, status):
    if action is None:
        action = request([(study[0].SOPClassUID, study[0].SOPInstanceUID)])
    result, received = commit_same_association(archive.port, action, action_type)
    assert result.Status == status
    assert received == []
