"""The DICOMweb application (Starlette) and its server (uvicorn on our event loop).

`build_app()` wires the resources of PS3.18 under the configured base path to
qido.py, wado.py and stow.py, adds authentication (auth.py), CORS, JSON errors
and, when the viewer module is present, the viewer's routes.  `WebServer`
runs uvicorn as a task on the running loop: the socket is bound by us first
(port 0 gives a free port to report, a busy port fails the start like the
DICOM listener), uvicorn's own signal handling is off (the engine's handlers
stop everything), and `stop()` lets in-flight requests finish for a few
seconds before cancelling them.

Blocking work never runs on the loop: index queries and metadata builds on
threads, decoding and transcoding in the codec worker processes.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import socket
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine.codec.workers import CodecWorkers
from engine.config import WebConfig
from engine.index.reader import IndexReader
from engine.ingest.pipeline import IngestPipeline, Origin
from engine.ops import audit as a
from engine.ops.observer import is_stored
from engine.query.find import FindExecutor
from engine.query.retrieve import RetrieveResolver
from engine.store.blob_store import FilesystemBlobStore
from engine.web.auth import Authenticator, AuthMiddleware
from engine.web.errors import WebError, bad_request, checked_uid, not_found
from engine.web.frames import FrameError
from engine.web.metadata_cache import MetadataCache
from engine.web.multipart import (
    closing, multipart_content_type, new_boundary, parse_accept, part_header, part_separator)
from engine.web.ops_routes import RequestMetrics, WebOps, ops_routes
from engine.web.qido import Searcher
from engine.web.stow import WEB_AE_TITLE, Stow, response_json, response_status
from engine.web.wado import Wado, parse_frame_list

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
#: Seconds in-flight requests get to finish when the server stops.
SHUTDOWN_GRACE = 5.0


@dataclass
class WebServices:
    """What the API reads and writes: the archive's parts, shared with the DICOM side."""

    reader: IndexReader
    store: FilesystemBlobStore
    pipeline: IngestPipeline
    codec: CodecWorkers
    max_results: int

    def __post_init__(self) -> None:
        resolver = RetrieveResolver(self.reader, self.store)
        self.searcher = Searcher(FindExecutor(self.reader, self.store), self.max_results)
        self.wado = Wado(self.reader, resolver, self.codec)
        self.metadata = MetadataCache(self.reader, self.store)


def _json(data, status: int = 200, headers: dict | None = None) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(body, status, headers=headers, media_type=DICOM_JSON)


def _base_url(request: Request, base_path: str) -> str:
    """Absolute URL of the DICOMweb root as the client reached it (for RetrieveURL and
    BulkDataURI).  Some clients (dicomweb-client) send Host without the port: the port
    the request came in on is added then, unless it is the scheme's default."""
    netloc = request.url.netloc
    server = request.scope.get("server")
    if server and ":" not in netloc.rsplit("]", 1)[-1] and \
            server[1] not in (None, 80 if request.url.scheme == "http" else 443):
        netloc = f"{netloc}:{server[1]}"
    return f"{request.url.scheme}://{netloc}{base_path}"


def _warning_headers(host: str, warnings) -> dict:
    if not warnings:
        return {}
    text = ", ".join(f'299 {host} "{w}"' for w in warnings)
    return {"Warning": text}


