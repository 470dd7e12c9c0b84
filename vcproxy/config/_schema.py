"""The vcproxy config tree: every key, its type, its default and its meaning.

This file is the one place defaults are documented; ``vcproxy config-reference``
prints it as a table and ``config/example-full.yaml`` shows every key. All
classes are frozen: a worker swaps a whole new tree on SIGHUP, it never
mutates one that open connections still read.

Theory of operation. Each section is one frozen dataclass whose fields are
declared with ``opt(default, meaning)`` / ``req(meaning)`` (``_load``): the
loader walks the YAML mapping against these fields (unknown keys and wrong
types are errors naming their path), then every class's ``check()`` returns
``(path, message)`` problems for what types cannot say (ranges, references
between sections, port collisions via ``_binds``). Files are not read here:
certificates and keys are checked by ``vcproxy.proxy.check_files``. The module
stays one file (~600 lines) so that the whole config reference, which
``vcproxy config-reference`` prints from it, reads top to bottom in one place.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Mapping

from ._binds import Bind, port_collisions
from vcrypto import DEFAULT_SOCKET_MODE, SocketAccessError, parse_socket_mode, resolve_socket_group

from ._load import _Invalid, _type_name, opt, req

SECONDS = 1.0
KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class ServerAddress:
    """``host:port`` (``[::1]:8080`` for IPv6) of one upstream server."""

    host: str
    port: int
    min_port = 1

    @classmethod
    def from_yaml(cls, value: object, path: str) -> "ServerAddress":
        if not isinstance(value, str):
            raise _Invalid(f"expected 'host:port' string, got {_type_name(value)}")
        host, sep, port_text = value.rpartition(":")
        if not sep or not host or not port_text.isdigit():
            raise _Invalid(f"expected 'host:port', got {value!r}")
        port = int(port_text)
        if not cls.min_port <= port <= 65535:
            raise _Invalid(f"port must be {cls.min_port}..65535, got {port}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(host, port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class BindAddress(ServerAddress):
    """``host:port`` to listen on; port 0 picks a free one."""

    min_port = 0


@dataclass(frozen=True)
class Network:
    """An IP network in CIDR notation: ``10.0.0.0/8``, ``2001:db8::/32``; a bare
    address is a one-address network."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network

    @classmethod
    def from_yaml(cls, value: object, path: str) -> "Network":
        if not isinstance(value, str):
            raise _Invalid(f"expected a CIDR string like '10.0.0.0/8', got {_type_name(value)}")
        try:
            return cls(ipaddress.ip_network(value.strip(), strict=True))
        except ValueError as exc:  # "192.0.2.1/24 has host bits set", "... does not appear to be ..."
            raise _Invalid(f"expected a CIDR like '10.0.0.0/8': {exc}") from exc

    def __str__(self) -> str:
        return str(self.network)


def _check_port(port: int, name: str = "port", allow_zero: bool = True) -> list[tuple[str, str]]:
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        return [(name, f"must be {low}..65535, got {port}")]
    return []


def _check_positive(obj: object, *names: str) -> list[tuple[str, str]]:
    out = []
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            out.append((name, f"must be > 0, got {value}"))
    return out


def _check_address(address: str) -> list[tuple[str, str]]:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return [("address", f"expected an IP address, got {address!r}")]
    return []


@dataclass(frozen=True)
class CertificateConfig:
    cert: str = req("PEM file with the certificate chain, leaf first", path=True)
    key: str | None = opt(None, "PEM file with the private key (unencrypted); exactly one of key / key_ref",
                          path=True)
    key_ref: str | None = opt(None, "keyless: the name of a private key vcrypto-host holds (NAME.pem or NAME.der "
                                    "in vcrypto.keys_dir); the workers never read the key. Needs crypto.provider: vcrypto")
    names: tuple[str, ...] | None = opt(None, "SNI names served by this certificate (default: the certificate's SANs)")

    def check(self) -> list[tuple[str, str]]:
        if (self.key is None) == (self.key_ref is None):
            return [("key", "required: give exactly one of key (a PEM file) or key_ref (a key vcrypto-host holds)")]
        return []


