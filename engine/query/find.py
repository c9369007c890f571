"""C-FIND execution against the index (PS3.4 C.4.1): hierarchical queries, and
relational ones where SOP Class Extended Negotiation agreed to them.

`FindQuery.from_identifier()` validates a request identifier.  The executor
runs a query in one read transaction of the index (one consistent snapshot):
candidates come from direct lookups when the level's unique key is given
(single UID or UID list), else from the study-level secondary indexes
(engine.query.plan), else from a scan of the level; every other key filters
records decoded from LMDB.  Attributes the index does not hold, sequences
included (engine.query.sequence), are read from one stored file of the match,
and only when the request asks for them, after the indexed keys have matched.

`run_encoded()` yields each response already encoded (the SCP's path, no
pydicom objects per match); `run()` yields pydicom Datasets (`pacs find`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO
from typing import Iterator

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from engine.dicom.identifier import encode_with_pydicom
from engine.dicom.uids import transfer_syntax_encoding
from engine.errors import EngineError
from engine.index.reader import IndexReader, IndexSnapshot
from engine.query.matching import MatchError, compile_date_time_range, compile_matcher
from engine.query.model import (
    BY_KEYWORD, LEVELS, PATIENT_ROOT_FIND, STUDY_ROOT_FIND, UNIQUE_KEY, QueryAttribute,
    level_index)
from engine.query.plan import family_name_lookups, plan_study_uids
from engine.query.response import ResponseEncoder, response_dataset
from engine.query.sequence import SequenceKey, compile_sequence_key, element_text
from engine.store.blob_store import BlobNotFound, FilesystemBlobStore


class InvalidQuery(EngineError):
    """The identifier cannot be answered as asked (bad key, missing unique key...)."""


class LevelNotInModel(InvalidQuery):
    """The Query/Retrieve Level is not one of the information model's levels."""

_SKIP = {0x00080005, 0x00080052}  # Specific Character Set, Query/Retrieve Level


_CHARSET_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})


def _undeclared_utf8(ds: Dataset) -> bool:
    """Whether an identifier without Specific Character Set carries UTF-8 text.

    Outside the standard (the default repertoire is ASCII), but SCUs on UTF-8
    systems send it (``findscu -k PatientName=Müller*``), and read as pydicom's
    default (Latin-1) it would match nothing.  Non-ASCII text that is all valid
    UTF-8 is almost never meant as Latin-1; anything else keeps the default.
    """
    found = False
    for tag in ds.keys():
        raw = ds.get_item(tag)
        value = raw.value
        if not isinstance(value, bytes) or value.isascii():
            continue
        vr = raw.VR
        if vr is None:  # implicit VR
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                continue
        if vr in _CHARSET_VRS:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return False
            found = True
    return found


def decode_identifier(data: bytes, transfer_syntax_uid: str) -> Dataset:
    """Parse the request identifier (a small dataset) with pydicom; text is decoded
    with its Specific Character Set (UTF-8 when undeclared but evidently UTF-8)."""
    enc = transfer_syntax_encoding(transfer_syntax_uid)
    try:
        ds = read_dataset(BytesIO(data), not enc.explicit_vr, enc.little_endian)
        if "SpecificCharacterSet" not in ds and _undeclared_utf8(ds):
            # Read again behind a declaration, so nested items are decoded as UTF-8 too.
            declared = Dataset()
            declared.SpecificCharacterSet = "ISO_IR 192"
            data = encode_with_pydicom(declared, enc.explicit_vr, enc.little_endian) + data
            ds = read_dataset(BytesIO(data), not enc.explicit_vr, enc.little_endian)
        for element in ds:  # force decoding now so errors surface here
            element.value
    except Exception as exc:
        raise InvalidQuery(f"identifier not decodable: {type(exc).__name__}") from exc
    return ds


def encode_identifier(ds: Dataset, transfer_syntax_uid: str) -> bytes:
    enc = transfer_syntax_encoding(transfer_syntax_uid)
    return encode_with_pydicom(ds, enc.explicit_vr, enc.little_endian)


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
    #: The compiled sequence key of an SQ key (engine.query.sequence), None otherwise.
    sequence: SequenceKey | None = None


