"""Realistic synthetic DICOM studies for tests and benchmarks.

Indexing, C-FIND and storage tests need data that looks like a real archive: a
patient/study/series/instance hierarchy that agrees with itself, names in
several character sets, dates spread over a decade, and pixel data smooth
enough to compress like real images.  Everything is drawn from one numpy
Generator (no wall clock, no uuid4), so a seed fixes every byte: two runs with
the same seed write identical trees, and their UIDs are identical too.

Library::

    from engine.bench.generate import generate_study, generate_tree, write_dataset
    datasets = generate_study(7, profile="mr", series=3, instances_per_series=20)
    paths = generate_tree("/tmp/archive", studies=50, profile="ct", seed=0)

Command line::

    python -m engine.bench.generate --out /tmp/archive --studies 50 --profile ct
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pydicom
from pydicom import uid as sop
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "PROFILES",
    "TRANSFER_SYNTAXES",
    "PatientInfo",
    "Profile",
    "generate_study",
    "generate_tree",
    "main",
    "make_patient",
    "make_uid",
    "write_dataset",
]

# --- identifiers -------------------------------------------------------------
UID_ROOT = "2.25."
# Fixed, so files from any run name the same implementation.
IMPLEMENTATION_CLASS_UID = UID_ROOT + str(
    uuid.uuid5(uuid.NAMESPACE_URL, "pacs-engine/tools/generate_data").int
)
IMPLEMENTATION_VERSION_NAME = "PACSENGINE_GEN1"

TRANSFER_SYNTAXES: Mapping[str, UID] = MappingProxyType(
    {
        "explicit": ExplicitVRLittleEndian,
        "implicit": ImplicitVRLittleEndian,
        "deflate": DeflatedExplicitVRLittleEndian,
        "big": ExplicitVRBigEndian,
    }
)


def make_uid(rng: np.random.Generator) -> str:
    """A "2.25." UID from 128 random bits: valid UI, at most 44 chars, reproducible by seed."""
    return f"{UID_ROOT}{int.from_bytes(rng.bytes(16), 'big') or 1}"


# --- patients ----------------------------------------------------------------
@dataclass(frozen=True)
class PatientInfo:
    """Patient-level attributes, shared by every study of one patient.

    `specific_character_set` is None for plain ASCII names; otherwise it is the
    SpecificCharacterSet the name needs ("ISO_IR 100" or "ISO_IR 192").
    """

    patient_id: str
    name: str
    birth_date: str
    sex: str
    specific_character_set: str | None = None


_FAMILY_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Wilson",
    "Anderson", "Taylor", "Thomas", "Moore", "Martin", "Lee", "Walker", "Hall", "Young", "King",
    "Wright", "Lopez", "Hill", "Scott", "Green", "Adams", "Baker", "Nelson", "Carter", "Mitchell",
    "Roberts", "O'Brien", "Van Dyke",
)
_GIVEN_NAMES = {
    "M": ("James", "John", "Robert", "Michael", "David", "William", "Richard", "Joseph", "Daniel",
          "Paul", "Mark", "Peter"),
    "F": ("Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Susan", "Jessica", "Sarah",
          "Karen", "Emily", "Anna", "Grace"),
    "O": ("Alex", "Jordan", "Taylor", "Casey", "Robin", "Sam"),
}
# Names that need ISO 8859-1 (ISO_IR 100).
_LATIN1_NAMES = (
    ("Müller^Jürgen", "M"), ("Ñúñez^José", "M"), ("Gómez^María", "F"), ("Sørensen^Søren", "M"),
    ("Lefèvre^Hélène", "F"), ("Ødegård^Åse", "F"), ("Fernández^Begoña", "F"),
    ("Groß^Günther", "M"), ("Þórsson^Jón", "M"), ("Gonçalves^João", "M"), ("Björk^Ingrid", "F"),
)
# Names that need UTF-8 (ISO_IR 192): alphabetic=ideographic(=phonetic) component groups.
_UTF8_NAMES = (
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "M"), ("Tanaka^Hanako=田中^花子=たなか^はなこ", "F"),
    ("Sato^Yuki=佐藤^由紀=さとう^ゆき", "F"), ("Wang^XiaoDong=王^小东", "M"), ("Li^Mei=李^梅", "F"),
    ("Zhang^Wei=张^伟", "M"), ("Kim^Minjun=김^민준", "M"),
)
_BIRTH_FIRST, _BIRTH_LAST = dt.date(1930, 1, 1), dt.date(2020, 12, 31)
_STUDY_FIRST, _STUDY_LAST = dt.date(2015, 1, 1), dt.date(2026, 12, 31)


def _random_date(rng: np.random.Generator, first: dt.date, last: dt.date) -> dt.date:
    return first + dt.timedelta(days=int(rng.integers(0, (last - first).days + 1)))


def _da(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def _tm(microseconds: int, digits: int) -> str:
    """TM value HHMMSS with `digits` (0..6) digits of fraction, as scanners differ."""
    microseconds = min(microseconds, 86_400_000_000 - 1)
    seconds, fraction = divmod(microseconds, 1_000_000)
    hours, rest = divmod(seconds, 3600)
    text = f"{hours:02d}{rest // 60:02d}{rest % 60:02d}"
    return f"{text}.{fraction:06d}"[: len(text) + 1 + digits] if digits else text


def _patient_age(birth: dt.date, on: dt.date) -> str:
    """AS value (nnnY, nnnM or nnnD) at the study date."""
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    if years >= 2:
        return f"{years:03d}Y"
    months = (on.year - birth.year) * 12 + on.month - birth.month - (on.day < birth.day)
    return f"{months:03d}M" if months >= 1 else f"{(on - birth).days:03d}D"


def make_patient(
    rng: np.random.Generator | int, patient_id: str | None = None
) -> PatientInfo:
    """A random patient; about one in ten has a name outside ASCII (Latin-1 or UTF-8)."""
    rng = np.random.default_rng(rng)
    pid = patient_id or f"PAT{int(rng.integers(0, 1_000_000)):06d}"
    roll = rng.random()
    charset = None
    if roll < 0.04:
        name, sex = _UTF8_NAMES[int(rng.integers(len(_UTF8_NAMES)))]
        charset = "ISO_IR 192"
    elif roll < 0.10:
        name, sex = _LATIN1_NAMES[int(rng.integers(len(_LATIN1_NAMES)))]
        charset = "ISO_IR 100"
    else:
        sex = str(rng.choice(["M", "F", "O"], p=[0.48, 0.48, 0.04]))
        given = _GIVEN_NAMES[sex]
        family = _FAMILY_NAMES[int(rng.integers(len(_FAMILY_NAMES)))]
        name = f"{family}^{given[int(rng.integers(len(given)))]}"
        if rng.random() < 0.2:  # a middle initial, as some RIS systems send
            name += f"^{chr(ord('A') + int(rng.integers(26)))}"
    birth = _random_date(rng, _BIRTH_FIRST, _BIRTH_LAST)
    return PatientInfo(pid, name, _da(birth), sex, charset)


# --- profiles ----------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """What one instance looks like: SOP class, matrix, pixel encoding.

    `family` picks the IOD modules and the phantom (ct, mr, cr, dx, mg, us, sr);
    several profiles share one (tiny is a small CT, large a big CR).
    `slice_thickness` > 0 marks a cross-sectional profile with slice positions.
    """

    name: str
    family: str
    sop_class_uid: str
    modality: str
    rows: int = 0
    columns: int = 0
    frames: int = 1
    samples_per_pixel: int = 1
    photometric_interpretation: str = "MONOCHROME2"
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    rescale_intercept: float | None = None
    pixel_spacing: float = 1.0
    slice_thickness: float = 0.0
    noise: int = 0  # +/- amplitude, in stored values, of per-instance noise
    monochrome1_share: float = 0.0  # share of series written inverted as MONOCHROME1

    def __post_init__(self) -> None:
        if self.bits_allocated not in (8, 16) or not 1 <= self.bits_stored <= self.bits_allocated:
            raise ValueError(f"profile {self.name!r}: unsupported bits allocated/stored")

    @property
    def has_pixels(self) -> bool:
        return self.rows > 0 and self.columns > 0

    @property
    def stored_range(self) -> tuple[int, int]:
        """Smallest and largest value that fits in BitsStored."""
        if self.pixel_representation:
            half = 1 << (self.bits_stored - 1)
            return -half, half - 1
        return 0, (1 << self.bits_stored) - 1

    @property
    def pixel_dtype(self) -> np.dtype:
        if self.bits_allocated == 8:
            return np.dtype(np.uint8)
        return np.dtype(np.int16 if self.pixel_representation else np.uint16)

    @property
    def pixel_bytes(self) -> int:
        """Length of PixelData for one instance."""
        return (self.rows * self.columns * self.samples_per_pixel * self.frames
                * self.bits_allocated // 8)


PROFILES: Mapping[str, Profile] = MappingProxyType({p.name: p for p in (
    Profile("ct", "ct", sop.CTImageStorage, "CT", 512, 512, bits_stored=16,
            pixel_representation=1, rescale_intercept=-1024.0, pixel_spacing=0.7,
            slice_thickness=5.0, noise=8),
    Profile("mr", "mr", sop.MRImageStorage, "MR", 256, 256, bits_stored=12,
            pixel_spacing=0.9, slice_thickness=4.0, noise=10),
    Profile("cr", "cr", sop.ComputedRadiographyImageStorage, "CR", 2500, 2048, bits_stored=12,
            pixel_spacing=0.15, noise=12, monochrome1_share=0.3),
    Profile("dx", "dx", sop.DigitalXRayImageStorageForPresentation, "DX", 2560, 2560,
            bits_stored=12, pixel_spacing=0.168, noise=12),
    Profile("mg", "mg", sop.DigitalMammographyXRayImageStorageForPresentation, "MG", 4096, 3072,
            bits_stored=12, pixel_spacing=0.07, noise=12),
    Profile("us", "us", sop.UltrasoundMultiFrameImageStorage, "US", 480, 640, frames=10,
            samples_per_pixel=3, photometric_interpretation="RGB", bits_allocated=8,
            bits_stored=8, pixel_spacing=0.3),
    Profile("sr", "sr", sop.BasicTextSRStorage, "SR"),
    Profile("tiny", "ct", sop.CTImageStorage, "CT", 64, 64, bits_stored=12,
            pixel_representation=1, rescale_intercept=-1024.0, pixel_spacing=5.6,
            slice_thickness=5.0, noise=8),
    Profile("large", "cr", sop.ComputedRadiographyImageStorage, "CR", 2800, 2800,
            bits_stored=12, pixel_spacing=0.15, noise=12),
)})

# Study protocols per family: (StudyDescription, BodyPartExamined, SeriesDescriptions).
_PROTOCOLS: Mapping[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "ct": (
        ("CT CHEST W/O CONTRAST", "CHEST", ("AXIAL 5MM", "AXIAL 1.25MM LUNG", "CORONAL MPR 3MM")),
        ("CT ABDOMEN PELVIS W CONTRAST", "ABDOMEN",
         ("PORTAL VENOUS 5MM", "ARTERIAL 2.5MM", "DELAYED 5MM")),
        ("CT HEAD W/O CONTRAST", "HEAD", ("AXIAL 5MM BRAIN", "AXIAL 2MM BONE")),
        ("CTA CHEST PE PROTOCOL", "CHEST", ("PE 1MM", "MIP 10MM LUNG")),
    ),
    "mr": (
        ("MR BRAIN W/O CONTRAST", "BRAIN", ("AX T2 FSE", "AX FLAIR", "SAG T1", "AX DWI")),
        ("MR KNEE RIGHT", "KNEE", ("COR PD FS", "SAG PD", "AX T2 FS")),
        ("MR LUMBAR SPINE W/O CONTRAST", "LSPINE", ("SAG T1", "SAG T2", "AX T2")),
    ),
    "cr": (
        ("XR CHEST 2 VIEWS", "CHEST", ("PA", "LATERAL")),
        ("XR HAND LEFT 3 VIEWS", "HAND", ("PA", "OBLIQUE", "LATERAL")),
        ("XR KNEE RIGHT 2 VIEWS", "KNEE", ("AP", "LATERAL")),
    ),
    "dx": (
        ("DX CHEST PA AND LATERAL", "CHEST", ("PA", "LATERAL")),
        ("DX ABDOMEN SUPINE", "ABDOMEN", ("AP",)),
        ("DX KNEE LEFT 3 VIEWS", "KNEE", ("AP", "LATERAL", "OBLIQUE")),
    ),
    "mg": (
        ("MG SCREENING BILATERAL", "BREAST", ("R CC", "L CC", "R MLO", "L MLO")),
        ("MG DIAGNOSTIC LEFT", "BREAST", ("L CC", "L MLO", "L ML")),
    ),
    "us": (
        ("US ABDOMEN COMPLETE", "ABDOMEN", ("LIVER", "GALLBLADDER", "RIGHT KIDNEY", "LEFT KIDNEY")),
        ("US THYROID", "NECK", ("THYROID RIGHT", "THYROID LEFT")),
        ("US PELVIS TRANSABDOMINAL", "PELVIS", ("UTERUS", "OVARIES")),
    ),
    "sr": (
        ("CT CHEST W/O CONTRAST", "CHEST", ("RADIOLOGY REPORT",)),
        ("MR BRAIN W/O CONTRAST", "BRAIN", ("RADIOLOGY REPORT",)),
        ("XR CHEST 2 VIEWS", "CHEST", ("RADIOLOGY REPORT",)),
    ),
}
_EQUIPMENT = {
    "ct": (("SIEMENS", "SOMATOM Force"), ("GE MEDICAL SYSTEMS", "Revolution CT"),
           ("Philips", "iCT 256"), ("TOSHIBA", "Aquilion ONE")),
    "mr": (("SIEMENS", "MAGNETOM Skyra"), ("GE MEDICAL SYSTEMS", "SIGNA Premier"),
           ("Philips Medical Systems", "Ingenia")),
    "cr": (("FUJIFILM Corporation", "FCR PROFECT CS"), ("Carestream Health", "DirectView CR975"),
           ("Agfa", "CR 85-X")),
    "dx": (("Carestream Health", "DRX-Evolution"), ("SIEMENS", "Ysio Max"),
           ("Philips", "DigitalDiagnost")),
    "mg": (("HOLOGIC, Inc.", "Selenia Dimensions"), ("GE MEDICAL SYSTEMS", "Senographe Pristina")),
    "us": (("GE Healthcare", "LOGIQ E10"), ("Philips", "EPIQ 7G")),
    "sr": (("pacs-engine", "Report Generator"),),
}
_INSTITUTIONS = ("General Hospital", "St. Mary Medical Center", "University Clinic",
                 "Riverside Imaging")
_REFERRING = ("Smith^John", "Chen^Lisa", "Okafor^Chinedu", "Rossi^Marco", "Dubois^Claire",
              "Patel^Anita", "Nguyen^Thanh", "")
_HEAD_FIRST_PARTS = {"HEAD", "BRAIN", "CHEST", "NECK", "ABDOMEN"}
_PAIRED_PARTS = {"KNEE", "HAND", "BREAST"}  # General Series Laterality applies only to these


# --- phantoms ----------------------------------------------------------------
# Ellipses in normalised image coordinates (x, y in [-1, 1]):
# (tissue, cx, cy, semi-axis x, semi-axis y, angle degrees, z half-extent; inf = cylinder).
_INF = math.inf
_TEMPLATES = {
    "torso": (
        ("fat", 0, 0, 0.9, 0.64, 0, _INF), ("soft", 0, 0, 0.84, 0.58, 0, _INF),
        ("lung", -0.42, -0.08, 0.3, 0.42, 8, 0.9), ("lung", 0.42, -0.08, 0.3, 0.42, -8, 0.9),
        ("soft", 0.1, 0.05, 0.24, 0.2, 30, 0.6), ("bone", 0, 0.42, 0.1, 0.1, 0, _INF),
        ("fluid", 0, 0.44, 0.035, 0.035, 0, _INF), ("vessel", 0.12, 0.27, 0.05, 0.05, 0, _INF),
    ),
    "head": (
        ("soft", 0, 0, 0.8, 0.95, 0, 1.05), ("bone", 0, 0, 0.76, 0.91, 0, 1.0),
        ("brain", 0, 0, 0.7, 0.85, 0, 0.95), ("fluid", -0.12, -0.05, 0.06, 0.25, 12, 0.5),
        ("fluid", 0.12, -0.05, 0.06, 0.25, -12, 0.5),
    ),
    "limb": (
        ("fat", 0, 0, 0.6, 0.95, 0, _INF), ("soft", 0, 0, 0.5, 0.93, 0, _INF),
        ("bone", 0, 0, 0.18, 0.9, 0, _INF), ("fluid", 0, 0, 0.08, 0.85, 0, _INF),
    ),
    "breast": (
        ("fat", -1.0, 0, 1.5, 0.9, 0, _INF), ("soft", -0.85, 0, 0.9, 0.55, 0, _INF),
        ("fluid", -0.3, 0.25, 0.18, 0.12, 30, _INF), ("soft", -0.4, -0.3, 0.15, 0.1, -20, _INF),
        ("vessel", -0.2, 0.05, 0.02, 0.02, 0, _INF),
    ),
}
_TEMPLATE_FOR_BODY_PART = {"HEAD": "head", "BRAIN": "head", "KNEE": "limb", "HAND": "limb",
                           "BREAST": "breast"}
# Tissue values: Hounsfield units for CT (stored = HU - intercept), stored values otherwise.
_TISSUES = {
    "ct": {"air": -1000, "fat": -100, "soft": 40, "lung": -850, "bone": 900, "fluid": 5,
           "vessel": 200, "brain": 35},
    "mr": {"air": 0, "fat": 1400, "soft": 700, "lung": 60, "bone": 250, "fluid": 1800,
           "vessel": 1200, "brain": 900},
    "cr": {"air": 250, "fat": 1500, "soft": 1800, "lung": 1100, "bone": 3300, "fluid": 1900,
           "vessel": 2000, "brain": 2200},
    "mg": {"air": 150, "fat": 1300, "soft": 2500, "lung": 900, "bone": 3300, "fluid": 2300,
           "vessel": 3400, "brain": 2200},
}
_TISSUES["dx"] = _TISSUES["cr"]
_WORK_SIZE = 512  # phantoms are drawn at most this big, then upsampled


class _Phantom:
    """Ellipsoids rasterised once per series, so a slice is one threshold per ellipse.

    Each ellipse keeps the squared normalised radius over its bounding box; the
    slice at height z keeps the pixels inside the ellipsoid's cross-section there.
    """

    def __init__(self, shape: tuple[int, int], ellipses: list[tuple], background: int):
        self.shape = shape
        self.background = background
        rows, cols = shape
        y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)
        x = np.linspace(-1.0, 1.0, cols, dtype=np.float32)
        self._layers = []
        for value, cx, cy, ax, ay, angle, z_half in ellipses:
            cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            half_x = math.hypot(ax * cos, ay * sin)
            half_y = math.hypot(ax * sin, ay * cos)
            c0, c1 = _pixel_span(cx - half_x, cx + half_x, cols)
            r0, r1 = _pixel_span(cy - half_y, cy + half_y, rows)
            if c0 >= c1 or r0 >= r1:
                continue
            dx = x[None, c0:c1] - np.float32(cx)
            dy = y[r0:r1, None] - np.float32(cy)
            u = (dx * cos + dy * sin) / ax
            v = (dy * cos - dx * sin) / ay
            self._layers.append(
                (slice(r0, r1), slice(c0, c1), u * u + v * v, z_half, np.int16(value))
            )

    def slice(self, z: float) -> np.ndarray:
        """Cross-section at normalised height z in [-1, 1], as int16."""
        image = np.full(self.shape, self.background, dtype=np.int16)
        for rows, cols, radius2, z_half, value in self._layers:
            limit = 1.0 - (z / z_half) ** 2
            if limit > 0:
                np.copyto(image[rows, cols], value, where=radius2 < limit)
        return image


def _pixel_span(low: float, high: float, size: int) -> tuple[int, int]:
    scale = (size - 1) / 2.0
    first = max(0, math.floor((low + 1.0) * scale))
    return first, min(size, math.ceil((high + 1.0) * scale) + 1)


def _upsample(image: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour enlargement in one copy (broadcast, then reshape)."""
    if factor == 1:
        return image
    rows, cols = image.shape
    big = np.broadcast_to(image[:, None, :, None], (rows, factor, cols, factor))
    return big.reshape(rows * factor, cols * factor)[: shape[0], : shape[1]]


