"""Tests of on-the-fly transcoding: pixels and every other value must survive.

Instances are stored the way the archive stores them (our file meta, then the
dataset bytes as received) from pydicom's bundled test files and from DCMTK's
encoders.  Decoded pixels of the output are compared bit for bit with the
decoded source; values outside Pixel Data are compared as received bytes.
"""
from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import uid as pdu
from pydicom.data import get_testdata_file
from pydicom.datadict import private_dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from engine.codec import can_transcode, choose_target, transcode_file
from engine.codec import transcode as transcode_module
from engine.dicom.part10 import dataset_offset, encode_file_header
from engine.errors import EngineError, TranscodeError

# Some bundled files carry invalid UIDs; pydicom warns whenever a test reads them.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")

IMPLICIT = pdu.ImplicitVRLittleEndian
EXPLICIT = pdu.ExplicitVRLittleEndian
DEFLATED = pdu.DeflatedExplicitVRLittleEndian
BIG = pdu.ExplicitVRBigEndian
J2K_LOSSLESS = pdu.JPEG2000Lossless
JLS_LOSSLESS = pdu.JPEGLSLossless
RLE = pdu.RLELossless
NATIVE = (EXPLICIT, IMPLICIT, DEFLATED, BIG)
ENCODED = (JLS_LOSSLESS, J2K_LOSSLESS, RLE)
LOSSY = (pdu.JPEGBaseline8Bit, pdu.JPEGExtended12Bit, pdu.JPEGLSNearLossless, pdu.JPEG2000,
         pdu.HTJ2K)
PIXEL_DATA = 0x7FE00010
#: Attributes the standard ties to the transfer syntax; everything else must not move.
SYNTAX_DEPENDENT = {PIXEL_DATA, 0x00280004, 0x00280006, 0x00280008, 0x00282110,
                    0x7FE00001, 0x7FE00002}


# -- storing and reading back -----------------------------------------------------
class Stored(NamedTuple):
    path: Path
    offset: int
    ts: str

    def transcode(self, target: str) -> bytes:
        return transcode_file(self.path, self.offset, self.ts, target)


def sample(name: str) -> str:
    return get_testdata_file(name)


def decoded(name: str) -> np.ndarray:
    """pydicom's own decode of a bundled test file: the reference for our output."""
    return pydicom.dcmread(sample(name)).pixel_array


def split_part10(path) -> tuple[str, bytes]:
    """Transfer syntax and dataset bytes (everything after the file meta) of a Part 10 file."""
    raw = Path(path).read_bytes()
    assert raw[128:132] == b"DICM"
    pos = 132
    while raw[pos:pos + 2] == b"\x02\x00":
        if raw[pos + 4:pos + 6] in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            pos += 12 + struct.unpack_from("<I", raw, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", raw, pos + 6)[0]
    return str(pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID), raw[pos:]


def store_bytes(tmp_path: Path, ts: str, dataset: bytes, name: str = "stored") -> Stored:
    header = encode_file_header("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4", ts)
    path = tmp_path / name
    path.write_bytes(header + dataset)
    return Stored(path, dataset_offset(header), ts)


def store_file(tmp_path: Path, source, name: str = "stored") -> Stored:
    ts, data = split_part10(source)
    return store_bytes(tmp_path, ts, data, name)


def encode(ds: Dataset, ts: str) -> bytes:
    """Dataset bytes of `ds` in a native syntax, as a peer would send them."""
    fp = DicomBytesIO()
    fp.is_implicit_VR = ts == IMPLICIT
    fp.is_little_endian = ts != BIG
    write_dataset(fp, ds)
    return fp.getvalue()


def store_dataset(tmp_path: Path, ds: Dataset, ts: str, name: str = "stored") -> Stored:
    return store_bytes(tmp_path, ts, encode(ds, ts), name)


def parse(data: bytes, ts: str) -> pydicom.FileDataset:
    """Read transcoder output back with pydicom, as a peer would (target syntax)."""
    return pydicom.dcmread(io.BytesIO(encode_file_header("1.2.3", "1.2.3.4", ts) + data))


def received_values(ds: Dataset, skip=frozenset(), prefix=()) -> dict[tuple, bytes]:
    """Every non-sequence value as its encoded bytes, keyed by its path of tags."""
    values = {}
    # Snapshot first: converting a sequence makes pydicom convert Pixel Representation.
    received = {tag: ds.get_item(tag) for tag in ds.keys()}
    for tag, raw in received.items():
        if tag.element == 0 or (not prefix and tag in skip):
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value):
                values.update(received_values(item, skip, (*prefix, tag, index)))
        else:
            values[(*prefix, tag)] = (raw.value if raw.is_raw else elem.value) or b""
    return values


