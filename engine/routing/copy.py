"""The copy a destination receives when its rule changes it: run in a codec worker.

The stored dataset is first put in the target transfer syntax (engine.codec,
pixel data verified), then de-identified (PS3.15 Basic Profile, UIDs remapped
consistently with the router's secret) and/or changed as the rule says, and
encoded again.  The archived instance is never touched.
"""
from __future__ import annotations

from io import BytesIO

from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from engine.codec.transcode import transcode_file
from engine.dicom.uids import transfer_syntax_encoding
from engine.routing.changes import apply_changes, changes_from_json
from engine.routing.deidentify import UIDMapper, deidentify


def prepare_copy(path: str, dataset_offset: int, stored_ts: str, target_ts: str,
                 changes: tuple, deidentify_secret: str | None) -> bytes:
    """Dataset bytes in `target_ts`, de-identified (when a secret is given) and changed."""
    data = transcode_file(path, dataset_offset, stored_ts, target_ts)
    encoding = transfer_syntax_encoding(target_ts)
    ds = read_dataset(BytesIO(data), not encoding.explicit_vr, encoding.little_endian)
    if deidentify_secret is not None:
        ds = deidentify(ds, UIDMapper(deidentify_secret.encode()))
    if changes:
        ds = apply_changes(ds, changes_from_json(changes))
    out = DicomBytesIO()
    out.is_little_endian = encoding.little_endian
    out.is_implicit_VR = not encoding.explicit_vr
    write_dataset(out, ds)
    return out.getvalue()


__all__ = ["prepare_copy"]
