"""HTTP errors of the DICOMweb API: a status and a message for the client.

Handlers raise `WebError`; the app turns it into a JSON body
``{"error": message}`` with that status (app.py), so every 4xx says why.
"""
from __future__ import annotations

from engine.dicom.uids import is_valid_uid
from engine.errors import EngineError


class WebError(EngineError):
    """A request the API answers with `status` and `message` (nothing else happened)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> WebError:
    return WebError(400, message)


def not_found(message: str) -> WebError:
    return WebError(404, message)


def not_acceptable(message: str) -> WebError:
    return WebError(406, message)


def checked_uid(value: str, what: str) -> str:
    """A UID from the URL path, checked against the UI grammar (PS3.5 9.1): 400 otherwise."""
    if not is_valid_uid(value):
        raise bad_request(f"{what} in the URL is not a valid UID")
    return value
