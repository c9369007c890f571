"""Synthetic DICOM studies: moved to engine.bench.generate (`pacs bench` runs from
the installed package, where tools/ is not).  This name stays an alias of that
module, private names included, for the tests and scripts that import it;
`python -m tools.generate_data` still runs its command line."""
import sys

from engine.bench import generate as _module

if __name__ == "__main__":
    sys.exit(_module.main())
sys.modules[__name__] = _module
