"""Diagnostic logging: text or JSON lines on stderr, and keeping patient data out of it.

Diagnostic logs are read by whoever runs the machine; patient data (names, IDs,
birth dates, query values) belongs in the audit trail only.  Messages name
instances, series and studies by UID and associations by their id, never by
patient attributes; `redact_values()` removes the quoted values that exception
texts carry (a matching key that could not be parsed, for instance) before such
a text is logged.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
import warnings

from engine.config import LoggingConfig

#: An association id as the listener numbers them ("assoc#12").
_ASSOC = re.compile(r"\bassoc#\d+\b")
#: A quoted value as repr() writes it ('...' or "..."), as exception texts embed them.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def redact_values(text: object) -> str:
    """`text` with every quoted value replaced by '…' (for exception texts about data)."""
    return _QUOTED.sub("'…'", str(text))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ms), level, logger, message, assoc, exc."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        assoc = getattr(record, "assoc", None)
        if assoc is None:
            found = _ASSOC.search(message)
            assoc = found.group(0) if found else None
        if assoc is not None:
            doc["assoc"] = assoc
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


class RedactLibraries(logging.Filter):
    """Quoted values out of the messages of libraries (not ours): pydicom, for one, logs
    "Invalid value for VR DA: '<the value>'" when it reads a query key it dislikes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("engine"):
            message = record.getMessage()
            redacted = redact_values(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def make_handler(config: LoggingConfig, stream=None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactLibraries())
    return handler


def setup_logging(config: LoggingConfig, stream=None) -> None:
    """The root logger as configured: level, and text or JSON lines on stderr.

    Python warnings become log records (logger py.warnings), so they are formatted and
    redacted like the rest; pydicom's are dropped, as it logs each one already.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(config, stream))
    root.setLevel(config.level.upper())
    warnings.filterwarnings("ignore", module=r"pydicom\b")
    logging.captureWarnings(True)


__all__ = ["JsonFormatter", "RedactLibraries", "TEXT_FORMAT", "make_handler", "redact_values", "setup_logging"]