class Api:
    """The endpoints; each one a thin translation between HTTP and the services."""

    def __init__(self, services: WebServices, config: WebConfig,
                 ops: WebOps | None = None) -> None:
        self.services = services
        self.config = config
        self.base = config.base_path
        self.stow = Stow(services.pipeline, config.max_upload_bytes)
        self.ops = ops if ops is not None else WebOps()

    # -- the audit trail ---------------------------------------------------------------------
    def _patient_of(self, study: str) -> str:
        """The Patient ID of a stored study ("" when unknown; blocking)."""
        record = self.services.reader.study(study)
        return record.patient_key.split("\x00", 1)[0] if record is not None else ""

    def _audit_query(self, request: Request, level: str, params, uids: dict, count: int,
                     outcome: int = a.SUCCESS, detail: str = "") -> None:
        keys = {"QueryRetrieveLevel": level, **uids}
        for name, value in params:
            keys[name] = f"{keys[name]}\\{value}" if name in keys else value
        self.ops.emit("query", a.QUERY, "E", outcome,
                      [self.ops.requestor(request), self.ops.us(request)],
                      [a.query_object(a.STUDY_ROOT_FIND, keys, {"Service": "QIDO-RS"})],
                      description=detail or f"{count} match(es)", Matches=count)

    def _audit_study(self, request: Request, event: str, event_id: dict, study: str,
                     patient: str, count: int, outcome: int, detail: str) -> None:
        self.ops.emit(event, event_id, "R", outcome,
                      [self.ops.us(request, a.ROLE_SOURCE),
                       self.ops.requestor(request, a.ROLE_DESTINATION)],
                      [a.study_object(study), a.patient_object(patient)],
                      description=detail, Service="WADO-RS", Instances=count)

    # -- QIDO-RS ---------------------------------------------------------------------------
    async def search(self, request: Request, level: str) -> Response:
        path = request.path_params
        uids = {}
        if "study" in path:
            uids["StudyInstanceUID"] = checked_uid(path["study"], "Study Instance UID")
        if "series" in path:
            uids["SeriesInstanceUID"] = checked_uid(path["series"], "Series Instance UID")
        params = list(request.query_params.multi_items())
        searcher = self.services.searcher
        try:
            query, offset, limit, explicit, warnings = searcher.prepare(level, params, uids)
            result = await asyncio.to_thread(searcher.run, query, offset, limit, explicit,
                                             warnings, _base_url(request, self.base))
        except WebError as exc:
            if self.ops.auditing:
                self._audit_query(request, level, params, uids, 0, a.MINOR_FAILURE,
                                  f"refused ({exc.status}): {exc.message}")
            raise
        if self.ops.auditing:
            self._audit_query(request, level, params, uids, result.count)
        headers = _warning_headers(request.url.hostname or "pacs-engine", result.warnings)
        return Response(result.body, 200, headers=headers, media_type=DICOM_JSON)

    async def search_studies(self, request: Request) -> Response:
        return await self.search(request, "STUDY")

    async def search_series(self, request: Request) -> Response:
        return await self.search(request, "SERIES")

    async def search_instances(self, request: Request) -> Response:
        return await self.search(request, "IMAGE")

    # -- WADO-RS: instances ----------------------------------------------------------------
    def _uids(self, request: Request) -> tuple[str, str | None, str | None]:
        path = request.path_params
        study = checked_uid(path["study"], "Study Instance UID")
        series = checked_uid(path["series"], "Series Instance UID") if "series" in path \
            else None
        sop = checked_uid(path["instance"], "SOP Instance UID") if "instance" in path else None
        return study, series, sop

    async def retrieve(self, request: Request) -> Response:
        study, series, sop = self._uids(request)
        wado = self.services.wado
        instances = await asyncio.to_thread(wado.resolve, study, series, sop)
        if not instances:
            raise not_found("nothing stored under this URL")
        planned = wado.plan(instances, parse_accept(request.headers.get("accept")))
        boundary = new_boundary()
        targets = {p.target for p in planned}
        content_type = multipart_content_type(
            boundary, "application/dicom", targets.pop() if len(targets) == 1 else None)
        body = wado.instances_body(planned, boundary)
        if self.ops.auditing:
            patient = await asyncio.to_thread(self._patient_of, study)
            body = self._audited_body(request, body, study, patient, len(planned))
        return StreamingResponse(body, headers={"Content-Type": content_type})

    async def _audited_body(self, request: Request, body, study: str, patient: str,
                            count: int):
        """The multipart body, with one audit record when it ends (complete or not)."""
        complete = False
        try:
            async for chunk in body:
                yield chunk
            complete = True
        finally:
            self._audit_study(request, "retrieve", a.INSTANCES_TRANSFERRED, study, patient,
                              count, a.SUCCESS if complete else a.MINOR_FAILURE,
                              f"{count} instance(s)" + ("" if complete else
                                                        ", response not completed"))

    # -- WADO-RS: metadata -----------------------------------------------------------------
    async def metadata(self, request: Request) -> Response:
        study, series, sop = self._uids(request)
        cache = self.services.metadata
        base_url = _base_url(request, self.base)

        def build() -> bytes | None:
            if series is None:
                series_list = cache.study_series(study)
                if series_list is None:
                    return None
                parts = [cache.series_json(study, s, base_url) for s in series_list]
                items = [p[1:-1] for p in parts if p is not None and len(p) > 2]
                return b"[" + b",".join(items) + b"]"
            body = cache.series_json(study, series, base_url)
            if body is None or sop is None:
                return body
            refs = cache.series_refs(study, series) or []
            for ref in refs:
                if ref.sop_instance_uid == sop:
                    return b"[" + cache.instance_json(ref, base_url) + b"]"
            return None

        body = await asyncio.to_thread(build)
        if body is None:
            raise not_found("nothing stored under this URL")
        if self.ops.auditing:
            patient = await asyncio.to_thread(self._patient_of, study)
            self._audit_study(request, "access", a.INSTANCES_ACCESSED, study, patient, 0,
                              a.SUCCESS, "metadata" + (f" of series {series}" if series
                                                       else ""))
        return Response(body, 200, media_type=DICOM_JSON)

    # -- WADO-RS: frames, bulk data, rendered ------------------------------------------------
    async def _one_instance(self, request: Request):
        study, series, sop = self._uids(request)
        return await asyncio.to_thread(self.services.wado.instance, study, series, sop)

    def _multipart(self, parts: list[bytes], part_type: str, transfer_syntax: str) -> Response:
        boundary = new_boundary()
        content = f"{part_type}; transfer-syntax={transfer_syntax}"
        body = []
        for part in parts:
            body += [part_header(boundary, content), part, part_separator()]
        body.append(closing(boundary))
        return Response(b"".join(body), 200, headers={
            "Content-Type": multipart_content_type(boundary, part_type, transfer_syntax)})

    async def frames(self, request: Request) -> Response:
        instance = await self._one_instance(request)
        numbers = parse_frame_list(request.path_params["frames"])
        frames, part_type, ts = await self.services.wado.frames(
            instance, numbers, parse_accept(request.headers.get("accept")))
        return self._multipart(frames, part_type, ts)

    async def bulkdata(self, request: Request) -> Response:
        instance = await self._one_instance(request)
        path = request.path_params["path"].strip("/")
        if path.upper() not in ("7FE00010", "7FE00008", "7FE00009"):
            data = await asyncio.to_thread(_bulk_value, instance, path)
            return self._multipart([data], "application/octet-stream", "1.2.840.10008.1.2.1")
        # Pixel Data: every frame, one part each (as frames would send them).
        from engine.web.frames import frame_count, read_stored_dataset

        def count() -> int:
            ds = read_stored_dataset(instance.path, instance.dataset_offset,
                                     instance.transfer_syntax_uid,
                                     specific_tags=[0x00280008])
            return frame_count(ds)

        numbers = list(range(1, await asyncio.to_thread(count) + 1))
        frames, part_type, ts = await self.services.wado.frames(
            instance, numbers, parse_accept(request.headers.get("accept")))
        return self._multipart(frames, part_type, ts)

    async def rendered(self, request: Request) -> Response:
        instance = await self._one_instance(request)
        frame = 1
        if "frames" in request.path_params:
            numbers = parse_frame_list(request.path_params["frames"])
            if len(numbers) != 1:
                raise bad_request("rendered frames are served one at a time")
            frame = numbers[0]
        data, media_type = await self.services.wado.rendered(
            instance, frame, request.query_params, parse_accept(request.headers.get("accept")))
        return Response(data, 200, media_type=media_type)

    # -- STOW-RS ---------------------------------------------------------------------------
    async def store(self, request: Request) -> Response:
        study = checked_uid(request.path_params["study"], "Study Instance UID") \
            if "study" in request.path_params else None
        boundary = self.stow.check_request(request.headers.get("content-type"),
                                           request.headers.get("content-length"))
        client = request.client
        origin = Origin(WEB_AE_TITLE, "", client.host if client else "")
        try:
            results = await self.stow.store(boundary, request.stream(), study, origin)
        except ClientDisconnect:
            log.info("STOW-RS: client went away mid-upload")
            return Response(status_code=400)
        for r in results:
            if r.failure is not None:
                log.warning("STOW-RS: %s refused (0x%04X): %s", r.sop_instance_uid or "part",
                            r.failure, r.reason)
        self._observe_stow(request, results)
        status = response_status(results)
        return _json(response_json(results, _base_url(request, self.base), study), status)

    def _observe_stow(self, request: Request, results) -> None:
        """Metrics per instance; one audit record per study of the request."""
        ops = self.ops
        tallies = a.Tallies()
        for r in results:
            status = r.failure if r.failure is not None else (r.warning or 0)
            if ops.metrics is not None:
                ops.metrics.dimse("STOW-RS", status)
                if r.failure is None:
                    ops.metrics.received("stow", r.size)
            tallies.add(r.study_instance_uid, r.patient_id, r.sop_class_uid,
                        is_stored(status) and r.failure is None)
        if not ops.auditing or not tallies:
            return
        participants = [ops.requestor(request, a.ROLE_SOURCE), ops.us(request, a.ROLE_DESTINATION)]

        def make(objects, done, failed):
            return a.record("store", a.INSTANCES_TRANSFERRED, "C", a.outcome_of(done, failed),
                            participants, objects, source_id=ops.ae_title, Service="STOW-RS",
                            description=f"{done} instance(s)"
                                        + (f", {failed} failed" if failed else ""))

        for record in a.study_records(tallies, make):
            ops.audit.emit(record)
        if tallies.failed_unknown:
            ops.emit("store", a.INSTANCES_TRANSFERRED, "C", a.SERIOUS_FAILURE, participants,
                     Service="STOW-RS", description=f"{tallies.failed_unknown} part(s) refused "
                                                    "before their study was known")

    # -- routes ----------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        b = self.base
        study = b + "/studies/{study}"
        series = study + "/series/{series}"
        instance = series + "/instances/{instance}"
        return [
            Route(b + "/studies", self.search_studies, methods=["GET"]),
            Route(b + "/studies", self.store, methods=["POST"]),
            Route(b + "/series", self.search_series, methods=["GET"]),
            Route(b + "/instances", self.search_instances, methods=["GET"]),
            Route(study, self.retrieve, methods=["GET"]),
            Route(study, self.store, methods=["POST"]),
            Route(study + "/metadata", self.metadata, methods=["GET"]),
            Route(study + "/series", self.search_series, methods=["GET"]),
            Route(study + "/instances", self.search_instances, methods=["GET"]),
            Route(series, self.retrieve, methods=["GET"]),
            Route(series + "/metadata", self.metadata, methods=["GET"]),
            Route(series + "/instances", self.search_instances, methods=["GET"]),
            Route(instance, self.retrieve, methods=["GET"]),
            Route(instance + "/metadata", self.metadata, methods=["GET"]),
            Route(instance + "/rendered", self.rendered, methods=["GET"]),
            Route(instance + "/frames/{frames}", self.frames, methods=["GET"]),
            Route(instance + "/frames/{frames}/rendered", self.rendered, methods=["GET"]),
            Route(instance + "/bulkdata/{path:path}", self.bulkdata, methods=["GET"]),
        ]


