"""`pacs export`: selected instances to a folder with a DICOMDIR, or to a DICOM peer.

The archive is only read (the index in read transactions, the stored files), so
an export runs beside a serving archive.  What goes out is the stored file as
it is, unless `--uncompressed` (Explicit VR Little Endian, decoded in codec
worker processes) or `--deidentify` (the router's PS3.15 Basic Profile copy,
UIDs remapped with the archive's routing secret, so they match the copies the
router sends) asks for a copy.

    export_selection  which instances (the matching of `pacs find`)
    export_folder     Part 10 files and a DICOMDIR (dicomdir), written durably
    export_peer       C-STORE to a DICOM peer on our requestor
    export            what goes out (Transform), the report, progress, run_export()
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.codec.transcode import transcode_file
from engine.codec.workers import CodecWorkers
from engine.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN
from engine.errors import EngineError
from engine.net.tls import client_context
from engine.query.retrieve import RetrieveResolver, StoredInstance
from engine.routing.copy import prepare_copy
from engine.routing.deidentify import UIDMapper

log = logging.getLogger(__name__)


class ExportError(EngineError):
    """The export cannot start, or cannot go on (folder, destination)."""


class InstanceFailed(Exception):
    """One instance could not be exported; the others go on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Transform:
    """What goes out instead of the stored bytes, if anything."""

    deidentify_secret: str | None = None
    uncompressed: bool = False

    def target(self, instance: StoredInstance) -> str:
        return EXPLICIT_VR_LITTLE_ENDIAN if self.uncompressed else instance.transfer_syntax_uid

    def as_stored(self, instance: StoredInstance) -> bool:
        return self.deidentify_secret is None and self.target(instance) == \
            instance.transfer_syntax_uid

    def sop_uid(self, instance: StoredInstance) -> str:
        if self.deidentify_secret is None:
            return instance.sop_instance_uid
        return UIDMapper(self.deidentify_secret).map(instance.sop_instance_uid)

    def recipe(self):
        """(function, extra args) for the codec worker (CopyRecipe)."""
        if self.deidentify_secret is None:
            return transcode_file, ()
        return prepare_copy, ((), self.deidentify_secret)


@dataclass
class ExportReport:
    selected: int = 0
    exported: int = 0
    #: Bytes written (folder), or dataset bytes as stored of the instances sent (peer).
    bytes: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    where: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures and self.exported == self.selected

    def summary(self) -> str:
        return (f"exported {self.exported} of {self.selected} instance(s), "
                f"{self.bytes / 1e6:.1f} MB, to {self.where}; {len(self.failures)} failed"
                + (f", {len(self.warnings)} with a warning" if self.warnings else ""))


class ProgressDisplay:
    """Progress on stderr: a rich bar on a terminal, a plain line every few seconds else."""

    def __init__(self, total: int, label: str, stream=None, interval: float = 2.0) -> None:
        self.total, self.label, self.interval = total, label, interval
        self.stream = stream or sys.stderr
        self._rich = None
        self._last = 0.0

    def __enter__(self) -> "ProgressDisplay":
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import MofNCompleteColumn, Progress, TextColumn

            self._rich = Progress(*Progress.get_default_columns(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[mb]:.1f} MB"),
                                  console=Console(file=self.stream))
            self._task = self._rich.add_task(self.label, total=self.total, mb=0.0)
            self._rich.start()
        return self

    def __call__(self, done: int, nbytes: int) -> None:
        if self._rich is not None:
            self._rich.update(self._task, completed=done, mb=nbytes / 1e6)
            return
        now = time.monotonic()
        if now - self._last >= self.interval or done >= self.total:
            self._last = now
            print(f"{self.label}: {done}/{self.total} instance(s), {nbytes / 1e6:.1f} MB",
                  file=self.stream, flush=True)

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.stop()


