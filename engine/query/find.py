"""C-FIND execution against the index (PS3.4 C.4.1), hierarchical queries.

`FindQuery.from_identifier()` validates a request identifier; `run()` yields
one response dataset per match.  Candidates come from direct lookups when the
level's unique key is given (single UID or UID list) and from a scan of the
level otherwise; every other key filters records decoded zero-copy from LMDB.
Attributes the index does not hold are read from one stored file of the match,
and only when the request asks for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO
from typing import Iterator

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from engine.dicom.uids import transfer_syntax_encoding
from engine.errors import EngineError
from engine.index.reader import IndexReader
from engine.query.matching import MatchError, compile_date_time_range, compile_matcher
from engine.query.model import (
    BY_KEYWORD, LEVELS, PATIENT_ROOT_FIND, STUDY_ROOT_FIND, UNIQUE_KEY, Match, QueryAttribute,
    level_index)
from engine.store.blob_store import BlobNotFound, FilesystemBlobStore


class InvalidQuery(EngineError):
    """The identifier cannot be answered as asked (bad key, missing unique key...)."""


class LevelNotInModel(InvalidQuery):
    """The Query/Retrieve Level is not one of the information model's levels."""

_SKIP = {0x00080005, 0x00080052}  # Specific Character Set, Query/Retrieve Level
_STUDY_DATE, _STUDY_TIME = 0x00080020, 0x00080030


def decode_identifier(data: bytes, transfer_syntax_uid: str) -> Dataset:
    """Parse the request identifier (a small dataset) with pydicom."""
    enc = transfer_syntax_encoding(transfer_syntax_uid)
    try:
        ds = read_dataset(BytesIO(data), not enc.explicit_vr, enc.little_endian)
        for element in ds:  # force decoding now so errors surface here
            element.value
    except Exception as exc:
        raise InvalidQuery(f"identifier not decodable: {type(exc).__name__}") from exc
    return ds


def encode_identifier(ds: Dataset, transfer_syntax_uid: str) -> bytes:
    enc = transfer_syntax_encoding(transfer_syntax_uid)
    buf = DicomBytesIO()
    buf.is_little_endian = enc.little_endian
    buf.is_implicit_VR = not enc.explicit_vr
    write_dataset(buf, ds)
    return buf.getvalue()


def element_text(element) -> str:
    """An element's value as text, multiple values joined by backslash (as on the wire)."""
    value = element.value
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return str(value)


@dataclass
class RequestedKey:
    tag: int
    keyword: str
    vr: str
    text: str
    indexed: bool
    matcher: object = None  # compiled matcher or None (universal)
    #: Where an indexed attribute comes from (engine.query.model), None otherwise.
    attr: QueryAttribute | None = None


@dataclass
class FindQuery:
    model: str
    level: str
    keys: list[RequestedKey] = field(default_factory=list)
    #: StudyDate + StudyTime ranges read as one range of instants (PS3.4 C.2.2.2.5).
    study_instant: object = None
    #: Whether any key reads the patient record (else it is not fetched per candidate).
    needs_patient: bool = True

    @classmethod
    def from_identifier(cls, model: str, ds: Dataset, fuzzy_person_names: bool) -> "FindQuery":
        level = str(ds.get("QueryRetrieveLevel", "")).strip().upper()
        allowed = LEVELS if model == PATIENT_ROOT_FIND else LEVELS[1:]
        if level not in allowed:
            raise LevelNotInModel(f"Query/Retrieve Level {level!r} not valid for this model")
        query = cls(model, level)
        date = ds["StudyDate"] if "StudyDate" in ds else None
        time = ds["StudyTime"] if "StudyTime" in ds else None
        combined = (date is not None and time is not None
                    and "-" in element_text(date) and "-" in element_text(time))
        if combined:
            try:
                query.study_instant = compile_date_time_range(element_text(date), element_text(time))
            except MatchError as exc:
                raise InvalidQuery(f"invalid StudyDate/StudyTime range: {exc}") from exc
        for element in ds:
            if element.tag in _SKIP or element.tag.group == 0x0002:
                continue
            if combined and element.keyword in ("StudyDate", "StudyTime"):
                attr = BY_KEYWORD[element.keyword]
                query.keys.append(RequestedKey(int(element.tag), element.keyword, attr.vr,
                                               element_text(element), True, attr=attr))
                continue
            keyword = element.keyword or ""
            if element.VR == "SQ":
                # Sequence matching is not supported yet: returned empty, never matched.
                query.keys.append(RequestedKey(int(element.tag), keyword, "SQ", "", False))
                continue
            text = element_text(element)
            attr = BY_KEYWORD.get(keyword)
            key = RequestedKey(int(element.tag), keyword, element.VR, text, attr is not None,
                               attr=attr)
            try:
                key.matcher = compile_matcher(attr.vr if attr else element.VR, text,
                                              fuzzy_person_names=fuzzy_person_names)
            except MatchError as exc:
                raise InvalidQuery(f"invalid matching key {keyword or element.tag}: {exc}") from exc
            if attr is not None and attr.level != level and key.matcher is not None:
                if level_index(query._model_level(attr.level)) > level_index(level):
                    key.matcher = None  # below the query level: returned empty, not matched
                else:
                    query._check_ancestor_key(attr, key)
            query.keys.append(key)
        query._require_unique_keys_above(ds)
        unique = UNIQUE_KEY[level]
        if query.key(unique) is None:  # always return the level's unique key
            attr = BY_KEYWORD[unique]
            query.keys.append(RequestedKey(tag_for_keyword(unique), unique, attr.vr, "", True,
                                           attr=attr))
        query.needs_patient = level == "PATIENT" or any(
            k.attr is not None and k.attr.level == "PATIENT" for k in query.keys)
        return query

    def _model_level(self, attr_level: str) -> str:
        # Study Root has no patient level: patient attributes belong to the study level.
        if self.model == STUDY_ROOT_FIND and attr_level == "PATIENT":
            return "STUDY"
        return attr_level

    def _check_ancestor_key(self, attr, key: RequestedKey) -> None:
        attr_level = self._model_level(attr.level)
        if attr_level != self.level and attr.keyword != UNIQUE_KEY[attr_level]:
            raise InvalidQuery(f"hierarchical query: {attr.keyword} is not the unique key of "
                               f"the {attr_level} level")

    def _require_unique_keys_above(self, ds: Dataset) -> None:
        first = 0 if self.model == PATIENT_ROOT_FIND else 1
        for level in LEVELS[first:level_index(self.level)]:
            keyword = UNIQUE_KEY[level]
            if not str(ds.get(keyword, "") or "").strip():
                raise InvalidQuery(f"hierarchical query at {self.level} level needs {keyword}")

    def key(self, keyword: str) -> RequestedKey | None:
        for key in self.keys:
            if key.keyword == keyword:
                return key
        return None


