"""Re-encode a parsed dataset in another VR encoding and byte order, bit for bit.

pydicom's own writer decodes every value and encodes it again whenever the
encoding changes (text through the character set, numbers through Python), and
it never swaps the bytes of OW/OF/OD/OL/OV values between byte orders.  An
archive must not let a sender's odd padding or undecodable text drift on the way
out, so this writer keeps the received value bytes of every element that was
not replaced, and changes only what the target encoding requires:

- the element header (VR and length field width);
- the VR of Implicit VR elements, from pydicom's dictionaries: public tags,
  private tags whose creator pydicom knows, ambiguous VRs resolved as pydicom
  resolves them ("US or SS" by Pixel Representation...), unknown tags UN;
- the byte order of fixed-width binary values (US, SS, UL, SL, FL, FD, AT, SV,
  UV, OW, OF, OL, OD, OV; OW always in 16-bit words, Pixel Data too) when
  converting between little and big endian;
- sequences and items, written with undefined length (valid in every transfer
  syntax, and what lets a private sequence survive Implicit VR).

Group lengths (gggg,0000) above group 0006 are dropped, as pydicom does: they
are retired, and their values would be wrong in the new encoding.  UN values
keep their bytes in every case, as in DCMTK: their structure is unknown (a
sequence sent as UN is Implicit VR Little Endian in any syntax, PS3.5 6.2.2),
and an explicit UN on a public tag stays UN.

Elements that are DataElements rather than raw (replaced by pixel-data
conversion, or converted by pydicom while it looked at them) are encoded by
pydicom; byte values among them are taken to be in the source byte order.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.tag import BaseTag, ItemDelimiterTag, ItemTag, SequenceDelimiterTag

from engine.errors import TranscodeError

PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_CHARSET = 0x00080005

#: Width in bytes of the units to swap between byte orders, by VR.
_SWAP_WIDTH = {
    "US": 2, "SS": 2, "OW": 2, "AT": 2,
    "UL": 4, "SL": 4, "FL": 4, "OF": 4, "OL": 4,
    "FD": 8, "OD": 8, "SV": 8, "UV": 8, "OV": 8,
}


def encode_dataset(ds: Dataset, *, source_little_endian: bool, implicit_vr: bool,
                   little_endian: bool) -> bytes:
    """Encode `ds` in the given encoding; values keep their received bytes.

    `source_little_endian` is the byte order of the values in `ds` (as parsed).
    Raises TranscodeError for a value that cannot be byte-swapped (a length
    that is not a multiple of its unit).
    """
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit_vr
    fp.is_little_endian = little_endian
    _Writer(fp, source_little_endian=source_little_endian).dataset(ds, [ds], None)
    return fp.getvalue()


def swap_bytes(value: bytes, width: int) -> bytes:
    """`value` with the byte order of each `width`-byte unit reversed."""
    if width <= 1 or not value:
        return value
    if len(value) % width:
        raise TranscodeError(
            f"cannot change byte order of a {len(value)}-byte value in {width}-byte units")
    return np.frombuffer(value, dtype=f"u{width}").byteswap().tobytes()


def swap_width(vr: str) -> int:
    """Bytes per unit whose order differs between little and big endian.

    OW is a stream of 16-bit words whatever Bits Allocated says, as DCMTK and
    GDCM read it (pydicom alone reads 32-bit big endian Pixel Data as 32-bit
    samples), so native Pixel Data follows its VR like any other element.
    """
    return _SWAP_WIDTH.get(vr, 1)


def value_of(ds: Dataset, tag: int):
    """The value of `tag` in `ds`, or None; a raw element stays raw in `ds`.

    Dataset.get() would replace the raw element by a converted one, whose bytes
    pydicom would then re-encode on writing.
    """
    elem = ds.get_item(tag)
    if elem is None:
        return None
    if elem.is_raw:
        elem = convert_raw_data_element(elem, encoding=ds.original_character_set, ds=ds)
    return elem.value


def lookup_vr(raw: RawDataElement, ds: Dataset, ancestors: Sequence[Dataset]) -> str:
    """The VR of an Implicit VR element, as pydicom would resolve it, or UN."""
    tag = raw.tag
    if tag.is_private:
        if tag.is_private_creator:
            return "LO"
        vr = "UN"
        creator = value_of(ds, (tag.group << 16) | (tag.element >> 8)) if tag.element >> 8 else None
        if creator and isinstance(creator, str):
            try:
                vr = private_dictionary_VR(tag, creator)
            except KeyError:
                pass
    elif tag.element == 0:
        return "UL"
    else:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return "UN"
    if " or " not in vr:
        return vr
    # Ambiguous ("US or SS", "OB or OW"...): resolve on a converted copy, as
    # pydicom's writer does, so `ds` keeps the raw element.
    elem = convert_raw_data_element(raw, encoding=ds.original_character_set, ds=ds)
    elem = correct_ambiguous_vr_element(elem, ds, raw.is_little_endian, list(ancestors))
    return elem.VR if " or " not in elem.VR else "UN"


class _Writer:
    __slots__ = ("fp", "source_little_endian", "swap")

    def __init__(self, fp: DicomBytesIO, *, source_little_endian: bool) -> None:
        self.fp = fp
        self.source_little_endian = source_little_endian
        self.swap = source_little_endian != fp.is_little_endian

    def dataset(self, ds: Dataset, ancestors: list[Dataset], parent_charset) -> None:
        charset = value_of(ds, _CHARSET) if _CHARSET in ds else parent_charset
        for tag in sorted(ds.keys()):
            if tag.element == 0 and tag.group > 6:
                continue
            elem = ds.get_item(tag)
            if elem.is_raw:
                vr = elem.VR or lookup_vr(elem, ds, ancestors)
                if vr == "SQ":
                    self.sequence(tag, ds[tag].value, ancestors, charset)
                else:
                    self.raw(elem, vr)
            elif elem.VR == "SQ":
                self.sequence(tag, elem.value, ancestors, charset)
            else:
                self.element(ds, elem, ancestors, charset)

    def raw(self, elem: RawDataElement, vr: str) -> None:
        value = elem.value or b""
        undefined = elem.length == _UNDEFINED
        if self.swap and not undefined:
            value = swap_bytes(value, swap_width(vr))
        write_data_element(self.fp, RawDataElement(
            elem.tag, vr, _UNDEFINED if undefined else len(value), value, 0,
            self.fp.is_implicit_VR, self.fp.is_little_endian))

    def element(self, ds: Dataset, elem: DataElement, ancestors: list[Dataset], charset) -> None:
        if " or " in elem.VR:
            elem = correct_ambiguous_vr_element(elem, ds, self.source_little_endian, ancestors)
        if self.swap and isinstance(elem.value, bytes) and not elem.is_undefined_length:
            if (width := swap_width(elem.VR)) > 1:
                elem = DataElement(elem.tag, elem.VR, swap_bytes(elem.value, width))
        write_data_element(self.fp, elem, charset)

    def sequence(self, tag: BaseTag, items: Sequence[Dataset], ancestors: list[Dataset],
                 charset) -> None:
        fp = self.fp
        fp.write_tag(tag)
        if not fp.is_implicit_VR:
            fp.write(b"SQ\x00\x00")
        fp.write_UL(_UNDEFINED)
        for item in items:
            fp.write_tag(ItemTag)
            fp.write_UL(_UNDEFINED)
            self.dataset(item, [item, *ancestors], charset)
            fp.write_tag(ItemDelimiterTag)
            fp.write_UL(0)
        fp.write_tag(SequenceDelimiterTag)
        fp.write_UL(0)
