"""The Query/Retrieve information models (PS3.4 C.6): levels, keys, and where
each attribute comes from in the index.

Every attribute a C-FIND can match or return is listed here once, with its
VR, its level, and how to read it from the index records of that level (or
computed from them).  Attributes not listed are read from a stored file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
FIND_SOP_CLASSES = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND)
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
MOVE_SOP_CLASSES = (PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE)
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
GET_SOP_CLASSES = (PATIENT_ROOT_GET, STUDY_ROOT_GET)
#: The models rooted at the patient level (the others start at the study level).
PATIENT_ROOT_MODELS = (PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, PATIENT_ROOT_GET)

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
#: Unique key of each level (PS3.4 C.6.1.1 / C.6.2.1).
UNIQUE_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
              "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


@dataclass(frozen=True)
class Match:
    """One candidate: the records of its level and of every level above it."""

    patient: object | None
    study: object | None
    series: object | None
    instance: object | None
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""


@dataclass(frozen=True)
class QueryAttribute:
    keyword: str
    vr: str
    level: str
    read: Callable[[Match], str]


def _count(value: int) -> str:
    return str(value)


ATTRIBUTES: tuple[QueryAttribute, ...] = (
    QueryAttribute("PatientID", "LO", "PATIENT", lambda m: m.patient.patient_id),
    QueryAttribute("IssuerOfPatientID", "LO", "PATIENT",
                   lambda m: m.patient.issuer_of_patient_id),
    QueryAttribute("PatientName", "PN", "PATIENT", lambda m: m.patient.patient_name),
    QueryAttribute("PatientBirthDate", "DA", "PATIENT", lambda m: m.patient.patient_birth_date),
    QueryAttribute("PatientSex", "CS", "PATIENT", lambda m: m.patient.patient_sex),
    QueryAttribute("NumberOfPatientRelatedStudies", "IS", "PATIENT",
                   lambda m: _count(m.patient.number_of_studies)),
    QueryAttribute("StudyInstanceUID", "UI", "STUDY", lambda m: m.study_uid),
    QueryAttribute("StudyDate", "DA", "STUDY", lambda m: m.study.study_date),
    QueryAttribute("StudyTime", "TM", "STUDY", lambda m: m.study.study_time),
    QueryAttribute("AccessionNumber", "SH", "STUDY", lambda m: m.study.accession_number),
    QueryAttribute("StudyID", "SH", "STUDY", lambda m: m.study.study_id),
    QueryAttribute("StudyDescription", "LO", "STUDY", lambda m: m.study.study_description),
    QueryAttribute("ReferringPhysicianName", "PN", "STUDY",
                   lambda m: m.study.referring_physician_name),
    QueryAttribute("ModalitiesInStudy", "CS", "STUDY", lambda m: m.study.modalities_in_study),
    QueryAttribute("SOPClassesInStudy", "UI", "STUDY", lambda m: m.study.sop_classes_in_study),
    QueryAttribute("NumberOfStudyRelatedSeries", "IS", "STUDY",
                   lambda m: _count(m.study.number_of_series)),
    QueryAttribute("NumberOfStudyRelatedInstances", "IS", "STUDY",
                   lambda m: _count(m.study.number_of_instances)),
    QueryAttribute("SeriesInstanceUID", "UI", "SERIES", lambda m: m.series_uid),
    QueryAttribute("Modality", "CS", "SERIES", lambda m: m.series.modality),
    QueryAttribute("SeriesNumber", "IS", "SERIES", lambda m: m.series.series_number),
    QueryAttribute("SeriesDescription", "LO", "SERIES", lambda m: m.series.series_description),
    QueryAttribute("BodyPartExamined", "CS", "SERIES", lambda m: m.series.body_part_examined),
    QueryAttribute("NumberOfSeriesRelatedInstances", "IS", "SERIES",
                   lambda m: _count(m.series.number_of_instances)),
    QueryAttribute("SOPInstanceUID", "UI", "IMAGE", lambda m: m.sop_uid),
    QueryAttribute("SOPClassUID", "UI", "IMAGE", lambda m: m.instance.sop_class_uid),
    QueryAttribute("InstanceNumber", "IS", "IMAGE", lambda m: m.instance.instance_number),
    QueryAttribute("NumberOfFrames", "IS", "IMAGE", lambda m: m.instance.number_of_frames),
    QueryAttribute("Rows", "US", "IMAGE", lambda m: m.instance.rows),
    QueryAttribute("Columns", "US", "IMAGE", lambda m: m.instance.columns),
)

BY_KEYWORD: dict[str, QueryAttribute] = {a.keyword: a for a in ATTRIBUTES}


def level_index(level: str) -> int:
    return LEVELS.index(level)