def _bulk_value(instance, path: str) -> bytes:
    """The bytes of a (non-pixel) value at a BulkDataURI path: TAG or TAG/item/TAG..."""
    from engine.web.dicom_json import parse_tag
    from engine.web.frames import read_stored_dataset

    steps = path.split("/")
    if len(steps) % 2 != 1:
        raise bad_request("bulk data path must be TAG or TAG/item/TAG...")
    try:
        ds = read_stored_dataset(instance.path, instance.dataset_offset,
                                 instance.transfer_syntax_uid)
        for i in range(0, len(steps) - 1, 2):
            tag, index = parse_tag(steps[i]), int(steps[i + 1])
            if tag is None or tag not in ds or ds[tag].VR != "SQ":
                raise not_found("no such bulk data")
            items = ds[tag].value
            if not 0 <= index < len(items):
                raise not_found("no such bulk data")
            ds = items[index]
        tag = parse_tag(steps[-1])
    except ValueError:
        raise bad_request("bulk data path must be TAG or TAG/item/TAG...") from None
    if tag is None or tag not in ds:
        raise not_found("no such bulk data")
    element = ds[tag]
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raw = ds.get_item(tag)
    if raw.is_raw and raw.value is not None:
        return bytes(raw.value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise not_found("no bulk data at this path")


# --- errors ----------------------------------------------------------------------------------
async def _web_error(request: Request, exc: WebError) -> Response:
    return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)


