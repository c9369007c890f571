"""Which stored instances the compression stage takes, and when.

An instance qualifies when it is an image (it has Rows) stored in a native
(uncompressed) transfer syntax, is at least `min_size` bytes, and matches the
configured modalities and SOP classes.  It is due `delay` seconds after
receipt, and the stage works only inside the configured time window.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from engine.config import CompressionConfig, parse_window
from engine.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN)
from engine.index.records import InstanceRecord

JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
NATIVE_SYNTAXES = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN,
                             EXPLICIT_VR_BIG_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN})


def _received(record: InstanceRecord) -> datetime | None:
    try:
        when = datetime.fromisoformat(record.received_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class CompressionPolicy:
    def __init__(self, config: CompressionConfig) -> None:
        self.config = config
        self._modalities = {m.strip().upper() for m in config.modalities}
        self._sop_classes = {c.strip() for c in config.sop_classes}
        self._window = parse_window(config.window) if config.window else None

    def qualifies(self, record: InstanceRecord, modality: str) -> bool:
        """Whether the stage would ever compress this instance (time aside)."""
        return (record.transfer_syntax_uid in NATIVE_SYNTAXES
                and bool(record.rows.strip())
                and record.size >= self.config.min_size
                and (not self._modalities or modality.strip().upper() in self._modalities)
                and (not self._sop_classes or record.sop_class_uid in self._sop_classes))

    def due(self, record: InstanceRecord, now: datetime) -> bool:
        """Whether `delay` seconds have passed since receipt (unknown receipt: due)."""
        received = _received(record)
        return received is None or now >= received + timedelta(seconds=self.config.delay)

    def in_window(self, local_now: datetime) -> bool:
        if self._window is None:
            return True
        start, end = self._window
        minute = local_now.hour * 60 + local_now.minute
        if start <= end:
            return start <= minute < end
        return minute >= start or minute < end  # wraps midnight


__all__ = ["CompressionPolicy", "JPEG_2000_LOSSLESS", "NATIVE_SYNTAXES"]
