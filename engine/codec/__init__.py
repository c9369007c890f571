"""Pixel data codecs: re-encoding stored instances in another transfer syntax.

Layer: may import engine.dicom and engine.errors only.  Codec plugins are
pydicom's, found at run time; see transcode.py for what works.
"""
from engine.codec.transcode import can_transcode, choose_target, transcode_file

__all__ = ["can_transcode", "choose_target", "transcode_file"]
