"""Requestor negotiation, P-DATA output framing and sub-operation context planning (no I/O)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.net.acse import AcceptorPolicy, AssociationNegotiator
from engine.net.outbound import (
    DatasetUnavailable, StoredDataset, p_data_buffers, send_message)
from engine.net.pdu_framing import PDUFramer
from engine.net.requestor import (
    MAX_PRESENTATION_CONTEXTS, ProposedContext, associate_rq_pdu, read_associate_ac)
from engine.net.retrieve_service import proposed_contexts
from engine.query.retrieve import StoredInstance

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT, IMPLICIT, J2K = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.90"


def negotiate(contexts):
    raw, proposed = associate_rq_pdu("MOVER", "PACS", contexts, 65536)
    result = AssociationNegotiator(AcceptorPolicy("PACS", 1 << 20)).negotiate(raw)
    assert result.accepted
    return read_associate_ac(result.response, proposed)


def test_requestor_negotiates_with_our_acceptor():
    peer_max, accepted = negotiate([ProposedContext(CT, (J2K,)),
                                    ProposedContext(CT, (EXPLICIT, IMPLICIT)),
                                    ProposedContext("1.2.3.4.5.6", (EXPLICIT,))])
    assert peer_max == 1 << 20
    assert set(accepted) == {1, 3}  # the unknown SOP class is refused
    assert accepted[1].transfer_syntax == J2K and accepted[1].as_scu
    assert accepted[3].abstract_syntax == CT
    assert accepted[3].transfer_syntax in (EXPLICIT, IMPLICIT)


def test_role_selection_lets_the_acceptor_be_storage_scu():
    """What a C-GET requestor proposes: us (the acceptor) as SCU of the storage class."""
    raw, _ = associate_rq_pdu("GETSCU", "PACS", [ProposedContext(CT, (EXPLICIT,), scp_role=True)],
                              65536)
    result = AssociationNegotiator(AcceptorPolicy("PACS", 1 << 20)).negotiate(raw)
    (context,) = result.contexts.values()
    assert context.as_scu and not context.as_scp


def test_without_role_selection_we_are_never_storage_scu():
    raw, _ = associate_rq_pdu("STORESCU", "PACS", [ProposedContext(CT, (EXPLICIT,))], 65536)
    (context,) = AssociationNegotiator(AcceptorPolicy("PACS", 1 << 20)).negotiate(
        raw).contexts.values()
    assert context.as_scp and not context.as_scu


def test_too_many_contexts_refused():
    with pytest.raises(ValueError):
        associate_rq_pdu("A", "B", [ProposedContext(CT, (EXPLICIT,))] *
                         (MAX_PRESENTATION_CONTEXTS + 1), 65536)


def _reassemble(buffers, max_pdu):
    framer = PDUFramer(max(max_pdu, 1 << 16) if max_pdu else 1 << 31)
    data = b"".join(bytes(b) for b in buffers)
    events = framer.feed(data)
    for pdu_type, _, _, _ in events:
        assert pdu_type == 4
    return events


@given(st.binary(max_size=5000), st.sampled_from([0, 4096, 4102, 16384]), st.booleans())
def test_p_data_buffers_frame_exactly(payload, max_pdu, last):
    buffers = p_data_buffers(5, False, payload, max_pdu, last)
    events = _reassemble(buffers, max_pdu)
    assert b"".join(bytes(e[3]) for e in events) == payload
    assert all(e[1] == 5 for e in events)
    assert [bool(e[2] & 2) for e in events] == [False] * (len(events) - 1) + [last]
    if max_pdu:
        assert all(len(e[3]) <= max_pdu - 6 for e in events)


class _Sink:
    def __init__(self):
        self.closed = False
        self.buffers = []

    def write_buffers(self, buffers):
        self.buffers.extend(bytes(b) for b in buffers)

    async def wait_writable(self):
        pass


@pytest.mark.parametrize("length", [0, 1, 5000, (1 << 20) + 77, 3 << 20])
def test_stored_dataset_streams_exactly_its_range(tmp_path: Path, length):
    path = tmp_path / "blob"
    body = bytes(range(256)) * ((length + 300) // 256 + 1)
    path.write_bytes(b"H" * 300 + body)
    sink = _Sink()
    asyncio.run(send_message(sink, 3, b"\x00" * 10, StoredDataset(path, 300, length), 16384))
    events = _reassemble(sink.buffers, 16384)
    command = [e for e in events if e[2] & 1]
    dataset = [e for e in events if not e[2] & 1]
    assert b"".join(bytes(e[3]) for e in command) == b"\x00" * 10
    assert b"".join(bytes(e[3]) for e in dataset) == body[:length]
    assert dataset[-1][2] & 2 and not any(e[2] & 2 for e in dataset[:-1])


def test_missing_or_short_file_is_refused_before_anything_is_sent(tmp_path: Path):
    sink = _Sink()
    with pytest.raises(DatasetUnavailable):
        asyncio.run(send_message(sink, 1, b"cmd", StoredDataset(tmp_path / "nope", 0, 10), 0))
    (tmp_path / "short").write_bytes(b"x" * 20)
    with pytest.raises(DatasetUnavailable):
        asyncio.run(send_message(sink, 1, b"cmd", StoredDataset(tmp_path / "short", 10, 11), 0))
    assert sink.buffers == []


def _instance(sop_class, ts, n=0):
    return StoredInstance(f"1.2.{n}", sop_class, ts, Path("/x"), 0, 0)


def test_proposed_contexts_offer_stored_syntax_and_uncompressed_fallback():
    (group,) = proposed_contexts([_instance(CT, J2K, 1), _instance(CT, EXPLICIT, 2),
                                  _instance(MR, EXPLICIT, 3)])
    assert group == [ProposedContext(CT, (J2K,)), ProposedContext(CT, (EXPLICIT,)),
                     ProposedContext(CT, (EXPLICIT, IMPLICIT)), ProposedContext(MR, (EXPLICIT,))]


def test_proposed_contexts_split_beyond_128():
    instances = [_instance(f"1.2.840.10008.5.1.4.1.1.{n}", J2K, n) for n in range(100)]
    groups = proposed_contexts(instances)
    assert len(groups) == 2
    assert all(len(g) <= MAX_PRESENTATION_CONTEXTS for g in groups)
    assert sum(len(g) for g in groups) == 200
