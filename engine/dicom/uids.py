"""UID grammar and the transfer syntaxes and SOP classes we serve.

Pure data and checks; no I/O.  The tables come from pydicom and pynetdicom so a
new release of either widens what we accept without code changes here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import pydicom.uid
from pynetdicom.sop_class import _STORAGE_CLASSES

from engine.errors import InvalidUID

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
#: Storage Commitment Push Model SOP Class and its well-known SOP Instance (PS3.4 J.3).
STORAGE_COMMITMENT_SOP_CLASS = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_SOP_INSTANCE = "1.2.840.10008.1.20.1.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

#: Our Implementation Class UID (PS3.7 D.3.3.2), under the UUID-derived 2.25 root.
IMPLEMENTATION_CLASS_UID = "2.25.271840914946358315312957306711384420353"
IMPLEMENTATION_VERSION_NAME = "PACS_ENGINE_01"

# PS3.5 9.1: components of digits separated by '.', no leading zero in a
# multi-digit component, at most 64 characters.
_UID_GRAMMAR = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(uid: str) -> bool:
    """True if `uid` follows the UI grammar of PS3.5 9.1."""
    return 0 < len(uid) <= 64 and _UID_GRAMMAR.fullmatch(uid) is not None


def require_valid_uid(uid: str, what: str) -> str:
    """Return `uid` or raise InvalidUID naming the attribute that carried it."""
    if not is_valid_uid(uid):
        raise InvalidUID(f"{what} is not a valid UID ({len(uid)} characters)")
    return uid


@dataclass(frozen=True)
class TransferSyntaxEncoding:
    """How the dataset bytes of a transfer syntax are laid out on the wire."""

    uid: str
    explicit_vr: bool
    little_endian: bool
    deflated: bool


@lru_cache(maxsize=None)
def transfer_syntax_encoding(uid: str) -> TransferSyntaxEncoding:
    """Encoding of a transfer syntax's dataset bytes.

    PS3.5 10: every transfer syntax except Implicit VR LE, Explicit VR BE and
    Deflated encodes the dataset in Explicit VR Little Endian (unknown ones too).
    """
    if uid == IMPLICIT_VR_LITTLE_ENDIAN:
        return TransferSyntaxEncoding(uid, False, True, False)
    if uid == EXPLICIT_VR_BIG_ENDIAN:
        return TransferSyntaxEncoding(uid, True, False, False)
    if uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return TransferSyntaxEncoding(uid, True, True, True)
    return TransferSyntaxEncoding(uid, True, True, False)


#: Every transfer syntax pydicom knows; we store datasets as received, so all are accepted.
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(
    str(ts) for ts in pydicom.uid.AllTransferSyntaxes
)

#: Every storage SOP class pynetdicom knows.
STORAGE_SOP_CLASSES: tuple[str, ...] = tuple(sorted(set(_STORAGE_CLASSES.values())))
