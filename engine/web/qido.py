"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

A search is a C-FIND: its query parameters become the identifier that a
C-FIND SCU would send (matching keys with their values, return keys empty),
`FindQuery.from_identifier` checks and compiles it exactly as for the DIMSE
service (wildcards, ranges, UID lists; fuzzy matching stays off), and
`FindExecutor.run_values` runs it in one read transaction on a thread of its
own.  Queries are relational (PS3.18 allows /series and /instances across
studies); the Study Root model is used, patient attributes belong to the study.
The values come back as text and are written as DICOM JSON (dicom_json.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from engine.query.find import FindExecutor, FindQuery, InvalidQuery
from engine.query.model import ATTRIBUTES, LEVELS, STUDY_ROOT_FIND, level_index
from engine.web.dicom_json import ValueEncoder, parse_tag, tag_key
from engine.web.errors import bad_request

#: The attributes returned by default at each level (PS3.18 Table 10.6.3-3..5, those
#: the index holds, so a default search reads no file).
DEFAULT_KEYS = {
    "STUDY": ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
              "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
              "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    "SERIES": ("StudyInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
               "SeriesInstanceUID", "NumberOfSeriesRelatedInstances", "BodyPartExamined"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID",
              "InstanceNumber", "Rows", "Columns", "NumberOfFrames"),
}
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
_INSTANCE_AVAILABILITY, _RETRIEVE_URL = 0x00080056, 0x00081190
_UNIQUE_TAGS = {"STUDY": (0x0020000D,), "SERIES": (0x0020000D, 0x0020000E),
                "IMAGE": (0x0020000D, 0x0020000E, 0x00080018)}
_UID_KEYWORDS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}


@dataclass(frozen=True)
class SearchResult:
    body: bytes
    count: int
    #: Warning header values (PS3.18 8.3.4: 299 <host>: <text>).
    warnings: tuple[str, ...]


def _all_keys(level: str) -> tuple[str, ...]:
    """includefield=all: every attribute the index holds at or above `level`."""
    depth = level_index(level)
    return tuple(a.keyword for a in ATTRIBUTES
                 if level_index(a.level) <= depth and a.keyword != "NumberOfPatientRelatedStudies")


def build_identifier(level: str, params: list[tuple[str, str]], path_uids: dict[str, str]
                     ) -> tuple[Dataset, list[str]]:
    """The C-FIND identifier of a search, and its Warning texts.

    `params` are the query parameters in order (repeats allowed), `path_uids`
    the StudyInstanceUID / SeriesInstanceUID the URL names.
    """
    warnings: list[str] = []
    matching: dict[int, tuple[str, str]] = {}
    returned: list[int] = []
    for name, value in params:
        if name == "includefield":
            for field in (f.strip() for f in value.split(",")):
                if not field:
                    continue
                if field == "all":
                    returned.extend(_tag_of(k) for k in _all_keys(level))
                    continue
                tag = parse_tag(field)
                if tag is None or "." in field:
                    raise bad_request(f"includefield: unknown attribute {field!r}")
                returned.append(tag)
            continue
        if name == "fuzzymatching":
            if value.strip().lower() == "true":
                warnings.append("fuzzymatching is not supported; matching is exact")
            continue
        if name in ("limit", "offset"):
            continue
        if "." in name:
            raise bad_request(f"{name}: matching on attributes inside sequences is not "
                              "supported")
        tag = parse_tag(name)
        if tag is None:
            raise bad_request(f"unknown query parameter or attribute {name!r}")
        vr = _vr(tag, name)
        if vr == "UI":
            value = "\\".join(v.strip() for v in value.replace(",", "\\").split("\\"))
            if tag in matching:
                value = matching[tag][1] + "\\" + value
        elif tag in matching:
            raise bad_request(f"{name} is given twice (only UID lists may repeat)")
        matching[tag] = (vr, value)
    for keyword, uid in path_uids.items():
        tag = _tag_of(keyword)
        if tag in matching and matching[tag][1] != uid:
            raise bad_request(f"{keyword} in the query differs from the one in the URL")
        matching[tag] = ("UI", uid)
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in DEFAULT_KEYS[level]:
        returned.append(_tag_of(keyword))
    for tag in dict.fromkeys(returned):
        if tag not in matching:
            ds.add_new(tag, _vr(tag, tag_key(tag)), None)
    for tag, (vr, value) in matching.items():
        ds.add_new(tag, vr, value)
    return ds, warnings


