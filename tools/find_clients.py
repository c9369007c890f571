"""The C-FIND benchmark's clients and queries: moved to engine.bench.find_clients
(`pacs bench` runs from the installed package, where tools/ is not).  This name
stays an alias of that module for the tests and benchmarks that import it."""
import sys

from engine.bench import find_clients as _module

sys.modules[__name__] = _module