class _MonochromeSource:
    """Frames of one grey-scale series: cached phantom, per-instance slice and noise."""

    def __init__(self, rng: np.random.Generator, profile: Profile, body_part: str,
                 mono1: bool, mirrored: bool):
        self.profile = profile
        self.shape = (profile.rows, profile.columns)
        self.factor = max(1, math.ceil(max(self.shape) / _WORK_SIZE))
        work = (math.ceil(profile.rows / self.factor), math.ceil(profile.columns / self.factor))
        offset = -int(profile.rescale_intercept or 0)
        tissues = {name: value + offset + int(rng.integers(-10, 11))
                   for name, value in _TISSUES[profile.family].items()}
        template = _TEMPLATES[_TEMPLATE_FOR_BODY_PART.get(body_part, "torso")]
        ellipses = [
            (tissues[t], cx + rng.normal(0, 0.015), cy + rng.normal(0, 0.015),
             ax * rng.uniform(0.94, 1.06), ay * rng.uniform(0.94, 1.06),
             angle + rng.normal(0, 3), z_half)
            for t, cx, cy, ax, ay, angle, z_half in template
        ]
        self.phantom = _Phantom(work, ellipses, tissues["air"])
        self.shading = self._shading(rng, profile)
        self.mono1 = mono1
        self.mirrored = mirrored

    @staticmethod
    def _shading(rng: np.random.Generator, profile: Profile) -> np.ndarray | None:
        """Smooth low-frequency ramp: heel effect on radiographs, coil falloff on MR."""
        if profile.family == "ct":
            return None
        amplitude = int(rng.integers(60, 160))
        ramp = np.linspace(-amplitude, amplitude, profile.rows).astype(np.int16)[:, None]
        if profile.family == "mr":
            ramp = ramp + np.linspace(amplitude, -amplitude, profile.columns).astype(
                np.int16)[None, :]
        return ramp

    def frame(self, rng: np.random.Generator, z: float) -> np.ndarray:
        profile = self.profile
        image = _upsample(self.phantom.slice(z), self.factor, self.shape)
        if self.mirrored:
            image = image[:, ::-1]
        image = image + self.shading if self.shading is not None else image.copy()
        if profile.noise:
            image += rng.integers(-profile.noise, profile.noise + 1, size=self.shape,
                                  dtype=np.int16)
        low, high = profile.stored_range
        np.clip(image, max(low, -32768), min(high, 32767), out=image)
        if self.mono1:
            return (high - image.astype(np.int32)).astype(profile.pixel_dtype)
        return image.astype(profile.pixel_dtype)


