"""One frozen, typed configuration object, loaded from TOML.

`load_config()` is the only place that reads the file; everything else gets the
`Config` passed down explicitly (no module globals).  Every option is described
in pacs.example.toml, which a test loads so the two cannot drift apart.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from engine.errors import EngineError
from engine.routing.destinations import Destination, parse_destinations
from engine.routing.rules import Rule, parse_rules
from engine.routing.schema import RoutingConfigError


class ConfigError(EngineError):
    """The configuration file or a command-line override is invalid."""


@dataclass(frozen=True)
class NetworkConfig:
    """The DICOM listener and its protection limits."""

    ae_title: str = "PACS"
    host: str = "0.0.0.0"
    port: int = 11112
    #: Largest PDU we accept (offered as Maximum Length in A-ASSOCIATE-AC).
    max_pdu_length: int = 1 << 20
    #: Largest A-ASSOCIATE-RQ accepted before association (a peer cannot make us buffer more).
    max_associate_rq_length: int = 64 * 1024
    max_associations: int = 64
    max_associations_per_ip: int = 32
    #: Seconds to wait for A-ASSOCIATE-RQ after connect, and for close after A-RELEASE/A-ABORT.
    artim_timeout: float = 10.0
    #: Seconds an established association may stay silent before it is aborted.
    idle_timeout: float = 120.0
    #: Seconds a started DIMSE message may take to arrive completely.
    dimse_timeout: float = 300.0
    #: If non-empty, only these calling AE titles may associate (reject 1/1/3 otherwise).
    allowed_calling_ae_titles: tuple[str, ...] = ()
    #: Reject associations whose called AE title is not ours (reject 1/1/7).
    require_called_ae_title: bool = False
    #: Event loop implementation: "uvloop" when installed, else "asyncio"; or force one.
    loop: str = "auto"


@dataclass(frozen=True)
class StorageConfig:
    """Where instances and the index live."""

    data_dir: Path = Path("pacs-data")
    #: LMDB map size in bytes; the index grows up to this (sparse file, not preallocated).
    index_map_size: int = 64 << 30
    #: What to do when different content arrives under an existing SOP Instance UID:
    #: "keep-first" (warning, second copy kept as a conflict), "replace" (warning, the new
    #: copy becomes current, the old one kept as a conflict) or "reject" (failure 0x0111).
    duplicate_policy: str = "keep-first"
    #: Up to this many index updates of concurrent associations share one LMDB commit.
    group_commit_max: int = 256
    #: Keep this many bytes free on the data volume; stores fail with 0xA700 below it.
    min_free_bytes: int = 256 << 20
    #: Threads that fsync and rename received files (several associations in parallel).
    io_threads: int = 4


@dataclass(frozen=True)
class QueryConfig:
    """C-FIND behaviour."""

    #: A C-FIND stops after this many matches and ends with status 0xA700 saying so.
    max_results: int = 10000
    #: Case- and accent-insensitive PN matching (off by default, as PS3.4 says).
    fuzzy_person_names: bool = False


@dataclass(frozen=True)
class RemoteAE:
    """Where a known AE title is reached, and whether over TLS."""

    host: str
    port: int
    tls: bool = False


def _remote_ae(ae_title: Any, value: Any, where: str) -> RemoteAE:
    """A destination given as "host:port", a {host, port, tls} table or a RemoteAE."""
    if not isinstance(ae_title, str) or not 1 <= len(ae_title.strip()) <= 16 or \
            "\\" in ae_title:
        raise ConfigError(f"{where}: bad AE title {ae_title!r}")
    if isinstance(value, RemoteAE):
        host, port, tls = value.host, value.port, value.tls
    elif isinstance(value, str):
        host, sep, port_text = value.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ConfigError(f"{where}.{ae_title} must be \"host:port\" or "
                              f"{{ host = ..., port = ..., tls = true }}, got {value!r}")
        port, tls = int(port_text), False
    elif isinstance(value, Mapping):
        unknown = set(value) - {"host", "port", "tls"}
        if unknown:
            raise ConfigError(f"{where}.{ae_title}: unknown option(s) "
                              f"{', '.join(sorted(unknown))} (allowed: host, port, tls)")
        host, port, tls = value.get("host"), value.get("port"), value.get("tls", False)
        if not isinstance(port, int) or isinstance(port, bool) or not isinstance(tls, bool):
            raise ConfigError(f"{where}.{ae_title}: port must be an integer and tls "
                              f"true/false, got {value!r}")
    else:
        raise ConfigError(f"{where}.{ae_title} must be \"host:port\" or a table, got {value!r}")
    if not isinstance(host, str) or not host.strip() or not 0 < port < 65536:
        raise ConfigError(f"{where}.{ae_title}: needs a host and a port 1-65535, got {value!r}")
    return RemoteAE(host.strip(), port, tls)


@dataclass(frozen=True)
class RetrieveConfig:
    """C-MOVE destinations and the associations we open to send instances."""

    #: Known AE titles → where they are: C-MOVE destinations (the only ones: a C-MOVE
    #: never goes to an address the requester names), storage-commitment report targets.
    #: Given as "host:port" or {host, port, tls}; held as RemoteAE.
    destinations: Mapping[str, RemoteAE] = field(default_factory=dict)
    #: Seconds to connect and to get an answer to A-ASSOCIATE-RQ / A-RELEASE-RQ.
    connect_timeout: float = 10.0
    #: Seconds a peer may take to answer one C-STORE sub-operation (or report).
    response_timeout: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "destinations", {
            ae.strip() if isinstance(ae, str) else ae:
            _remote_ae(ae, value, "[retrieve] destinations")
            for ae, value in self.destinations.items()})

    def destination(self, ae_title: str) -> RemoteAE | None:
        """Where a known AE title is, or None."""
        return self.destinations.get(ae_title.strip())


@dataclass(frozen=True)
class CodecConfig:
    """Worker processes that decode and encode pixel data (transcoding, compression)."""

    #: Worker processes; 0 means one per CPU core.
    workers: int = 0
    #: Seconds one instance may take; a worker over it is killed (corrupt streams can hang).
    task_timeout: float = 120.0
    #: Address-space limit of a worker in bytes (0 = none).
    memory_limit: int = 8 << 30


@dataclass(frozen=True)
class CompressionConfig:
    """The background stage that stores uncompressed images as JPEG 2000 Lossless."""

    enabled: bool = False
    #: Only instances of these modalities / SOP classes (empty: every image).
    modalities: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()
    #: Instances smaller than this many bytes stay as they are.
    min_size: int = 64 * 1024
    #: Seconds after receipt before an instance is compressed.
    delay: float = 0.0
    #: Local time window "HH:MM-HH:MM" in which the stage runs (may wrap midnight; "" = always).
    window: str = ""
    #: Instances waiting in the durable queue at most (the sweep refills it as it drains).
    queue_limit: int = 10000
    #: Seconds between sweeps of the index for new candidates once it found none.
    sweep_interval: float = 30.0


@dataclass(frozen=True)
class RoutingConfig:
    """The router: rules, destinations, and the retry policy of the forward queue.

    Rules and destinations are parsed and checked by engine/routing at load (a bad
    rule fails naming the rule and the field); no rules means routing is off.
    """

    #: [[routing.rules]] in order (engine/routing/rules.py).
    rules: tuple[Rule, ...] = ()
    #: [routing.destinations.NAME] by name (engine/routing/destinations.py).
    destinations: Mapping[str, Destination] = field(default_factory=dict)
    #: A forward is dead-lettered after this many failed attempts of its instance ...
    max_attempts: int = 10
    #: ... or once it is this many seconds old (the only limit while a destination is down).
    max_age: float = 72 * 3600.0
    #: Retry delay: capped exponential backoff with jitter, base and cap in seconds.
    backoff_base: float = 5.0
    backoff_max: float = 600.0
    #: Seconds an idle association to a destination is kept open for the next instances.
    association_linger: float = 5.0
    #: Store-and-forward: seconds an instance stays after all its forwards are delivered
    #: (0 = kept forever: archive mode).
    retention: float = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.rules)


@dataclass(frozen=True)
class TLSConfig:
    """DICOM TLS (engine/net/tls.py): the TLS listener, and our side of outgoing TLS."""

    #: TCP port of the TLS listener, beside the plain one; 0 = none (DICOM TLS: 2762).
    port: int = 0
    #: Also listen without TLS on [network] port; false = TLS only.
    plain_listener: bool = True
    #: Our certificate (PEM, chain allowed) and its unencrypted private key (PEM).
    certificate: str = ""
    key: str = ""
    #: CA certificates (PEM) that peers' certificates must chain to, both directions.
    ca_file: str = ""
    #: Refuse TLS clients without a valid certificate; when false, one presented is verified.
    require_client_certificate: bool = True
    #: Seconds a TLS handshake may take before the connection is dropped.
    handshake_timeout: float = 10.0
    #: Oldest protocol version accepted and offered: "1.2" or "1.3".
    min_version: str = "1.2"
    #: Outgoing: the peer's certificate must name the host we connect to.
    check_hostname: bool = True


@dataclass(frozen=True)
class PeerConfig:
    """One known peer: a calling AE title and what must be true of its connections."""

    ae_title: str
    #: Source addresses or networks ("10.0.0.5", "10.1.0.0/16"); empty = any.
    addresses: tuple[str, ...] = ()
    #: Subject CN the (verified) TLS client certificate must have; "" = not checked.
    certificate_cn: str = ""
    #: SHA-256 fingerprint of the client certificate, lowercase hex; "" = not checked.
    certificate_sha256: str = ""


@dataclass(frozen=True)
class SecurityConfig:
    """The known-peer table (engine/net/peers.py)."""

    #: Refuse calling AE titles not in `peers` (or [network] allowed_calling_ae_titles).
    deny_unknown: bool = False
    #: [[security.peers]]; a listed AE title must meet its entry, whatever deny_unknown says.
    peers: tuple[PeerConfig, ...] = ()


@dataclass(frozen=True)
class WebConfig:
    """The DICOMweb API (engine/web, PS3.18): QIDO-RS, WADO-RS, STOW-RS over HTTP."""

    enabled: bool = True
    #: Listen address; loopback by default. Any other address needs authentication.
    host: str = "127.0.0.1"
    #: TCP port (0 = any free port, reported at start-up).
    port: int = 8042
    #: URL prefix of the DICOMweb resources (/studies, /series, /instances).
    base_path: str = "/dicomweb"
    #: Largest STOW-RS request body in bytes (larger: 413, the upload is cut off).
    max_upload_bytes: int = 4 << 30
    #: "none" (loopback hosts only), "token" (Authorization: Bearer) or "basic".
    authentication: str = "none"
    #: SHA-256 (hex) of each accepted bearer token; the tokens themselves are not stored.
    token_sha256: tuple[str, ...] = ()
    #: Basic authentication: the user name and its password hash (python -m
    #: engine.web.auth prints one: "pbkdf2_sha256$iterations$salt$hash").
    user: str = ""
    password_hash: str = ""
    #: Origins allowed to call the API from a browser (CORS), e.g. an OHIF viewer's
    #: "https://viewer.example.org"; "*" allows any origin (without credentials).
    cors_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    #: "text" (one line per message) or "json" (JSON lines on stderr: timestamp, level,
    #: logger, message, association id when the message names one).
    format: str = "text"


@dataclass(frozen=True)
class AuditConfig:
    """The audit trail (engine/ops/audit*.py): one JSON line per audited event."""

    enabled: bool = True
    #: Directory of the daily files audit-YYYYMMDD.jsonl ("" = <data_dir>/audit), or one
    #: file when the path ends in .jsonl (for an external logrotate).
    path: str = ""
    #: Also send each record to syslog: "udp://host:514", "tcp://host:601", "host:port"
    #: (UDP) or a local socket path such as "/dev/log"; "" = not sent.
    syslog: str = ""
    #: fsync the audit file after each batch of records (at most one batch a second).
    fsync: bool = False


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus /metrics (engine/ops/metrics.py) and /health."""

    enabled: bool = True
    #: With [web] disabled: serve /metrics and /health on this port (0 = not served).
    #: With [web] enabled they are on the web server and this is not used.
    port: int = 0
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class Config:
    """Everything the server needs, immutable once loaded."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    web: WebConfig = field(default_factory=WebConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def with_overrides(self, **sections: Mapping[str, Any]) -> "Config":
        """Return a copy with some fields of some sections replaced (CLI flags)."""
        changes = {}
        for name, values in sections.items():
            values = {k: v for k, v in values.items() if v is not None}
            if values:
                changes[name] = _build(type(getattr(self, name)), {
                    **dataclasses.asdict(getattr(self, name)), **values}, name)
        config = dataclasses.replace(self, **changes)
        _check_together(config)
        return config


_DUPLICATE_POLICIES = {"keep-first", "replace", "reject"}


def _build(cls: type, raw: Mapping[str, Any], section: str) -> Any:
    """Build one section dataclass from a mapping, checking names and types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(f"[{section}]: unknown option(s) {', '.join(sorted(unknown))}")
    kwargs = {}
    if cls is RoutingConfig:
        kwargs.update(_routing_tables(raw, section))
        raw = {k: v for k, v in raw.items() if k not in kwargs}
    if cls is RetrieveConfig and "destinations" in raw:
        destinations = raw["destinations"]
        if not isinstance(destinations, Mapping):
            raise ConfigError(f"{section}.destinations: expected a table, got {destinations!r}")
        kwargs["destinations"] = {ae: _remote_ae(ae, value, f"[{section}] destinations")
                                  for ae, value in destinations.items()}
        raw = {k: v for k, v in raw.items() if k != "destinations"}
    if cls is SecurityConfig and "peers" in raw:
        kwargs["peers"] = _peers(raw["peers"], f"{section}.peers")
        raw = {k: v for k, v in raw.items() if k != "peers"}
    for name, value in raw.items():
        default = getattr(cls(), name)
        kwargs[name] = _coerce(value, default, f"{section}.{name}")
    obj = cls(**kwargs)
    _validate(obj, section)
    return obj


