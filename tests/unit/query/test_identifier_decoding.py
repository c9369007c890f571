"""Request identifiers are decoded with their Specific Character Set."""
from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from engine.query.find import decode_identifier

EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


def encoded(charset: str | list[str] | None, name: str, implicit: bool = False,
            meaning: str = "") -> bytes:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = name
    if meaning:
        item = Dataset()
        item.CodeMeaning = meaning
        ds.ProcedureCodeSequence = [item]
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


@pytest.mark.parametrize("charset, name", [
    ("ISO_IR 100", "Müller^Jürgen"),
    ("ISO_IR 192", "Müller^Jürgen"),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
])
def test_declared_character_sets(charset, name):
    assert str(decode_identifier(encoded(charset, name), EXPLICIT_LE).PatientName) == name


@pytest.mark.parametrize("implicit", [False, True])
def test_undeclared_utf8_text_is_read_as_utf8_nested_items_too(implicit):
    data = encoded("ISO_IR 192", "Müller*", implicit, meaning="Schädel")
    data = data[data.index(b"ISO_IR 192") + 10:]  # the same identifier, undeclared
    ds = decode_identifier(data, IMPLICIT_LE if implicit else EXPLICIT_LE)
    assert str(ds.PatientName) == "Müller*"
    assert ds.ProcedureCodeSequence[0].CodeMeaning == "Schädel"


def test_undeclared_text_that_is_not_utf8_keeps_the_default():
    data = encoded("ISO_IR 100", "Müller*")
    data = data[data.index(b"ISO_IR 100") + 10:]  # Latin-1 bytes, undeclared
    assert str(decode_identifier(data, EXPLICIT_LE).PatientName) == "Müller*"