@dataclass(frozen=True)
class TicketsConfig:
    enabled: bool = opt(True, "issue session tickets (TLS 1.3 PSK and TLS 1.2 RFC 5077 resumption)")
    lifetime_s: int = opt(7200, "ticket lifetime announced to clients, seconds (at most 604800: 7 days)")

    def check(self) -> list[tuple[str, str]]:
        # RFC 8446 §4.6.1: "Servers MUST NOT use any value greater than 604800 seconds (7 days)."
        if not 1 <= self.lifetime_s <= 604800:
            return [("lifetime_s", f"must be 1..604800 (7 days, RFC 8446 4.6.1), got {self.lifetime_s}")]
        return []


@dataclass(frozen=True)
class TLSConfig:
    enabled: bool = opt(True, "terminate TLS on this listener (false: plain TCP, for tests and local use)")
    certificates: tuple[CertificateConfig, ...] = opt((), "certificates; the first is the default when SNI matches none")
    alpn: tuple[str, ...] | None = opt(
        None, "ALPN protocols offered, in preference order: h2 and/or http/1.1 on an http listener, "
              "http/1.1 on a tcp one (default: [h2, http/1.1] on http listeners, [http/1.1] on tcp listeners)")
    versions: tuple[Literal["1.3", "1.2"], ...] = opt(("1.2", "1.3"), "TLS versions served (SSL 3.0 and TLS 1.0/1.1 are never negotiated, RFC 8996)")
    min_version: Literal["1.2", "1.3"] | None = opt(None, "lowest TLS version served (drops lower ones from `versions`)")
    require_extended_master_secret: bool = opt(True, "TLS 1.2: refuse clients without extended_master_secret (RFC 7627) with handshake_failure")
    cipher_suites: tuple[str, ...] | None = opt(None, "cipher suites by IANA name, TLS 1.3 and 1.2 together, in preference order (default: the TLS stack's: every AEAD suite)")
    groups: tuple[str, ...] | None = opt(None, "key exchange groups in preference order: X25519MLKEM768, SecP256r1MLKEM768 (post-quantum hybrids, TLS 1.3 only), x25519, secp256r1, secp384r1 (default: all of them, in that order)")
    tickets: TicketsConfig = opt(TicketsConfig(), "session tickets")

    def check(self) -> list[tuple[str, str]]:
        if self.enabled and not self.certificates:
            return [("certificates", "at least one certificate is required when TLS is enabled")]
        if not self.versions:
            return [("versions", "at least one TLS version is required")]
        return []


@dataclass(frozen=True)
class ListenerConfig:
    port: int = req("TCP port; 0 picks a free one (logged at start)")
    name: str | None = opt(None, "name used in logs and metrics labels (default: listener<index>)")
    address: str = opt("127.0.0.1", "IP address to bind")
    mode: Literal["http", "tcp"] = opt("http", "http: HTTP/1.1 and HTTP/2 reverse proxy; tcp: pump bytes to `upstream` after TLS")
    upstream: str | None = opt(None, "tcp mode: the upstream that receives the decrypted byte stream")
    tls: TLSConfig = opt(TLSConfig(), "TLS termination")
    proxy_protocol: bool = opt(
        False, "require a PROXY protocol v1 or v2 header (HAProxy's) before TLS on every connection, from a "
               "peer in `trusted_proxies` only (others are closed unanswered); the client address it names is "
               "the one the access log and X-Forwarded-For show")
    trusted_proxies: tuple[Network, ...] = opt(
        (), "CIDRs of the load balancers / proxies in front of this listener: PROXY headers are accepted only "
            "from them, and a request from them keeps its X-Forwarded-For / Forwarded (we append) and its "
            "X-Request-Id; from anyone else those headers are replaced (a new request id is made)")
    forwarded: bool = opt(False, "also send RFC 7239 `Forwarded: for=...;proto=...;host=...` upstream")
    via: str | None = opt(None, "a pseudonym (token) for this proxy: `Via: 1.1 <via>` is appended on requests "
                                "and responses; null: no Via")
    echo_request_id: bool = opt(False, "also send the request's X-Request-Id (the one sent upstream and "
                                       "logged) back on its response")

    def check(self) -> list[tuple[str, str]]:
        out = _check_port(self.port) + _check_address(self.address)
        if self.mode == "tcp" and self.upstream is None:
            out.append(("upstream", "required when mode is tcp"))
        out += _check_alpn(self.mode, self.tls.alpn)
        if self.via is not None and not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", self.via):
            out.append(("via", f"must be a token (RFC 9110 received-by pseudonym), got {self.via!r}"))
        if self.proxy_protocol and not self.trusted_proxies:
            out.append(("trusted_proxies", "required when proxy_protocol is true: the PROXY header is "
                                           "accepted only from these networks"))
        return out

    def alpn(self) -> tuple[str, ...]:
        """The ALPN protocols this listener offers (``tls.alpn`` or the mode's default)."""
        if self.tls.alpn is not None:
            return self.tls.alpn
        return ALPN_SERVED[self.mode]


