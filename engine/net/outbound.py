"""Writing DIMSE messages to a peer: P-DATA framing with write backpressure.

Used by both sides of an association: the requestor (C-MOVE sub-operations,
storage-commitment reports on a new association) and the acceptor (C-GET
sub-operations, reports on the same association).  A dataset is either bytes
in memory (identifiers, transcoded instances) or a `StoredDataset`, streamed
from its file in bounded chunks: a large instance is never held whole in
memory, and nothing is copied between the page cache read and the socket but
the 12-byte PDU headers.
"""
from __future__ import annotations

import asyncio
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine.errors import EngineError

_P_DATA_HEADER = struct.Struct(">BxIIBB")  # PDU type, PDU length, PDV length, context, control
_PDV_OVERHEAD = 6  # PDV item length (4), context id (1), message control header (1)
_COMMAND, _LAST = 0x01, 0x02
#: Bytes read from a stored file per step; a multiple of any sane PDU size.
READ_CHUNK = 1 << 20


class PeerGone(EngineError):
    """The association ended (closed, aborted, timed out) before the message was sent."""


class DatasetUnavailable(EngineError):
    """A stored file cannot be read; raised before any byte of the message was sent."""


@dataclass(frozen=True)
class StoredDataset:
    """Dataset bytes at [offset, offset + length) of a stored Part 10 file."""

    path: Path
    offset: int
    length: int


class PDUSink(Protocol):
    """What a message is written to: a transport with backpressure."""

    closed: bool

    def write_buffers(self, buffers: list) -> None: ...

    async def wait_writable(self) -> None: ...


def p_data_buffers(context_id: int, is_command: bool, data, max_pdu_length: int,
                   last: bool) -> list:
    """PDU headers and zero-copy slices of `data`, ready for `transport.writelines`.

    Each PDU carries one PDV and is at most `max_pdu_length` long (0 = unlimited);
    the last-fragment bit is set on the final PDV only when `last` is true.
    """
    view = memoryview(data).cast("B")
    room = (max_pdu_length or (1 << 31)) - _PDV_OVERHEAD
    control = _COMMAND if is_command else 0
    buffers: list = []
    pos, size = 0, len(view)
    while True:
        n = min(room, size - pos)
        final = last and pos + n == size
        buffers.append(_P_DATA_HEADER.pack(0x04, n + _PDV_OVERHEAD, n + 2, context_id,
                                           control | (_LAST if final else 0)))
        buffers.append(view[pos:pos + n])
        pos += n
        if pos >= size:
            return buffers


def _read_at(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OSError(f"stored file shorter than its index entry ({len(data)} of {length} bytes)")
    return data


async def send_message(sink: PDUSink, context_id: int, command_set: bytes,
                       dataset: bytes | StoredDataset | None, max_pdu_length: int) -> None:
    """Write one DIMSE message; waits while the transport's buffer is full.

    Raises PeerGone when the association closed, DatasetUnavailable when a
    stored file is missing or short (checked before anything is written), and
    OSError when reading fails half-way (the caller must then abort).
    """
    if sink.closed:
        raise PeerGone("association closed")
    if isinstance(dataset, StoredDataset):
        fd = _open_stored(dataset)
        try:
            sink.write_buffers(p_data_buffers(context_id, True, command_set, max_pdu_length,
                                              True))
            await _send_stored(sink, context_id, fd, dataset, max_pdu_length)
        finally:
            os.close(fd)
    elif dataset is not None:
        sink.write_buffers(p_data_buffers(context_id, True, command_set, max_pdu_length, True))
        sink.write_buffers(p_data_buffers(context_id, False, dataset, max_pdu_length, True))
        await sink.wait_writable()
    else:
        sink.write_buffers(p_data_buffers(context_id, True, command_set, max_pdu_length, True))
        await sink.wait_writable()
    if sink.closed:
        raise PeerGone("association closed while sending")


def _open_stored(dataset: StoredDataset) -> int:
    try:
        fd = os.open(dataset.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DatasetUnavailable(f"stored file unreadable: {exc.strerror}") from exc
    if os.fstat(fd).st_size < dataset.offset + dataset.length:
        os.close(fd)
        raise DatasetUnavailable("stored file shorter than its index entry")
    return fd


async def _send_stored(sink: PDUSink, context_id: int, fd: int, dataset: StoredDataset,
                       max_pdu_length: int) -> None:
    loop = asyncio.get_running_loop()
    chunk = READ_CHUNK
    if max_pdu_length:  # whole PDUs per chunk, so only the last PDU of the dataset is short
        room = max_pdu_length - _PDV_OVERHEAD
        chunk = max(room, READ_CHUNK // room * room)
    done, total = 0, dataset.length
    if total == 0:
        sink.write_buffers(p_data_buffers(context_id, False, b"", max_pdu_length, True))
    while done < total:
        n = min(chunk, total - done)
        if n < 256 * 1024:
            data = _read_at(fd, dataset.offset + done, n)  # small: not worth a thread hop
        else:
            data = await loop.run_in_executor(None, _read_at, fd, dataset.offset + done, n)
        if sink.closed:
            raise PeerGone("association closed while sending")
        done += n
        sink.write_buffers(p_data_buffers(context_id, False, data, max_pdu_length,
                                          done == total))
        await sink.wait_writable()


__all__ = ["DatasetUnavailable", "PDUSink", "PeerGone", "StoredDataset", "p_data_buffers",
           "send_message"]
