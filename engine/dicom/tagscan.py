"""Streaming DICOM tag scanner: pulls the indexed attributes out of a dataset as it arrives.

The compiled scanner (ext/tagscan.pyx) is used unless ENGINE_NO_EXTENSIONS=1
selects the pure-Python twin; IMPLEMENTATION says which one loaded.
"""
from engine._native import load_twin

_impl, IMPLEMENTATION = load_twin("engine.dicom._tagscan_c", "engine.dicom._tagscan_py")
TagScanner = _impl.TagScanner
