"""On-the-fly transcoding of a stored instance for a C-MOVE / C-GET destination.

The archive keeps every dataset exactly as received; when a peer did not accept
the stored transfer syntax, the sender asks `choose_target` what to send and
`transcode_file` for the bytes.  The rule is the archive's: never lose a bit
that the source had.  So we decode any syntax we have a codec for to an
uncompressed one, encode only to lossless syntaxes, and encode a lossy source
only to uncompressed ones (its Lossy Image Compression stays "01").

Codecs are pydicom's plugins, found at run time: pylibjpeg-openjpeg (through
pylibjpeg) for JPEG 2000 and HTJ2K, python-gdcm for JPEG baseline/extended/
lossless and JPEG-LS, pyjpegls for JPEG-LS, pydicom itself for RLE; deflate is
zlib.  A syntax whose plugin is missing is reported as impossible by
`can_transcode` instead of failing later.  Known gap: 12-bit JPEG Extended
(.4.51) needs a decoder we do not ship (GDCM decodes only its 8-bit form), so
such an instance raises TranscodeError although the syntax is decodable.

Memory: a transcoded instance is held in memory whole.  The file is read once,
streamed into pydicom (one copy of each value); decoding adds the decoded pixel
data and the codec's frames while they are joined, encoding adds the encoded
frames and one decode of them (every encoded frame is decoded again and compared
before it is sent), and the result is one more bytes object.  Nothing is written
to disk.

Run it where it can be abandoned: a corrupt JPEG 2000 stream can keep openjpeg
spinning for minutes (seen with a zeroed JP2 box), and GDCM is C++ that can
abort the process; a worker process with a timeout contains both.

Values keep their received bytes (see reencode.py); only the attributes the
target syntax depends on change: Pixel Data (native: OB for <= 8 bits allocated,
else OW, padded to even length; encapsulated: OB, undefined length), and as
pydicom's decompress()/compress() set them, Photometric Interpretation (JPEG
YBR_FULL/YBR_FULL_422 and JPEG 2000 YBR_RCT/YBR_ICT become RGB), Planar
Configuration and Number of Frames.  Extended Offset Table (Lengths) is dropped
with the encapsulation it described; Lossy Image Compression is set to "01" when
a JPEG DCT (always lossy) source lacks it.  Nested encapsulated Pixel Data (an
icon image) is decompressed too.  The SOP Instance UID never changes.
"""
from __future__ import annotations

import io
import logging
import os
import zlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from pydicom import uid as pdu
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.pixels import get_decoder, get_encoder

from engine.codec.reencode import (
    PIXEL_DATA, encode_dataset, lookup_vr, swap_bytes, swap_width)
from engine.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN, transfer_syntax_encoding)
from engine.errors import TranscodeError

log = logging.getLogger(__name__)

#: Syntaxes with native (uncompressed) Pixel Data: every one is a target.
NATIVE_SYNTAXES = frozenset({
    IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN,
})

#: Compressed syntaxes whose decoded pixels are exactly the encoded ones.
#: JPEG 2000 (.4.91), JPEG-LS near-lossless and HTJ2K (.4.203) may be lossy.
LOSSLESS_COMPRESSED_SYNTAXES = frozenset({
    pdu.RLELossless, pdu.JPEGLossless, pdu.JPEGLosslessSV1, pdu.JPEGLSLossless,
    pdu.JPEG2000Lossless, pdu.HTJ2KLossless, pdu.HTJ2KLosslessRPCL,
})

#: Lossless compressed syntaxes we encode to, best first: JPEG-LS is fast and
#: compresses about as well as JPEG 2000, RLE is weakest.
ENCODED_TARGETS = (pdu.JPEGLSLossless, pdu.JPEG2000Lossless, pdu.RLELossless)

#: What choose_target prefers when the stored syntax was not accepted: native
#: first (no codec work, nothing a peer can misread), big endian (retired) last.
PREFERENCE = (
    EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, *ENCODED_TARGETS,
)

#: DCT-based JPEG: lossy whatever the stream says.
_ALWAYS_LOSSY = frozenset({pdu.JPEGBaseline8Bit, pdu.JPEGExtended12Bit})

_EXTENDED_OFFSET_TABLE = (0x7FE00001, 0x7FE00002)  # and its Lengths
_FLOAT_PIXEL_DATA = (0x7FE00008, 0x7FE00009)        # Float, Double Float
_LOSSY_IMAGE_COMPRESSION = 0x00282110


