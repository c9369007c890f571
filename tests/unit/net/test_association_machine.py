"""The acceptor's Upper Layer state machine, driven with real PDU bytes (no sockets)."""
from __future__ import annotations

import struct

import pytest
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ

from engine.dicom.tags import (
    CMD_AFFECTED_SOP_CLASS_UID, CMD_AFFECTED_SOP_INSTANCE_UID, CMD_COMMAND_FIELD,
    CMD_DATA_SET_TYPE, CMD_MESSAGE_ID, CMD_PRIORITY, NO_DATASET)
from engine.errors import MalformedPDU, PDUError, PDUTooLarge
from engine.net.acse import (
    ABORT_INVALID_PDU_PARAMETER, ABORT_UNEXPECTED_PDU, AcceptorPolicy, AssociationNegotiator,
    supported_contexts)
from engine.net.association import (
    AssociationMachine, CommandReceived, DatasetFragment, Established, PeerAborted,
    ProtocolViolation, Rejected, ReleaseRequested, SendPDU, State)
from engine.net.dimse import C_ECHO_RQ, C_STORE_RQ, encode_command
from engine.net.pdu_framing import encode_p_data
from tests.rawclient import associate_rq_bytes

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
CONTEXTS = [(VERIFICATION, [IMPLICIT_LE]), (CT_IMAGE, [EXPLICIT_LE, IMPLICIT_LE])]
VERIFICATION_ID, CT_ID = 1, 3  # context IDs associate_rq_bytes gives CONTEXTS
OUR_MAX_PDU = 1 << 20
SOP_INSTANCE = "1.2.826.0.1.3680043.2.1125.1.1"

A_RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
A_RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
A_ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"
A_ASSOCIATE_RJ_PDU = b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x01"


def machine(over_limit: bool = False, max_associate_rq_length: int = 65536,
            ) -> AssociationMachine:
    negotiator = AssociationNegotiator(AcceptorPolicy("PACS", OUR_MAX_PDU), supported_contexts())
    return AssociationMachine(negotiator, max_associate_rq_length, lambda: over_limit)


def feed_bytewise(m: AssociationMachine, data: bytes) -> list:
    events = []
    for i in range(len(data)):
        events += m.receive(data[i:i + 1])
    return events


def established() -> AssociationMachine:
    m = machine()
    m.receive(associate_rq_bytes(CONTEXTS))
    assert m.state is State.ESTABLISHED
    return m


def store_command(has_dataset: bool = True) -> bytes:
    return encode_command({
        CMD_AFFECTED_SOP_CLASS_UID: CT_IMAGE, CMD_COMMAND_FIELD: C_STORE_RQ,
        CMD_MESSAGE_ID: 11, CMD_PRIORITY: 0,
        CMD_DATA_SET_TYPE: 0x0000 if has_dataset else NO_DATASET,
        CMD_AFFECTED_SOP_INSTANCE_UID: SOP_INSTANCE})


def echo_command() -> bytes:
    return encode_command({CMD_AFFECTED_SOP_CLASS_UID: VERIFICATION,
                           CMD_COMMAND_FIELD: C_ECHO_RQ, CMD_MESSAGE_ID: 5,
                           CMD_DATA_SET_TYPE: NO_DATASET})


def p_data(context_id: int, is_command: bool, payload: bytes, max_pdu: int = 0) -> bytes:
    return b"".join(encode_p_data(context_id, is_command, payload, max_pdu))


def decode_ac(data: bytes) -> A_ASSOCIATE_AC:
    ac = A_ASSOCIATE_AC()
    ac.decode(data)
    return ac


def decode_rj(data: bytes) -> tuple[int, int, int]:
    rj = A_ASSOCIATE_RJ()
    rj.decode(data)
    return rj.result, rj.source, rj.reason_diagnostic


def associate_ac_pdu() -> bytes:
    return established().negotiation.response


# --- establishment -------------------------------------------------------------------
def test_associate_rq_yields_send_ac_then_established():
    events = machine().receive(associate_rq_bytes(CONTEXTS))
    assert [type(e) for e in events] == [SendPDU, Established]
    assert events[0].data[0] == 0x02
    assert events[0].close_after is False


def test_associate_rq_moves_the_machine_to_established():
    m = machine()
    m.receive(associate_rq_bytes(CONTEXTS))
    assert m.state is State.ESTABLISHED


def test_associate_rq_fed_byte_by_byte_gives_the_same_events():
    whole = machine().receive(associate_rq_bytes(CONTEXTS))
    m = machine()
    assert feed_bytewise(m, associate_rq_bytes(CONTEXTS)) == whole
    assert m.state is State.ESTABLISHED


