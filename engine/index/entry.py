"""What ingest hands to the index for one received instance, and what it gets back."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True)
class IndexEntry:
    """A durable blob (already fsync'd and renamed) waiting to be indexed."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    content_hash: str
    size: int
    dataset_offset: int
    received_at: str
    calling_ae_title: str
    #: Decoded indexed attributes, keyed by DICOM keyword (see engine.dicom.tags).
    attributes: dict = field(default_factory=dict)
    #: Where the routing rules send it (engine.index.forward_queue.ForwardOrder); the jobs
    #: are queued in the transaction that indexes the instance.
    forwards: tuple = ()


class IndexOutcome(str, Enum):
    STORED = "stored"
    #: Same SOP Instance UID and same content: an idempotent re-send.
    IDENTICAL = "identical"
    #: Different content under an existing SOP Instance UID, first copy stays current.
    CONFLICT_KEPT_FIRST = "conflict-kept-first"
    #: Different content, the new copy became current, the old one is kept as a conflict.
    CONFLICT_REPLACED = "conflict-replaced"
    #: Different content, and policy rejects it; nothing was indexed.
    REJECTED_DUPLICATE = "rejected-duplicate"
