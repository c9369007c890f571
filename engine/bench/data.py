"""The benchmark's input files: generated once per size, cached, with reference digests.

Generating a gigabyte of CT takes minutes, so each data set is written once under
the cache directory with a manifest, and reused while the manifest matches.  The
digests of every instance (engine.bench.verify) are kept beside it: every run's
receiver is checked against them, so a peer that loses or alters an instance
fails the run instead of looking fast.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from engine.bench.environment import BenchError

CACHE_VERSION = 1


@dataclass(frozen=True)
class DataSpec:
    name: str
    profile: str
    count: int
    parts: int
    per_series: int
    seed: int


@dataclass
class DataSet:
    spec: DataSpec
    root: Path
    part_dirs: list[Path]
    files: int
    bytes: int

    def groups(self, associations: int) -> list[list[Path]]:
        """The part directories dealt to `associations` senders (the root for one)."""
        if associations <= 1:
            return [[self.root]]
        if associations > len(self.part_dirs):
            raise BenchError(f"{self.spec.name} has {len(self.part_dirs)} parts, "
                             f"{associations} associations asked for")
        return [self.part_dirs[i::associations] for i in range(associations)]

    def digests(self) -> dict[str, str]:
        """SOP Instance UID → canonical digest of every file, computed once and kept."""
        from engine.bench.verify import digest_files

        path = self.root.parent / "digests.json"
        try:
            stored = json.loads(path.read_text())
            if len(stored) == self.files:
                return stored
        except (OSError, ValueError):
            pass
        digests, problems = digest_files(_dicom_files(self.root))
        if problems or len(digests) != self.files:
            raise BenchError(f"{self.spec.name}: {len(digests)} distinct instances in "
                             f"{self.files} files ({'; '.join(problems[:3])})")
        path.write_text(json.dumps(digests))
        return digests


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (i < n % parts) for i in range(parts)]


def _dicom_files(root: Path) -> list[Path]:
    return sorted(Path(d) / n for d, _, names in os.walk(root) for n in names
                  if n.endswith(".dcm"))


def _scan(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(".dcm"):
                files += 1
                size += os.stat(os.path.join(dirpath, name)).st_size
    return files, size


def prepare_data(spec: DataSpec, cache: Path, log: Callable[[str], None]) -> DataSet:
    """Generate `spec` under cache/<name> once; reuse it while its manifest matches."""
    from engine.bench.generate import generate_tree

    top = cache / spec.name
    manifest_path = top / "manifest.json"
    root = top / "files"  # the manifest stays outside what storescu scans
    wanted = {"version": CACHE_VERSION, **asdict(spec)}
    part_dirs = [root / f"part{i}" for i in range(spec.parts)]
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = {}
        if {k: manifest.get(k) for k in wanted} == wanted:
            files, size = _scan(root)
            if files == manifest.get("files") == spec.count and size == manifest.get("bytes"):
                log(f"data: reusing {root} ({files} files, {size / 1e6:.1f} MB)")
                return DataSet(spec, root, part_dirs, files, size)
        log(f"data: cache {top} does not match, regenerating")
    shutil.rmtree(top, ignore_errors=True)
    building = cache / f"{spec.name}.building"
    shutil.rmtree(building, ignore_errors=True)
    started = time.perf_counter()
    for i, n in enumerate(split(spec.count, spec.parts)):
        # Studies of one series of `per_series` instances, and one shorter study for the rest.
        full, rest = divmod(n, spec.per_series)
        part, seed = building / "files" / f"part{i}", spec.seed + 10 * i
        if full:
            generate_tree(part / "a", full, spec.profile, 1, spec.per_series, seed=seed)
        if rest:
            generate_tree(part / "b", 1, spec.profile, 1, rest, seed=seed + 1)
    files, size = _scan(building)
    if files != spec.count:
        raise BenchError(f"generated {files} files for {spec.name}, wanted {spec.count}")
    (building / "manifest.json").write_text(
        json.dumps({**wanted, "files": files, "bytes": size}, indent=2))
    building.rename(top)
    log(f"data: generated {root} ({files} files, {size / 1e6:.1f} MB) "
        f"in {time.perf_counter() - started:.1f} s")
    return DataSet(spec, root, part_dirs, files, size)
