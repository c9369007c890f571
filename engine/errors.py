"""Exception classes of pacs-engine.

Every layer raises these; only engine/net/status.py maps them to DIMSE status
codes, so the table of "what the peer is told" lives in one place.
"""
from __future__ import annotations


class EngineError(Exception):
    """Base class of all errors raised by pacs-engine."""


# --- wire protocol ---------------------------------------------------------
class PDUError(EngineError):
    """The peer sent bytes that are not a valid PDU; the association is aborted."""


class PDUTooLarge(PDUError):
    """A PDU header declared a length above the negotiated or configured maximum.

    Raised at the header, before any byte of the body is read.
    """


class MalformedPDU(PDUError):
    """A PDU (or a PDV item inside a P-DATA-TF) is structurally invalid."""


class DIMSEError(EngineError):
    """A DIMSE command set could not be decoded or is not a valid message."""


# --- datasets --------------------------------------------------------------
class TagScanError(EngineError, ValueError):
    """The dataset byte stream cannot be parsed (truncated, bad length, bad VR)."""


class InvalidUID(EngineError, ValueError):
    """A UID does not match the UI grammar of PS3.5 9.1 (digits and dots, <= 64 chars)."""


class DatasetMismatch(EngineError):
    """The dataset disagrees with its C-STORE command (SOP Class or Instance UID)."""


# --- storage and index ------------------------------------------------------
class OutOfResources(EngineError):
    """Disk full, LMDB map full, or another resource exhausted; nothing was stored."""


class DuplicateRejected(EngineError):
    """Different content arrived for an existing SOP Instance UID and policy rejects it."""


# --- transcoding --------------------------------------------------------------
class TranscodeError(EngineError):
    """A stored instance cannot be re-encoded in the requested transfer syntax.

    The pixel data cannot be decoded (missing plugin, corrupt or truncated
    codestream) or encoded, or the stored dataset cannot be parsed.  The stored
    file is untouched; only this sub-operation fails.
    """
