"""The one table that maps our errors and store outcomes to DIMSE statuses.

PS3.4 B.2.3 (Storage) and PS3.7 C (general statuses).  Codes in the 0xC000
"Cannot understand" range are ours to assign; each is listed here with why.
"""
from __future__ import annotations

import re

from engine.errors import (
    DatasetMismatch, DuplicateRejected, InvalidUID, OutOfResources, TagScanError)
from engine.index.entry import IndexOutcome
from engine.query.find import InvalidQuery, LevelNotInModel

SUCCESS = 0x0000
#: Warning used for a different object under an existing SOP Instance UID: the
#: archive stored it (as a conflict, or as the new current copy) but changed what
#: a later retrieve returns; PS3.4 has no dedicated code, B000 is the closest.
WARNING_DUPLICATE_CONFLICT = 0xB000
#: PS3.7 C.5.8: Duplicate SOP Instance (failure), used when policy rejects conflicts.
FAILURE_DUPLICATE_SOP_INSTANCE = 0x0111
FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122
FAILURE_UNRECOGNIZED_OPERATION = 0x0211
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: The dataset could not be parsed (truncated, bad lengths, bad VR).
FAILURE_CANNOT_UNDERSTAND = 0xC210
#: A UID in the command or dataset breaks the UI grammar.
FAILURE_INVALID_UID = 0xC211
#: An unexpected internal error; logged with a traceback.
FAILURE_PROCESSING = 0x0110

# C-FIND (PS3.4 C.4.1.1.4)
PENDING = 0xFF00
CANCEL = 0xFE00
#: Failure: Unable to process (bad key, missing unique key, identifier too long...).
FAILURE_UNABLE_TO_PROCESS = 0xC000

# C-MOVE / C-GET (PS3.4 C.4.2.1.5, C.4.3.1.4)
#: Refused: out of resources, unable to perform sub-operations (all failed, or no
#: association with the destination).
FAILURE_UNABLE_TO_PERFORM_SUBOPERATIONS = 0xA702
FAILURE_MOVE_DESTINATION_UNKNOWN = 0xA801
#: Warning: sub-operations complete, one or more failures or warnings.
WARNING_SUBOPERATIONS = 0xB000

# N-ACTION (PS3.7 10.1.4.1.10, PS3.4 J.3.2.1.1)
FAILURE_INVALID_ARGUMENT_VALUE = 0x0115
FAILURE_INVALID_OBJECT_INSTANCE = 0x0117
FAILURE_NO_SUCH_SOP_CLASS = 0x0118
FAILURE_NO_SUCH_ACTION = 0x0123
FAILURE_RESOURCE_LIMITATION = 0x0213

_ERROR_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (OutOfResources, FAILURE_OUT_OF_RESOURCES),
    (DuplicateRejected, FAILURE_DUPLICATE_SOP_INSTANCE),
    (DatasetMismatch, FAILURE_DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (InvalidUID, FAILURE_INVALID_UID),
    (TagScanError, FAILURE_CANNOT_UNDERSTAND),
)

_OUTCOME_STATUS = {
    IndexOutcome.STORED: (SUCCESS, ""),
    IndexOutcome.IDENTICAL: (SUCCESS, ""),
    IndexOutcome.CONFLICT_KEPT_FIRST: (
        WARNING_DUPLICATE_CONFLICT, "different object under existing SOP Instance UID; "
                                    "first kept current, this one kept as a conflict"),
    IndexOutcome.CONFLICT_REPLACED: (
        WARNING_DUPLICATE_CONFLICT, "different object under existing SOP Instance UID; "
                                    "this one replaced it, the old one kept as a conflict"),
}


#: A quoted value in an exception's text ('...' or "...", as repr() writes it).
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def error_comment(exc: BaseException) -> str:
    """An exception's text as an Error Comment: quoted values (what the peer sent: a
    patient's name, a date...) replaced by '...', then cut to 64 characters."""
    return _QUOTED.sub("'...'", str(exc))[:64]


def status_for_error(exc: BaseException) -> tuple[int, str]:
    """Status and Error Comment (≤ 64 chars, no patient data) for a failed store."""
    for cls, status in _ERROR_STATUS:
        if isinstance(exc, cls):
            return status, error_comment(exc)
    return FAILURE_PROCESSING, "internal error while storing"


def status_for_query_error(exc: BaseException) -> tuple[int, str]:
    """Final C-FIND status and Error Comment for a query that cannot be answered."""
    if isinstance(exc, LevelNotInModel):  # Identifier ≠ SOP class
        return FAILURE_DATASET_DOES_NOT_MATCH_SOP_CLASS, error_comment(exc)
    if isinstance(exc, InvalidQuery):
        return FAILURE_UNABLE_TO_PROCESS, error_comment(exc)
    return FAILURE_UNABLE_TO_PROCESS, "query failed"


def status_for_outcome(outcome: IndexOutcome) -> tuple[int, str]:
    return _OUTCOME_STATUS[outcome]


def is_success(status: int) -> bool:
    return status == SUCCESS
