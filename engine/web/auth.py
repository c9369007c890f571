"""Authentication of DICOMweb requests: none, bearer tokens, or HTTP Basic.

Secrets are not kept in the configuration: a token is known by its SHA-256, a
password by a salted PBKDF2 hash (``pbkdf2_sha256$iterations$salt$hash``,
made by ``python -m engine.web.auth``).  PBKDF2 is slow on purpose, so a
verified Authorization header is remembered (by its SHA-256) for a while
instead of being re-derived on every request of a viewer loading a study.

As ASGI middleware it guards the paths under the DICOMweb base path, and /metrics
and /health for clients not on loopback; CORS pre-flight requests (OPTIONS, no
credentials by definition) pass.  It names the web user in the request scope
(`WEB_USER`, for the audit trail) and reports each refusal (401) to `on_refused`.
"""
from __future__ import annotations

import asyncio
import base64
import getpass
import hashlib
import hmac
import json
import os
import sys
import time

from engine.config import WebConfig, is_loopback_host
from engine.web.ops_routes import OPS_PATHS, WEB_USER

_ITERATIONS = 240_000
_REMEMBER_SECONDS = 300.0
_REMEMBERED_MAX = 256


def hash_password(password: str, iterations: int = _ITERATIONS) -> str:
    salt = os.urandom(16).hex()
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), bytes.fromhex(salt),
                                 iterations).hex()
    return f"pbkdf2_sha256${iterations}${salt}${digest}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        derived = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), bytes.fromhex(salt),
                                      int(iterations)).hex()
    except ValueError:
        return False
    return scheme == "pbkdf2_sha256" and hmac.compare_digest(derived, digest)


class Authenticator:
    """Decides whether an Authorization header value is good enough."""

    def __init__(self, config: WebConfig) -> None:
        self.mode = config.authentication
        self._tokens = tuple(config.token_sha256)
        self._user = config.user
        self._password_hash = config.password_hash
        self._remembered: dict[str, float] = {}

    @property
    def challenge(self) -> str:
        return 'Basic realm="pacs-engine", charset="UTF-8"' if self.mode == "basic" \
            else 'Bearer realm="pacs-engine"'

    def remembered(self, authorization: str | None) -> bool:
        """Whether this Basic header was verified a short while ago."""
        if not authorization:
            return False
        credentials = authorization.strip().partition(" ")[2].strip()
        key = hashlib.sha256(credentials.encode("utf-8")).hexdigest()
        return self._remembered.get(key, 0.0) > time.monotonic()

    def user(self, authorization: str | None) -> str:
        """Who an (accepted) Authorization header names, for the audit trail; for a
        refused one, the user it claims ("" when none): never the secret itself."""
        if self.mode == "none" or not authorization:
            return "anonymous"
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer":
            return "token:" + hashlib.sha256(credentials.encode("utf-8")).hexdigest()[:12]
        if scheme.lower() == "basic":
            try:
                return base64.b64decode(credentials, validate=True).decode(
                    "utf-8").partition(":")[0][:64]
            except (ValueError, UnicodeDecodeError):
                return ""
        return ""

    def allows(self, authorization: str | None) -> bool:
        if self.mode == "none":
            return True
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if self.mode == "token":
            if scheme.lower() != "bearer" or not credentials:
                return False
            digest = hashlib.sha256(credentials.encode("utf-8")).hexdigest()
            return any(hmac.compare_digest(digest, t) for t in self._tokens)
        if scheme.lower() != "basic":
            return False
        key = hashlib.sha256(credentials.encode("utf-8")).hexdigest()
        now = time.monotonic()
        if self._remembered.get(key, 0.0) > now:
            return True
        try:
            user, sep, password = base64.b64decode(credentials, validate=True).decode(
                "utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if not sep or not hmac.compare_digest(user.encode(), self._user.encode()) or \
                not check_password(password, self._password_hash):
            return False
        if len(self._remembered) >= _REMEMBERED_MAX:
            self._remembered.clear()
        self._remembered[key] = now + _REMEMBER_SECONDS
        return True


class AuthMiddleware:
    """ASGI middleware: 401 with a challenge for unauthenticated requests under `prefix`."""

    def __init__(self, app, authenticator: Authenticator, prefix: str,
                 on_refused=None) -> None:
        self.app = app
        self.authenticator = authenticator
        self.prefix = prefix
        #: on_refused(scope, claimed user, had credentials): the audit trail's hook.
        self.on_refused = on_refused

    def _guarded(self, scope) -> bool:
        path = scope["path"]
        if path in OPS_PATHS:  # /metrics, /health: free on loopback, guarded elsewhere
            client = scope.get("client")
            return not (client and is_loopback_host(client[0]))
        return not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (self.authenticator.mode == "none" or scope["method"] == "OPTIONS"
                or not self._guarded(scope)):
            scope[WEB_USER] = "anonymous"
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        authenticator = self.authenticator
        if authenticator.mode == "basic" and not authenticator.remembered(authorization):
            # PBKDF2 takes ~0.1 s: not on the event loop, which also serves DICOM.
            allowed = await asyncio.to_thread(authenticator.allows, authorization)
        else:
            allowed = authenticator.allows(authorization)
        if allowed:
            scope[WEB_USER] = authenticator.user(authorization)
            await self.app(scope, receive, send)
            return
        if self.on_refused is not None:
            self.on_refused(scope, authenticator.user(authorization), bool(authorization))
        body = json.dumps({"error": "authentication required" if not authorization
                           else "invalid credentials"}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", self.authenticator.challenge.encode())]})
        await send({"type": "http.response.body", "body": body})


def main() -> int:
    """Print a password hash for [web] password_hash (the password from stdin or a prompt)."""
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