#: What each listener mode can serve after ALPN, preference order (also the
#: default offer). A tcp listener pumps bytes to an upstream whose protocol
#: vcproxy does not speak for it: offering h2 there would let clients pick
#: HTTP/2 without anything that terminates it.
ALPN_SERVED: Mapping[str, tuple[str, ...]] = MappingProxyType({"http": ("h2", "http/1.1"), "tcp": ("http/1.1",)})


def _check_alpn(mode: str, alpn: tuple[str, ...] | None) -> list[tuple[str, str]]:
    if alpn is None:
        return []
    served = ALPN_SERVED[mode]
    out = []
    for i, proto in enumerate(alpn):
        if proto not in served:
            out.append((f"tls.alpn[{i}]", f"a listener in mode {mode} cannot serve {proto!r} "
                                          f"(it serves: {', '.join(served)})"))
    if len(set(alpn)) != len(alpn):
        out.append(("tls.alpn", "lists a protocol twice"))
    return out


@dataclass(frozen=True)
class RouteConfig:
    upstream: str = req("name of the upstream that serves matching requests")
    host: str | None = opt(None, "Host header to match, without port; '*.example.com' matches subdomains; null matches all")
    path_prefix: str = opt("/", "request path prefix to match; the longest matching prefix wins")

    def check(self) -> list[tuple[str, str]]:
        if not self.path_prefix.startswith("/"):
            return [("path_prefix", f"must start with '/', got {self.path_prefix!r}")]
        return []


@dataclass(frozen=True)
class HealthCheckConfig:
    enabled: bool = opt(False, "probe servers actively; unhealthy ones get no new requests while another is healthy")
    interval_s: float = opt(5 * SECONDS, "time between probes")
    timeout_s: float = opt(2 * SECONDS, "probe timeout")
    path: str | None = opt(None, "HTTP path to GET (2xx/3xx is healthy); null: a TCP connect is the probe")
    unhealthy_after: int = opt(2, "consecutive failures that mark a server unhealthy")
    healthy_after: int = opt(1, "consecutive successes that mark it healthy again")

    def check(self) -> list[tuple[str, str]]:
        return _check_positive(self, "interval_s", "timeout_s", "unhealthy_after", "healthy_after")


