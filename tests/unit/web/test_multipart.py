"""The streaming multipart/related parser and the media-type grammar."""
from __future__ import annotations

import random

import pytest

from engine.web.multipart import (
    PART_DATA, PART_END, PART_HEADERS, MalformedMultipart, MultipartParser, closing,
    matches, parse_accept, parse_media_type, part_header, part_separator)


def body(parts: list[bytes], boundary: str = "BOUNDARY", preamble: bytes = b"") -> bytes:
    out = preamble
    for part in parts:
        out += part_header(boundary, "application/dicom") + part + part_separator()
    return out + closing(boundary)


def parse(data: bytes, boundary: str = "BOUNDARY", chunks: list[int] | None = None):
    parser = MultipartParser(boundary)
    events = []
    position = 0
    for size in chunks or [len(data)]:
        events += parser.feed(data[position:position + size])
        position += size
    events += parser.feed(data[position:])
    parser.finish()
    parts, current, headers = [], None, []
    for kind, value in events:
        if kind == PART_HEADERS:
            current = b""
            headers.append(value)
        elif kind == PART_DATA:
            current += value
        elif kind == PART_END:
            parts.append(current)
    return parts, headers


def test_parts_come_back_whole_whatever_the_chunking():
    rng = random.Random(5)
    payloads = [bytes(rng.randrange(256) for _ in range(n)) for n in (0, 1, 300, 5000)]
    payloads.append(b"\r\n--BOUNDAR" * 50)  # almost a delimiter, many times
    data = body(payloads, preamble=b"ignored preamble\r\n")
    for _ in range(200):
        cuts = [rng.randrange(1, 40) for _ in range(rng.randrange(1, 300))]
        parts, headers = parse(data, chunks=cuts)
        assert parts == payloads
        assert all(h["content-type"] == "application/dicom" for h in headers)


def test_dicomweb_client_framing_leading_crlf_and_no_trailing_crlf():
    data = (b"\r\n--b\r\nContent-Type: application/dicom\r\n\r\nONE"
            b"\r\n--b\r\nContent-Type: application/dicom\r\n\r\nTWO\r\n--b--")
    assert parse(data, "b")[0] == [b"ONE", b"TWO"]


def test_a_part_without_headers_and_epilogue_are_fine():
    data = b"--b\r\n\r\nBODY\r\n--b--\r\nepilogue junk"
    parts, headers = parse(data, "b")
    assert parts == [b"BODY"] and headers == [{}]


@pytest.mark.parametrize("data", [
    b"no boundary anywhere" * 5000,
    b"--b\r\nContent-Type: x\r\n\r\nbody never ends",
    b"--bXX\r\n\r\n",
    b"--b\r\n" + b"X" * 20000,
    b"--b\r\nno colon here\r\n\r\nbody\r\n--b--",
    b"",
])
def test_malformed_bodies_raise(data):
    with pytest.raises(MalformedMultipart):
        parse(data, "b")


def test_memory_stays_bounded_on_a_long_part():
    parser = MultipartParser("b")
    parser.feed(b"--b\r\n\r\n")
    for _ in range(1000):
        events = parser.feed(b"x" * 65536)
        assert sum(len(v) for k, v in events if k == PART_DATA) > 60000
        assert len(parser._buffer) < 16


def test_media_types_and_accept():
    media = parse_media_type('multipart/related; type="application/dicom"; boundary="a;b"')
    assert media.type == "multipart/related"
    assert media.params == {"type": "application/dicom", "boundary": "a;b"}
    accept = parse_accept('image/png;q=0.5, multipart/related; type="application/dicom"; '
                          'transfer-syntax=*, text/html;q=0')
    assert [m.type for m in accept] == ["multipart/related", "image/png"]
    assert accept[0].params["transfer-syntax"] == "*"
    assert parse_accept(None)[0].type == "*/*"
    assert matches("image/*", "image/png") and matches("*/*", "x/y")
    assert not matches("image/jpeg", "image/png")
