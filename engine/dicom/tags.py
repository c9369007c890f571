"""The attributes the archive indexes, and the tags of the DIMSE command set.

`INDEXED` is the single table that drives the tag scanner's wanted set, the
index record layouts and (later) C-FIND return keys.  All indexed attributes
are top-level and sort below Pixel Data, so the scanner stops early.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Level(str, Enum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


@dataclass(frozen=True)
class IndexedAttribute:
    tag: int
    keyword: str
    vr: str
    level: Level


_P, _ST, _SE, _I = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

INDEXED: tuple[IndexedAttribute, ...] = (
    IndexedAttribute(0x00080005, "SpecificCharacterSet", "CS", _I),
    IndexedAttribute(0x00080016, "SOPClassUID", "UI", _I),
    IndexedAttribute(0x00080018, "SOPInstanceUID", "UI", _I),
    IndexedAttribute(0x00080020, "StudyDate", "DA", _ST),
    IndexedAttribute(0x00080030, "StudyTime", "TM", _ST),
    IndexedAttribute(0x00080050, "AccessionNumber", "SH", _ST),
    IndexedAttribute(0x00080060, "Modality", "CS", _SE),
    IndexedAttribute(0x00080090, "ReferringPhysicianName", "PN", _ST),
    IndexedAttribute(0x00081030, "StudyDescription", "LO", _ST),
    IndexedAttribute(0x0008103E, "SeriesDescription", "LO", _SE),
    IndexedAttribute(0x00100010, "PatientName", "PN", _P),
    IndexedAttribute(0x00100020, "PatientID", "LO", _P),
    IndexedAttribute(0x00100021, "IssuerOfPatientID", "LO", _P),
    IndexedAttribute(0x00100030, "PatientBirthDate", "DA", _P),
    IndexedAttribute(0x00100040, "PatientSex", "CS", _P),
    IndexedAttribute(0x00180015, "BodyPartExamined", "CS", _SE),
    IndexedAttribute(0x0020000D, "StudyInstanceUID", "UI", _ST),
    IndexedAttribute(0x0020000E, "SeriesInstanceUID", "UI", _SE),
    IndexedAttribute(0x00200010, "StudyID", "SH", _ST),
    IndexedAttribute(0x00200011, "SeriesNumber", "IS", _SE),
    IndexedAttribute(0x00200013, "InstanceNumber", "IS", _I),
    IndexedAttribute(0x00280008, "NumberOfFrames", "IS", _I),
    IndexedAttribute(0x00280010, "Rows", "US", _I),
    IndexedAttribute(0x00280011, "Columns", "US", _I),
)

BY_KEYWORD: dict[str, IndexedAttribute] = {a.keyword: a for a in INDEXED}
BY_TAG: dict[int, IndexedAttribute] = {a.tag: a for a in INDEXED}
INDEXED_TAGS: tuple[int, ...] = tuple(sorted(BY_TAG))

PIXEL_DATA = 0x7FE00010

# --- DIMSE command set (PS3.7 E.1) ------------------------------------------
CMD_GROUP_LENGTH = 0x00000000
CMD_AFFECTED_SOP_CLASS_UID = 0x00000002
CMD_REQUESTED_SOP_CLASS_UID = 0x00000003
CMD_COMMAND_FIELD = 0x00000100
CMD_MESSAGE_ID = 0x00000110
CMD_MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
CMD_MOVE_DESTINATION = 0x00000600
CMD_PRIORITY = 0x00000700
CMD_DATA_SET_TYPE = 0x00000800
CMD_STATUS = 0x00000900
CMD_ERROR_COMMENT = 0x00000902
CMD_AFFECTED_SOP_INSTANCE_UID = 0x00001000
CMD_REQUESTED_SOP_INSTANCE_UID = 0x00001001
CMD_EVENT_TYPE_ID = 0x00001002
CMD_ACTION_TYPE_ID = 0x00001008
CMD_NUMBER_OF_REMAINING_SUBOPERATIONS = 0x00001020
CMD_NUMBER_OF_COMPLETED_SUBOPERATIONS = 0x00001021
CMD_NUMBER_OF_FAILED_SUBOPERATIONS = 0x00001022
CMD_NUMBER_OF_WARNING_SUBOPERATIONS = 0x00001023
CMD_MOVE_ORIGINATOR_AE_TITLE = 0x00001030
CMD_MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031

#: Value representation of each command element we read or write.
COMMAND_VR: dict[int, str] = {
    CMD_GROUP_LENGTH: "UL",
    CMD_AFFECTED_SOP_CLASS_UID: "UI",
    CMD_REQUESTED_SOP_CLASS_UID: "UI",
    CMD_COMMAND_FIELD: "US",
    CMD_MESSAGE_ID: "US",
    CMD_MESSAGE_ID_BEING_RESPONDED_TO: "US",
    CMD_MOVE_DESTINATION: "AE",
    CMD_PRIORITY: "US",
    CMD_DATA_SET_TYPE: "US",
    CMD_STATUS: "US",
    CMD_ERROR_COMMENT: "LO",
    CMD_AFFECTED_SOP_INSTANCE_UID: "UI",
    CMD_REQUESTED_SOP_INSTANCE_UID: "UI",
    CMD_EVENT_TYPE_ID: "US",
    CMD_ACTION_TYPE_ID: "US",
    CMD_NUMBER_OF_REMAINING_SUBOPERATIONS: "US",
    CMD_NUMBER_OF_COMPLETED_SUBOPERATIONS: "US",
    CMD_NUMBER_OF_FAILED_SUBOPERATIONS: "US",
    CMD_NUMBER_OF_WARNING_SUBOPERATIONS: "US",
    CMD_MOVE_ORIGINATOR_AE_TITLE: "AE",
    CMD_MOVE_ORIGINATOR_MESSAGE_ID: "US",
}

#: Data Set Type (0000,0800) value meaning "no dataset follows" (PS3.7 E.1).
NO_DATASET = 0x0101
