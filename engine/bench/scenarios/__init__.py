"""The scenario registry: name → function(ctx) that records its runs.

A scenario returns None when it ran (its runs say how it went), or a reason
when it cannot run here at all ("not available" in the report, not a failure).
Modules are imported only when their scenario runs.
"""
from __future__ import annotations

import importlib


def _lazy(module: str):
    def run(ctx):
        return importlib.import_module(f"engine.bench.scenarios.{module}").run(ctx)
    return run


REGISTRY = {
    "store": _lazy("store"),
    "pynetdicom": _lazy("pynetdicom"),
    "find": _lazy("find"),
    "move": _lazy("move"),
    "import": _lazy("importing"),
    "compress": _lazy("compress"),
    "forward": _lazy("forward"),
}