@dataclass
class FindQuery:
    model: str
    level: str
    keys: list[RequestedKey] = field(default_factory=list)
    #: StudyDate + StudyTime ranges read as one range of instants (PS3.4 C.2.2.2.5).
    study_instant: object = None
    #: Whether any key reads the patient record (else it is not fetched per candidate).
    needs_patient: bool = True
    #: PN keys match case- and accent-insensitively (the planner must know).
    fuzzy_person_names: bool = False
    #: Relational queries (PS3.4 C.4.1.2.2.2): keys of any level above the query level
    #: match, and no unique key above it is required.
    relational: bool = False

    @classmethod
    def from_identifier(cls, model: str, ds: Dataset, fuzzy_person_names: bool,
                        relational: bool = False) -> "FindQuery":
        """Validate and compile a request identifier; `relational` only where SOP Class
        Extended Negotiation agreed to relational queries for the model."""
        level = str(ds.get("QueryRetrieveLevel", "")).strip().upper()
        allowed = LEVELS if model == PATIENT_ROOT_FIND else LEVELS[1:]
        if level not in allowed:
            raise LevelNotInModel(f"Query/Retrieve Level {level!r} not valid for this model")
        query = cls(model, level, fuzzy_person_names=fuzzy_person_names, relational=relational)
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
                try:
                    sequence = compile_sequence_key(element, fuzzy_person_names)
                except MatchError as exc:
                    raise InvalidQuery(f"invalid sequence key {keyword or element.tag}: "
                                       f"{exc}") from exc
                query.keys.append(RequestedKey(int(element.tag), keyword, "SQ", "", False,
                                               sequence=sequence))
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
                elif not relational:
                    query._check_ancestor_key(attr, key)
            query.keys.append(key)
        if not relational:
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

    # -- entry points ------------------------------------------------------------------
    def run(self, query: FindQuery) -> Iterator[Dataset]:
        """Yield one response identifier per match, in index order."""
        for values in self.run_values(query):
            yield response_dataset(query, values)

    def run_encoded(self, query: FindQuery, transfer_syntax_uid: str) -> Iterator[bytes]:
        """Yield each response identifier encoded in `transfer_syntax_uid`."""
        enc = transfer_syntax_encoding(transfer_syntax_uid)
        if not enc.little_endian:  # retired big endian: the general encoder
            for ds in self.run(query):
                yield encode_identifier(ds, transfer_syntax_uid)
            return
        encoder = ResponseEncoder(query, enc.explicit_vr)
        for values in self.run_values(query):
            yield encoder.encode(values)

    def run_values(self, query: FindQuery) -> Iterator[list]:
        """The value of every key of `query.keys` (same order) for each match.

        The whole query runs in one read transaction, opened on the first
        `next()`: consume (or close) the iterator on the thread that started it.
        """
        with self.reader.snapshot() as ix:
            yield from self._matches(ix, query)

    # -- candidates ----------------------------------------------------------------
    @staticmethod
    def _values(query: FindQuery, keyword: str) -> list[str] | None:
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

    @staticmethod
    def _constraints(query: FindQuery) -> dict[str, str]:
        """keyword → key text of the keys that constrain the matches (plan input)."""
        keys = {k.keyword: k.text for k in query.keys if k.matcher is not None}
        if query.study_instant is not None:  # combined StudyDate + StudyTime range
            keys["StudyDate"] = query.key("StudyDate").text
        return keys

    def _patients(self, ix: IndexSnapshot, query: FindQuery) -> Iterator[tuple[str, object]]:
        patient_id = self._exact(query, "PatientID")
        if patient_id is not None:
            yield from ix.patients_with_id(patient_id)
            return
        name = query.key("PatientName")
        lookups = None
        if name is not None and name.matcher is not None:
            lookups = family_name_lookups(name.text, query.fuzzy_person_names)
        if lookups is None:
            yield from ix.iter_patients()
            return
        # Every patient has a study, so the study name index covers the patients too.
        seen = set()
        for family, prefix in lookups:
            for study_uid in ix.studies_with_family_name(family, prefix):
                study = ix.study(study_uid)
                if study is None or study.patient_key in seen:
                    continue
                seen.add(study.patient_key)
                patient = ix.patient(study.patient_key)
                if patient is not None:
                    yield study.patient_key, patient

    def _study_uids(self, ix: IndexSnapshot, query: FindQuery) -> list[str] | None:
        """Candidate studies: the StudyInstanceUID values, else (a relational query naming
        series or instances without their study) the studies of those records, else
        the plan's; None to scan every study."""
        uids = self._values(query, "StudyInstanceUID")
        if uids is not None:
            return uids
        for keyword, record_of in (("SeriesInstanceUID", ix.series),
                                   ("SOPInstanceUID", ix.instance)):
            wanted = self._values(query, keyword)  # None below the query level
            if wanted is not None:
                records = (record_of(uid) for uid in wanted)
                return list(dict.fromkeys(r.study_instance_uid for r in records if r is not None))
        return plan_study_uids(ix, self._constraints(query), query.fuzzy_person_names)

    def _studies(self, ix: IndexSnapshot, query: FindQuery) -> Iterator[Candidate]:
        if query.model == PATIENT_ROOT_FIND and self._exact(query, "PatientID") is not None:
            uids = self._values(query, "StudyInstanceUID")
            for pkey, patient in self._patients(ix, query):
                for study_uid in ix.studies_of_patient(pkey):
                    if uids is not None and study_uid not in uids:
                        continue
                    study = ix.study(study_uid)
                    if study is not None:
                        yield Candidate(patient, study, None, None, study_uid)
            return
        # Otherwise both models start from the studies (a relational Patient Root query
        # may leave PatientID out), each study bringing its patient record.
        uids = self._study_uids(ix, query)
        if uids is not None:
            pairs = ((u, ix.study(u)) for u in uids)
        else:
            pairs = ix.iter_studies()
        needs_patient = query.needs_patient
        patients: dict[str, object] = {}  # studies share patients: decode each once
        for study_uid, study in pairs:
            if study is not None:
                patient = None
                if needs_patient:
                    patient = patients.get(study.patient_key)
                    if patient is None:
                        if len(patients) >= _PATIENTS_KEPT:
                            patients.clear()
                        patient = patients[study.patient_key] = ix.patient(study.patient_key)
                yield Candidate(patient, study, None, None, study_uid)

    def _series(self, ix: IndexSnapshot, query: FindQuery) -> Iterator[Candidate]:
        wanted = self._values(query, "SeriesInstanceUID")
        for parent in self._studies(ix, query):
            for series_uid in ix.series_of_study(parent.study_uid):
                if wanted is not None and series_uid not in wanted:
                    continue
                series = ix.series(series_uid)
                if series is not None:
                    yield Candidate(parent.patient, parent.study, series, None, parent.study_uid,
                                series_uid)

    def _instances(self, ix: IndexSnapshot, query: FindQuery) -> Iterator[Candidate]:
        wanted = self._values(query, "SOPInstanceUID")
        for parent in self._series(ix, query):
            for sop_uid in ix.instances_of_series(parent.series_uid):
                if wanted is not None and sop_uid not in wanted:
                    continue
                instance = ix.instance(sop_uid)
                if instance is not None:
                    yield Candidate(parent.patient, parent.study, parent.series, instance,
                                parent.study_uid, parent.series_uid, sop_uid)

    def candidates(self, query: FindQuery) -> Iterator[Candidate]:
        """Candidate matches (before matching), in one read transaction."""
        with self.reader.snapshot() as ix:
            yield from self._candidates(ix, query)

    def _candidates(self, ix: IndexSnapshot, query: FindQuery) -> Iterator[Candidate]:
        if query.level == "PATIENT":
            return (Candidate(p, None, None, None) for _, p in self._patients(ix, query))
        return {"STUDY": self._studies, "SERIES": self._series,
                "IMAGE": self._instances}[query.level](ix, query)

    # -- values from files -----------------------------------------------------------
    def _representative_file(self, ix: IndexSnapshot, match: Candidate):
        sop_uid = match.sop_uid
        if not sop_uid and match.series_uid:
            sop_uids = ix.instances_of_series(match.series_uid)
            sop_uid = sop_uids[0] if sop_uids else ""
        if not sop_uid and match.study_uid:
            for series_uid in ix.series_of_study(match.study_uid):
                sop_uids = ix.instances_of_series(series_uid)
                if sop_uids:
                    sop_uid = sop_uids[0]
                    break
        record = ix.instance(sop_uid) if sop_uid else None
        if record is None:
            return None
        try:
            return pydicom.dcmread(ix.external_path(record.content_hash)
                                   or self.store.path_of(record.content_hash),
                                   stop_before_pixels=True)
        except (BlobNotFound, OSError, pydicom.errors.InvalidDicomError):
            return None

    # -- matching ----------------------------------------------------------------------
    def _matches(self, ix: IndexSnapshot, query: FindQuery) -> Iterator[list]:
        """The values of each match, in query.keys order: text, or for an SQ key the
        list of response items (engine.query.sequence)."""
        level = level_index(query.level)
        steps = []  # (position, how to read the value, reader, matcher)
        for at, key in enumerate(query.keys):
            if key.vr == "SQ":
                steps.append((at, _SEQUENCE, key.sequence, None))
            elif not key.indexed:
                steps.append((at, _FROM_FILE, key.tag, key.matcher))
            elif level_index(key.attr.level) > level:
                # Below the query level: returned empty (matchers were dropped).
                steps.append((at, _EMPTY, None, key.matcher))
            else:
                steps.append((at, _RECORD, key.attr.read, key.matcher))
        # Record values first: a candidate they reject costs no file read.
        steps.sort(key=lambda step: step[1] in (_FROM_FILE, _SEQUENCE))
        instant = query.study_instant
        if instant is not None:
            keywords = [k.keyword for k in query.keys]
            date_at, time_at = keywords.index("StudyDate"), keywords.index("StudyTime")
        size = len(steps)
        for match in self._candidates(ix, query):
            values: list = [""] * size
            file_ds = _NOT_LOADED
            for at, how, read, matcher in steps:
                if how is _RECORD:
                    try:
                        value = read(match)
                    except AttributeError:  # a study without its patient record
                        value = ""
                elif how is _EMPTY:
                    value = ""
                else:
                    if file_ds is _NOT_LOADED:
                        file_ds = self._representative_file(ix, match)
                    if how is _SEQUENCE:
                        value = read.select(file_ds.get(read.tag) if file_ds is not None
                                            else None)
                        if value is None:
                            break
                        values[at] = value
                        continue
                    element = file_ds.get(read) if file_ds is not None else None
                    value = element_text(element) if element is not None else ""
                if matcher is not None and not matcher(value):
                    break
                values[at] = value
            else:
                if instant is None or instant(values[date_at], values[time_at]):
                    yield values


_RECORD, _EMPTY, _FROM_FILE, _SEQUENCE = "record", "empty", "file", "sequence"
_NOT_LOADED = object()
_PATIENTS_KEPT = 16384  # patient records a query keeps decoded (bounded memory)


class Candidate:
    """A `Match` (engine.query.model) built for one candidate: the same attributes,
    slotted and unfrozen, because one is made per record the query looks at."""

    __slots__ = ("patient", "study", "series", "instance", "study_uid", "series_uid", "sop_uid")

    def __init__(self, patient, study, series, instance, study_uid: str = "",
                 series_uid: str = "", sop_uid: str = "") -> None:
        self.patient = patient
        self.study = study
        self.series = series
        self.instance = instance
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.sop_uid = sop_uid


__all__ = ["FindQuery", "FindExecutor", "InvalidQuery", "LevelNotInModel", "decode_identifier",
           "element_text", "encode_identifier"]