def test_ac_accepts_both_offered_contexts_with_an_offered_transfer_syntax():
    ac = decode_ac(machine().receive(associate_rq_bytes(CONTEXTS))[0].data).to_primitive()
    results = {cx.context_id: cx for cx in ac.presentation_context_definition_results_list}
    assert sorted(results) == [VERIFICATION_ID, CT_ID]
    assert all(cx.result == 0x00 for cx in results.values())
    assert results[VERIFICATION_ID].transfer_syntax[0] == IMPLICIT_LE
    assert results[CT_ID].transfer_syntax[0] in (EXPLICIT_LE, IMPLICIT_LE)


def test_ac_offers_our_maximum_length_of_one_mebibyte():
    ac = decode_ac(machine().receive(associate_rq_bytes(CONTEXTS))[0].data)
    lengths = [item.maximum_length_received for item in ac.user_information.user_data
               if hasattr(item, "maximum_length_received")]
    assert lengths == [OUR_MAX_PDU]


def test_ac_echoes_the_ae_titles_of_the_request():
    ac = decode_ac(machine().receive(associate_rq_bytes(CONTEXTS, calling="MODALITY1"))[0].data)
    assert (ac.calling_ae_title.strip(), ac.called_ae_title.strip()) == ("MODALITY1", "PACS")


def test_established_event_lists_the_accepted_contexts():
    event = machine().receive(associate_rq_bytes(CONTEXTS))[1]
    contexts = event.negotiation.contexts
    assert {cid: c.abstract_syntax for cid, c in contexts.items()} == {
        VERIFICATION_ID: VERIFICATION, CT_ID: CT_IMAGE}
    assert event.negotiation.peer_max_pdu_length == 65536


def test_unsupported_abstract_syntax_is_not_an_accepted_context():
    contexts = [(VERIFICATION, [IMPLICIT_LE]), ("1.2.3.4.5.6.7", [IMPLICIT_LE])]
    event = machine().receive(associate_rq_bytes(contexts))[1]
    assert list(event.negotiation.contexts) == [VERIFICATION_ID]


def test_over_limit_rejects_with_2_3_2_and_closes_after_sending():
    m = machine(over_limit=True)
    events = m.receive(associate_rq_bytes(CONTEXTS))
    assert [type(e) for e in events] == [SendPDU, Rejected]
    assert events[0].close_after is True
    assert decode_rj(events[0].data) == (2, 3, 2)
    assert m.state is State.AWAITING_CLOSE


def test_wrong_application_context_name_rejects_with_1_1_2():
    rq = associate_rq_bytes(CONTEXTS)
    assert rq.count(APPLICATION_CONTEXT) == 1
    m = machine()
    events = m.receive(rq.replace(APPLICATION_CONTEXT, b"1.2.840.10008.3.1.1.9"))
    assert isinstance(events[1], Rejected)
    assert decode_rj(events[0].data) == (1, 1, 2)
    assert m.state is State.AWAITING_CLOSE


def test_associate_rq_larger_than_the_pre_association_limit_raises_pdu_too_large():
    m = machine(max_associate_rq_length=100)
    with pytest.raises(PDUTooLarge):
        m.receive(associate_rq_bytes(CONTEXTS))


def test_undecodable_associate_rq_raises_malformed_pdu():
    body = b"\x00\x01\x00\x00" + b"PACS".ljust(16) + b"RAWSCU".ljust(16) + b"\x00" * 32
    body += b"\xee" * 8  # an item of unknown type
    with pytest.raises(MalformedPDU):
        machine().receive(b"\x01\x00" + struct.pack(">I", len(body)) + body)


# --- data transfer ---------------------------------------------------------------------
def test_command_and_dataset_give_command_received_then_last_dataset_fragment():
    m = established()
    dataset = b"\x08\x00\x16\x00" * 10
    events = m.receive(p_data(CT_ID, True, store_command()) + p_data(CT_ID, False, dataset))
    assert [type(e) for e in events] == [CommandReceived, DatasetFragment]
    received, fragment = events
    assert received.context.context_id == CT_ID
    assert received.command.command_field == C_STORE_RQ
    assert received.command.message_id == 11
    assert bytes(fragment.data) == dataset and fragment.last is True
    assert m.in_message is False


def test_command_and_dataset_fed_byte_by_byte_give_the_same_payload():
    m = established()
    dataset = bytes(range(256)) * 4
    events = feed_bytewise(m, p_data(CT_ID, True, store_command())
                           + p_data(CT_ID, False, dataset))
    assert isinstance(events[0], CommandReceived)
    assert b"".join(bytes(e.data) for e in events[1:]) == dataset
    assert [e.last for e in events[1:]] == [True]


