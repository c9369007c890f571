"""multipart/related (RFC 2387) as DICOMweb uses it: a streaming parser for
STOW-RS request bodies, the framing of WADO-RS responses, and the media-type
and Accept header grammar both need.

The parser is pushed chunks as they arrive and hands back events (a part's
headers, slices of its body, its end); it keeps only a delimiter's length of
body between chunks and bounds the preamble and part headers, so a request of
any size is parsed in constant memory and a malformed one fails early.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

_MAX_PREAMBLE = 64 * 1024
_MAX_PART_HEADERS = 16 * 1024


class MalformedMultipart(ValueError):
    """The body is not multipart/related with the declared boundary."""


# --- media types --------------------------------------------------------------------------
def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


@dataclass(frozen=True)
class MediaType:
    """`type/subtype` (lower case) and its parameters (names lower case, values unquoted)."""

    type: str
    params: dict = field(default_factory=dict)

    @property
    def q(self) -> float:
        try:
            return float(self.params.get("q", "1"))
        except ValueError:
            return 0.0


def parse_media_type(text: str) -> MediaType:
    pieces = _split_outside_quotes(text, ";")
    params = {}
    for piece in pieces[1:]:
        name, sep, value = piece.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        params[name.strip().lower()] = value
    return MediaType(pieces[0].strip().lower(), params)


def parse_accept(header: str | None) -> list[MediaType]:
    """The media ranges of an Accept header, best first (q order, then as written)."""
    if not header or not header.strip():
        return [MediaType("*/*")]
    ranges = [parse_media_type(p) for p in _split_outside_quotes(header, ",") if p.strip()]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)


def matches(pattern: str, media_type: str) -> bool:
    """Whether a media range (``*/*``, ``image/*``, exact) covers `media_type`."""
    if pattern in ("*/*", "*", media_type):
        return True
    major, _, minor = pattern.partition("/")
    return minor == "*" and media_type.startswith(major + "/")


# --- writing ------------------------------------------------------------------------------
def new_boundary() -> str:
    return uuid.uuid4().hex


def part_header(boundary: str, content_type: str, extra: dict[str, str] | None = None) -> bytes:
    """The delimiter and headers that open a part (the first one too)."""
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def part_separator() -> bytes:
    """What ends a part's body before the next part's header."""
    return b"\r\n"


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


def multipart_content_type(boundary: str, part_type: str, transfer_syntax: str | None = None
                           ) -> str:
    text = f'multipart/related; type="{part_type}"'
    if transfer_syntax:
        text += f"; transfer-syntax={transfer_syntax}"
    return text + f"; boundary={boundary}"


# --- reading ------------------------------------------------------------------------------
class PartHeaders(dict):
    """A part's header fields, names in lower case."""


PART_HEADERS, PART_DATA, PART_END = "headers", "data", "end"

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _DONE = range(5)


class MultipartParser:
    """Push parser: `feed(chunk)` returns events, `finish()` checks the body ended.

    Events are (PART_HEADERS, PartHeaders), (PART_DATA, bytes) and (PART_END, None).
    """

    def __init__(self, boundary: str) -> None:
        if not boundary or len(boundary) > 70:
            raise MalformedMultipart("multipart boundary missing or longer than 70 characters")
        self._dash_boundary = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._dash_boundary
        self._buffer = b""
        self._state = _PREAMBLE
        self.parts = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, chunk: bytes) -> list[tuple[str, object]]:
        events: list[tuple[str, object]] = []
        if self._state == _DONE:
            return events  # the epilogue is ignored
        buffer = self._buffer + chunk if self._buffer else bytes(chunk)
        while True:
            state = self._state
            if state == _PREAMBLE:
                if buffer.startswith(self._dash_boundary):
                    at = 0
                else:
                    at = buffer.find(self._delimiter)
                    if at >= 0:
                        at += 2
                if at < 0:
                    if len(buffer) > _MAX_PREAMBLE:
                        raise MalformedMultipart("no multipart boundary at the start of the body")
                    break
                buffer = buffer[at + len(self._dash_boundary):]
                self._state = _AFTER_DELIMITER
            elif state == _AFTER_DELIMITER:
                if len(buffer) < 2:
                    break
                if buffer.startswith(b"--"):
                    self._state = _DONE
                    buffer = b""
                    break
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > 256:
                        raise MalformedMultipart("boundary not followed by CRLF")
                    break
                if buffer[:end].strip(b" \t"):
                    raise MalformedMultipart("boundary not followed by CRLF")
                buffer = buffer[end + 2:]
                self._state = _HEADERS
            elif state == _HEADERS:
                if buffer.startswith(b"\r\n"):
                    end, head = 0, b""
                else:
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buffer) > _MAX_PART_HEADERS:
                            raise MalformedMultipart("part headers too long")
                        break
                    head = buffer[:end]
                    end += 2
                events.append((PART_HEADERS, _parse_headers(head)))
                self.parts += 1
                buffer = buffer[end + 2:]
                self._state = _BODY
            elif state == _BODY:
                at = buffer.find(self._delimiter)
                if at < 0:
                    keep = len(self._delimiter) - 1
                    if len(buffer) > keep:
                        events.append((PART_DATA, buffer[:len(buffer) - keep]))
                        buffer = buffer[len(buffer) - keep:]
                    break
                if at:
                    events.append((PART_DATA, buffer[:at]))
                events.append((PART_END, None))
                buffer = buffer[at + len(self._delimiter):]
                self._state = _AFTER_DELIMITER
            else:
                break
        self._buffer = buffer
        return events

    def finish(self) -> None:
        if self._state != _DONE:
            raise MalformedMultipart("the body ended before the closing boundary" if self.parts
                                     else "the body holds no multipart part")


def _parse_headers(head: bytes) -> PartHeaders:
    headers = PartHeaders()
    for line in head.split(b"\r\n"):
        if not line.strip():
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise MalformedMultipart("malformed part header line")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers
