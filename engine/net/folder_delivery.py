"""The router's folder destinations: one DICOM Part 10 file per instance.

Files land as <folder>/<Study Instance UID>/<SOP Instance UID>.dcm, written to a
hidden temp name, fsync'd, then renamed: a hand-off reader never sees half a
file.  De-identified copies are named by their remapped UIDs.
"""
from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

from engine.codec.transcode import transcode_file
from engine.codec.workers import CodecWorkers
from engine.dicom.part10 import encode_file_header
from engine.errors import EngineError
from engine.index.forward_queue import ForwardJob
from engine.net.peer_session import preferred_syntax
from engine.net.retrieve_service import CopyRecipe
from engine.query.retrieve import StoredInstance
from engine.routing.deidentify import UIDMapper
from engine.routing.destinations import FolderDestination


async def write_to_folder(destination: FolderDestination, job: ForwardJob,
                          instance: StoredInstance, codec: CodecWorkers,
                          recipe: CopyRecipe | None, deidentify_secret: str) -> str:
    """Write one instance; "" when it is durably there, else why not."""
    target = preferred_syntax(job.order.transfer_syntax) or instance.transfer_syntax_uid
    try:
        dataset = None
        if recipe is not None or target != instance.transfer_syntax_uid:
            function, extra = recipe or (transcode_file, ())
            dataset = await asyncio.to_thread(
                codec.run, function, str(instance.path), instance.dataset_offset,
                instance.transfer_syntax_uid, target, *extra)
        names = (job.study_instance_uid, job.sop_instance_uid)
        if job.order.deidentify:  # the file's name must not give the UIDs away
            mapper = UIDMapper(deidentify_secret)
            names = (mapper.map(names[0]), mapper.map(names[1]))
        await asyncio.to_thread(write_part10, destination.path, names, instance, target,
                                dataset)
    except EngineError as exc:
        return f"cannot prepare the copy: {exc}"
    except OSError as exc:
        return f"cannot write: {exc.strerror or exc}"
    return ""


def write_part10(folder: Path, names: tuple[str, str], instance: StoredInstance,
                 target_ts: str, dataset: bytes | None) -> None:
    """Write folder/<study UID>/<SOP instance UID>.dcm durably: the stored file as it
    is, or our file meta in front of a prepared `dataset` (changed, de-identified or
    transcoded).

    The names are UIDs that passed the UI grammar check at ingest, or our own
    remapped ones (digits and dots only), so they cannot leave the folder.
    """
    study, sop = names
    study_dir = folder / study
    study_dir.mkdir(parents=True, exist_ok=True)
    final = study_dir / f"{sop}.dcm"
    temp = study_dir / f".{sop}.{secrets.token_hex(4)}.partial"
    try:
        with open(temp, "wb") as dst:
            if dataset is None:
                with open(instance.path, "rb") as src:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
            else:
                dst.write(encode_file_header(instance.sop_class_uid, sop, target_ts))
                dst.write(dataset)
            dst.flush()
            os.fsync(dst.fileno())
        os.rename(temp, final)
        directory = os.open(study_dir, os.O_RDONLY)  # the rename itself must survive a crash
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


__all__ = ["write_part10", "write_to_folder"]