@dataclass(frozen=True)
class UpstreamConfig:
    servers: tuple[ServerAddress, ...] = req("servers as 'host:port', used round-robin")
    connect_timeout_s: float = opt(5 * SECONDS, "TCP connect timeout (then 502 or the next server)")
    read_timeout_s: float = opt(60 * SECONDS, "wait for response headers / between body reads, and for the upstream to take each request write (then 504)")
    retries: int = opt(1, "extra servers tried when a connect fails (never after request bytes were sent)")
    max_idle_connections: int = opt(32, "idle keep-alive connections kept per server")
    idle_timeout_s: float = opt(30 * SECONDS, "idle keep-alive connections older than this are closed")
    health_check: HealthCheckConfig = opt(HealthCheckConfig(), "active health checking")
    send_proxy_protocol: Literal["v1", "v2"] | None = opt(
        None, "open every connection to these servers with a PROXY protocol header naming the client (v1 "
              "text, v2 binary; health probes send LOCAL / UNKNOWN); such connections carry one client's "
              "requests and are not kept for keep-alive reuse")

    def check(self) -> list[tuple[str, str]]:
        out = _check_positive(self, "connect_timeout_s", "read_timeout_s", "idle_timeout_s")
        if not self.servers:
            out.append(("servers", "at least one server is required"))
        if self.retries < 0:
            out.append(("retries", f"must be >= 0, got {self.retries}"))
        if self.max_idle_connections < 0:
            out.append(("max_idle_connections", f"must be >= 0, got {self.max_idle_connections}"))
        return out


@dataclass(frozen=True)
class CryptoConfig:
    provider: Literal["inline", "vcrypto"] = opt(
        "vcrypto", "vcrypto: offload through the engine (the supervisor starts its daemons); "
                   "inline: `cryptography` in the worker, the bare-metal baseline")
    small_record_threshold_bytes: int = opt(
        2048, "records whose content is smaller than this are sealed/opened in-process even with "
              "vcrypto; 16385 keeps every record in-process (only handshake crypto is offloaded)")
    pipeline_depth: int = opt(16, "records sealed/opened per batch (one opdone), 1..16")
    fallback: Literal["none", "startup", "per_op"] = opt(
        "per_op",
        "none: vcrypto failures fail the connection; startup: use inline if the engine is unreachable "
        "at start; per_op: also redo a failed op inline",
    )
    stall_timeout_s: float = opt(
        3 * SECONDS,
        "a vcrypto daemon that leaves a request outstanding this long, completing nothing "
        "meanwhile, is hung (SIGSTOP, deadlock): "
        "the engine-backend fails such a host; each worker's frontend detaches from such an "
        "engine-backend after twice this. Their requests are redone in-process, then offloaded "
        "again once the daemon answers. The default is ~4x the worst outstanding time measured "
        "under a full-slot RSA-2048 burst on 2 loaded cores (bench/engine_latency_tail.py); "
        "raise it for resources slower than that per request")
    key_share_pool: int = opt(
        32, "vcrypto: ECDHE key shares (X25519, P-256, P-384) each worker pre-generates per group, "
            "refilled in the background by offloaded keygens (one batch per half pool): a full "
            "handshake that takes one sends its key exchange and its signature to the engine "
            "together (one round trip instead of two); each share serves one handshake. 0: off; "
            "hybrids (X25519MLKEM768) never use it")
    key_share_lifetime_s: float = opt(
        30 * SECONDS, "an unused pre-generated key share is discarded this long after it was made "
                      "(forward secrecy: no ephemeral key outlives it waiting)")

    def check(self) -> list[tuple[str, str]]:
        out = _check_positive(self, "stall_timeout_s", "key_share_lifetime_s")
        if not 0 <= self.key_share_pool <= 1024:
            out.append(("key_share_pool", f"must be 0..1024, got {self.key_share_pool}"))
        if not 0 <= self.small_record_threshold_bytes <= 16385:
            out.append(("small_record_threshold_bytes",
                        f"must be 0..16385, got {self.small_record_threshold_bytes}"))
        if not 1 <= self.pipeline_depth <= 16:
            out.append(("pipeline_depth", f"must be 1..16, got {self.pipeline_depth}"))
        return out


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class SocketMode:
    """Permission bits of a unix socket file, in octal: ``"0660"`` (an unquoted
    ``0660`` is read by YAML as that octal number, and accepted too). The
    rules are vcrypto's (``vcrypto.parse_socket_mode``), not a copy."""

    bits: int

    @classmethod
    def from_yaml(cls, value: object, path: str) -> "SocketMode":
        try:
            return cls(parse_socket_mode(value))
        except SocketAccessError as exc:
            raise _Invalid(exc.message) from exc

    def __str__(self) -> str:
        return f"{self.bits:04o}"


