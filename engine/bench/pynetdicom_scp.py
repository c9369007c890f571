"""A minimal pynetdicom storage SCP: the pure-Python receiver `pacs bench` compares with.

It does what pynetdicom's documentation recommends for speed: the encoded
dataset is written as received behind a file meta header, never decoded.

    python -m engine.bench.pynetdicom_scp PORT DIRECTORY [--ae-title PACS]
"""
from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.bench.pynetdicom_scp")
    parser.add_argument("port", type=int)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--ae-title", default="PACS")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    args.directory.mkdir(parents=True, exist_ok=True)

    def on_open(event) -> None:  # the same TCP_NODELAY=1 the DCMTK peers get
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_store(event) -> int:
        uid = event.request.AffectedSOPInstanceUID
        with open(args.directory / f"{uid}.dcm", "wb") as f:
            f.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(f, event.file_meta, enforce_standard=True)
            f.write(event.request.DataSet.getvalue())
        return 0x0000

    ae = AE(ae_title=args.ae_title)
    ae.maximum_associations = 64
    ae.maximum_pdu_size = 0
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax)
    ae.add_supported_context(Verification)
    ae.start_server((args.host, args.port), block=True,
                    evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_C_STORE, on_store)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
