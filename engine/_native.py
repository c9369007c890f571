"""Choose between a compiled hot path and its pure-Python twin, in one place.

The compiled module is always used unless ENGINE_NO_EXTENSIONS=1 is set.  If it
is wanted but cannot be imported, that is an error (the build is broken), never
a silent fallback to the slow twin.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType


def extensions_disabled() -> bool:
    """True when ENGINE_NO_EXTENSIONS asks for the pure-Python twins."""
    return os.environ.get("ENGINE_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes"}


def load_twin(compiled: str, pure: str) -> tuple[ModuleType, str]:
    """Import `compiled` (or `pure` when extensions are disabled).

    Returns the module and the name of the implementation that loaded,
    "compiled" or "python", so tests and `pacs --version` can say which ran.
    """
    if extensions_disabled():
        return importlib.import_module(pure), "python"
    try:
        return importlib.import_module(compiled), "compiled"
    except ImportError as exc:  # pragma: no cover - exercised only on a broken build
        raise ImportError(
            f"compiled extension {compiled!r} is missing or broken ({exc}); rebuild with "
            "`pip install -e .` or set ENGINE_NO_EXTENSIONS=1 to run the pure-Python twins"
        ) from exc