def run_export(config, store, reader, selection, *, folder: Path | None = None,
               to: str | None = None, deidentify: bool = False, uncompressed: bool = False,
               calling_ae: str | None = None, progress_stream=None,
               audit_trail=None) -> ExportReport:
    """Select, check the destination, export; ExportError / InvalidSelection before
    anything is written when the input is wrong.  `audit_trail` (an AuditSink) gets one
    Export record per patient exported, with its studies and counts."""
    from engine.migration.export_folder import FolderExport, prepare_folder
    from engine.migration.export_peer import Peer, PeerExport, check_ae_title
    from engine.migration.export_selection import select_instances
    from engine.routing.router import routing_secret

    if (folder is None) == (to is None):
        raise ExportError("give either a folder (--folder) or a peer (--to)")
    peer = Peer.parse(to, config.retrieve) if to is not None else None
    instances = select_instances(reader, store, selection, config.query.fuzzy_person_names)
    if not instances:
        raise ExportError("nothing to export: no stored instance matches the selection")
    if folder is not None:
        folder = prepare_folder(folder, config.storage.data_dir)
    secret = None
    if deidentify:
        try:  # the router's key: the same UIDs as its de-identified copies
            secret = routing_secret(config.storage.data_dir)
        except OSError as exc:
            raise ExportError(f"cannot read or create the de-identification secret in "
                              f"{config.storage.data_dir}: {exc.strerror or exc}") from exc
    ssl_context = None
    if peer is not None and peer.tls:
        if not config.tls.ca_file:
            raise ExportError(f"{peer.ae_title} is reached over TLS, but [tls] ca_file "
                              "is not configured")
        ssl_context = client_context(config.tls)
    transform = Transform(secret, uncompressed)
    codec_config = config.codec
    codec = CodecWorkers(codec_config.workers, codec_config.task_timeout,
                         codec_config.memory_limit)
    resolver = RetrieveResolver(reader, store)
    report = ExportReport(selected=len(instances))
    try:
        if peer is not None:
            report.where = f"{peer.ae_title}@{peer.host}:{peer.port}" + \
                (" (TLS)" if peer.tls else "")
            job = PeerExport(peer, resolver, transform, codec,
                             check_ae_title(calling_ae or config.network.ae_title),
                             config.network.max_pdu_length, config.retrieve.connect_timeout,
                             config.retrieve.response_timeout, ssl_context)
            with ProgressDisplay(len(instances), "sending", progress_stream) as progress:
                asyncio.run(job.run(instances, report, progress))
        else:
            report.where = str(folder)
            threads = codec.processes if secret or uncompressed else 2
            with ProgressDisplay(len(instances), "exporting", progress_stream) as progress:
                FolderExport(folder, resolver, transform, codec).run(
                    instances, report, progress, max(1, threads))
    finally:
        codec.close()
        if audit_trail is not None and audit_trail.enabled:
            try:
                _audit(audit_trail, config, resolver, instances, report, peer, folder,
                       deidentify)
            except Exception:  # noqa: BLE001 - the export's own outcome stands
                log.exception("the export's audit record could not be made")
    return report


def _audit(trail, config, resolver, instances, report: ExportReport, peer, folder,
           deidentify: bool) -> None:
    """110106 Export, per patient: what left the archive, to where, by whom."""
    from engine.ops import audit

    failed = {uid for uid, _ in report.failures}
    studies = resolver.studies_of([i.sop_instance_uid for i in instances])
    tallies = audit.Tallies()
    for instance in instances:
        study, patient = studies.get(instance.sop_instance_uid, ("", ""))
        tallies.add(study, patient, instance.sop_class_uid,
                    instance.sop_instance_uid not in failed)
    ae_title = config.network.ae_title
    if peer is not None:
        destination = audit.participant(peer.ae_title, False, audit.ROLE_DESTINATION, peer.host)
    else:
        destination = audit.participant(str(folder), False, audit.ROLE_DESTINATION_MEDIA)
    participants = [audit.operator(), audit.participant(ae_title, False, audit.ROLE_SOURCE),
                    destination]
    detail = "pacs export" + (" (de-identified copies)" if deidentify else "") + \
        f" to {report.where}"

    def make(objects, done, failed_count):
        return audit.record("export", audit.EXPORT, "R", audit.outcome_of(done, failed_count),
                            participants, objects, source_id=ae_title,
                            description=f"{detail}: {done} instance(s)"
                            + (f", {failed_count} failed" if failed_count else ""),
                            Deidentified=deidentify)

    for record in audit.study_records(tallies, make, per_patient=True):
        trail.emit(record)


__all__ = ["ExportError", "ExportReport", "InstanceFailed", "ProgressDisplay", "Transform",
           "run_export"]