def raw_dataset(data: bytes, ts: str) -> Dataset:
    implicit, little = ts == IMPLICIT, ts != BIG
    if ts == DEFLATED:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    return read_dataset(io.BytesIO(data), implicit, little)


def assert_values_unchanged(source: Stored, output: bytes, target: str,
                            skip=SYNTAX_DEPENDENT) -> None:
    _, data = split_part10(source.path)
    before = received_values(raw_dataset(data, source.ts), skip)
    after = received_values(raw_dataset(output, target), skip)
    assert after == before


def dcmtk(tool: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"DCMTK's {tool} is required in CI")
        pytest.skip(f"DCMTK's {tool} is not installed (apt-get install dcmtk)")
    return exe


def dcmtk_encode(tmp_path: Path, tool: str, source: str, *options: str) -> Path:
    out = tmp_path / f"{tool}-{Path(source).stem}.dcm"
    subprocess.run([dcmtk(tool), *options, source, str(out)], check=True, capture_output=True)
    return out


# -- what can be made from what ---------------------------------------------------
def test_codecs_we_depend_on_are_installed():
    for source in (pdu.JPEGBaseline8Bit, pdu.JPEGLossless, pdu.JPEGLosslessSV1, JLS_LOSSLESS,
                   J2K_LOSSLESS, pdu.JPEG2000, pdu.HTJ2KLossless, RLE):
        assert can_transcode(source, EXPLICIT), pdu.UID(source).name
    for target in ENCODED:
        assert can_transcode(EXPLICIT, target), pdu.UID(target).name


@pytest.mark.parametrize("target", LOSSY, ids=lambda ts: pdu.UID(ts).name)
@pytest.mark.parametrize("source", [EXPLICIT, IMPLICIT, BIG, J2K_LOSSLESS, RLE,
                                    pdu.JPEGBaseline8Bit, pdu.JPEG2000])
def test_never_encodes_to_a_lossy_syntax(source, target):
    assert can_transcode(source, target) is (source == target)


@pytest.mark.parametrize("source", [pdu.JPEGBaseline8Bit, pdu.JPEGLSNearLossless, pdu.JPEG2000])
def test_lossy_source_goes_to_native_syntaxes_only(source):
    assert all(can_transcode(source, target) for target in NATIVE)
    assert not any(can_transcode(source, target) for target in ENCODED)


def test_lossless_sources_go_everywhere_lossless():
    for source in (*NATIVE, J2K_LOSSLESS, JLS_LOSSLESS, RLE, pdu.JPEGLosslessSV1):
        for target in (*NATIVE, *ENCODED):
            assert can_transcode(source, target), (source, target)


def test_unknown_or_undecodable_source_only_goes_as_is():
    for source in ("1.2.3.4.5", pdu.MPEG2MPML):
        assert can_transcode(source, source)
        assert not can_transcode(source, EXPLICIT)
        assert choose_target(source, [EXPLICIT, IMPLICIT]) is None


def test_missing_plugin_means_cannot_transcode(monkeypatch, tmp_path):
    monkeypatch.setitem(transcode_module._DECODERS, pdu.JPEGLosslessSV1, ("no-such-plugin",))
    transcode_module._decoding_plugin.cache_clear()
    try:
        assert not can_transcode(pdu.JPEGLosslessSV1, EXPLICIT)
        stored = store_file(tmp_path, sample("SC_rgb_jpeg_gdcm.dcm"))
        with pytest.raises(TranscodeError, match="without loss"):
            stored.transcode(EXPLICIT)
    finally:
        transcode_module._decoding_plugin.cache_clear()