class _UltrasoundSource:
    """RGB cine loop: a B-mode sector with speckle, a pulsing colour-Doppler vessel, a text bar."""

    def __init__(self, rng: np.random.Generator, profile: Profile):
        rows, cols = profile.rows, profile.columns
        self.profile = profile
        y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
        apex_y, apex_x = 0.06 * rows, cols / 2.0
        depth = np.hypot(y - apex_y, x - apex_x) / (0.9 * rows)
        theta = np.arctan2(x - apex_x, y - apex_y)
        self.sector = (depth > 0.08) & (depth < 1.0) & (np.abs(theta) < 0.7)
        echo = 120.0 * (1.0 - 0.5 * depth)
        organ_x, organ_y = cols * rng.uniform(0.4, 0.6), rows * rng.uniform(0.45, 0.6)
        organ = ((x - organ_x) / (0.22 * cols)) ** 2 + ((y - organ_y) / (0.2 * rows)) ** 2 < 1
        echo = np.where(organ, echo * 0.6, echo)
        vessel = ((x - organ_x - 0.08 * cols) ** 2 + (y - organ_y) ** 2) < (0.035 * rows) ** 2
        echo = np.where(vessel, 8.0, echo)
        self.base = np.where(self.sector, echo, 0).astype(np.int16)
        self.vessel = vessel & self.sector
        self.label = (slice(8, 24), slice(8, min(cols, 200)))

    def frames(self, rng: np.random.Generator) -> np.ndarray:
        profile = self.profile
        shape = (profile.rows, profile.columns)
        out = np.empty((profile.frames, *shape, 3), dtype=np.uint8)
        for k in range(profile.frames):
            speckle = rng.integers(0, 48, size=shape, dtype=np.int16) * self.sector
            grey = np.clip(self.base + speckle, 0, 255).astype(np.uint8)
            out[k] = grey[..., None]
            pulse = 0.5 + 0.5 * math.cos(2 * math.pi * k / max(profile.frames, 1))
            out[k][self.vessel] = (int(110 + 140 * pulse), 20, int(60 * (1 - pulse)))
            out[k][self.label] = (200, 200, 80)
        return out