def test_dataset_split_over_pdus_arrives_as_fragments_with_only_the_last_flagged():
    m = established()
    dataset = bytes(range(256)) * 100
    m.receive(p_data(CT_ID, True, store_command()))
    events = m.receive(p_data(CT_ID, False, dataset, max_pdu=4096))
    assert len(events) > 1
    assert [e.last for e in events] == [False] * (len(events) - 1) + [True]
    assert b"".join(bytes(e.data) for e in events) == dataset


def test_command_split_over_pdus_is_reassembled():
    m = established()
    command = store_command()
    pdus = encode_p_data(CT_ID, True, command, 6 + 16)
    assert len(pdus) > 2
    events = []
    for pdu in pdus[:-1]:
        events += m.receive(pdu)
        assert m.in_message
    events += m.receive(pdus[-1])
    assert len(events) == 1 and events[0].command.message_id == 11


def test_command_without_dataset_completes_the_message():
    m = established()
    events = m.receive(p_data(VERIFICATION_ID, True, echo_command()))
    assert [type(e) for e in events] == [CommandReceived]
    assert events[0].command.has_dataset is False
    assert m.in_message is False


def test_message_is_in_progress_until_the_last_dataset_fragment():
    m = established()
    m.receive(p_data(CT_ID, True, store_command()))
    assert m.in_message is True
    m.receive(p_data(CT_ID, False, b"\x00\x00"))
    assert m.in_message is False


def test_pdu_up_to_our_maximum_is_accepted_after_establishment():
    m = established()
    m.receive(p_data(CT_ID, True, store_command()))
    events = m.receive(p_data(CT_ID, False, b"\x00" * (OUR_MAX_PDU - 6), max_pdu=OUR_MAX_PDU))
    assert len(events) == 1 and events[0].last


def test_pdu_above_our_maximum_raises_pdu_too_large():
    m = established()
    with pytest.raises(PDUTooLarge):
        m.receive(b"\x04\x00" + struct.pack(">I", OUR_MAX_PDU + 1))


# --- release and abort ------------------------------------------------------------------
def test_release_rq_gives_release_requested_and_awaits_close():
    m = established()
    assert m.receive(A_RELEASE_RQ) == [ReleaseRequested()]
    assert m.state is State.AWAITING_CLOSE


@pytest.mark.parametrize("setup", ["awaiting-rq", "established", "awaiting-close"])
def test_abort_gives_peer_aborted_and_closes(setup):
    m = machine() if setup == "awaiting-rq" else established()
    if setup == "awaiting-close":
        m.receive(A_RELEASE_RQ)
    assert m.receive(A_ABORT) == [PeerAborted()]
    assert m.state is State.CLOSED


def test_abort_in_the_middle_of_a_dataset_gives_peer_aborted():
    m = established()
    m.receive(p_data(CT_ID, True, store_command()))
    m.receive(encode_p_data(CT_ID, False, b"\x00" * 100, 64)[0])
    assert m.receive(A_ABORT) == [PeerAborted()]
    assert m.state is State.CLOSED


def test_closed_machine_ignores_further_bytes():
    m = established()
    m.receive(A_ABORT)
    assert m.receive(b"\xff" * 20) == []
    assert m.state is State.CLOSED


def test_bytes_after_an_abort_in_the_same_read_are_ignored():
    m = established()
    assert m.receive(A_ABORT + A_RELEASE_RQ) == [PeerAborted()]


@pytest.mark.parametrize("pdu", [A_RELEASE_RQ, A_RELEASE_RP, A_ASSOCIATE_RJ_PDU],
                         ids=["release-rq", "release-rp", "associate-rj"])
def test_awaiting_close_ignores_pdus_other_than_abort(pdu):
    m = established()
    m.receive(A_RELEASE_RQ)
    assert m.receive(pdu) == []
    assert m.state is State.AWAITING_CLOSE


def test_awaiting_close_ignores_p_data():
    m = established()
    m.receive(A_RELEASE_RQ)
    assert m.receive(p_data(CT_ID, True, store_command())) == []


# --- protocol violations -------------------------------------------------------------------
def _unexpected_before_rq():
    return {
        "p-data": p_data(1, True, echo_command()),
        "release-rq": A_RELEASE_RQ,
        "release-rp": A_RELEASE_RP,
        "associate-rj": A_ASSOCIATE_RJ_PDU,
        "associate-ac": associate_ac_pdu(),
    }


def _unexpected_when_established():
    return {
        "associate-rq": associate_rq_bytes(CONTEXTS),
        "associate-ac": associate_ac_pdu(),
        "associate-rj": A_ASSOCIATE_RJ_PDU,
        "release-rp": A_RELEASE_RP,
    }