async def _http_error(request: Request, exc) -> Response:
    return JSONResponse({"error": exc.detail}, exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _frame_error(request: Request, exc: FrameError) -> Response:
    return JSONResponse({"error": str(exc)}, 404)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("DICOMweb %s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal error"}, 500)


def viewer_routes_if_present() -> list:
    """The viewer's routes (engine/web/viewer.py), when that module is installed."""
    if importlib.util.find_spec("engine.web.viewer") is None:
        return []
    from engine.web.viewer import viewer_routes
    return list(viewer_routes())


def build_app(services: WebServices, config: WebConfig, ops: WebOps | None = None
              ) -> Starlette:
    from starlette.exceptions import HTTPException

    ops = ops if ops is not None else WebOps()
    api = Api(services, config, ops)
    middleware = []
    if ops.metrics is not None:
        middleware.append(Middleware(RequestMetrics, metrics=ops.metrics))
    if config.cors_origins:
        wildcard = "*" in config.cors_origins
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
            expose_headers=["Content-Type", "Content-Length", "Warning", "WWW-Authenticate"],
            allow_credentials=not wildcard, max_age=600))
    middleware.append(Middleware(AuthMiddleware, authenticator=Authenticator(config),
                                 prefix=config.base_path,
                                 on_refused=_audit_refusal(ops) if ops.auditing else None))
    return Starlette(
        routes=[*api.routes(), *ops_routes(ops), *viewer_routes_if_present()],
        middleware=middleware,
        exception_handlers={WebError: _web_error, HTTPException: _http_error,
                            FrameError: _frame_error, Exception: _internal_error})