class FindExecutor:
    """Runs FindQuery objects against one archive (index reader + blob store)."""

    def __init__(self, reader: IndexReader, store: FilesystemBlobStore) -> None:
        self.reader = reader
        self.store = store

    # -- candidates ----------------------------------------------------------------
    def _values(self, query: FindQuery, keyword: str) -> list[str] | None:
        """The exact values a key asks for (one, or a backslash list), or None when
        it is absent, universal or a wildcard: the input of direct lookups and plans."""
        key = query.key(keyword)
        if key is None or key.matcher is None or "*" in key.text or "?" in key.text:
            return None
        return [v.strip() for v in key.text.split("\\") if v.strip()] or None

    def _exact(self, query: FindQuery, keyword: str) -> str | None:
        """The key's value when it is one exact value, else None."""
        values = self._values(query, keyword)
        return values[0] if values is not None and len(values) == 1 else None

    def _date_bounds(self, query: FindQuery) -> tuple[str, str] | None:
        """(first, last) StudyDate of a single date or date range key, else None."""
        key = query.key("StudyDate")
        if key is None or not key.text.strip() or any(c in key.text for c in "*?\\"):
            return None
        text = key.text.replace(".", "").strip()
        first, sep, last = text.partition("-")
        if not sep:
            last = first
        first, last = first or "00000000", last or "99999999"
        if not (len(first) == len(last) == 8 and first.isdigit() and last.isdigit()):
            return None
        return first, last

    def _planned_study_uids(self, query: FindQuery) -> list[str] | None:
        """Candidates from a secondary index (a superset of the matches), or None to scan.

        Every candidate still goes through all matchers, so a plan only has to be
        a superset; it picks the most selective key available.
        """
        patient_id = self._exact(query, "PatientID")
        if patient_id is not None:
            return self.reader.studies_with_patient_id(patient_id)
        accession = self._exact(query, "AccessionNumber")
        if accession is not None:
            return self.reader.studies_with_accession_number(accession)
        bounds = self._date_bounds(query)
        if bounds is not None:
            return self.reader.studies_in_date_range(*bounds)
        return None

    def _patients(self, query: FindQuery) -> Iterator[tuple[str, object]]:
        patient_id = self._exact(query, "PatientID")
        if patient_id is not None:
            yield from self.reader.patients_with_id(patient_id)
            return
        yield from self.reader.iter_patients()

    def _studies(self, query: FindQuery) -> Iterator[Match]:
        uids = self._values(query, "StudyInstanceUID")
        if query.model == PATIENT_ROOT_FIND:
            for pkey, patient in self._patients(query):
                for study_uid in self.reader.studies_of_patient(pkey):
                    if uids is not None and study_uid not in uids:
                        continue
                    study = self.reader.study(study_uid)
                    if study is not None:
                        yield Match(patient, study, None, None, study_uid)
            return
        if uids is None:
            uids = self._planned_study_uids(query)
        if uids is not None:
            pairs = ((u, self.reader.study(u)) for u in uids)
        else:
            pairs = self.reader.iter_studies()
        for study_uid, study in pairs:
            if study is not None:
                patient = self.reader.patient(study.patient_key) if query.needs_patient else None
                yield Match(patient, study, None, None, study_uid)

    def _series(self, query: FindQuery) -> Iterator[Match]:
        wanted = self._values(query, "SeriesInstanceUID")
        for parent in self._studies(query):
            for series_uid in self.reader.series_of_study(parent.study_uid):
                if wanted is not None and series_uid not in wanted:
                    continue
                series = self.reader.series(series_uid)
                if series is not None:
                    yield Match(parent.patient, parent.study, series, None, parent.study_uid,
                                series_uid)

    def _instances(self, query: FindQuery) -> Iterator[Match]:
        wanted = self._values(query, "SOPInstanceUID")
        for parent in self._series(query):
            for sop_uid in self.reader.instances_of_series(parent.series_uid):
                if wanted is not None and sop_uid not in wanted:
                    continue
                instance = self.reader.instance(sop_uid)
                if instance is not None:
                    yield Match(parent.patient, parent.study, parent.series, instance,
                                parent.study_uid, parent.series_uid, sop_uid)

    def candidates(self, query: FindQuery) -> Iterator[Match]:
        if query.level == "PATIENT":
            return (Match(p, None, None, None) for _, p in self._patients(query))
        return {"STUDY": self._studies, "SERIES": self._series,
                "IMAGE": self._instances}[query.level](query)

    # -- values from files -----------------------------------------------------------
    def _representative_file(self, match: Match):
        sop_uid = match.sop_uid
        if not sop_uid and match.series_uid:
            sop_uids = self.reader.instances_of_series(match.series_uid)
            sop_uid = sop_uids[0] if sop_uids else ""
        if not sop_uid and match.study_uid:
            for series_uid in self.reader.series_of_study(match.study_uid):
                sop_uids = self.reader.instances_of_series(series_uid)
                if sop_uids:
                    sop_uid = sop_uids[0]
                    break
        record = self.reader.instance(sop_uid) if sop_uid else None
        if record is None:
            return None
        try:
            return pydicom.dcmread(self.store.path_of(record.content_hash),
                                   stop_before_pixels=True)
        except (BlobNotFound, OSError, pydicom.errors.InvalidDicomError):
            return None

    # -- matching and responses ----------------------------------------------------------
    def run(self, query: FindQuery) -> Iterator[Dataset]:
        """Yield one response identifier per match, in index order."""
        for match in self.candidates(query):
            values: dict[int, str] = {}
            file_ds = None
            file_loaded = False
            ok = True
            for key in query.keys:
                if key.indexed:
                    attr = key.attr
                    record = _RECORD_OF_LEVEL[attr.level](match)
                    # Below the query level (or a study without patient record): empty.
                    value = attr.read(match) if record is not None else ""
                elif key.vr == "SQ":
                    value = ""
                else:
                    if not file_loaded:
                        file_ds, file_loaded = self._representative_file(match), True
                    element = file_ds.get(key.tag) if file_ds is not None else None
                    value = element_text(element) if element is not None else ""
                if key.matcher is not None and not key.matcher(value):
                    ok = False
                    break
                values[key.tag] = value
            if ok and query.study_instant is not None:
                ok = query.study_instant(values.get(_STUDY_DATE, ""), values.get(_STUDY_TIME, ""))
            if ok:
                yield self._response(query, values)

    def _response(self, query: FindQuery, values: dict[int, str]) -> Dataset:
        ds = Dataset()
        non_ascii = any(not v.isascii() for v in values.values())
        if non_ascii:
            ds.SpecificCharacterSet = "ISO_IR 192"
        ds.QueryRetrieveLevel = query.level
        for key in query.keys:
            if key.vr == "SQ":
                ds.add_new(key.tag, "SQ", [])
                continue
            text = values.get(key.tag, "")
            ds.add_new(key.tag, key.vr, _typed(key.vr, text))
        return ds


_RECORD_OF_LEVEL = {
    "PATIENT": lambda m: m.patient, "STUDY": lambda m: m.study,
    "SERIES": lambda m: m.series, "IMAGE": lambda m: m.instance,
}


def _typed(vr: str, text: str):
    if not text:
        return None
    if vr in ("US", "UL", "SS", "SL"):
        try:
            return int(text)
        except ValueError:
            return None
    if "\\" in text and vr not in ("LT", "ST", "UT"):
        return text.split("\\")
    return text


__all__ = ["FindQuery", "FindExecutor", "InvalidQuery", "LevelNotInModel", "decode_identifier",
           "element_text", "encode_identifier"]