#: pydicom plugins we let decode each syntax, best first.  GDCM only where
#: nothing else is permissively licensed (pylibjpeg-libjpeg is GPL-3.0).
_DECODERS: dict[str, tuple[str, ...]] = {
    pdu.RLELossless: ("pydicom",),
    **dict.fromkeys((pdu.JPEGBaseline8Bit, pdu.JPEGExtended12Bit), ("gdcm", "pillow")),
    **dict.fromkeys((pdu.JPEGLossless, pdu.JPEGLosslessSV1), ("gdcm",)),
    **dict.fromkeys((pdu.JPEGLSLossless, pdu.JPEGLSNearLossless), ("pyjpegls", "gdcm")),
    **dict.fromkeys((pdu.JPEG2000Lossless, pdu.JPEG2000), ("pylibjpeg", "gdcm")),
    **dict.fromkeys((pdu.HTJ2KLossless, pdu.HTJ2KLosslessRPCL, pdu.HTJ2K), ("pylibjpeg",)),
}

#: pydicom plugins we let encode each target.  Never GDCM's RLE encoder: it
#: aborts the process (an uncaught C++ exception) on odd-sized frames.
_ENCODERS: dict[str, tuple[str, ...]] = {
    pdu.JPEGLSLossless: ("pyjpegls",),
    pdu.JPEG2000Lossless: ("pylibjpeg",),
    pdu.RLELossless: ("pydicom",),
}


@lru_cache(maxsize=None)
def _decoding_plugin(ts: str) -> str | None:
    """The plugin to decode `ts` with, or None if none of ours is installed."""
    try:
        available = get_decoder(ts).available_plugins
    except (NotImplementedError, ValueError):
        return None
    return next((name for name in _DECODERS.get(ts, ()) if name in available), None)


@lru_cache(maxsize=None)
def _encoding_plugin(ts: str) -> str | None:
    """The plugin to encode `ts` with, or None if none of ours is installed."""
    try:
        available = get_encoder(ts).available_plugins
    except (NotImplementedError, ValueError):
        return None
    return next((name for name in _ENCODERS.get(ts, ()) if name in available), None)


def _can_decode(ts: str) -> bool:
    return ts in NATIVE_SYNTAXES or _decoding_plugin(ts) is not None


def _can_encode(ts: str) -> bool:
    # Encoded frames are decoded again to prove them: that needs a decoder too.
    return ts in NATIVE_SYNTAXES or (
        _encoding_plugin(ts) is not None and _decoding_plugin(ts) is not None)


def can_transcode(source_ts: str, target_ts: str) -> bool:
    """True when target_ts can be made from source_ts losing nothing the source had.

    Any syntax we can decode goes to a native one; a native or lossless
    compressed one also goes to a lossless compressed syntax we can encode.
    Never to a lossy syntax: lossy output is a new image, not a transfer.
    """
    if source_ts == target_ts:
        return True
    if not _can_decode(source_ts) or not _can_encode(target_ts):
        return False
    if target_ts in NATIVE_SYNTAXES:
        return True
    return source_ts in NATIVE_SYNTAXES or source_ts in LOSSLESS_COMPRESSED_SYNTAXES


def choose_target(source_ts: str, accepted: Sequence[str]) -> str | None:
    """The syntax to send in: source_ts if accepted, else the best we can make, else None.

    Sending as stored costs nothing and is exact; otherwise PREFERENCE decides.
    """
    offered = {ts.rstrip("\x00 ") for ts in accepted}
    if source_ts in offered:
        return source_ts
    return next((ts for ts in PREFERENCE if ts in offered and can_transcode(source_ts, ts)),
                None)


def transcode_file(path: str | os.PathLike[str], dataset_offset: int, source_ts: str,
                   target_ts: str) -> bytes:
    """The dataset of a stored Part 10 file, encoded in target_ts (no file meta).

    `dataset_offset` and `source_ts` come from the index (InstanceRecord).
    When target_ts is source_ts the stored bytes are returned as they are.
    Raises TranscodeError if can_transcode() says no, if the dataset cannot be
    parsed or its pixel data cannot be decoded or encoded; OSError from reading
    the file passes through.
    """
    if source_ts == target_ts:
        with open(path, "rb") as fp:
            fp.seek(dataset_offset)
            return fp.read()
    if not can_transcode(source_ts, target_ts):
        raise TranscodeError(
            f"cannot transcode {_name(source_ts)} to {_name(target_ts)} without loss "
            "(or a codec is missing)")
    source = transfer_syntax_encoding(source_ts)
    target = transfer_syntax_encoding(target_ts)
    ds = _read_dataset(path, dataset_offset, source_ts)
    _convert_pixel_data(ds, source_ts, target_ts)
    data = encode_dataset(ds, source_little_endian=source.little_endian,
                          implicit_vr=not target.explicit_vr, little_endian=target.little_endian)
    if target.deflated:
        data = _deflate(data)
    log.debug("transcoded %s from %s to %s (%d bytes)", path, source_ts, target_ts, len(data))
    return data


