"""Parsing of Storage Commitment N-ACTION information (PS3.4 J.3.2.1.1)."""
from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from engine.net.commitment_service import CommitmentRequest
from engine.query.find import InvalidQuery

CT = "1.2.840.10008.5.1.4.1.1.2"


def action(transaction="1.2.3.4", refs=((CT, "1.2.3.5"),)) -> Dataset:
    ds = Dataset()
    if transaction is not None:
        ds.TransactionUID = transaction
    items = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        if sop_class is not None:
            item.ReferencedSOPClassUID = sop_class
        if sop_instance is not None:
            item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def test_references_in_order():
    request = CommitmentRequest.from_dataset(action(refs=((CT, "1.2.3.5"), (CT, "1.2.3.6"))))
    assert request.transaction_uid == "1.2.3.4"
    assert request.references == ((CT, "1.2.3.5"), (CT, "1.2.3.6"))


@pytest.mark.parametrize("ds", [
    action(transaction=None),
    action(transaction="1.2.03"),          # not a valid UID
    action(refs=()),                        # empty sequence
    action(refs=((CT, None),)),             # item without instance UID
    action(refs=((None, "1.2.3"),)),        # item without class UID
    action(refs=((CT, "../../etc"),)),      # not a UID at all
])
def test_invalid_requests(ds):
    with pytest.raises(InvalidQuery):
        CommitmentRequest.from_dataset(ds)