def _routing_tables(raw: Mapping[str, Any], section: str) -> dict[str, Any]:
    """The nested parts of [routing] (rules, destinations), parsed by engine/routing."""
    try:
        destinations = parse_destinations(raw.get("destinations", {}))
        rules = parse_rules(raw.get("rules", []), destinations)
    except RoutingConfigError as exc:
        raise ConfigError(f"[{section}] {exc}") from exc
    return {"destinations": destinations, "rules": rules}


_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def _peers(raw: Any, where: str) -> tuple[PeerConfig, ...]:
    """[[security.peers]] as PeerConfig entries: AE titles unique, addresses and
    fingerprints checked (a fingerprint may be written with colons, in any case)."""
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"{where}: expected an array of tables, got {raw!r}")
    peers, seen = [], set()
    names = {f.name for f in dataclasses.fields(PeerConfig)}
    for i, entry in enumerate(raw):
        here = f"{where}[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{here}: expected a table, got {entry!r}")
        unknown = set(entry) - names
        if unknown:
            raise ConfigError(f"{here}: unknown option(s) {', '.join(sorted(unknown))}")
        ae_title = entry.get("ae_title")
        if not isinstance(ae_title, str) or not 1 <= len(ae_title.strip()) <= 16 or \
                "\\" in ae_title or not all(" " <= c <= "~" for c in ae_title):
            raise ConfigError(f"{here}.ae_title: 1-16 printable ASCII characters without "
                              f"backslash, got {ae_title!r}")
        ae_title = ae_title.strip()
        if ae_title in seen:
            raise ConfigError(f"{here}.ae_title: {ae_title!r} is listed twice (one entry per "
                              "AE title; list several addresses in it)")
        seen.add(ae_title)
        addresses = _coerce(entry.get("addresses", []), (), f"{here}.addresses")
        for address in addresses:
            try:
                ipaddress.ip_network(address.strip(), strict=False)
            except ValueError:
                raise ConfigError(f"{here}.addresses: not an IP address or network: "
                                  f"{address!r}") from None
        cn = _coerce(entry.get("certificate_cn", ""), "", f"{here}.certificate_cn").strip()
        sha256 = _coerce(entry.get("certificate_sha256", ""), "", f"{here}.certificate_sha256")
        sha256 = sha256.replace(":", "").strip().lower()
        if sha256 and not _FINGERPRINT.fullmatch(sha256):
            raise ConfigError(f"{here}.certificate_sha256: expected 64 hex digits (colons "
                              "allowed)")
        peers.append(PeerConfig(ae_title, tuple(a.strip() for a in addresses), cn, sha256))
    return tuple(peers)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, Path):
        if not isinstance(value, (str, Path)) or not str(value):
            raise ConfigError(f"{where}: expected a path (string), got {value!r}")
        return Path(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    if isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, Mapping):
        if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ConfigError(f"{where}: expected a table of strings, got {value!r}")
        return dict(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _validate(obj: Any, section: str) -> None:
    if isinstance(obj, NetworkConfig):
        if not 1 <= len(obj.ae_title.strip()) <= 16 or "\\" in obj.ae_title or \
                not all(" " <= c <= "~" for c in obj.ae_title):
            raise ConfigError(f"[{section}] ae_title must be 1-16 printable ASCII characters "
                              "without backslash")
        if not 0 <= obj.port <= 65535:
            raise ConfigError(f"[{section}] port out of range: {obj.port}")
        if obj.max_pdu_length < 4096:
            raise ConfigError(f"[{section}] max_pdu_length must be at least 4096")
        if obj.loop not in {"auto", "uvloop", "asyncio"}:
            raise ConfigError(f"[{section}] loop must be auto, uvloop or asyncio")
        for name in ("artim_timeout", "idle_timeout", "dimse_timeout", "max_associations",
                     "max_associations_per_ip"):
            if getattr(obj, name) <= 0:
                raise ConfigError(f"[{section}] {name} must be positive")
        if obj.max_associate_rq_length < 1024:
            raise ConfigError(f"[{section}] max_associate_rq_length must be at least 1024")
    if isinstance(obj, StorageConfig):
        if obj.duplicate_policy not in _DUPLICATE_POLICIES:
            raise ConfigError(
                f"[{section}] duplicate_policy must be one of {sorted(_DUPLICATE_POLICIES)}")
        if obj.group_commit_max < 1 or obj.io_threads < 1:
            raise ConfigError(f"[{section}] group_commit_max and io_threads must be >= 1")
        if obj.index_map_size < 1 << 20:
            raise ConfigError(f"[{section}] index_map_size must be at least 1 MiB")
        if obj.min_free_bytes < 0:
            raise ConfigError(f"[{section}] min_free_bytes must not be negative")
    if isinstance(obj, RetrieveConfig):
        if obj.connect_timeout <= 0 or obj.response_timeout <= 0:
            raise ConfigError(f"[{section}] timeouts must be positive")
    if isinstance(obj, CodecConfig):
        if obj.workers < 0 or obj.task_timeout <= 0 or obj.memory_limit < 0:
            raise ConfigError(f"[{section}] workers and memory_limit must be >= 0, "
                              "task_timeout positive")
    if isinstance(obj, CompressionConfig):
        if obj.min_size < 0 or obj.delay < 0 or obj.queue_limit < 1 or obj.sweep_interval <= 0:
            raise ConfigError(f"[{section}] min_size and delay must be >= 0, queue_limit >= 1, "
                              "sweep_interval positive")
        if obj.window and parse_window(obj.window) is None:
            raise ConfigError(f"[{section}] window must look like \"22:00-06:00\"")
    if isinstance(obj, RoutingConfig):
        if obj.max_attempts < 1 or obj.max_age <= 0:
            raise ConfigError(f"[{section}] max_attempts must be >= 1, max_age positive")
        if not 0 < obj.backoff_base <= obj.backoff_max:
            raise ConfigError(f"[{section}] backoff_base must be positive and at most "
                              "backoff_max")
        if obj.retention < 0 or obj.association_linger < 0:
            raise ConfigError(f"[{section}] retention and association_linger must not be "
                              "negative")
    if isinstance(obj, TLSConfig):
        if not 0 <= obj.port <= 65535:
            raise ConfigError(f"[{section}] port out of range: {obj.port}")
        if obj.handshake_timeout <= 0:
            raise ConfigError(f"[{section}] handshake_timeout must be positive")
        if obj.min_version not in {"1.2", "1.3"}:
            raise ConfigError(f"[{section}] min_version must be \"1.2\" or \"1.3\" (BCP 195: "
                              "nothing older than TLS 1.2)")
        if bool(obj.certificate) != bool(obj.key):
            raise ConfigError(f"[{section}] certificate and key go together")
        if obj.port and not obj.certificate:
            raise ConfigError(f"[{section}] a TLS listener (port) needs certificate and key")
        if obj.port and obj.require_client_certificate and not obj.ca_file:
            raise ConfigError(f"[{section}] require_client_certificate needs ca_file (the CA "
                              "that client certificates must chain to)")
        if not obj.plain_listener and not obj.port:
            raise ConfigError(f"[{section}] plain_listener = false needs a TLS port")
    if isinstance(obj, WebConfig):
        _validate_web(obj, section)
    if isinstance(obj, QueryConfig) and obj.max_results < 1:
        raise ConfigError(f"[{section}] max_results must be >= 1")
    if isinstance(obj, LoggingConfig):
        if obj.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(f"[{section}] level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        if obj.format not in {"text", "json"}:
            raise ConfigError(f"[{section}] format must be \"text\" or \"json\"")
    if isinstance(obj, AuditConfig) and obj.syslog and parse_syslog_address(obj.syslog) is None:
        raise ConfigError(f"[{section}] syslog must be \"udp://host:port\", \"tcp://host:port\", "
                          f"\"host:port\" or a socket path like \"/dev/log\", got {obj.syslog!r}")
    if isinstance(obj, MetricsConfig):
        if not 0 <= obj.port <= 65535:
            raise ConfigError(f"[{section}] port out of range: {obj.port}")
        if not obj.host.strip():
            raise ConfigError(f"[{section}] host must not be empty")


_PASSWORD_HASH = re.compile(r"pbkdf2_sha256\$[1-9][0-9]*\$[0-9a-f]{16,}\$[0-9a-f]{64}")
_WEB_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)*")


def is_loopback_host(host: str) -> bool:
    """Whether `host` names only this machine (a socket there is not reachable from others)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


def _validate_web(obj: "WebConfig", section: str) -> None:
    if not 0 <= obj.port <= 65535:
        raise ConfigError(f"[{section}] port out of range: {obj.port}")
    if not obj.host.strip():
        raise ConfigError(f"[{section}] host must not be empty")
    if not _WEB_PATH.fullmatch(obj.base_path) or obj.base_path.endswith("/"):
        raise ConfigError(f"[{section}] base_path must look like \"/dicomweb\" (or \"\" for "
                          "the root), got {obj.base_path!r}")
    if obj.max_upload_bytes < 1024:
        raise ConfigError(f"[{section}] max_upload_bytes must be at least 1024")
    if obj.authentication not in {"none", "token", "basic"}:
        raise ConfigError(f"[{section}] authentication must be \"none\", \"token\" or \"basic\"")
    if obj.authentication == "token":
        if not obj.token_sha256 or not all(_FINGERPRINT.fullmatch(t) for t in obj.token_sha256):
            raise ConfigError(f"[{section}] authentication = \"token\" needs token_sha256: the "
                              "SHA-256 of each token, 64 lowercase hex digits")
    if obj.authentication == "basic":
        if not obj.user or ":" in obj.user or not _PASSWORD_HASH.fullmatch(obj.password_hash):
            raise ConfigError(f"[{section}] authentication = \"basic\" needs user (without ':') "
                              "and password_hash (python -m engine.web.auth prints one)")
    if obj.enabled and obj.authentication == "none" and not is_loopback_host(obj.host):
        raise ConfigError(f"[{section}] host {obj.host!r} is not a loopback address: the "
                          "DICOMweb API would be open to the network without authentication "
                          "(set authentication = \"token\" or \"basic\", or host = \"127.0.0.1\")")


def parse_syslog_address(text: str) -> tuple[str, object] | None:
    """ "udp://h:p", "tcp://h:p", "h:p" (UDP) or "/socket/path" as (transport, address)."""
    text = text.strip()
    if text.startswith("/"):
        return "unix", text
    transport, sep, rest = text.partition("://")
    if not sep:
        transport, rest = "udp", text
    if transport not in ("udp", "tcp"):
        return None
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return transport, (host.strip("[]"), int(port))


def parse_window(text: str) -> tuple[int, int] | None:
    """ "HH:MM-HH:MM" as (start, end) minutes after midnight, or None if malformed."""
    try:
        start, end = (part.strip() for part in text.split("-"))
        minutes = []
        for part in (start, end):
            hours, mins = part.split(":")
            if not (0 <= int(hours) <= 23 and 0 <= int(mins) <= 59):
                return None
            minutes.append(int(hours) * 60 + int(mins))
    except ValueError:
        return None
    return minutes[0], minutes[1]


def _check_together(config: Config) -> None:
    """Rules that span sections: ports, and TLS asked for somewhere but not configured."""
    tls = config.tls
    if tls.port and tls.plain_listener and tls.port == config.network.port:
        raise ConfigError(f"[tls] port {tls.port} is also [network] port")
    wanting = [f"[retrieve] destinations.{ae}" for ae, remote in
               config.retrieve.destinations.items() if remote.tls]
    wanting += [f"[routing.destinations.{name}]" for name, destination in
                config.routing.destinations.items() if getattr(destination, "tls", False)]
    if wanting and not tls.ca_file:
        raise ConfigError(f"{wanting[0]} says tls = true: [tls] needs ca_file (the CA that "
                          "the peer's certificate must chain to)")
    bound = [p.ae_title for p in config.security.peers
             if p.certificate_cn or p.certificate_sha256]
    if bound and not (tls.port and tls.ca_file):
        raise ConfigError(f"[security] peer {bound[0]!r} is bound to a client certificate: "
                          "[tls] needs port and ca_file to verify one")


def config_from_mapping(raw: Mapping[str, Any]) -> Config:
    """Build a Config from a parsed TOML document (sections network/storage/logging)."""
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    unknown = set(raw) - set(sections)
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(sorted(unknown))}")
    built = {}
    for f in dataclasses.fields(Config):
        section = raw.get(f.name, {})
        if not isinstance(section, Mapping):
            raise ConfigError(f"[{f.name}] must be a table")
        built[f.name] = _build(type(getattr(Config(), f.name)), section, f.name)
    config = Config(**built)
    _check_together(config)
    return config


def load_config(path: str | Path | None = None) -> Config:
    """Load the TOML file at `path`, or the built-in defaults when `path` is None."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return config_from_mapping(raw)