@dataclass(frozen=True)
class HostPollConfig:
    mode: Literal["doorbell", "adaptive"] = opt(
        "adaptive", "vcrypto-host data-queue loop: adaptive busy-polls after a big drained batch "
                    "(see batch_threshold, spin_us), doorbell always parks on the kick eventfd")
    spin_us: float = opt(200.0, "adaptive: keep polling this long after the last work before parking")
    batch_threshold: int = opt(8, "adaptive: poll only after a drained batch of at least this many "
                                  "requests (a trickle never spins: idle CPU stays ~0)")
    coalesce_us: float = opt(0.0, "hold the completion call up to this long while the rest of the "
                                  "batch still runs (interrupt coalescing; 0: call at once)")

    def check(self) -> list[tuple[str, str]]:
        out = []
        for name in ("spin_us", "coalesce_us"):
            if getattr(self, name) < 0:
                out.append((name, f"must be >= 0, got {getattr(self, name)}"))
        if self.batch_threshold < 1:
            out.append(("batch_threshold", f"must be >= 1, got {self.batch_threshold}"))
        return out

    def host_yaml(self) -> dict:
        return {"mode": self.mode, "spin_us": float(self.spin_us),
                "batch_threshold": int(self.batch_threshold), "coalesce_us": float(self.coalesce_us)}


@dataclass(frozen=True)
class BackendPollConfig:
    budget_us: float = opt(
        50.0, "engine-backend loop: after a pass with work, keep polling this long (only while "
              ">= 8 requests are in flight at the host or the last pass drained >= 8) before "
              "sleeping on the doorbells; 0: always sleep")

    inflight_hold_us: float = opt(
        500.0, "engine-backend loop: while requests are in flight at the host, wait up to this long "
               "for its completion call without advertising sleep, so frontends ring no doorbell "
               "and their requests join the next batch; nothing in flight (idle, a lone request): "
               "a doorbell wakes it at once. 0: always advertise")

    def check(self) -> list[tuple[str, str]]:
        return [(name, f"must be >= 0, got {getattr(self, name)}")
                for name in ("budget_us", "inflight_hold_us") if getattr(self, name) < 0]


