"""Where the router sends instances: `[routing.destinations.NAME]` tables, checked at load.

    [routing.destinations.VIEWER]          [routing.destinations.EXPORT]
    type = "dicom"                         type = "folder"
    ae_title = "VIEWER"                    path = "/srv/export"
    host = "10.0.0.5"
    port = 104
    max_associations = 2                   # optional, default 1
    calling_ae_title = ""                  # optional, "" = [network] ae_title
    transfer_syntax = "as-stored"          # optional, for both types
    tls = false                            # optional: DICOM TLS ([tls] in the config)

NAME is how rules and the forward queue refer to the destination (letters, digits,
`_ . -`; at most 64).  This module only describes destinations; sending is elsewhere.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union

from engine.routing.schema import boolean, fail, integer, only_keys, string, table

#: How the copy sent should be encoded: the stored syntax, an uncompressed one the peer
#: accepts, or JPEG 2000 Lossless (lossless targets only; see codec/transcode.py).
TRANSFER_SYNTAX_PREFERENCES = ("as-stored", "uncompressed", "jpeg2000-lossless")
#: Parallel associations to one peer at most (a rule file cannot make us flood a peer).
MAX_ASSOCIATIONS_PER_DESTINATION = 32

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


@dataclass(frozen=True)
class DicomDestination:
    """A DICOM peer we open associations to and send C-STORE requests."""

    name: str
    ae_title: str
    host: str
    port: int
    #: Associations open to this peer at once, at most.
    max_associations: int = 1
    #: Our AE title on these associations; "" means [network] ae_title.
    calling_ae_title: str = ""
    #: Preferred transfer syntax when a rule does not say (TRANSFER_SYNTAX_PREFERENCES).
    transfer_syntax: str = "as-stored"
    #: Associate over DICOM TLS: [tls] ca_file checks the peer, our certificate is offered.
    tls: bool = False


@dataclass(frozen=True)
class FolderDestination:
    """A directory that receives one DICOM Part 10 file per instance."""

    name: str
    path: Path
    transfer_syntax: str = "as-stored"


Destination = Union[DicomDestination, FolderDestination]

_DICOM_KEYS = ("type", "ae_title", "host", "port", "max_associations", "calling_ae_title",
               "transfer_syntax", "tls")
_FOLDER_KEYS = ("type", "path", "transfer_syntax")


def parse_destinations(raw: Any) -> dict[str, Destination]:
    """`[routing.destinations]` (NAME → table) as destination objects by name."""
    where = "destinations"
    result: dict[str, Destination] = {}
    for name, body in table(raw, where).items():
        here = f"destination {name!r}"
        if not _NAME.fullmatch(name):
            raise fail(here, "names are 1-64 letters, digits, '_', '.' or '-', starting "
                             "with a letter or digit")
        result[name] = _parse_destination(name, table(body, here), here)
    return result


def _parse_destination(name: str, body: Mapping[str, Any], where: str) -> Destination:
    kind = body.get("type")
    if kind == "dicom":
        only_keys(body, _DICOM_KEYS, where)
        for required in ("ae_title", "host", "port"):
            if required not in body:
                raise fail(where, f"a dicom destination needs {required}")
        port = integer(body["port"], f"{where}: port")
        if not 0 < port < 65536:
            raise fail(f"{where}: port", f"out of range: {port}")
        max_associations = integer(body.get("max_associations", 1),
                                   f"{where}: max_associations")
        if not 1 <= max_associations <= MAX_ASSOCIATIONS_PER_DESTINATION:
            raise fail(f"{where}: max_associations",
                       f"must be 1-{MAX_ASSOCIATIONS_PER_DESTINATION}")
        calling = body.get("calling_ae_title", "")
        return DicomDestination(
            name=name,
            ae_title=ae_title(body["ae_title"], f"{where}: ae_title"),
            host=string(body["host"], f"{where}: host", empty=False).strip(),
            port=port,
            max_associations=max_associations,
            calling_ae_title=ae_title(calling, f"{where}: calling_ae_title") if calling else "",
            transfer_syntax=transfer_syntax(body.get("transfer_syntax", "as-stored"),
                                            f"{where}: transfer_syntax"),
            tls=boolean(body.get("tls", False), f"{where}: tls"))
    if kind == "folder":
        only_keys(body, _FOLDER_KEYS, where)
        if "path" not in body:
            raise fail(where, "a folder destination needs path")
        return FolderDestination(
            name=name,
            path=Path(string(body["path"], f"{where}: path", empty=False)),
            transfer_syntax=transfer_syntax(body.get("transfer_syntax", "as-stored"),
                                            f"{where}: transfer_syntax"))
    raise fail(f"{where}: type", f"must be \"dicom\" or \"folder\", got {kind!r}")


def ae_title(value: Any, where: str) -> str:
    text = string(value, where)
    if not 1 <= len(text.strip()) <= 16 or "\\" in text or \
            not all(" " <= c <= "~" for c in text):
        raise fail(where, "an AE title is 1-16 printable ASCII characters without backslash")
    return text.strip()


def transfer_syntax(value: Any, where: str) -> str:
    if value not in TRANSFER_SYNTAX_PREFERENCES:
        raise fail(where, f"must be one of {', '.join(TRANSFER_SYNTAX_PREFERENCES)}, "
                          f"got {value!r}")
    return value