def test_choose_target_keeps_the_stored_syntax_when_accepted():
    assert choose_target(J2K_LOSSLESS, [EXPLICIT, J2K_LOSSLESS]) == J2K_LOSSLESS
    assert choose_target("1.2.3.4.5", ["1.2.3.4.5"]) == "1.2.3.4.5"


def test_choose_target_prefers_explicit_then_implicit_little_endian():
    assert choose_target(J2K_LOSSLESS, [RLE, IMPLICIT, BIG, EXPLICIT]) == EXPLICIT
    assert choose_target(J2K_LOSSLESS, [RLE, BIG, DEFLATED, IMPLICIT]) == IMPLICIT
    assert choose_target(pdu.JPEGBaseline8Bit, [J2K_LOSSLESS, BIG]) == BIG


def test_choose_target_falls_back_to_lossless_compression():
    assert choose_target(EXPLICIT, [pdu.JPEGBaseline8Bit, RLE, J2K_LOSSLESS]) == J2K_LOSSLESS
    assert choose_target(RLE, [JLS_LOSSLESS, J2K_LOSSLESS]) == JLS_LOSSLESS


def test_choose_target_refuses_lossy_only_peers():
    assert choose_target(EXPLICIT, [pdu.JPEGBaseline8Bit, pdu.JPEG2000]) is None
    assert choose_target(pdu.JPEGBaseline8Bit, [J2K_LOSSLESS, RLE]) is None


def test_choose_target_ignores_uid_padding():
    assert choose_target(J2K_LOSSLESS, [EXPLICIT + "\x00"]) == EXPLICIT


def test_transcode_error_is_an_engine_error():
    assert issubclass(TranscodeError, EngineError)


# -- pixels --------------------------------------------------------------------
DECODE_CASES = [
    # lossless sources: the output must equal the decoded source bit for bit
    ("MR_small_jp2klossless.dcm", EXPLICIT),
    ("MR_small_jp2klossless.dcm", IMPLICIT),
    ("MR_small_RLE.dcm", EXPLICIT),
    ("MR_small_jpeg_ls_lossless.dcm", EXPLICIT),
    ("MR_small_jpeg_ls_lossless.dcm", J2K_LOSSLESS),
    ("SC_rgb_jpeg_gdcm.dcm", EXPLICIT),              # JPEG lossless SV1, RGB
    ("SC_rgb_rle_16bit_2frame.dcm", EXPLICIT),       # multi-frame RGB 16-bit
    ("rtdose_rle.dcm", IMPLICIT),                    # 15 frames, 32-bit
    ("GDCMJ2K_TextGBR.dcm", EXPLICIT),               # J2K with MCT (YBR_RCT)
    ("J2K_pixelrep_mismatch.dcm", EXPLICIT),
    ("image_dfl.dcm", EXPLICIT),                     # deflated source
    ("MR_small_implicit.dcm", DEFLATED),
    ("MR_small_bigendian.dcm", EXPLICIT),
    ("SC_rgb_small_odd_big_endian.dcm", IMPLICIT),   # 8-bit RGB, odd length
    # lossy sources: the output must equal pydicom's own decode of the source
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", EXPLICIT),        # JPEG baseline YBR_FULL_422
    ("examples_ybr_color.dcm", EXPLICIT),            # baseline, 30 frames
    ("SC_rgb_small_odd_jpeg.dcm", EXPLICIT),
    ("JPEG2000.dcm", BIG),
    ("JPEGLSNearLossless_16.dcm", IMPLICIT),
]


@pytest.mark.parametrize(("name", "target"), DECODE_CASES)
def test_output_pixels_equal_decoded_source(tmp_path, name, target):
    stored = store_file(tmp_path, sample(name))
    output = stored.transcode(target)
    assert np.array_equal(parse(output, target).pixel_array, decoded(name))


@pytest.mark.parametrize(("name", "target"), [  # byte order changes: see the big endian tests
    (name, target) for name, target in DECODE_CASES if target != BIG and "big" not in name])
def test_values_outside_pixel_data_keep_their_bytes(tmp_path, name, target):
    stored = store_file(tmp_path, sample(name))
    assert_values_unchanged(stored, stored.transcode(target), target)