@dataclass(frozen=True)
class VcryptoConfig:
    manage: bool = opt(True, "the supervisor starts vcrypto-host and vcrypto-engine-backend when provider is vcrypto")
    runtime_dir: str | None = opt(None, "directory for sockets and shared memory (default: a fresh temp dir)",
                                  path=True)
    host_socket: str | None = opt(None, "vcrypto-host vhost-user socket (default: <runtime_dir>/host.sock)",
                                  path=True)
    backend_socket: str | None = opt(None, "engine-backend socket the workers' frontends attach to "
                                           "(default: <runtime_dir>/backend.sock)", path=True)
    socket_mode: SocketMode = opt(SocketMode(DEFAULT_SOCKET_MODE),
                                  "mode (octal) of the daemons' unix sockets (host and engine-backend), "
                                  "set before they listen: the workers' user needs write permission on "
                                  "backend_socket. Passed to the daemons the supervisor starts; with "
                                  "manage: false set the daemons' own (host.yaml socket_mode, "
                                  "vcrypto-engine-backend --socket-mode)")
    socket_group: str | None = opt(None, "group (name or gid) of the daemons' unix sockets; the daemons' "
                                         "user must be a member. null: the daemons' own group")
    host_metrics: BindAddress | None = opt(None, "vcrypto-host metrics 'host:port' (default: none)")
    backend_metrics: BindAddress | None = opt(None, "engine-backend metrics 'host:port' (default: none)")
    batch_deadline_us: float = opt(0.0, "engine-backend: longest a partial device batch is held for more "
                                        "requests (held only while the arrival rate says the next one comes "
                                        "before it); 0: every drain pass sends what it found")
    keys_dir: str | None = opt(None, "directory of private keys vcrypto-host loads for keyless certificates "
                                     "(certificates[].key_ref: NAME -> NAME.pem / NAME.der); only the host reads it",
                               path=True)
    fifo: bool = opt(False, "vcrypto-host completes requests in submission order per data queue "
                            "(global FIFO). Off: completions are matched by id and token, so a TLS "
                            "record never waits behind an RSA signature (records keep their order "
                            "by sequence number)")
    host_poll: HostPollConfig = opt(HostPollConfig(), "vcrypto-host's two-layer polling: its side")
    backend_poll: BackendPollConfig = opt(BackendPollConfig(), "the engine-backend's side of the polling")
    pool: object = opt(None, "vcrypto-host's `pool:` section, passed verbatim and validated by "
                             "vcrypto.host.scheduling (resources, groups, policy, failover, size_routing, retry...); "
                             "null: the default pool (libsodium and OpenSSL in turn by capability, one "
                             "`workers` process as failover secondary)")

    def check(self) -> list[tuple[str, str]]:
        if not 0 <= self.batch_deadline_us <= 100_000:
            return [("batch_deadline_us", f"must be 0..100000 (us), got {self.batch_deadline_us}")]
        if self.socket_group is not None:
            try:
                resolve_socket_group(self.socket_group)
            except SocketAccessError as exc:
                return [("socket_group", exc.message)]
        if self.pool is None:
            return []
        if not isinstance(self.pool, Mapping):
            return [("pool", f"expected mapping, got {_type_name(self.pool)}")]
        # The supervisor runs vcrypto-host: its pool section is checked by the
        # host's own schema (one schema, not a copy here), loaded only when a
        # pool is configured (it imports the resources and their libraries).
        from vcrypto.host.scheduling import parse_pool_config

        try:
            parse_pool_config(_plain(self.pool), config_path="vcrypto.pool")
        except ValueError as exc:
            where = getattr(exc, "path", "") or ""
            message = getattr(exc, "problem", None) or str(exc)
            return [(where.removeprefix("vcrypto."), message)] if where else [("pool", str(exc))]
        return []

    def pool_yaml(self) -> dict | None:
        return None if self.pool is None else _plain(self.pool)


@dataclass(frozen=True)
class LimitsConfig:
    max_connections: int = opt(
        16384, "open client connections per worker (the worker raises its open-files limit to fit, up to the "
               "hard limit); when all are taken, connections still in their handshake and then idle "
               "keep-alive ones are shed, oldest first, for new clients; else new clients wait in the kernel "
               "backlog")
    max_header_bytes: int = opt(16 * KIB, "request line + headers; larger gets 431")
    max_body_bytes: int = opt(1024 * MIB, "request body; larger gets 413")
    handshake_timeout_s: float = opt(10 * SECONDS, "TLS handshake (and PROXY header) must finish within this")
    handshake_timeout_under_pressure_s: float = opt(
        2 * SECONDS, "the same deadline while more than 75% of max_connections are taken (also applied to "
                     "handshakes already running when that starts)")
    header_timeout_s: float = opt(30 * SECONDS, "a started request's headers must arrive within this")
    idle_timeout_s: float = opt(60 * SECONDS, "keep-alive connection with no request in flight is closed after this")
    body_timeout_s: float = opt(60 * SECONDS, "max wait between two reads of a request body or a tcp stream")
    send_timeout_s: float = opt(60 * SECONDS, "each write to the client (a response head or body chunk, <= 256 KiB) must finish within this, else the client is disconnected")
    drain_timeout_s: float = opt(10 * SECONDS, "SIGTERM: in-flight requests get this long to finish")

    def check(self) -> list[tuple[str, str]]:
        return _check_positive(
            self, "max_connections", "max_header_bytes", "max_body_bytes", "handshake_timeout_s",
            "handshake_timeout_under_pressure_s",
            "header_timeout_s", "idle_timeout_s", "body_timeout_s", "send_timeout_s", "drain_timeout_s",
        )