@pytest.mark.parametrize("name", list(_unexpected_before_rq()))
def test_unexpected_pdu_before_associate_rq_is_a_violation_with_reason_2(name):
    m = machine()
    with pytest.raises(ProtocolViolation) as info:
        m.receive(_unexpected_before_rq()[name])
    assert info.value.reason == ABORT_UNEXPECTED_PDU == 0x02


@pytest.mark.parametrize("name", list(_unexpected_when_established()))
def test_unexpected_pdu_on_an_established_association_is_a_violation_with_reason_2(name):
    m = established()
    with pytest.raises(ProtocolViolation) as info:
        m.receive(_unexpected_when_established()[name])
    assert info.value.reason == ABORT_UNEXPECTED_PDU == 0x02


def test_protocol_violation_is_a_pdu_error():
    with pytest.raises(PDUError):
        machine().receive(A_RELEASE_RQ)


def test_pdv_on_an_unaccepted_context_is_a_violation_with_reason_6():
    m = established()
    with pytest.raises(ProtocolViolation) as info:
        m.receive(p_data(5, True, echo_command()))
    assert info.value.reason == ABORT_INVALID_PDU_PARAMETER == 0x06


def test_pdv_on_a_rejected_context_is_a_violation_with_reason_6():
    m = machine()
    m.receive(associate_rq_bytes([(VERIFICATION, [IMPLICIT_LE]), ("1.2.3.4.5", [IMPLICIT_LE])]))
    with pytest.raises(ProtocolViolation) as info:
        m.receive(p_data(3, True, echo_command()))
    assert info.value.reason == 0x06


def test_dataset_fragment_without_a_command_is_a_violation():
    m = established()
    with pytest.raises(ProtocolViolation) as info:
        m.receive(p_data(CT_ID, False, b"\x08\x00\x16\x00"))
    assert info.value.reason == ABORT_UNEXPECTED_PDU


def test_dataset_fragment_after_a_command_without_dataset_is_a_violation():
    m = established()
    m.receive(p_data(VERIFICATION_ID, True, echo_command()))
    with pytest.raises(ProtocolViolation):
        m.receive(p_data(VERIFICATION_ID, False, b"\x00\x00"))


def test_dataset_fragment_on_another_context_than_its_command_is_a_violation():
    m = established()
    m.receive(p_data(CT_ID, True, store_command()))
    with pytest.raises(ProtocolViolation):
        m.receive(p_data(VERIFICATION_ID, False, b"\x00\x00"))


def test_command_fragment_while_a_dataset_is_arriving_is_a_violation():
    m = established()
    m.receive(p_data(CT_ID, True, store_command()))
    m.receive(encode_p_data(CT_ID, False, b"\x00" * 100, 64)[0])
    with pytest.raises(ProtocolViolation) as info:
        m.receive(p_data(CT_ID, True, store_command()))
    assert info.value.reason == ABORT_UNEXPECTED_PDU


def test_release_rq_in_the_middle_of_a_dataset_is_a_violation_with_reason_2():
    m = established()
    m.receive(p_data(CT_ID, True, store_command()))
    m.receive(encode_p_data(CT_ID, False, b"\x00" * 100, 64)[0])
    with pytest.raises(ProtocolViolation) as info:
        m.receive(A_RELEASE_RQ)
    assert info.value.reason == ABORT_UNEXPECTED_PDU


def test_release_rq_in_the_middle_of_a_command_is_a_violation():
    m = established()
    m.receive(encode_p_data(CT_ID, True, store_command(), 6 + 16)[0])
    with pytest.raises(ProtocolViolation):
        m.receive(A_RELEASE_RQ)


def test_release_rq_between_command_and_dataset_is_a_violation():
    m = established()
    m.receive(p_data(CT_ID, True, store_command()))
    with pytest.raises(ProtocolViolation):
        m.receive(A_RELEASE_RQ)


def test_command_fragments_on_two_contexts_are_a_violation_with_reason_6():
    m = established()
    m.receive(encode_p_data(CT_ID, True, store_command(), 6 + 16)[0])
    with pytest.raises(ProtocolViolation) as info:
        m.receive(p_data(VERIFICATION_ID, True, echo_command()))
    assert info.value.reason == ABORT_INVALID_PDU_PARAMETER


def test_undecodable_command_set_is_a_violation_with_reason_6():
    m = established()
    with pytest.raises(ProtocolViolation) as info:
        m.receive(p_data(CT_ID, True, b"\x08\x00\x16\x00\x02\x00\x00\x00ab"))
    assert info.value.reason == ABORT_INVALID_PDU_PARAMETER


def test_command_set_over_64_kib_raises_malformed_pdu():
    m = established()
    with pytest.raises(MalformedPDU):
        m.receive(p_data(CT_ID, True, b"\x00" * (64 * 1024 + 1), max_pdu=OUR_MAX_PDU))