def test_decoded_ybr_full_422_becomes_rgb_colour_by_pixel(tmp_path):
    stored = store_file(tmp_path, sample("SC_rgb_dcmtk_+eb+cy+np.dcm"))
    out = parse(stored.transcode(EXPLICIT), EXPLICIT)
    assert out.PhotometricInterpretation == "RGB"
    assert out.PlanarConfiguration == 0
    assert out["PixelData"].VR == "OB"
    assert len(out.PixelData) == 100 * 100 * 3


def test_decoded_j2k_with_colour_transform_becomes_rgb(tmp_path):
    stored = store_file(tmp_path, sample("GDCMJ2K_TextGBR.dcm"))
    assert parse(stored.transcode(EXPLICIT), EXPLICIT).PhotometricInterpretation == "RGB"


def test_decoded_16_bit_pixel_data_is_ow_and_frames_are_kept(tmp_path):
    stored = store_file(tmp_path, sample("SC_rgb_rle_16bit_2frame.dcm"))
    out = parse(stored.transcode(EXPLICIT), EXPLICIT)
    assert out["PixelData"].VR == "OW"
    assert out.NumberOfFrames == 2
    assert len(out.PixelData) == 2 * 100 * 100 * 3 * 2


def test_odd_length_pixel_data_is_padded(tmp_path):
    stored = store_file(tmp_path, sample("SC_rgb_small_odd_jpeg.dcm"))
    assert len(parse(stored.transcode(EXPLICIT), EXPLICIT).PixelData) == 28  # 3x3x3 + pad


def test_lossy_source_keeps_lossy_image_compression(tmp_path):
    stored = store_file(tmp_path, sample("SC_rgb_jpeg_dcmtk.dcm"))
    assert parse(stored.transcode(EXPLICIT), EXPLICIT).LossyImageCompression == "01"


def test_jpeg_baseline_without_lossy_flag_gets_01(tmp_path):
    ds = pydicom.dcmread(sample("SC_rgb_jpeg_dcmtk.dcm"))
    del ds.LossyImageCompression
    ds.file_meta = FileMetaDataset()
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    stored = store_bytes(tmp_path, pdu.JPEGBaseline8Bit, fp.getvalue())
    assert parse(stored.transcode(EXPLICIT), EXPLICIT).LossyImageCompression == "01"


def test_same_syntax_returns_the_stored_bytes(tmp_path):
    stored = store_file(tmp_path, sample("MR_small_jp2klossless.dcm"))
    assert stored.transcode(J2K_LOSSLESS) == split_part10(sample("MR_small_jp2klossless.dcm"))[1]


def test_refused_pair_raises_transcode_error(tmp_path):
    stored = store_file(tmp_path, sample("MR_small.dcm"))
    with pytest.raises(TranscodeError, match="JPEG Baseline"):
        stored.transcode(pdu.JPEGBaseline8Bit)


