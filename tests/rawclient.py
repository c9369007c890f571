"""A deliberately permissive DICOM client for sending what real clients refuse to.

Bad-input tests need to send invalid UIDs, truncated datasets, oversized PDUs
and protocol violations; pynetdicom validates too much to do that.
"""
from __future__ import annotations

import socket
import struct

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

from engine.net.dimse import decode_command, encode_command
from engine.net.pdu_framing import encode_p_data

LOOPBACK = "127.0.0.1"


def associate_rq_bytes(contexts, calling="RAWSCU", called="PACS", max_pdu=65536,
                       user_items=()) -> bytes:
    """An A-ASSOCIATE-RQ proposing `contexts` (IDs 1, 3, 5...); `user_items` are extra
    user-information primitives (role selection, extended negotiation...)."""
    rq = A_ASSOCIATE()
    rq.application_context_name = UID("1.2.840.10008.3.1.1.1")
    rq.calling_ae_title = calling
    rq.called_ae_title = called
    items = []
    for i, (abstract, syntaxes) in enumerate(contexts):
        cx = PresentationContext()
        cx.context_id = 2 * i + 1
        cx.abstract_syntax = UID(abstract)
        cx.transfer_syntax = [UID(ts) for ts in syntaxes]
        items.append(cx)
    rq.presentation_context_definition_list = items
    ml = MaximumLengthNotification()
    ml.maximum_length_received = max_pdu
    rq.user_information = [ml, *user_items]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(rq)
    return pdu.encode()


class RawAssociation:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.message_id = 0
        self.peer_max_pdu = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self) -> tuple[int, bytes]:
        """(type, whole PDU) or (0, b"") when the server closed the connection."""
        header = self._read_exact(6)
        if len(header) < 6:
            return 0, b""
        length = struct.unpack(">I", header[2:6])[0]
        return header[0], header + self._read_exact(length)

    def _read_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            if not chunk:
                break
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def associate(self, contexts, **kwargs) -> tuple[int, bytes]:
        self.send(associate_rq_bytes(contexts, **kwargs))
        pdu_type, pdu = self.read_pdu()
        if pdu_type == 0x02:
            ac = A_ASSOCIATE_AC()
            ac.decode(pdu)
            for item in ac.user_information.user_data:
                if hasattr(item, "maximum_length_received"):
                    self.peer_max_pdu = item.maximum_length_received
        return pdu_type, pdu

    def send_message(self, context_id: int, command: dict, dataset: bytes | None) -> None:
        for pdu in encode_p_data(context_id, True, encode_command(command), self.peer_max_pdu):
            self.send(pdu)
        if dataset is not None:
            for pdu in encode_p_data(context_id, False, dataset, self.peer_max_pdu):
                self.send(pdu)

    def read_response(self) -> dict:
        """Read one command set response; returns {element: raw bytes} or raises on abort."""
        return decode_command(self._read_fragments(command=True)).elements

    def read_response_dataset(self) -> bytes:
        """Read the dataset that follows a response whose Data Set Type says one follows."""
        return self._read_fragments(command=False)

    def _read_fragments(self, command: bool) -> bytes:
        fragments = b""
        while True:
            pdu_type, pdu = self.read_pdu()
            if pdu_type != 0x04:
                raise ConnectionError(f"expected P-DATA, got PDU type {pdu_type}")
            offset = 6
            while offset < len(pdu):
                length = struct.unpack(">I", pdu[offset:offset + 4])[0]
                control = pdu[offset + 5]
                if bool(control & 0x01) != command:
                    raise ConnectionError("unexpected command/dataset fragment order")
                fragments += pdu[offset + 6:offset + 4 + length]
                offset += 4 + length
                if control & 0x02:
                    return fragments

    def c_store(self, context_id: int, sop_class: str, sop_instance: str, dataset: bytes) -> int:
        self.message_id += 1
        self.send_message(context_id, {
            0x0002: sop_class, 0x0100: 0x0001, 0x0110: self.message_id, 0x0700: 0,
            0x0800: 0x0000, 0x1000: sop_instance}, dataset)
        return struct.unpack("<H", self.read_response()[0x0900])[0]

    def c_store_stream(self, context_id: int, sop_class: str, sop_instance: str,
                       chunks, pdv_size: int = 1 << 20) -> int:
        """C-STORE whose dataset comes from an iterable of byte chunks (never held whole)."""
        self.message_id += 1
        for pdu in encode_p_data(context_id, True, encode_command({
                0x0002: sop_class, 0x0100: 0x0001, 0x0110: self.message_id, 0x0700: 0,
                0x0800: 0x0000, 0x1000: sop_instance}), self.peer_max_pdu):
            self.send(pdu)
        limit = min(pdv_size, self.peer_max_pdu - 6) if self.peer_max_pdu else pdv_size
        pending = b""
        for chunk in chunks:
            pending += chunk
            while len(pending) > limit:  # keep one fragment back: it may be the last
                self._send_fragment(context_id, pending[:limit], last=False)
                pending = pending[limit:]
        self._send_fragment(context_id, pending, last=True)
        return struct.unpack("<H", self.read_response()[0x0900])[0]

    def _send_fragment(self, context_id: int, data: bytes, last: bool) -> None:
        item_length = len(data) + 2
        self.send(struct.pack(">BBIIBB", 0x04, 0, item_length + 4, item_length, context_id,
                              0x02 if last else 0x00) + data)

    def c_echo(self, context_id: int) -> int:
        self.message_id += 1
        self.send_message(context_id, {
            0x0002: "1.2.840.10008.1.1", 0x0100: 0x0030, 0x0110: self.message_id,
            0x0800: 0x0101}, None)
        return struct.unpack("<H", self.read_response()[0x0900])[0]

    def release(self) -> int:
        self.send(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        return self.read_pdu()[0]

    def close(self) -> None:
        self.sock.close()