def _name(ts: str) -> str:
    name = pdu.UID(ts).name
    return f"{name} ({ts})" if name != ts else ts


def _read_dataset(path: str | os.PathLike[str], offset: int, ts: str) -> Dataset:
    encoding = transfer_syntax_encoding(ts)
    with open(path, "rb") as fp:
        fp.seek(offset)
        try:
            stream: io.BufferedIOBase = fp
            if encoding.deflated:
                inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                stream = io.BytesIO(inflater.decompress(fp.read()) + inflater.flush())
            return read_dataset(stream, not encoding.explicit_vr, encoding.little_endian)
        except OSError as exc:
            if exc.errno is not None:
                raise  # the disk, not the data; pydicom's own OSErrors carry no errno
            raise TranscodeError(f"stored dataset cannot be parsed as {_name(ts)}: {exc}") from exc
        except Exception as exc:
            raise TranscodeError(f"stored dataset cannot be parsed as {_name(ts)}: {exc}") from exc


def _deflate(data: bytes) -> bytes:
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    out = deflater.compress(data) + deflater.flush()
    return out + b"\x00" if len(out) % 2 else out  # PS3.5 A.5: even length


def _convert_pixel_data(ds: Dataset, source_ts: str, target_ts: str) -> None:
    """Decode and/or encode Pixel Data in place, as target_ts requires."""
    source_encapsulated = pdu.UID(source_ts).is_encapsulated
    target_encapsulated = pdu.UID(target_ts).is_encapsulated
    if not source_encapsulated and not target_encapsulated:
        return  # native to native: re-encoding the elements is all
    before = _raw_elements(ds)
    if source_encapsulated:
        for item in _nested_items(ds):
            if _is_encapsulated(item):
                _decompress(item, source_ts)
        if PIXEL_DATA in ds:
            _decompress(ds, source_ts, restore=False)
            if source_ts in _ALWAYS_LOSSY and _LOSSY_IMAGE_COMPRESSION not in ds:
                ds.LossyImageCompression = "01"
    if target_encapsulated and any(tag in ds for tag in _FLOAT_PIXEL_DATA):
        raise TranscodeError(f"float pixel data cannot be encoded in {_name(target_ts)}")
    if target_encapsulated and PIXEL_DATA in ds:
        _compress(ds, source_ts, target_ts)
    _restore_unchanged(ds, before)


def _decompress(ds: Dataset, source_ts: str, *, restore: bool = True) -> None:
    before = _raw_elements(ds) if restore else {}
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = source_ts
    try:
        ds.decompress(generate_instance_uid=False, decoding_plugin=_decoding_plugin(source_ts))
    except Exception as exc:
        raise TranscodeError(f"cannot decode {_name(source_ts)} pixel data: {exc}") from exc
    for tag in _EXTENDED_OFFSET_TABLE:
        ds.pop(tag, None)
    if restore:
        _restore_unchanged(ds, before)