# --- study, series and instance descriptions -----------------------------------
@dataclass(frozen=True)
class _Study:
    uid: str
    date: dt.date
    time_us: int
    time_digits: int
    accession_number: str
    study_id: str
    description: str
    body_part: str
    series_descriptions: tuple[str, ...]
    referring_physician: str
    frame_of_reference_uid: str
    manufacturer: str
    model: str
    institution: str
    station: str


@dataclass(frozen=True)
class _Series:
    uid: str
    number: int
    description: str
    time_us: int
    photometric: str
    laterality: str
    view: str


def _make_study(rng: np.random.Generator, profile: Profile, patient: PatientInfo) -> _Study:
    protocols = _PROTOCOLS[profile.family]
    description, body_part, series_descriptions = protocols[int(rng.integers(len(protocols)))]
    birth = dt.datetime.strptime(patient.birth_date, "%Y%m%d").date()
    date = _random_date(rng, min(max(birth, _STUDY_FIRST), _STUDY_LAST), _STUDY_LAST)
    manufacturer, model = _EQUIPMENT[profile.family][
        int(rng.integers(len(_EQUIPMENT[profile.family])))]
    return _Study(
        uid=make_uid(rng),
        date=date,
        time_us=int(rng.integers(0, 22 * 3600)) * 1_000_000 + int(rng.integers(1_000_000)),
        time_digits=int(rng.choice([0, 6, 3], p=[0.6, 0.25, 0.15])),
        accession_number=f"ACC{int(rng.integers(0, 100_000_000)):08d}",
        study_id=str(int(rng.integers(1, 100_000))),
        description=description,
        body_part=body_part,
        series_descriptions=series_descriptions,
        referring_physician=_REFERRING[int(rng.integers(len(_REFERRING)))],
        frame_of_reference_uid=make_uid(rng),
        manufacturer=manufacturer,
        model=model,
        institution=_INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))],
        station=f"{profile.modality}{int(rng.integers(1, 10)):02d}",
    )


