"""SOP Class Extended Negotiation as acceptor: relational queries for the FIND models."""
from __future__ import annotations

from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

from engine.net.acse import AcceptorPolicy, negotiate_association, supported_contexts
from engine.query.model import PATIENT_ROOT_FIND, STUDY_ROOT_FIND, STUDY_ROOT_MOVE
from tests.rawclient import associate_rq_bytes

EXPLICIT_LE = "1.2.840.10008.1.2.1"
POLICY = AcceptorPolicy("PACS", 1 << 20)


def extended(sop_class: str, info: bytes) -> SOPClassExtendedNegotiation:
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = sop_class
    item.service_class_application_information = info
    return item


def negotiate(contexts, *items):
    result = negotiate_association(associate_rq_bytes(contexts, user_items=items), POLICY,
                                   supported_contexts())
    ac = A_ASSOCIATE_AC()
    ac.decode(result.response)
    replies = {str(i.sop_class_uid): i.service_class_application_information
               for i in ac.to_primitive().user_information
               if isinstance(i, SOPClassExtendedNegotiation)}
    return result, replies


def test_relational_queries_are_agreed_when_asked_and_other_options_declined():
    result, replies = negotiate([(STUDY_ROOT_FIND, [EXPLICIT_LE])],
                                extended(STUDY_ROOT_FIND, b"\x01\x01\x01"))
    assert replies == {STUDY_ROOT_FIND: b"\x01\x00\x00"}
    assert result.contexts[1].relational_queries


def test_relational_queries_apply_per_sop_class():
    result, replies = negotiate([(STUDY_ROOT_FIND, [EXPLICIT_LE]),
                                 (PATIENT_ROOT_FIND, [EXPLICIT_LE])],
                                extended(PATIENT_ROOT_FIND, b"\x01"))
    assert replies == {PATIENT_ROOT_FIND: b"\x01"}
    assert not result.contexts[1].relational_queries
    assert result.contexts[3].relational_queries


def test_without_extended_negotiation_queries_stay_hierarchical():
    result, replies = negotiate([(STUDY_ROOT_FIND, [EXPLICIT_LE])])
    assert replies == {} and not result.contexts[1].relational_queries
    result, replies = negotiate([(STUDY_ROOT_FIND, [EXPLICIT_LE])],
                                extended(STUDY_ROOT_FIND, b"\x00\x01"))
    assert replies == {STUDY_ROOT_FIND: b"\x00\x00"}
    assert not result.contexts[1].relational_queries


def test_items_for_sop_classes_not_accepted_or_not_find_are_not_answered():
    result, replies = negotiate([(STUDY_ROOT_MOVE, [EXPLICIT_LE])],
                                extended(STUDY_ROOT_FIND, b"\x01"),
                                extended(STUDY_ROOT_MOVE, b"\x01"))
    assert replies == {}
    assert not result.contexts[1].relational_queries
