"""Which stored instances `pacs export` takes: patient, studies, series, or query keys.

Every selection becomes one relational C-FIND (`engine.query.find`, the matching
of `pacs find`), so `-k StudyDate=20240101-20240131` selects exactly what `pacs
find` lists.  It runs at the deepest level a key names (a study-level key selects
whole studies, `Modality` whole series, an attribute the index does not hold is
read from each instance's own file); the matches are then walked down to their
instances.  Only read transactions: safe while the server runs.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset

from engine.errors import EngineError
from engine.index.reader import IndexReader
from engine.query.find import FindExecutor, FindQuery, InvalidQuery
from engine.query.model import BY_KEYWORD, LEVELS, STUDY_ROOT_FIND, UNIQUE_KEY
from engine.query.retrieve import RetrieveResolver, StoredInstance
from engine.store.blob_store import FilesystemBlobStore


class InvalidSelection(EngineError):
    """The selection cannot be run as given (unknown keyword, bad value, conflict)."""


@dataclass(frozen=True)
class Selection:
    patient_id: str | None = None
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    #: (keyword, value) pairs, as `pacs find -k Keyword=value`.
    keys: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_options(cls, patient: str | None, studies, series, keys) -> "Selection":
        """From command-line values; `keys` are "Keyword=value" strings."""
        pairs = []
        for item in keys or ():
            keyword, sep, value = item.partition("=")
            if not sep or not keyword.strip():
                raise InvalidSelection(f"key {item!r}: expected Keyword=value")
            pairs.append((keyword.strip(), value.strip()))
        return cls(patient.strip() if patient else None,
                   tuple(u.strip() for u in studies or () if u.strip()),
                   tuple(u.strip() for u in series or () if u.strip()), tuple(pairs))

    @property
    def empty(self) -> bool:
        return not (self.patient_id or self.study_uids or self.series_uids or self.keys)

    def identifier(self) -> Dataset:
        """The C-FIND identifier: the selection's keys, at the deepest level they name,
        returning the unique keys down to that level."""
        keys: dict[str, str] = {}
        for keyword, value in self.keys:
            if keyword not in keyword_dict:
                raise InvalidSelection(f"unknown attribute keyword {keyword!r}")
            if keyword in keys:
                raise InvalidSelection(f"{keyword} given twice")
            keys[keyword] = value
        for keyword, value in (("PatientID", self.patient_id),
                               ("StudyInstanceUID", "\\".join(self.study_uids)),
                               ("SeriesInstanceUID", "\\".join(self.series_uids))):
            if value:
                if keyword in keys:
                    raise InvalidSelection(f"{keyword} given both as an option and as a key")
                keys[keyword] = value
        level = "STUDY"
        for keyword in keys:
            attr = BY_KEYWORD.get(keyword)
            key_level = attr.level if attr is not None else "IMAGE"  # read from each file
            if LEVELS.index(key_level) > LEVELS.index(level):
                level = key_level
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for name in LEVELS[1:LEVELS.index(level) + 1]:
            keys.setdefault(UNIQUE_KEY[name], "")  # returned: the walk down starts there
        try:
            with warnings.catch_warnings():  # pydicom's value warnings: the matchers say it
                warnings.simplefilter("ignore")
                for keyword, value in keys.items():
                    setattr(ds, keyword, value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidSelection(f"invalid value for {keyword}: {exc}") from exc
        return ds


def select_instances(reader: IndexReader, store: FilesystemBlobStore, selection: Selection,
                     fuzzy_person_names: bool = False) -> list[StoredInstance]:
    """The stored instances a selection names, each once, in index order.

    Raises InvalidSelection for an empty selection or keys the matching refuses.
    """
    if selection.empty:
        raise InvalidSelection("nothing selected: give --patient, --study, --series or "
                               "-k Keyword=value (-k PatientID=* selects everything)")
    identifier = selection.identifier()
    try:
        query = FindQuery.from_identifier(STUDY_ROOT_FIND, identifier, fuzzy_person_names,
                                          relational=True)
    except InvalidQuery as exc:
        raise InvalidSelection(str(exc)) from exc
    level = query.level
    at = [k.keyword for k in query.keys].index(UNIQUE_KEY[level])
    matched = list(dict.fromkeys(values[at] for values in
                                 FindExecutor(reader, store).run_values(query)))
    sop_uids: list[str] = []
    with reader.snapshot() as ix:  # one consistent view for the walk down
        if level == "IMAGE":
            sop_uids = matched
        else:
            series = matched if level == "SERIES" else [
                s for study in matched for s in ix.series_of_study(study)]
            sop_uids = [i for s in series for i in ix.instances_of_series(s)]
    resolver = RetrieveResolver(reader, store)
    found = (resolver.stored(uid) for uid in dict.fromkeys(sop_uids))
    return [instance for instance in found if instance is not None]


__all__ = ["InvalidSelection", "Selection", "select_instances"]
