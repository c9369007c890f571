"""The C-FIND benchmark's synthetic archive: moved to engine.bench.catalogue
(`pacs bench` runs from the installed package, where tools/ is not).  This name
stays an alias of that module for the tests and benchmarks that import it."""
import sys

from engine.bench import catalogue as _module

sys.modules[__name__] = _module