def _compress(ds: Dataset, source_ts: str, target_ts: str) -> None:
    """Encode native Pixel Data as target_ts, and prove it decodes to the same samples.

    pydicom's encoders keep only Bits Stored of each sample and its RLE encoder
    misreads colour-by-plane input, so the samples are first made
    colour-by-pixel, checked for bits above Bits Stored, and the encoded frames
    decoded again and compared: a codec bug costs a TranscodeError, never a bit.
    """
    elem = ds.get_item(PIXEL_DATA)
    vr = elem.VR or "OW"
    pixels = elem.value or b""
    if not transfer_syntax_encoding(source_ts).little_endian:
        pixels = swap_bytes(pixels, swap_width(vr))  # encoders read little endian
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames") or 1)
        bits_allocated, bits_stored = int(ds.BitsAllocated), int(ds.BitsStored)
        signed = int(ds.get("PixelRepresentation", 0)) == 1
    except (AttributeError, TypeError, ValueError) as exc:
        raise TranscodeError(f"image pixel attributes unusable for encoding: {exc}") from exc
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        raise TranscodeError(
            f"native YBR_FULL_422 (subsampled) pixel data cannot be encoded as {_name(target_ts)}")
    if bits_allocated % 8 == 0:
        count = rows * columns * samples * frames
        itemsize = bits_allocated // 8
        if len(pixels) < count * itemsize:
            raise TranscodeError(
                f"Pixel Data holds {len(pixels)} bytes, {count * itemsize} expected")
        if samples > 1 and int(ds.get("PlanarConfiguration", 0)) == 1:
            pixels = _interleave(pixels, frames, rows, columns, samples, itemsize)
            ds.PlanarConfiguration = 0
        _check_unused_bits(pixels, count, itemsize, bits_stored, signed, target_ts)
    ds[PIXEL_DATA] = DataElement(PIXEL_DATA, vr, pixels)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
    for tag in _EXTENDED_OFFSET_TABLE:
        ds.pop(tag, None)
    try:
        expected, _ = get_decoder(EXPLICIT_VR_LITTLE_ENDIAN).as_array(ds, raw=True)
        if (target_ts == pdu.JPEG2000Lossless and samples == 3
                and str(ds.get("PhotometricInterpretation", "")).strip() == "RGB"):
            # PS3.5 8.2.4: the reversible colour transform, declared as YBR_RCT; the
            # decoder undoes it, so the samples compared below are RGB again.  Colour
            # images compress ~3x better and ~2.6x faster with it.
            ds.PhotometricInterpretation = "YBR_RCT"
        ds.compress(target_ts, encoding_plugin=_encoding_plugin(target_ts),
                    generate_instance_uid=False)
        encoded, _ = get_decoder(target_ts).as_array(
            ds, raw=True, decoding_plugin=_decoding_plugin(target_ts))
    except Exception as exc:
        raise TranscodeError(f"cannot encode pixel data as {_name(target_ts)}: {exc}") from exc
    if expected.shape != encoded.shape or not np.array_equal(expected, encoded):
        raise TranscodeError(f"{_name(target_ts)} encoder did not round-trip the pixel data")
    if samples > 1:
        # PS3.5 8.2.2 note / G.2: RLE is colour-by-plane; JPEG-LS and JPEG 2000 say 0.
        ds.PlanarConfiguration = 1 if target_ts == pdu.RLELossless else 0


def _interleave(pixels: bytes, frames: int, rows: int, columns: int, samples: int,
                itemsize: int) -> bytes:
    """Colour-by-plane samples reordered colour-by-pixel (Planar Configuration 0)."""
    planes = np.frombuffer(pixels, dtype=f"u{itemsize}", count=frames * samples * rows * columns)
    return planes.reshape(frames, samples, rows, columns).transpose(0, 2, 3, 1).tobytes()


def _check_unused_bits(pixels: bytes, count: int, itemsize: int, bits_stored: int,
                       signed: bool, target_ts: str) -> None:
    """Refuse samples with bits above Bits Stored (an overlay, or garbage).

    Encoders keep Bits Stored bits, and decoders give back zeros (unsigned) or
    the sign (signed) above them: anything else there would be lost.
    """
    bits = itemsize * 8
    if bits_stored >= bits or bits_stored <= 0:
        return
    samples = np.frombuffer(pixels, dtype=f"<u{itemsize}", count=count)
    if signed:
        values = samples.view(f"<i{itemsize}")
        shift = bits - bits_stored
        intact = np.array_equal((values << shift) >> shift, values)
    else:
        intact = not np.any(samples >> bits_stored)
    if not intact:
        raise TranscodeError(
            f"Pixel Data has bits set above Bits Stored ({bits_stored}); "
            f"{_name(target_ts)} would drop them")


def _is_encapsulated(ds: Dataset) -> bool:
    elem = ds.get_item(PIXEL_DATA)
    return elem is not None and (
        elem.length == 0xFFFFFFFF if elem.is_raw else elem.is_undefined_length)


def _nested_items(ds: Dataset, ancestors: tuple[Dataset, ...] = ()):
    """Every dataset nested in `ds` (depth first); raw sequences get parsed."""
    chain = (ds, *ancestors)
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        if elem.is_raw:
            if (elem.VR or lookup_vr(elem, ds, chain)) != "SQ":
                continue
            elem = ds[tag]
        if elem.VR != "SQ":
            continue
        for item in elem.value:
            yield item
            yield from _nested_items(item, chain)


def _raw_elements(ds: Dataset) -> dict[int, RawDataElement]:
    return {tag: elem for tag in ds.keys() if (elem := ds.get_item(tag)).is_raw}


def _restore_unchanged(ds: Dataset, before: dict[int, RawDataElement]) -> None:
    """Put back the received element where pydicom converted it but kept its value.

    pydicom converts every element it reads while decoding (Rows, Bits Stored...);
    written from the converted value, its bytes could differ from what was sent.
    """
    for tag, raw in before.items():
        current = ds.get_item(tag)
        if current is None or current is raw or tag == PIXEL_DATA or current.VR == "SQ":
            continue
        try:
            original = convert_raw_data_element(raw, encoding=ds.original_character_set, ds=ds)
        except Exception:  # noqa: BLE001 - unreadable before: keep what pydicom made
            continue
        if original.value == current.value:
            ds[tag] = raw
