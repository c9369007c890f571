"""Helpers of the compression benchmark: moved to engine.bench.frames (`pacs bench`
runs from the installed package, where tools/ is not).  This name stays an alias
of that module for the tests and tools that import it."""
import sys

from engine.bench import frames as _module

sys.modules[__name__] = _module
