"""`pacs export --to`: C-STORE to a DICOM peer on our asyncio requestor.

As the router's forwarder does it: `proposed_contexts` (each stored syntax, plus
an uncompressed fallback per SOP class; only uncompressed ones with
`--uncompressed`), then `send_instance` one instance at a time on one
association per group of 128 contexts; a peer that accepts no context carrying
the stored syntax gets a lossless transcoded copy.  A file the compression stage
replaced since the selection is looked up again once.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

from engine.codec.workers import CodecWorkers
from engine.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from engine.migration.export import ExportError, ExportReport, Transform
from engine.net import status as st
from engine.net.outbound import DatasetUnavailable
from engine.net.requestor import (
    MAX_PRESENTATION_CONTEXTS, AssociationFailed, ProposedContext, RequestorAssociation)
from engine.net.retrieve_service import proposed_contexts, send_instance
from engine.query.retrieve import RetrieveResolver, StoredInstance


def check_ae_title(title: str) -> str:
    if not 0 < len(title.strip()) <= 16 or not title.isprintable() or "\\" in title:
        raise ExportError(f"invalid AE title {title!r} (1 to 16 characters, no backslash)")
    return title.strip()


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int
    #: Over DICOM TLS (a [retrieve] destination with tls = true).
    tls: bool = False

    @classmethod
    def parse(cls, text: str, known) -> "Peer":
        """`AE@host:port`, or an AE title of [retrieve] destinations (`known`)."""
        ae_title, at, address = text.strip().partition("@")
        if not at:
            found = known.destination(ae_title)
            if found is None:
                raise ExportError(f"unknown destination {ae_title!r}: add it to [retrieve] "
                                  "destinations or give --to AE@host:port")
            return cls(check_ae_title(ae_title), found.host, found.port, found.tls)
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ExportError(f"invalid peer address {address!r}: expected host:port")
        return cls(check_ae_title(ae_title), host, int(port))


class _Captured(logging.Handler):
    """Why send_instance gave up on an instance (it logs the reason and returns a status)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()


class PeerExport:
    def __init__(self, peer: Peer, resolver: RetrieveResolver, transform: Transform,
                 codec: CodecWorkers, calling_ae: str, max_pdu: int, connect_timeout: float,
                 response_timeout: float, ssl_context: ssl.SSLContext | None = None) -> None:
        self.peer = peer
        self.resolver = resolver
        self.transform = transform
        self.codec = codec
        self.calling_ae = calling_ae
        self.max_pdu = max_pdu
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.ssl_context = ssl_context

    def contexts(self, instances: list[StoredInstance]) -> list[list[ProposedContext]]:
        if not self.transform.uncompressed:
            return proposed_contexts(instances)
        contexts = [ProposedContext(sop_class, (EXPLICIT_VR_LITTLE_ENDIAN,
                                                IMPLICIT_VR_LITTLE_ENDIAN))
                    for sop_class in dict.fromkeys(i.sop_class_uid for i in instances)]
        return [contexts[i:i + MAX_PRESENTATION_CONTEXTS]
                for i in range(0, len(contexts), MAX_PRESENTATION_CONTEXTS)]

    async def run(self, instances: list[StoredInstance], report: ExportReport,
                  progress) -> None:
        captured = _Captured()
        logger = logging.getLogger("engine.net.retrieve_service")
        level = logger.level
        logger.setLevel(logging.INFO)  # its INFO "no accepted context can carry" too
        logger.addHandler(captured)
        try:
            for group in self.contexts(instances):
                classes = {cx.abstract_syntax for cx in group}
                batch = [i for i in instances if i.sop_class_uid in classes]
                await self._association(group, batch, report, progress, captured)
        finally:
            logger.removeHandler(captured)
            logger.setLevel(level)

    async def _association(self, group, batch: list[StoredInstance], report: ExportReport,
                           progress, captured: _Captured) -> None:
        peer = self.peer

        def fail(instances, reason: str) -> None:
            report.failures.extend((i.sop_instance_uid, reason) for i in instances)
            progress(report.exported + len(report.failures), report.bytes)
        try:
            association = await RequestorAssociation.open(
                peer.host, peer.port, self.calling_ae, peer.ae_title, group, self.max_pdu,
                self.connect_timeout, self.ssl_context)
        except AssociationFailed as exc:
            fail(batch, str(exc))
            return
        association.timeout = self.response_timeout
        try:
            for at, instance in enumerate(batch):
                if not association.accepted_syntaxes(instance.sop_class_uid):
                    fail([instance], f"{peer.ae_title} accepted no presentation context for "
                                     f"SOP class {instance.sop_class_uid}")
                    continue
                try:
                    status, why = await self._send(association, instance, captured)
                except AssociationFailed as exc:
                    fail(batch[at:], str(exc))
                    return
                if status is None:
                    fail([instance], why)
                elif status == st.SUCCESS or status == 0x0001 or 0xB000 <= status <= 0xBFFF:
                    report.exported += 1
                    report.bytes += instance.dataset_length
                    if status != st.SUCCESS:
                        report.warnings.append((instance.sop_instance_uid,
                                                f"{peer.ae_title} answered 0x{status:04X}"))
                    progress(report.exported + len(report.failures), report.bytes)
                else:
                    fail([instance], f"{peer.ae_title} answered 0x{status:04X}")
        finally:
            await association.release()

    async def _send(self, association: RequestorAssociation, instance: StoredInstance,
                    captured: _Captured) -> tuple[int | None, str]:
        """(the peer's status, "") or (None, why nothing was sent); once more with the
        current file when the stored one was replaced since the selection."""
        transform = self.transform
        prefer = EXPLICIT_VR_LITTLE_ENDIAN if transform.uncompressed else None
        recipe = transform.recipe() if transform.deidentify_secret else None
        copy_uid = transform.sop_uid(instance) if recipe else None
        why = ""
        for attempt in range(2):
            captured.message = None
            try:
                status = await send_instance(association, instance, 0, None, self.codec,
                                             prefer, recipe, copy_uid)
                if captured.message is None:
                    return status, ""
                why = captured.message  # ours: nothing was sent
            except DatasetUnavailable as exc:
                why = str(exc)
            fresh = await asyncio.to_thread(self.resolver.refresh, instance) \
                if not attempt else instance
            if fresh is None:
                return None, "no longer in the archive"
            if fresh == instance:
                break
            instance = fresh
        return None, why


__all__ = ["Peer", "PeerExport", "check_ae_title"]