def _audit_refusal(ops: WebOps):
    """AuthMiddleware's hook: a 401 is a failed login (110114, outcome 4)."""
    def refused(scope, claimed: str, had_credentials: bool) -> None:
        client = scope.get("client")
        ops.emit("security", a.USER_AUTHENTICATION, "E", a.MINOR_FAILURE,
                 [a.participant(claimed or "unknown", True, None, client[0] if client else ""),
                  a.participant(ops.ae_title, False, None, "")],
                 type_code=a.LOGIN,
                 description=f"DICOMweb 401 on {scope.get('method', '')} "
                             f"{scope.get('path', '')[:200]}: "
                             + ("invalid credentials" if had_credentials
                                else "no credentials"))
    return refused


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the engine's stop the whole server."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class WebServer:
    """uvicorn serving the app as a task of the running loop."""

    def __init__(self, app, config: WebConfig) -> None:
        self.app = app
        self.config = config
        self.port: int | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> int:
        """Bind, start serving, return the bound port (OSError when the port is taken)."""
        host = self.config.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self.config.port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._socket = sock
        self.port = sock.getsockname()[1]
        uv_config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", proxy_headers=False,
            server_header=False, timeout_graceful_shutdown=SHUTDOWN_GRACE,
            timeout_keep_alive=15, h11_max_incomplete_event_size=64 * 1024)
        self._server = _EmbeddedServer(uv_config)
        self._task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError("DICOMweb server stopped while starting")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), SHUTDOWN_GRACE + 5)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - stopping regardless
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            log.warning("DICOMweb server did not stop in time; cancelled")
        if self._socket is not None:
            self._socket.close()
        self._server = None