@dataclass(frozen=True)
class Http2Config:
    """HTTP/2 to clients (``vcproxy/proxy/_h2.py``); idle, header, body and send
    timeouts are ``limits``' as for HTTP/1.1."""

    max_concurrent_streams: int = opt(100, "streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); more are refused")
    max_header_list_size_bytes: int = opt(
        16 * KIB, "decoded request headers per stream (SETTINGS_MAX_HEADER_LIST_SIZE, RFC 9113 6.5.2 sizing); "
                  "larger ends the connection with ENHANCE_YOUR_CALM (an HPACK bomb stops there)")
    initial_window_size_bytes: int = opt(
        64 * KIB, "flow-control window per request body stream (SETTINGS_INITIAL_WINDOW_SIZE): what a client may "
                  "send ahead of the upstream; the connection window is this x max_concurrent_streams")
    max_frame_size_bytes: int = opt(16 * KIB, "largest frame accepted (SETTINGS_MAX_FRAME_SIZE), 16384..16777215")
    max_resets_per_window: int = opt(
        200, "client RST_STREAMs of unfinished streams tolerated per reset_window_s; more is a rapid-reset "
             "attack (CVE-2023-44487): GOAWAY(ENHANCE_YOUR_CALM) and close")
    max_control_frames_per_window: int = opt(
        1000, "PING and SETTINGS frames tolerated per reset_window_s (each needs an answer); more: "
              "GOAWAY(ENHANCE_YOUR_CALM) and close")
    reset_window_s: float = opt(10 * SECONDS, "the window of the two flood limits above")

    def check(self) -> list[tuple[str, str]]:
        out = _check_positive(self, "max_concurrent_streams", "max_header_list_size_bytes",
                              "max_resets_per_window", "max_control_frames_per_window", "reset_window_s")
        # RFC 9113 6.5.2: initial window <= 2^31-1; max frame size 2^14..2^24-1.
        if not 1 <= self.initial_window_size_bytes <= 2**31 - 1:
            out.append(("initial_window_size_bytes", f"must be 1..2147483647, got {self.initial_window_size_bytes}"))
        if not 16384 <= self.max_frame_size_bytes <= 2**24 - 1:
            out.append(("max_frame_size_bytes", f"must be 16384..16777215, got {self.max_frame_size_bytes}"))
        return out


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = opt(True, "serve Prometheus metrics")
    address: str = opt("127.0.0.1", "metrics bind address")
    port: int = opt(9100, "metrics port (0 picks a free one)")
    path: str = opt("/metrics", "metrics URL path")

    def check(self) -> list[tuple[str, str]]:
        return _check_port(self.port) + _check_address(self.address)


#: Log targets that are streams, not file names (``vcproxy._log.JsonLog``).
LOG_STREAMS = ("stdout", "stderr")


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = opt("info", "error-log level")
    access_log: str | None = opt("stdout", "JSON access log: stdout, stderr, a file path, or null for none",
                                 path=True, path_keywords=LOG_STREAMS)
    error_log: str = opt("stderr", "JSON structured error/event log: stdout, stderr or a file path",
                         path=True, path_keywords=LOG_STREAMS)


@dataclass(frozen=True)
class ReloadConfig:
    watch_config: bool = opt(
        False, "the supervisor checks the config file and the certificate and key files it names every "
               "watch_interval_s and reloads (what SIGHUP does) when one changed: a Kubernetes ConfigMap or "
               "Secret mounted as a directory (no subPath) is updated by swapping its `..data` symlink, which "
               "changes the file the path resolves to. A change to this section applies at restart")
    watch_interval_s: float = opt(2 * SECONDS, "how often the watched files are checked, 0.1..3600 s")

    def check(self) -> list[tuple[str, str]]:
        if not 0.1 <= self.watch_interval_s <= 3600:
            return [("watch_interval_s", f"must be 0.1..3600 (s), got {self.watch_interval_s}")]
        return []


@dataclass(frozen=True)
class DemoUpstreamConfig:
    enabled: bool = opt(False, "the supervisor also runs the built-in demo HTTP server")
    address: str = opt("127.0.0.1", "demo server bind address")
    port: int = opt(8080, "demo server port")

    def check(self) -> list[tuple[str, str]]:
        return _check_port(self.port, allow_zero=False) + _check_address(self.address)