def _with_frame(name: str, mangle) -> tuple[str, bytes]:
    ds = pydicom.dcmread(sample(name))
    frames = list(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([mangle(frames[0])])
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    return str(ds.file_meta.TransferSyntaxUID), fp.getvalue()


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "SC_rgb_jpeg_gdcm.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"])
def test_truncated_codestream_raises_transcode_error(tmp_path, name):
    ts, data = _with_frame(name, lambda frame: frame[: len(frame) // 2])
    stored = store_bytes(tmp_path, ts, data)
    with pytest.raises(TranscodeError, match="cannot decode"):
        stored.transcode(EXPLICIT)


def test_12_bit_jpeg_extended_is_a_clear_error(tmp_path):
    # Known gap: GDCM decodes 8-bit JPEG Extended only; no permissive 12-bit plugin.
    stored = store_file(tmp_path, sample("JPEG-lossy.dcm"))
    with pytest.raises(TranscodeError, match="JPEG Extended"):
        stored.transcode(EXPLICIT)


def test_unparseable_dataset_raises_transcode_error(tmp_path):
    # An undefined-length sequence whose content is not an item.
    stored = store_bytes(tmp_path, EXPLICIT, b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"
                         + b"\x08\x00\x20\x00DA\x08\x0020240101")
    with pytest.raises(TranscodeError, match="cannot be parsed"):
        stored.transcode(pdu.JPEGLSLossless)


# -- encoding: lossless round trips ----------------------------------------------
@st.composite
def native_images(draw):
    """A native Explicit VR Little Endian image dataset with random samples."""
    bits_allocated = draw(st.sampled_from([8, 16]))
    # JPEG-LS needs 2 bits at least
    bits_stored = draw(st.integers(min_value=max(2, bits_allocated - 7), max_value=bits_allocated))
    samples = draw(st.sampled_from([1, 3]))
    signed = samples == 1 and draw(st.booleans())
    frames = draw(st.integers(min_value=1, max_value=3))
    rows, columns = draw(st.integers(32, 40)), draw(st.integers(32, 40))  # J2K needs 32
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    low, high = ((-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed
                 else (0, (1 << bits_stored) - 1))
    pixels = rng.integers(low, high, endpoint=True, size=frames * rows * columns * samples)
    data = pixels.astype(f"<{'i' if signed else 'u'}{bits_allocated // 8}").tobytes()
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientName = "Round^Trip"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = draw(st.sampled_from([0, 1]))
    if frames > 1 or draw(st.booleans()):
        ds.NumberOfFrames = frames
    ds.PixelData = data + b"\x00" * (len(data) % 2)
    ds["PixelData"].VR = "OW" if bits_allocated > 8 else "OB"
    return ds


@pytest.mark.parametrize("codec", ENCODED, ids=lambda ts: pdu.UID(ts).name)
@settings(max_examples=12)
@given(image=native_images())
def test_round_trip_through_lossless_compression_is_bit_exact(tmp_path_factory, codec, image):
    tmp_path = tmp_path_factory.mktemp("rt")
    stored = store_dataset(tmp_path, image, EXPLICIT)
    compressed = store_bytes(tmp_path, codec, stored.transcode(codec), "compressed")
    output = compressed.transcode(EXPLICIT)
    back = parse(output, EXPLICIT)
    expected = pydicom.dcmread(io.BytesIO(
        encode_file_header("1.2.3", "1.2.3.4", EXPLICIT) + encode(image, EXPLICIT))).pixel_array
    assert np.array_equal(back.pixel_array, expected)
    if image.get("PlanarConfiguration", 0) == 0:
        assert back.PixelData == image.PixelData
    assert_values_unchanged(stored, output, EXPLICIT, skip={PIXEL_DATA, 0x00280006})


@pytest.mark.parametrize("codec", ENCODED, ids=lambda ts: pdu.UID(ts).name)
def test_encoded_output_sets_planar_configuration_as_the_standard_says(tmp_path, codec):
    stored = store_file(tmp_path, sample("examples_rgb_color.dcm"))
    out = parse(stored.transcode(codec), codec)
    assert out.PlanarConfiguration == (1 if codec == RLE else 0)
    assert np.array_equal(out.pixel_array, decoded("examples_rgb_color.dcm"))


def test_round_trip_of_real_images_through_j2k_is_bit_exact(tmp_path):
    for name in ("MR_small.dcm", "CT_small.dcm", "examples_overlay.dcm", "examples_rgb_color.dcm"):
        stored = store_file(tmp_path, sample(name), name)
        j2k = store_bytes(tmp_path, J2K_LOSSLESS, stored.transcode(J2K_LOSSLESS), name + ".j2k")
        output = j2k.transcode(EXPLICIT)
        assert parse(output, EXPLICIT).PixelData == pydicom.dcmread(sample(name)).PixelData, name
        assert_values_unchanged(stored, output, EXPLICIT)


def test_bits_above_bits_stored_are_never_dropped(tmp_path):
    ds = pydicom.dcmread(sample("MR_small.dcm"))
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    pixels = bytearray(ds.PixelData)
    pixels[1] |= 0x80  # an overlay bit above Bits Stored
    ds.PixelData = bytes(pixels)
    stored = store_dataset(tmp_path, ds, EXPLICIT)
    for codec in ENCODED:
        with pytest.raises(TranscodeError, match="above Bits Stored"):
            stored.transcode(codec)
    assert parse(stored.transcode(IMPLICIT), IMPLICIT).PixelData == bytes(pixels)


def test_encoding_failure_raises_transcode_error(tmp_path):
    stored = store_file(tmp_path, sample("SC_rgb_small_odd.dcm"))  # 3x3: too small for J2K
    with pytest.raises(TranscodeError, match="cannot encode"):
        stored.transcode(J2K_LOSSLESS)


def test_rle_encoding_of_odd_sized_colour_image_works(tmp_path):
    # GDCM's RLE encoder aborts the process on this image; ours must not be used.
    stored = store_file(tmp_path, sample("SC_rgb_small_odd.dcm"))
    out = parse(stored.transcode(RLE), RLE)
    assert np.array_equal(out.pixel_array, decoded("SC_rgb_small_odd.dcm"))


def test_nested_encapsulated_icon_is_decoded_too(tmp_path):
    ds = pydicom.dcmread(sample("examples_overlay.dcm"))
    icon = ds.IconImageSequence[0]
    icon.file_meta = FileMetaDataset()
    icon.file_meta.TransferSyntaxUID = EXPLICIT
    expected_icon = icon.pixel_array
    icon.compress(J2K_LOSSLESS, generate_instance_uid=False)
    del icon.file_meta
    ds.compress(J2K_LOSSLESS, generate_instance_uid=False)
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    stored = store_bytes(tmp_path, J2K_LOSSLESS, fp.getvalue())
    out = parse(stored.transcode(EXPLICIT), EXPLICIT)
    out_icon = out.IconImageSequence[0]
    assert not out_icon["PixelData"].is_undefined_length
    out_icon.file_meta = FileMetaDataset()
    out_icon.file_meta.TransferSyntaxUID = EXPLICIT
    assert np.array_equal(out_icon.pixel_array, expected_icon)
    assert np.array_equal(out.pixel_array, decoded("examples_overlay.dcm"))


def test_extended_offset_table_goes_with_the_encapsulation(tmp_path):
    ds = pydicom.dcmread(sample("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = EXPLICIT
    ds.compress(RLE, encapsulate_ext=True, generate_instance_uid=False)
    assert "ExtendedOffsetTable" in ds
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    out = parse(store_bytes(tmp_path, RLE, fp.getvalue()).transcode(EXPLICIT), EXPLICIT)
    assert "ExtendedOffsetTable" not in out and "ExtendedOffsetTableLengths" not in out
    assert np.array_equal(out.pixel_array, decoded("MR_small.dcm"))


# -- JPEG made by DCMTK ---------------------------------------------------------
@pytest.mark.parametrize(("tool", "options", "name"), [
    ("dcmcjpeg", ("+e1",), "MR_small.dcm"),            # process 14 SV1, signed 16-bit
    ("dcmcjpeg", ("+e1",), "CT_small.dcm"),
    ("dcmcjpeg", ("+el",), "examples_rgb_color.dcm"),  # process 14, RGB
    ("dcmcjpls", (), "MR_small.dcm"),                  # JPEG-LS lossless
    ("dcmcjpls", (), "examples_rgb_color.dcm"),
    ("dcmcrle", (), "rtdose.dcm"),                     # 15 frames, 32-bit
])
def test_dcmtk_lossless_encodings_decode_to_the_original(tmp_path, tool, options, name):
    encoded = dcmtk_encode(tmp_path, tool, sample(name), *options)
    stored = store_file(tmp_path, encoded)
    assert stored.ts != EXPLICIT and pdu.UID(stored.ts).is_compressed
    output = stored.transcode(EXPLICIT)
    original = pydicom.dcmread(sample(name))
    assert np.array_equal(parse(output, EXPLICIT).pixel_array, original.pixel_array)
    assert parse(output, EXPLICIT).PixelData == original.PixelData


# -- VRs and byte order ----------------------------------------------------------
def _implicit_dataset() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "M\u00fcller^J\u00fcrgen"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = 2, 2, 16, 16
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 1, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SmallestImagePixelValue = -5           # US or SS -> SS
    ds.add_new(0x00130010, "LO", "GEMS_GENIE_1")
    ds.add_new(0x0013101C, "FD", 0.5)         # known private: VR from pydicom's dictionary
    ds.add_new(0x00110010, "LO", "ACME 1.0")
    ds.add_new(0x00111001, "UN", b"\x01\x02\x03\x04")  # unknown private
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.5"
    item.add_new(0x00111001, "LO", "X")        # private without creator in the item -> UN
    ds.ReferencedImageSequence = [item]
    ds.PixelData = np.array([1, -2, 3, -4], "<i2").tobytes()
    return ds


def test_implicit_source_gets_dictionary_vrs(tmp_path):
    stored = store_dataset(tmp_path, _implicit_dataset(), IMPLICIT)
    out = raw_dataset(stored.transcode(EXPLICIT), EXPLICIT)
    vr = {tag: out.get_item(tag).VR for tag in out.keys() if out.get_item(tag).is_raw}
    assert vr[0x00100010] == "PN"
    assert vr[0x00280106] == "SS"
    assert vr[0x00130010] == "LO"
    assert vr[0x0013101C] == private_dictionary_VR(0x0013101C, "GEMS_GENIE_1")
    assert vr[0x00111001] == "UN"
    assert vr[PIXEL_DATA] == "OW"
    assert out[0x00081140].VR == "SQ"
    assert out[0x00081140].value[0].get_item(0x00111001).VR == "UN"
    assert_values_unchanged(stored, stored.transcode(EXPLICIT), EXPLICIT, skip=set())


def test_text_keeps_its_bytes_in_its_character_set(tmp_path):
    stored = store_dataset(tmp_path, _implicit_dataset(), IMPLICIT)
    out = raw_dataset(stored.transcode(EXPLICIT), EXPLICIT)
    assert out.get_item(0x00100010).value == "M\u00fcller^J\u00fcrgen ".encode("latin-1")


def test_big_endian_source_becomes_the_little_endian_original(tmp_path):
    stored = store_file(tmp_path, sample("MR_small_bigendian.dcm"))
    out = parse(stored.transcode(EXPLICIT), EXPLICIT)
    original = pydicom.dcmread(sample("MR_small.dcm"))
    assert out.PixelData == original.PixelData
    assert np.array_equal(out.pixel_array, original.pixel_array)
    for keyword in ("Rows", "Columns", "WindowCenter", "SliceLocation", "PatientName"):
        assert out[keyword].value == original[keyword].value, keyword


@pytest.mark.parametrize("name", ["MR_small.dcm", "rtdose.dcm", "examples_palette.dcm",
                                  "examples_overlay.dcm", "waveform_ecg.dcm"])
def test_big_endian_round_trip_restores_every_byte(tmp_path, name):
    stored = store_file(tmp_path, sample(name))
    big = store_bytes(tmp_path, BIG, stored.transcode(BIG), "big")
    back = big.transcode(stored.ts)
    assert_values_unchanged(stored, back, stored.ts, skip=set())


def test_32_bit_big_endian_pixel_data_is_swapped_in_words_like_dcmtk(tmp_path):
    # OW is 16-bit words (DCMTK and GDCM agree); pydicom alone reads >u4 here.
    converted = dcmtk_encode(tmp_path, "dcmconv", sample("rtdose.dcm"), "+tb")
    stored = store_file(tmp_path, sample("rtdose.dcm"))
    ours = stored.transcode(BIG)
    assert raw_dataset(ours, BIG).get_item(PIXEL_DATA).value == (
        raw_dataset(split_part10(converted)[1], BIG).get_item(PIXEL_DATA).value)


def test_deflated_output_is_raw_deflate_of_explicit_little_endian(tmp_path):
    stored = store_file(tmp_path, sample("MR_small_jp2klossless.dcm"))
    deflated = stored.transcode(DEFLATED)
    assert len(deflated) % 2 == 0
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(deflated)
    assert inflated == stored.transcode(EXPLICIT)
    assert np.array_equal(parse(deflated, DEFLATED).pixel_array,
                          decoded("MR_small_jp2klossless.dcm"))


def test_sequences_and_private_sequences_survive_implicit_vr(tmp_path):
    for name in ("nested_priv_SQ.dcm", "priv_SQ.dcm", "UN_sequence.dcm", "rtplan.dcm",
                 "test-SR.dcm"):
        stored = store_file(tmp_path, sample(name), name)
        for target in (EXPLICIT, IMPLICIT):
            if target != stored.ts:
                assert_values_unchanged(stored, stored.transcode(target), target, skip=set())