def _laterality(text: str) -> str:
    """R or L when the description names a side, else ""."""
    words = text.replace("-", " ").split()
    if "RIGHT" in words or "R" in words:
        return "R"
    if "LEFT" in words or "L" in words:
        return "L"
    return ""


def _make_series(rng: np.random.Generator, profile: Profile, study: _Study, index: int,
                 series_count: int) -> _Series:
    descriptions = study.series_descriptions
    description = descriptions[index % len(descriptions)]
    if index >= len(descriptions):
        description += f" ({index // len(descriptions) + 1})"
    photometric = profile.photometric_interpretation
    if profile.monochrome1_share and rng.random() < profile.monochrome1_share:
        photometric = "MONOCHROME1"
    laterality = _laterality(description) or _laterality(study.description)
    if profile.family == "mg" and not laterality:
        laterality = "R" if index % 2 == 0 else "L"
    offset_us = (index * 110 // max(series_count, 1)) * 60_000_000 + int(rng.integers(0, 3e8))
    return _Series(
        uid=make_uid(rng),
        number=index + 1 if profile.family != "sr" else 900 + index,
        description=description,
        time_us=study.time_us + offset_us,
        photometric=photometric,
        laterality=laterality,
        view=description.split()[1] if profile.family == "mg" else description,
    )


def _pixel_source(rng: np.random.Generator, profile: Profile, study: _Study, series: _Series
                  ) -> _MonochromeSource | _UltrasoundSource | None:
    if not profile.has_pixels:
        return None
    if profile.family == "us":
        return _UltrasoundSource(rng, profile)
    return _MonochromeSource(rng, profile, study.body_part,
                             mono1=series.photometric == "MONOCHROME1",
                             mirrored=profile.family == "mg" and series.laterality == "L")


# --- IOD modules -------------------------------------------------------------
def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _sop_common(ds: Dataset, profile: Profile, patient: PatientInfo, instance_uid: str) -> None:
    if patient.specific_character_set:
        ds.SpecificCharacterSet = patient.specific_character_set
    ds.SOPClassUID = profile.sop_class_uid
    ds.SOPInstanceUID = instance_uid


def _patient_module(ds: Dataset, patient: PatientInfo) -> None:
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex


def _general_study(ds: Dataset, study: _Study, patient: PatientInfo) -> None:
    ds.StudyInstanceUID = study.uid
    ds.StudyDate = _da(study.date)
    ds.StudyTime = _tm(study.time_us, study.time_digits)
    ds.ReferringPhysicianName = study.referring_physician
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    ds.StudyDescription = study.description
    birth = dt.datetime.strptime(patient.birth_date, "%Y%m%d").date()
    ds.PatientAge = _patient_age(birth, study.date)  # Patient Study module


def _general_series(ds: Dataset, profile: Profile, study: _Study, series: _Series) -> None:
    ds.Modality = profile.modality
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.SeriesDate = _da(study.date)
    ds.SeriesTime = _tm(series.time_us, study.time_digits)
    ds.SeriesDescription = series.description
    ds.BodyPartExamined = study.body_part
    # DX and MG carry ImageLaterality instead; Laterality is only for paired body parts.
    paired = study.body_part in _PAIRED_PARTS
    if series.laterality and paired and profile.family not in ("dx", "mg"):
        ds.Laterality = series.laterality
    if profile.slice_thickness:
        ds.PatientPosition = "HFS" if study.body_part in _HEAD_FIRST_PARTS else "FFS"
    if profile.family in ("dx", "mg"):
        ds.PresentationIntentType = "FOR PRESENTATION"


def _general_equipment(ds: Dataset, study: _Study) -> None:
    ds.Manufacturer = study.manufacturer
    ds.InstitutionName = study.institution
    ds.StationName = study.station
    ds.ManufacturerModelName = study.model


def _general_image(ds: Dataset, profile: Profile, study: _Study, number: int,
                   content_us: int) -> None:
    ds.InstanceNumber = number
    ds.ContentDate = _da(study.date)
    ds.ContentTime = _tm(content_us, study.time_digits)
    if profile.family != "sr":
        ds.AcquisitionNumber = 1
        ds.BurnedInAnnotation = "YES" if profile.family == "us" else "NO"
    if not profile.slice_thickness and profile.has_pixels:
        ds.PatientOrientation = ["A", "F"] if profile.family == "mg" else ["L", "F"]


# Row and column direction cosines for the plane named in a series description.
_ORIENTATIONS = {
    "SAG": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "COR": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "AX": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
}


def _image_plane(ds: Dataset, profile: Profile, series: _Series, origin: float,
                 index: int) -> None:
    """Image Plane module; slices step along the plane normal, SliceLocation follows."""
    plane = next((k for k in ("SAG", "COR") if series.description.startswith(k)), "AX")
    row, col = _ORIENTATIONS[plane]
    normal = np.cross(row, col)
    spacing = profile.pixel_spacing
    width, height = profile.columns * spacing, profile.rows * spacing
    location = origin - index * profile.slice_thickness
    corner = -0.5 * width * np.array(row) - 0.5 * height * np.array(col) + location * normal
    ds.PixelSpacing = [spacing, spacing]
    ds.ImageOrientationPatient = [*row, *col]
    ds.ImagePositionPatient = [round(float(v), 4) for v in corner]
    ds.SliceThickness = profile.slice_thickness
    ds.SliceLocation = round(location, 4)


def _image_pixel(ds: Dataset, profile: Profile, photometric: str, pixels: np.ndarray) -> None:
    ds.SamplesPerPixel = profile.samples_per_pixel
    ds.PhotometricInterpretation = photometric
    if profile.samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    if profile.family == "us":
        ds.NumberOfFrames = profile.frames
        ds.FrameIncrementPointer = tag_for_keyword("FrameTime")
        ds.FrameTime = 33.3
    ds.Rows = profile.rows
    ds.Columns = profile.columns
    ds.BitsAllocated = profile.bits_allocated
    ds.BitsStored = profile.bits_stored
    ds.HighBit = profile.bits_stored - 1
    ds.PixelRepresentation = profile.pixel_representation
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB" if profile.bits_allocated == 8 else "OW"


def _voi_window(ds: Dataset, center: float, width: float) -> None:
    ds.WindowCenter = center
    ds.WindowWidth = width


def _ct_image(ds: Dataset, profile: Profile, study: _Study, series: _Series) -> None:
    lung = "LUNG" in series.description
    bone = "BONE" in series.description
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.RescaleIntercept = profile.rescale_intercept
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.KVP = 120
    ds.ConvolutionKernel = "LUNG" if lung else "BONE" if bone else "STANDARD"
    center, width = (-600, 1500) if lung else (500, 2000) if bone else (40, 400)
    _voi_window(ds, center, width)


_MR_SEQUENCES = {  # keyword in description: ScanningSequence, SequenceVariant, TR, TE, TI
    "FLAIR": ("IR", ["SK", "SP", "OSP"], 9000, 120, 2500),
    "DWI": ("EP", ["SK", "SP"], 5000, 80, None),
    "T1": ("SE", ["SP"], 550, 12, None),
}


def _mr_image(ds: Dataset, profile: Profile, study: _Study, series: _Series) -> None:
    key = next((k for k in _MR_SEQUENCES if k in series.description), None)
    scanning, variant, tr, te, ti = _MR_SEQUENCES.get(key, ("SE", ["SK", "SP"], 4000, 90, None))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence = scanning
    ds.SequenceVariant = variant
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = tr
    ds.EchoTime = te
    ds.EchoTrainLength = 1 if scanning == "EP" else 16
    if ti is not None:
        ds.InversionTime = ti
    ds.MagneticFieldStrength = 3 if "SIEMENS" in ds.Manufacturer else 1.5
    ds.SpacingBetweenSlices = profile.slice_thickness
    _voi_window(ds, 900, 1800)


# Projection named in a series description: ViewPosition and its SNOMED CT view code (CID 4010).
_VIEWS = {
    "PA": ("PA", "272479007", "postero-anterior"),
    "AP": ("AP", "399348003", "antero-posterior"),
    "LATERAL": ("LL", "399173006", "left lateral"),
}
_ANATOMIC_REGIONS = {  # BodyPartExamined -> SNOMED CT code (CID 4009)
    "CHEST": ("816094009", "Chest"), "ABDOMEN": ("818981001", "Abdomen"),
    "KNEE": ("72696002", "Knee"), "HAND": ("85562004", "Hand"), "BREAST": ("76752008", "Breast"),
}


def _view_position(series: _Series) -> str:
    view = _VIEWS.get(series.description.split()[0])
    return view[0] if view else ""


def _cr_image(ds: Dataset, profile: Profile, study: _Study, series: _Series) -> None:
    ds.ViewPosition = _view_position(series)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.KVP = 110 if study.body_part == "CHEST" else 60
    ds.ImagerPixelSpacing = [profile.pixel_spacing] * 2
    ds.PixelSpacing = [profile.pixel_spacing] * 2
    _voi_window(ds, 2048, 4000)


_MG_VIEWS = {  # SNOMED CT codes for the view (CID 4014)
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
    "ML": ("399260004", "medio-lateral"),
}


def _dx_image(ds: Dataset, profile: Profile, study: _Study, series: _Series) -> None:
    """DX Anatomy Imaged, DX Image and DX Detector modules (shared by DX and MG)."""
    mono1 = series.photometric == "MONOCHROME1"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.ImageLaterality = series.laterality or "U"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if mono1 else -1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if mono1 else "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.DetectorType = "SCINTILLATOR"
    ds.ImagerPixelSpacing = [profile.pixel_spacing] * 2
    ds.AcquisitionContextSequence = []
    region = _ANATOMIC_REGIONS.get(study.body_part)
    ds.AnatomicRegionSequence = [_code(region[0], "SCT", region[1])] if region else []
    _voi_window(ds, 2048, 4000)
    if profile.family == "dx":
        view = _VIEWS.get(series.description.split()[0])
        ds.PositionerType = ""
        ds.ViewPosition = view[0] if view else ""
        if view:
            ds.ViewCodeSequence = [_code(view[1], "SCT", view[2])]
        ds.KVP = 110 if study.body_part == "CHEST" else 65
        return
    code, meaning = _MG_VIEWS[series.view]
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.OrganExposed = "BREAST"
    view_item = _code(code, "SCT", meaning)
    view_item.ViewModifierCodeSequence = []
    ds.ViewCodeSequence = [view_item]
    ds.KVP = 29


_US_REGIONS = {"ABDOMEN": "ABDOMINAL", "PELVIS": "PELVIC", "NECK": "SMALL PARTS"}


def _us_image(ds: Dataset, profile: Profile, study: _Study, series: _Series) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", _US_REGIONS.get(study.body_part, "ABDOMINAL"), "0001"]
    ds.LossyImageCompression = "00"


_REPORT_TEXT = {
    ("121060", "History"): ("Cough for two weeks.", "Follow-up of a known pulmonary nodule.",
                            "Headache, rule out haemorrhage.", "Trauma.", "Screening."),
    ("121071", "Finding"): ("No focal consolidation, effusion or pneumothorax.",
                            "Heart size is within normal limits.",
                            "No acute intracranial haemorrhage or mass effect.",
                            "Mild degenerative changes.",
                            "A 4 mm nodule in the right upper lobe is unchanged.",
                            "No fracture or dislocation."),
    ("121073", "Impression"): ("No acute abnormality.", "Stable examination.",
                               "Findings as above; follow-up in 12 months is suggested."),
}


def _sr_document(ds: Dataset, rng: np.random.Generator, study: _Study, series: _Series,
                 number: int, content_us: int) -> None:
    """SR Document Series, General and Content modules of a Basic Text SR report."""
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.InstanceNumber = number
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentDate = _da(study.date)
    ds.ContentTime = _tm(content_us, study.time_digits)
    ds.PerformedProcedureCodeSequence = []
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    ds.ContinuityOfContent = "SEPARATE"
    items = []
    for (code, meaning), texts in _REPORT_TEXT.items():
        count = 2 if meaning == "Finding" else 1
        for pick in rng.choice(len(texts), size=count, replace=False):
            item = Dataset()
            item.RelationshipType = "CONTAINS"
            item.ValueType = "TEXT"
            item.ConceptNameCodeSequence = [_code(code, "DCM", meaning)]
            item.TextValue = texts[int(pick)]
            items.append(item)
    ds.ContentSequence = items


# --- assembly ----------------------------------------------------------------
# The modality-specific image module(s) of each family's IOD.
_MODALITY_MODULES = {"ct": _ct_image, "mr": _mr_image, "cr": _cr_image, "dx": _dx_image,
                     "mg": _dx_image, "us": _us_image}
_SECONDS_PER_INSTANCE = {"ct": 0.5, "mr": 4.0, "cr": 30.0, "dx": 30.0, "mg": 45.0, "us": 20.0,
                         "sr": 60.0}


def _instance(rng: np.random.Generator, profile: Profile, patient: PatientInfo, study: _Study,
              series: _Series, source: _MonochromeSource | _UltrasoundSource | None,
              index: int, count: int, origin: float) -> Dataset:
    ds = Dataset()
    number = index + 1
    content_us = series.time_us + int(index * _SECONDS_PER_INSTANCE[profile.family] * 1e6)
    _sop_common(ds, profile, patient, make_uid(rng))
    _patient_module(ds, patient)
    _general_study(ds, study, patient)
    _general_equipment(ds, study)
    if profile.family == "sr":
        _sr_document(ds, rng, study, series, number, content_us)
        return ds
    _general_series(ds, profile, study, series)
    _general_image(ds, profile, study, number, content_us)
    if profile.slice_thickness:
        ds.FrameOfReferenceUID = study.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        _image_plane(ds, profile, series, origin, index)
    if profile.family == "us":
        pixels = source.frames(rng)
    else:
        z = -0.95 + 1.9 * index / (count - 1) if count > 1 and profile.slice_thickness else 0.0
        pixels = source.frame(rng, z)
    _image_pixel(ds, profile, series.photometric, pixels)
    _MODALITY_MODULES[profile.family](ds, profile, study, series)
    return ds


def _resolve_profile(profile: str | Profile, overrides: dict[str, Any]
                     ) -> tuple[Profile, dict[str, Any]]:
    """Split overrides into Profile fields (snake_case) and DICOM keywords (CamelCase)."""
    base = profile if isinstance(profile, Profile) else PROFILES.get(profile)
    if base is None:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    fields = {f.name for f in dataclasses.fields(Profile)}
    changes = {k: v for k, v in overrides.items() if k in fields}
    attributes = {k: v for k, v in overrides.items() if k not in fields}
    unknown = [k for k in attributes if tag_for_keyword(k) is None]
    if unknown:
        raise TypeError(f"unknown overrides {unknown}: neither Profile fields nor DICOM keywords")
    return (dataclasses.replace(base, **changes) if changes else base), attributes


def _iter_study(rng: np.random.Generator, profile: Profile, series: int,
                instances_per_series: int, patient: PatientInfo,
                attributes: Mapping[str, Any]) -> Iterator[tuple[int, int, Dataset]]:
    """Yield (series index, instance index, dataset) lazily, so trees never hold a study."""
    study = _make_study(rng, profile, patient)
    for s in range(series):
        info = _make_series(rng, profile, study, s, series)
        source = _pixel_source(rng, profile, study, info)
        origin = float(rng.uniform(-150, 150))
        for i in range(instances_per_series):
            ds = _instance(rng, profile, patient, study, info, source, i, instances_per_series,
                           origin)
            for keyword, value in attributes.items():
                setattr(ds, keyword, value)
            # Native pixel data is little endian; this also lets ds.pixel_array decode in memory.
            ds.file_meta = _file_meta(ds, ExplicitVRLittleEndian)
            yield s, i, ds


def generate_study(
    rng: np.random.Generator | int,
    profile: str | Profile = "ct",
    series: int = 1,
    instances_per_series: int = 10,
    patient: PatientInfo | None = None,
    **overrides: Any,
) -> list[Dataset]:
    """One study as a list of datasets (series by series, instances in order).

    Patient and study attributes are identical on every instance; each series
    has its own SeriesInstanceUID, SeriesNumber and SeriesDescription.
    `overrides` may name Profile fields (rows=128, frames=4,
    photometric_interpretation="MONOCHROME1", monochrome1_share=0, ...) or DICOM
    keywords, which are set on every instance (AccessionNumber="ACC1", ...).
    """
    rng = np.random.default_rng(rng)
    chosen, attributes = _resolve_profile(profile, overrides)
    patient = patient or make_patient(rng)
    return [ds for _, _, ds in _iter_study(rng, chosen, series, instances_per_series, patient,
                                           attributes)]


# --- writing -----------------------------------------------------------------
def _transfer_syntax(value: str) -> UID:
    uid = UID(TRANSFER_SYNTAXES.get(value, value))
    if uid not in TRANSFER_SYNTAXES.values():
        raise ValueError(f"unsupported transfer syntax {value!r}; use one of "
                         f"{', '.join(TRANSFER_SYNTAXES)} or their UIDs")
    return uid


def _file_meta(ds: Dataset, transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def write_dataset(ds: Dataset, path: str | Path,
                  transfer_syntax: str | UID = ExplicitVRLittleEndian) -> Path:
    """Write `ds` as a Part 10 file (preamble, DICM, file meta) and return the path.

    The caller's dataset is left untouched: file meta goes on a shallow copy.
    For Explicit VR Big Endian, pydicom encodes every element except the bytes of
    OW Pixel Data, so those are byte-swapped here.
    """
    uid = _transfer_syntax(transfer_syntax)
    out = Dataset({elem.tag: elem for elem in ds})
    out.file_meta = _file_meta(ds, uid)
    if uid == ExplicitVRBigEndian and "PixelData" in ds and ds.get("BitsAllocated", 8) > 8:
        swapped = np.frombuffer(ds.PixelData, dtype="<u2").byteswap().tobytes()
        out[0x7FE00010] = DataElement(0x7FE00010, "OW", swapped)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, out, enforce_file_format=True)
    return path


def generate_tree(
    out_dir: str | Path,
    studies: int,
    profile: str | Profile = "ct",
    series: int = 1,
    instances_per_series: int = 10,
    seed: int = 0,
    transfer_syntax: str | UID = ExplicitVRLittleEndian,
    patients: int | None = None,
) -> list[Path]:
    """Write out_dir/<study>/<series>/<instance>.dcm, e.g. 0000/000/00000.dcm.

    Names come from counters starting at 0 (never from UIDs), zero-padded so
    that sorted names are generation order; the paths are returned in that order.

    PatientIDs and AccessionNumbers are unique within the tree.  `patients`
    below `studies` makes patients share studies (every patient gets at least
    one).  The same arguments always write the same bytes.
    """
    rng = np.random.default_rng(seed)
    chosen, _ = _resolve_profile(profile, {})
    uid = _transfer_syntax(transfer_syntax)
    roster_size = studies if patients is None else patients
    if not 1 <= roster_size <= 1_000_000 or studies > 100_000_000:
        raise ValueError("need 1..1,000,000 patients and at most 10**8 studies")
    ids = rng.choice(1_000_000, size=roster_size, replace=False)
    roster = [make_patient(rng, f"PAT{int(i):06d}") for i in ids]
    accessions = rng.choice(100_000_000, size=studies, replace=False)
    root = Path(out_dir)
    paths = []
    for k in range(studies):
        patient = roster[k] if k < roster_size else roster[int(rng.integers(roster_size))]
        attributes = {"AccessionNumber": f"ACC{int(accessions[k]):08d}"}
        for s, i, ds in _iter_study(rng, chosen, series, instances_per_series, patient,
                                    attributes):
            paths.append(write_dataset(ds, root / f"{k:04d}" / f"{s:03d}" / f"{i:05d}.dcm", uid))
    return paths


# --- command line ------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """CLI entry: write a tree and print one summary line."""
    parser = argparse.ArgumentParser(prog="python -m engine.bench.generate", description=__doc__
                                     .splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--studies", required=True, type=int)
    parser.add_argument("--profile", default="ct", choices=sorted(PROFILES))
    parser.add_argument("--series", type=int, default=1)
    parser.add_argument("--instances", type=int, default=10, help="instances per series")
    parser.add_argument("--patients", type=int, default=None,
                        help="distinct patients (default: one per study)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transfer-syntax", default="explicit", choices=list(TRANSFER_SYNTAXES))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    paths = generate_tree(args.out, args.studies, args.profile, args.series, args.instances,
                          args.seed, args.transfer_syntax, args.patients)
    size = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files, {size} bytes ({size / 1e6:.1f} MB) to {args.out} "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
