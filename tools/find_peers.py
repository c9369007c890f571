"""The C-FIND benchmark's servers: moved to engine.bench.find_peers
(`pacs bench` runs from the installed package, where tools/ is not).  This name
stays an alias of that module for the tests and benchmarks that import it."""
import sys

from engine.bench import find_peers as _module

sys.modules[__name__] = _module