@dataclass(frozen=True)
class Config:
    listeners: tuple[ListenerConfig, ...] = req("where clients connect")
    upstreams: Mapping[str, UpstreamConfig] = opt(MappingProxyType({}), "upstream pools by name")
    routes: tuple[RouteConfig, ...] = opt((), "HTTP routing: host + path prefix -> upstream")
    workers: int = opt(2, "worker processes sharing each listener port (SO_REUSEPORT)")
    crypto: CryptoConfig = opt(CryptoConfig(), "where TLS crypto runs")
    vcrypto: VcryptoConfig = opt(VcryptoConfig(), "the vcrypto daemons (used when crypto.provider is vcrypto)")
    limits: LimitsConfig = opt(LimitsConfig(), "limits and timeouts")
    http2: Http2Config = opt(Http2Config(), "HTTP/2 to clients (selected by ALPN h2 on TLS http listeners)")
    metrics: MetricsConfig = opt(MetricsConfig(), "Prometheus endpoint (served by the supervisor, all workers aggregated)")
    logging: LoggingConfig = opt(LoggingConfig(), "logs")
    reload: ReloadConfig = opt(ReloadConfig(), "configuration reload without a signal")
    demo_upstream: DemoUpstreamConfig = opt(DemoUpstreamConfig(), "built-in demo upstream")

    def check(self) -> list[tuple[str, str]]:
        out = []
        if not 1 <= self.workers <= 64:
            out.append(("workers", f"must be 1..64, got {self.workers}"))
        if not self.listeners:
            out.append(("listeners", "at least one listener is required"))
        names: set[str] = set()
        for i, lis in enumerate(self.listeners):
            name = self.listener_name(i)
            if name in names:
                out.append((f"listeners[{i}].name", f"duplicate listener name {name!r}"))
            names.add(name)
            if lis.upstream is not None and lis.upstream not in self.upstreams:
                out.append((f"listeners[{i}].upstream", f"unknown upstream {lis.upstream!r}"))
        for i, lis in enumerate(self.listeners):
            for j, cert in enumerate(lis.tls.certificates if lis.tls.enabled else ()):
                if cert.key_ref is None:
                    continue
                where = f"listeners[{i}].tls.certificates[{j}].key_ref"
                if self.crypto.provider != "vcrypto":
                    out.append((where, "keyless signing needs crypto.provider: vcrypto (the host holds the key)"))
                elif self.vcrypto.manage and self.vcrypto.keys_dir is None:
                    out.append((where, "needs vcrypto.keys_dir: the directory vcrypto-host loads keys from"))
        out += port_collisions(self.binds())
        if any(lis.mode == "http" for lis in self.listeners) and not self.routes:
            out.append(("routes", "an http listener needs at least one route"))
        for i, route in enumerate(self.routes):
            if route.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none defined"
                out.append((f"routes[{i}].upstream", f"unknown upstream {route.upstream!r} (known: {known})"))
        return out

    def listener_name(self, index: int) -> str:
        return self.listeners[index].name or f"listener{index}"

    def binds(self) -> list[Bind]:
        """Every TCP address this config makes a process on this machine bind:
        the listeners, the metrics endpoint, the daemons the supervisor starts
        (their metrics) and the demo upstream, each with its config path."""
        out = [Bind(f"listeners[{i}].port", lis.address, lis.port, reuseport=True)
               for i, lis in enumerate(self.listeners)]
        if self.metrics.enabled:
            out.append(Bind("metrics.port", self.metrics.address, self.metrics.port))
        if self.crypto.provider == "vcrypto" and self.vcrypto.manage:
            for key in ("host_metrics", "backend_metrics"):
                addr = getattr(self.vcrypto, key)
                if addr is not None:
                    out.append(Bind(f"vcrypto.{key}", addr.host, addr.port))
        if self.demo_upstream.enabled:
            out.append(Bind("demo_upstream.port", self.demo_upstream.address, self.demo_upstream.port))
        return out
