"""Build the Cython hot paths in ext/ into the engine package.

A compile failure is an error: there is deliberately no silent fallback to the
pure-Python twins at build time (those are selected at run time only when
ENGINE_NO_EXTENSIONS=1 is set; see engine/_native.py).
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

EXTENSIONS = [
    Extension("engine.net._pdu_framing_c", ["ext/pdu_framing.pyx"]),
    Extension("engine.dicom._tagscan_c", ["ext/tagscan.pyx"]),
]

setup(
    ext_modules=cythonize(
        EXTENSIONS,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    ),
)
