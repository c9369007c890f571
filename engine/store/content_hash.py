"""Content addresses of stored objects: BLAKE3, compiled or pure-Python.

BLAKE3 because the hash sits on the ingest hot path and the `blake3` package
hashes several GB/s with SIMD, against ~1-2 GB/s for SHA-256.  The pure twin
in _blake3_py gives the same digests when ENGINE_NO_EXTENSIONS=1, only slowly,
so an archive written by one build is readable by the other.
"""
from __future__ import annotations

from engine._native import extensions_disabled

__all__ = ["ALGORITHM", "IMPLEMENTATION", "new_hasher"]

ALGORITHM = "blake3"

if extensions_disabled():
    from engine.store._blake3_py import Blake3 as _PureHasher

    IMPLEMENTATION = "python"

    def new_hasher():
        """A fresh hasher: update(data), digest() -> 32 bytes, hexdigest()."""
        return _PureHasher()

else:
    from blake3 import blake3 as _blake3

    IMPLEMENTATION = "compiled"

    def new_hasher():
        """A fresh hasher: update(data), digest() -> 32 bytes, hexdigest().

        One thread per hasher: many associations hash at once, so threads
        inside one hash would only contend with the others.
        """
        return _blake3(max_threads=1)
