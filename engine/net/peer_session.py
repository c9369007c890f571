"""A forwarding worker's association to one DICOM destination, reused across batches.

Opening an association costs a TCP handshake, an A-ASSOCIATE exchange and, at
the far end, often a process or thread.  Live ingest hands the router one
instance at a time, so the worker keeps its association while the next batch
can travel on it: same SOP classes, same stored transfer syntaxes.  A batch
that needs other contexts gets a new association that proposes them together
with the ones recently used (so alternating CT and MR do not reopen each time).
"""
from __future__ import annotations

import ssl
import time

from engine.codec.workers import CodecWorkers
from engine.net import status as st
from engine.net.outbound import DatasetUnavailable
from engine.net.requestor import MAX_PRESENTATION_CONTEXTS, RequestorAssociation, tls_context
from engine.net.retrieve_service import CopyRecipe, proposed_contexts, send_instance
from engine.query.retrieve import StoredInstance
from engine.routing.destinations import DicomDestination

_UNCOMPRESSED = "1.2.840.10008.1.2.1"
_J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
_PREFERRED = {"uncompressed": _UNCOMPRESSED, "jpeg2000-lossless": _J2K_LOSSLESS}


def preferred_syntax(choice: str) -> str | None:
    """The transfer syntax UID a rule's `transfer_syntax` asks for (None: as stored)."""
    return _PREFERRED.get(choice)


def is_success(status: int) -> bool:
    """Success, or a warning status: the destination has the instance."""
    return status == st.SUCCESS or status == 0x0001 or 0xB000 <= status <= 0xBFFF


class PeerSession:
    def __init__(self, destination: DicomDestination, our_ae_title: str, max_pdu_length: int,
                 connect_timeout: float, response_timeout: float,
                 client_ssl: ssl.SSLContext | None = None) -> None:
        self.destination = destination
        #: Our TLS client context, used when the destination says `tls = true`.
        self.client_ssl = client_ssl
        self.calling_ae_title = destination.calling_ae_title or our_ae_title
        self.max_pdu_length = max_pdu_length
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.association: RequestorAssociation | None = None
        #: (SOP class, transfer syntax) pairs proposed on the open association.
        self._proposed: set[tuple[str, str]] = set()
        self._classes: set[str] = set()
        #: One instance per (SOP class, stored syntax) sent lately, to propose again.
        self._recent: dict[tuple[str, str], StoredInstance] = {}
        self.last_used = 0.0
        self.last_error = ""

    @property
    def is_open(self) -> bool:
        return self.association is not None and self.association.is_open

    def carries(self, instance: StoredInstance) -> bool:
        """Whether the open association proposed the instance's SOP class."""
        return instance.sop_class_uid in self._classes

    async def ensure(self, instances: list[StoredInstance], choices: list[str]) -> bool:
        """Have an association that can carry `instances`; True if the open one was kept.

        Raises AssociationFailed when the destination cannot be reached or refuses
        (or wants TLS and we have no TLS client context: never in clear).
        """
        extra = (_J2K_LOSSLESS,) if "jpeg2000-lossless" in choices else ()
        batch = proposed_contexts(instances, extra)[0]
        needed = {(cx.abstract_syntax, ts) for cx in batch for ts in cx.transfer_syntaxes}
        if self.is_open and needed <= self._proposed:
            return True
        await self.close()
        merged = proposed_contexts(instances + [i for key, i in self._recent.items()
                                                if key not in needed], extra)
        contexts = merged[0] if len(merged) == 1 and \
            len(merged[0]) <= MAX_PRESENTATION_CONTEXTS else batch
        destination = self.destination
        self.association = await RequestorAssociation.open(
            destination.host, destination.port, self.calling_ae_title, destination.ae_title,
            contexts, self.max_pdu_length, self.connect_timeout,
            ssl_context=tls_context(destination.tls, self.client_ssl))
        self.association.timeout = self.response_timeout
        self._proposed = {(cx.abstract_syntax, ts) for cx in contexts
                          for ts in cx.transfer_syntaxes}
        self._classes = {cx.abstract_syntax for cx in contexts}
        self._recent = {(i.sop_class_uid, i.transfer_syntax_uid): i for i in instances}
        self.last_used = time.monotonic()
        return False

    async def send(self, instance: StoredInstance, choice: str, codec: CodecWorkers,
                   recipe: CopyRecipe | None, copy_uid: str | None) -> int | None:
        """One C-STORE; the peer's status, or None (see last_error) if the stored file
        could not be read.  AssociationFailed propagates."""
        assert self.association is not None
        self._recent[(instance.sop_class_uid, instance.transfer_syntax_uid)] = instance
        try:
            return await send_instance(self.association, instance, 0, None, codec,
                                       preferred_syntax(choice), recipe, copy_uid)
        except DatasetUnavailable as exc:
            self.last_error = str(exc)
            return None
        finally:
            self.last_used = time.monotonic()

    async def close(self) -> None:
        association, self.association = self.association, None
        self._proposed, self._classes = set(), set()
        if association is not None:
            await association.release()


__all__ = ["PeerSession", "is_success", "preferred_syntax"]
