"""Study candidates from the secondary indexes (the C-FIND query planner).

A plan only has to yield a superset of the matches: every candidate still
passes through all matchers.  Keys are used in order of selectivity:

    PatientID / AccessionNumber (exact values)  >  family-name prefix of PatientName
    >  StudyDate range  >  ModalitiesInStudy / Modality values

The first usable key gives the candidates; the weaker keys after it are
intersected in only while the candidate list is still long and the key's list
is not much longer than it (an intersection costs a pass over both lists, a
candidate that survives costs a record decode and the matchers).
"""
from __future__ import annotations

from engine.dicom.person_name import fold, trim_group
from engine.index.reader import IndexSnapshot

#: Below this many candidates a further index is not worth reading.
SMALL_ENOUGH = 256
#: A further index is read only while it holds at most this many times the candidates.
WORTH_READING = 4
_WILDCARDS = ("*", "?")


def exact_values(text: str) -> list[str] | None:
    """The exact values of a key (one, or a backslash list), None with a wildcard."""
    if not text.strip(" \0") or "*" in text or "?" in text:
        return None
    values = [v.strip(" ") for v in text.split("\\") if v.strip(" ")]
    return values or None


def date_bounds(text: str) -> tuple[str, str] | None:
    """(first, last) YYYYMMDD of a single date or a date range key, else None."""
    if not text.strip() or any(c in text for c in "*?\\"):
        return None
    text = text.replace(".", "").strip()
    first, sep, last = text.partition("-")
    if not sep:
        last = first
    first, last = first or "00000000", last or "99999999"
    if not (len(first) == len(last) == 8 and first.isdigit() and last.isdigit()):
        return None
    return first, last


def _literal_prefix(text: str) -> tuple[str, bool]:
    """The part of a key before its first wildcard, and whether it has one."""
    cut = min((i for i in (text.find(w) for w in _WILDCARDS) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def family_name_lookups(key: str, fuzzy: bool) -> list[tuple[str, bool]] | None:
    """(folded family name, is prefix) lookups covering every match of a PN key.

    Mirrors engine.query.matching: a group must fullmatch the (trimmed, folded
    when fuzzy) key group, so it starts with the key's literal prefix, and its
    folded family name equals that prefix's family part (the prefix holds a
    ``^``) or starts with it.  None when an alternative has no literal prefix.
    """
    lookups = []
    for alternative in key.split("\\"):
        chosen = None
        for group in alternative.split("="):
            group_key = trim_group(group)
            if fuzzy:
                group_key = fold(group_key)
            stripped = group_key.strip(" \0")
            if not stripped or not stripped.strip("*"):
                continue  # universal group: constrains nothing
            chosen = group_key
            break
        if chosen is None:
            return None  # the whole alternative is universal
        prefix, wildcard = _literal_prefix(chosen)
        folded = prefix if fuzzy else fold(prefix)
        if "^" in folded or not wildcard:
            family = folded.split("^", 1)[0]
            if not family:
                return None
            lookups.append((family, False))
        elif folded:
            lookups.append((folded, True))
        else:
            return None
    return lookups


def modality_lookups(key: str) -> list[tuple[str, bool]] | None:
    """(modality, is prefix) lookups for a CS key on ModalitiesInStudy or Modality."""
    lookups = []
    for alternative in key.split("\\"):
        prefix, wildcard = _literal_prefix(alternative.strip(" "))
        if not prefix:
            return None
        lookups.append((prefix, wildcard))
    return lookups


def _union(lists) -> list[str]:
    """Concatenate candidate lists without repeats, keeping the first order (a prefix
    scan finds a study once per matching key: ``SMITH=SMITHERS`` twice for ``SMI*``)."""
    return list(dict.fromkeys(uid for found in lists for uid in found))


def _intersect(candidates: list[str], other: list[str]) -> list[str]:
    keep = set(other)
    return [uid for uid in candidates if uid in keep]


def plan_study_uids(ix: IndexSnapshot, keys: dict[str, str], fuzzy_person_names: bool
                    ) -> list[str] | None:
    """Candidate Study Instance UIDs from the indexes, or None to scan every study.

    `keys` maps keyword → key text for the keys that constrain (matcher present).
    """
    for keyword, lookup in (("PatientID", ix.studies_with_patient_id),
                            ("AccessionNumber", ix.studies_with_accession_number)):
        values = exact_values(keys.get(keyword, ""))
        if values is not None:
            return _union(lookup(v) for v in values)
    candidates = None
    name = keys.get("PatientName")
    lookups = family_name_lookups(name, fuzzy_person_names) if name else None
    if lookups is not None:
        candidates = _union(ix.studies_with_family_name(f, p) for f, p in lookups)
    bounds = date_bounds(keys.get("StudyDate", ""))
    if bounds is not None and (candidates is None or len(candidates) > SMALL_ENOUGH):
        limit = None if candidates is None else WORTH_READING * len(candidates)
        dated = ix.studies_in_date_range(*bounds, limit=limit)
        if dated is not None:
            candidates = dated if candidates is None else _intersect(candidates, dated)
    for keyword in ("ModalitiesInStudy", "Modality"):
        if candidates is not None and len(candidates) <= SMALL_ENOUGH:
            break
        lookups = modality_lookups(keys.get(keyword, ""))
        if lookups is None:
            continue
        limit = None if candidates is None else WORTH_READING * len(candidates)
        found = [ix.studies_with_modality(m, p, limit=limit) for m, p in lookups]
        if any(f is None for f in found):
            continue  # longer than what we have: not worth reading
        found = _union(found)
        candidates = found if candidates is None else _intersect(candidates, found)
    return candidates