def _tag_of(keyword: str) -> int:
    tag = parse_tag(keyword)
    assert tag is not None, keyword
    return tag


def _vr(tag: int, name: str) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise bad_request(f"{name}: not an attribute of the DICOM dictionary") from None
    if vr == "SQ":
        raise bad_request(f"{name}: sequence attributes cannot be matched or returned here")
    return vr.split(" or ")[0]


def _int_param(params: list[tuple[str, str]], name: str) -> int | None:
    values = [v for k, v in params if k == name]
    if not values:
        return None
    try:
        number = int(values[-1])
    except ValueError:
        raise bad_request(f"{name} must be a non-negative integer") from None
    if number < 0:
        raise bad_request(f"{name} must be a non-negative integer")
    return number


class Searcher:
    """Runs QIDO-RS searches against the archive's FindExecutor."""

    def __init__(self, executor: FindExecutor, max_results: int) -> None:
        self.executor = executor
        self.max_results = max_results

    def prepare(self, level: str, params: list[tuple[str, str]], path_uids: dict[str, str]
                ) -> tuple[FindQuery, int, int, bool, list[str]]:
        """(query, offset, limit, limit given, warnings); raises WebError 400."""
        assert level in LEVELS
        identifier, warnings = build_identifier(level, params, path_uids)
        offset = _int_param(params, "offset") or 0
        limit = _int_param(params, "limit")
        explicit = limit is not None
        if limit is None or limit > self.max_results:
            limit = self.max_results
        try:
            query = FindQuery.from_identifier(STUDY_ROOT_FIND, identifier, False,
                                              relational=True)
        except InvalidQuery as exc:
            raise bad_request(str(exc)) from exc
        return query, offset, limit, explicit, warnings

    def run(self, query: FindQuery, offset: int, limit: int, explicit: bool,
            warnings: list[str], base_url: str) -> SearchResult:
        """Matches offset..offset+limit as DICOM JSON (blocking: call on a thread)."""
        # Attributes in tag order: the query's keys, InstanceAvailability, RetrieveURL.
        columns = [(k.tag, k.vr, i) for i, k in enumerate(query.keys)]
        present = {k.tag for k in query.keys}
        columns += [(tag, vr, source) for tag, vr, source in (
            (_INSTANCE_AVAILABILITY, "CS", "availability"), (_RETRIEVE_URL, "UR", "url"))
            if tag not in present]
        columns.sort(key=lambda column: column[0])
        encoder = ValueEncoder([(tag, vr) for tag, vr, _ in columns])
        sources = [source for _, _, source in columns]
        positions = {k.tag: i for i, k in enumerate(query.keys)}
        uid_at = [positions[t] for t in _UNIQUE_TAGS[query.level]]
        results: list[str] = []
        more = False
        skipped = 0
        values_iter = self.executor.run_values(query)
        try:
            for values in values_iter:
                if skipped < offset:
                    skipped += 1
                    continue
                if len(results) == limit:
                    more = True
                    break
                url = base_url + "/studies/" + values[uid_at[0]]
                if len(uid_at) > 1:
                    url += "/series/" + values[uid_at[1]]
                if len(uid_at) > 2:
                    url += "/instances/" + values[uid_at[2]]
                row = [values[s] if s.__class__ is int else
                       ("ONLINE" if s == "availability" else url) for s in sources]
                results.append(encoder.encode_json(row))
        finally:
            values_iter.close()  # ends the read transaction on this thread
        if more and not explicit:
            warnings = [*warnings, f"there are more than {limit} matches: narrow the search "
                        "or page with limit and offset"]
        body = ("[" + ",".join(results) + "]").encode("utf-8")
        return SearchResult(body, len(results), tuple(warnings))

