"""The web viewer: a study browser served at ``/``, from the files in engine/web/static.

Plain ES modules, CSS and HTML shipped in the package: no build step, no CDN, and
nothing but the DICOMweb API (PS3.18, under the base path) behind it.

Caching: ``/`` (index.html) is revalidated on every load (``no-cache`` + ETag) and
names its assets under ``/static/v-<version>/``, where the version is a hash of
every static file: those URLs never change meaning, so they are cached for a
year (``immutable``); changing any file changes the version.  The same files are
also served unversioned under ``/static/`` (revalidated by ETag).

Only files found under engine/web/static are served (looked up by name in a
table, never by joining a request path onto the file system).  The page is
served with a Content-Security-Policy that allows scripts, styles and requests to
this origin only.
"""
from __future__ import annotations

import gzip
import hashlib
import html
import os
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

STATIC_DIR = Path(__file__).with_name("static")

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
_COMPRESSIBLE = (".html", ".js", ".mjs", ".css", ".svg", ".json", ".txt")

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "connect-src 'self'",
    "font-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))
_COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_PAGE_HEADERS = {
    **_COMMON_HEADERS,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
IMMUTABLE = "public, max-age=31536000, immutable"
VERSION_PREFIX = "v-"


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


def _asset(name: str, body: bytes) -> Asset:
    suffix = os.path.splitext(name)[1].lower()
    gzipped = None
    if suffix in _COMPRESSIBLE and len(body) > 512:
        packed = gzip.compress(body, compresslevel=9, mtime=0)
        gzipped = packed if len(packed) < len(body) else None
    return Asset(body, gzipped, CONTENT_TYPES.get(suffix, "application/octet-stream"),
                 '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


@dataclass(frozen=True)
class Snapshot:
    """The static files as last read, and the version that names them."""

    signature: tuple
    version: str
    assets: dict[str, Asset]


class StaticFiles:
    """engine/web/static in memory, read again when any file changes (size or mtime)."""

    def __init__(self, root: Path = STATIC_DIR) -> None:
        self.root = root
        self._snapshot: Snapshot | None = None

    def _scan(self) -> list[tuple[str, os.stat_result]]:
        found = []
        for directory, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = Path(directory, name)
                found.append((path.relative_to(self.root).as_posix(), path.stat()))
        return found

    def snapshot(self) -> Snapshot:
        """The current files (stat'ed on every call: a dozen small files)."""
        entries = self._scan()
        signature = tuple((name, st.st_size, st.st_mtime_ns) for name, st in entries)
        current = self._snapshot
        if current is not None and current.signature == signature:
            return current
        assets = {}
        digest = hashlib.sha256()
        for name, _ in entries:
            body = (self.root / name).read_bytes()
            digest.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
            assets[name] = _asset(name, body)
        self._snapshot = Snapshot(signature, digest.hexdigest()[:12], assets)
        return self._snapshot

    def current(self) -> Snapshot:
        """The last snapshot without stat'ing the files (the first call reads them)."""
        return self._snapshot or self.snapshot()


def _not_modified(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match", "")
    return any(tag.strip() in (etag, "*", "W/" + etag) for tag in wanted.split(","))


def _send(request: Request, asset: Asset, headers: dict[str, str]) -> Response:
    """The asset, gzipped when the client takes it (its own ETag then), or 304."""
    body, etag, headers = asset.body, asset.etag, {**headers, "Vary": "Accept-Encoding"}
    if asset.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
        body, etag = asset.gzipped, asset.etag[:-1] + '-gzip"'
        headers["Content-Encoding"] = "gzip"
    headers["ETag"] = etag
    if _not_modified(request, etag):
        headers.pop("Content-Encoding", None)
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=asset.content_type, headers=headers)


def dicomweb_root(app, default: str = "/dicomweb") -> str:
    """The DICOMweb base path of an app: where its QIDO-RS ``GET .../studies`` route is."""
    for route in getattr(app, "routes", ()):
        path = getattr(route, "path", "")
        if path.endswith("/studies") and "GET" in (getattr(route, "methods", None) or ()):
            return path[:-len("/studies")]
    return default


def viewer_routes(base_path: str | None = None, static_dir: Path = STATIC_DIR) -> list:
    """Starlette routes of the viewer: the page at ``/`` and its files under ``/static``.

    `base_path` is where the DICOMweb services are (WebConfig.base_path); the page
    tells its scripts so.  None: found among the routes of the app serving the page.
    """
    files = StaticFiles(static_dir)
    pages: dict[tuple[str, str], Asset] = {}  # (version, base path) -> index.html

    async def index(request: Request) -> Response:
        snapshot = files.snapshot()
        root = base_path if base_path is not None else dicomweb_root(request.scope.get("app"))
        root = root.rstrip("/")
        page = pages.get((snapshot.version, root))
        if page is None:
            template = snapshot.assets["index.html"].body.decode("utf-8")
            text = template.replace("{{ASSETS}}", f"/static/{VERSION_PREFIX}{snapshot.version}/")
            text = text.replace("{{DICOMWEB_ROOT}}", html.escape(root, quote=True))
            pages.clear()
            page = pages[(snapshot.version, root)] = _asset("index.html", text.encode("utf-8"))
        return _send(request, page, _PAGE_HEADERS)

    async def static(request: Request) -> Response:
        path = request.path_params["path"]
        snapshot = files.current()
        cache = "no-cache"
        first, _, rest = path.partition("/")
        if first.startswith(VERSION_PREFIX) and rest:
            if first[len(VERSION_PREFIX):] != snapshot.version:
                snapshot = files.snapshot()  # changed on disk since last looked at?
            if first[len(VERSION_PREFIX):] == snapshot.version:
                cache = IMMUTABLE
            path = rest  # an old version: the current file, but not to be kept
        asset = snapshot.assets.get(path)
        if asset is None or path == "index.html":
            return Response("not found\n", status_code=404, media_type="text/plain",
                            headers=_COMMON_HEADERS)
        return _send(request, asset, {**_COMMON_HEADERS, "Cache-Control": cache})

    return [
        Route("/", index, methods=["GET", "HEAD"], name="viewer"),
        Route("/static/{path:path}", static, methods=["GET", "HEAD"], name="viewer-static"),
    ]


__all__ = ["STATIC_DIR", "StaticFiles", "dicomweb_root", "viewer_routes"]
