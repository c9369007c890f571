"""A synthetic archive for the C-FIND benchmark, written to both peers.

One seeded `catalogue()` describes every patient, study, series and instance;
`fill_index()` writes it to a pacs-engine index through the index writer's own
transaction code (`IndexTransaction`, big groups instead of one commit per
store; no files: the content hashes are fake, which C-FIND on indexed keys
never notices), and `part10_instance()` makes the small files (no pixel data)
loaded into Orthanc for the same studies.

Names, sexes and birth dates come from engine.bench.generate (about one name in
ten outside ASCII), upper-cased as many RIS send them; study descriptions and
series names from its protocol tables.  Study dates are spread over 2023-2026
(about 420 studies a month at 20,000 studies).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from engine.index.database import IndexDatabase
from engine.index.entry import IndexEntry
from engine.index.writer import IndexTransaction
from engine.bench.generate import (  # the generator's protocol tables: realistic text
    _PROTOCOLS, _REFERRING, IMPLEMENTATION_CLASS_UID, PROFILES, PatientInfo, make_patient,
    make_uid)

#: (profile, share of studies, series per study, extra SR series share)
STUDY_MIX = (("ct", 0.40, 3, 0.15), ("mr", 0.25, 4, 0.0), ("cr", 0.15, 2, 0.0),
             ("dx", 0.08, 2, 0.0), ("us", 0.08, 1, 0.10), ("mg", 0.04, 4, 0.0))
FIRST_DAY, LAST_DAY = dt.date(2023, 1, 1), dt.date(2026, 12, 31)
STUDIES_PER_PATIENT = 2.5


@dataclass(frozen=True)
class SeriesSpec:
    uid: str
    number: int
    modality: str
    sop_class_uid: str
    description: str
    body_part: str
    instances: int
    rows: int
    columns: int

    def instance_uid(self, n: int) -> str:
        return f"{self.uid}.{n}"


@dataclass(frozen=True)
class StudySpec:
    patient: PatientInfo
    uid: str
    date: str
    time: str
    accession_number: str
    study_id: str
    description: str
    referring_physician: str
    series: tuple[SeriesSpec, ...]

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.series)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def catalogue(studies: int, instances_per_study: int, seed: int = 0) -> list[StudySpec]:
    """`studies` studies of `instances_per_study` instances each, reproducible by seed."""
    rng = np.random.default_rng(seed)
    patients = [make_patient(rng, f"PAT{i:07d}")
                for i in range(max(1, int(studies / STUDIES_PER_PATIENT)))]
    patients = [replace(p, name=p.name.upper()) for p in patients]
    shares = np.array([m[1] for m in STUDY_MIX])
    days = (LAST_DAY - FIRST_DAY).days + 1
    out = []
    for i in range(studies):
        patient = patients[int(rng.integers(len(patients)))]
        family, share, series_count, sr_share = STUDY_MIX[int(rng.choice(len(STUDY_MIX),
                                                                          p=shares / shares.sum()))]
        profile = PROFILES[family]
        description, body_part, names = _PROTOCOLS[profile.family][
            int(rng.integers(len(_PROTOCOLS[profile.family])))]
        kinds = [(profile, names[k % len(names)]) for k in range(series_count)]
        if rng.random() < sr_share:
            kinds.append((PROFILES["sr"], "DOSE REPORT"))
        counts = _split(instances_per_study, len(kinds))
        study_uid = make_uid(rng)
        series = tuple(
            SeriesSpec(make_uid(rng), k + 1, p.modality, str(p.sop_class_uid), name, body_part,
                       n, p.rows, p.columns)
            for k, ((p, name), n) in enumerate(zip(kinds, counts)) if n > 0)
        day = FIRST_DAY + dt.timedelta(days=int(rng.integers(days)))
        seconds = int(rng.integers(7 * 3600, 20 * 3600))
        out.append(StudySpec(
            patient, study_uid, day.strftime("%Y%m%d"),
            f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
            f"ACC{i:08d}", str(i + 1), description,
            _REFERRING[int(rng.integers(len(_REFERRING)))].upper(), series))
    return out


def _attributes(study: StudySpec, series: SeriesSpec, n: int) -> dict:
    p = study.patient
    attrs = {
        "PatientID": p.patient_id, "PatientName": p.name, "PatientBirthDate": p.birth_date,
        "PatientSex": p.sex, "StudyInstanceUID": study.uid, "StudyDate": study.date,
        "StudyTime": study.time, "AccessionNumber": study.accession_number,
        "StudyID": study.study_id, "StudyDescription": study.description,
        "ReferringPhysicianName": study.referring_physician,
        "SeriesInstanceUID": series.uid, "Modality": series.modality,
        "SeriesNumber": series.number, "SeriesDescription": series.description,
        "BodyPartExamined": series.body_part, "InstanceNumber": n,
    }
    if series.rows:
        attrs.update(Rows=series.rows, Columns=series.columns)
    if p.specific_character_set:
        attrs["SpecificCharacterSet"] = p.specific_character_set
    return {k: v for k, v in attrs.items() if v != ""}


def index_entries(study: StudySpec) -> Iterator[IndexEntry]:
    """What ingest would hand the index for each instance of `study` (fake hashes)."""
    for series in study.series:
        for n in range(1, series.instances + 1):
            uid = series.instance_uid(n)
            yield IndexEntry(uid, series.sop_class_uid, str(ExplicitVRLittleEndian),
                             hashlib.blake2b(uid.encode(), digest_size=32).hexdigest(), 500_000, 330,
                             "2026-01-01T00:00:00Z", "BENCH", _attributes(study, series, n))


def fill_index(data_dir: Path, studies: list[StudySpec], log: Callable[[str], None],
               group: int = 5000, map_size: int = 1 << 36) -> tuple[int, float]:
    """Index every instance of `studies` under data_dir/index; (instances, seconds)."""
    db = IndexDatabase(data_dir / "index", map_size)
    count, started, batch = 0, time.monotonic(), []

    def commit() -> None:
        with db.env.begin(write=True) as txn:
            tx = IndexTransaction(db, txn)
            for entry in batch:
                tx.apply(entry, "keep-first")
        batch.clear()

    try:
        for k, study in enumerate(studies):
            batch.extend(index_entries(study))
            if len(batch) >= group:
                count += len(batch)
                commit()
                if k % 2000 == 0:
                    log(f"  indexed {count:,} instances ({time.monotonic() - started:.0f} s)")
        count += len(batch)
        commit()
    finally:
        db.close()
    return count, time.monotonic() - started


def part10_instance(study: StudySpec, series: SeriesSpec, n: int) -> bytes:
    """A small Part 10 file (no pixel data) with the attributes the index holds."""
    ds = Dataset()
    attrs = _attributes(study, series, n)
    charset = attrs.pop("SpecificCharacterSet", None)
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = series.sop_class_uid
    ds.SOPInstanceUID = series.instance_uid(n)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = series.sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = series.instance_uid(n)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
