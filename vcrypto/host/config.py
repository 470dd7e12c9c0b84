"""The host's typed configuration, loaded from YAML.

Every key is checked: unknown keys and wrong types are rejected with the
path of the offending entry (``HostConfigError("poll.spin_us: expected a
number, got 'fast'")``). Defaults live here, once, with their units::

    keys_dir: null           # directory of PEM/DER private keys for key_ref (keyless)
    socket_mode: "0660"      # the vhost-user socket file's mode (octal): who may connect
    socket_group: null       # its group (name or gid; the daemon's user must belong to it);
                             # null: the daemon's group. See vcrypto._unixsock (race-free).
    fifo: false              # true: used ring in submission order per data queue
                             # (global FIFO). Off: the driver and the engine match
                             # completions by descriptor id / token, and a record
                             # must not wait behind an RSA signature (README
                             # "FIFO only where the protocol needs it").
    bad_input_status: key_rejected  # status for input the crypto rejects (an ECDH peer
                             # key off the curve, a session key of the wrong
                             # type): err | badmsg | key_rejected. An AEAD tag
                             # mismatch is always badmsg, a device failure err.
    pool: {}                 # handed verbatim to vcrypto.host.scheduling._pool.build_scheduler
    poll:
      mode: doorbell         # doorbell | adaptive
      spin_us: 50            # adaptive: busy-poll this long after work before parking
      batch_threshold: 8     # adaptive: poll only after a drained batch this big
      coalesce_us: 0         # hold a call up to this long while the batch still runs
      nofd_interval_us: 1000 # ring poll period for a vring kicked with no fd (polling driver)
    limits:
      max_devices: 64
      max_sessions_per_device: 1024
      max_queues: 4          # data queues per device
      max_queue_size: 1024
      max_request_bytes: 65536   # per request; bounds host memory: queue size x this
      max_mem_slots: 32
      require_sealed_memory: true   # refuse region fds not sealed with F_SEAL_SHRINK
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from vcrypto._unixsock import SocketAccess, SocketAccessError
from vcrypto.wire import virtio_crypto as vc


class HostConfigError(Exception):
    """The configuration is invalid; the message names the path."""


@dataclasses.dataclass(frozen=True)
class PollConfig:
    mode: str = "doorbell"
    spin_us: float = 50.0
    batch_threshold: int = 8
    coalesce_us: float = 0.0
    nofd_interval_us: float = 1000.0


@dataclasses.dataclass(frozen=True)
class Limits:
    max_devices: int = 64
    max_sessions_per_device: int = 1024
    max_queues: int = 4
    max_queue_size: int = 1024
    max_request_bytes: int = 64 * 1024
    max_mem_slots: int = 32
    require_sealed_memory: bool = True


#: ``bad_input_status`` values -> virtio-crypto status
BAD_INPUT_STATUSES = {"err": vc.VIRTIO_CRYPTO_ERR, "badmsg": vc.VIRTIO_CRYPTO_BADMSG,
                      "key_rejected": vc.VIRTIO_CRYPTO_KEY_REJECTED}


@dataclasses.dataclass(frozen=True)
class HostConfig:
    keys_dir: Path | None = None
    fifo: bool = False
    bad_input_status: str = "key_rejected"
    pool: dict = dataclasses.field(default_factory=dict)
    poll: PollConfig = PollConfig()
    limits: Limits = Limits()
    socket: SocketAccess = SocketAccess()   # from socket_mode / socket_group


def _check(path: str, value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise HostConfigError(f"{path}: expected {name}, got {value!r}")
    if not isinstance(value, kind):
        raise HostConfigError(f"{path}: expected {name}, got {value!r}")
    return value


def _section(path: str, raw: Any, cls: type) -> Any:
    if raw is None:
        return cls()
    _check(path, raw, dict, "a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in raw.items():
        if key not in fields:
            raise HostConfigError(f"{path}.{key}: unknown key (expected one of {', '.join(fields)})")
        default = getattr(cls(), key)
        if isinstance(default, bool):
            out[key] = _check(f"{path}.{key}", value, bool, "true or false")
        elif isinstance(default, int):
            out[key] = _check(f"{path}.{key}", value, int, "an integer")
            if value < 0:
                raise HostConfigError(f"{path}.{key}: must be >= 0, got {value}")
        elif isinstance(default, float):
            out[key] = float(_check(f"{path}.{key}", value, (int, float), "a number"))
        else:
            out[key] = _check(f"{path}.{key}", value, str, "a string")
    return cls(**out)


def parse_config(raw: Any, *, base_dir: Path | None = None) -> HostConfig:
    if raw is None:
        raw = {}
    _check("<root>", raw, dict, "a mapping")
    allowed = {"keys_dir", "fifo", "bad_input_status", "pool", "poll", "limits", "socket_mode",
               "socket_group"}
    for key in raw:
        if key not in allowed:
            raise HostConfigError(f"{key}: unknown key (expected one of {', '.join(sorted(allowed))})")
    keys_dir = raw.get("keys_dir")
    if keys_dir is not None:
        keys_dir = Path(_check("keys_dir", keys_dir, str, "a directory path"))
        if base_dir is not None and not keys_dir.is_absolute():
            keys_dir = base_dir / keys_dir
        if not keys_dir.is_dir():
            raise HostConfigError(f"keys_dir: {keys_dir} is not a directory")
    fifo = _check("fifo", raw.get("fifo", False), bool, "true or false")
    bad_input = _check("bad_input_status", raw.get("bad_input_status", "key_rejected"), str,
                       f"one of {', '.join(BAD_INPUT_STATUSES)}")
    if bad_input not in BAD_INPUT_STATUSES:
        raise HostConfigError(f"bad_input_status: expected one of {', '.join(BAD_INPUT_STATUSES)}, "
                          f"got {bad_input!r}")
    pool = raw.get("pool") or {}
    _check("pool", pool, dict, "a mapping")
    poll = _section("poll", raw.get("poll"), PollConfig)
    if poll.mode not in ("doorbell", "adaptive"):
        raise HostConfigError(f"poll.mode: expected 'doorbell' or 'adaptive', got {poll.mode!r}")
    limits = _section("limits", raw.get("limits"), Limits)
    try:
        socket_access = SocketAccess.parse(raw.get("socket_mode"), raw.get("socket_group"))
    except SocketAccessError as exc:
        raise HostConfigError(f"{exc.field}: {exc.message}") from exc
    return HostConfig(keys_dir=keys_dir, fifo=fifo, bad_input_status=bad_input, pool=pool,
                      poll=poll, limits=limits, socket=socket_access)


def load_config(path: str | Path | None) -> HostConfig:
    if path is None:
        return HostConfig()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise HostConfigError(f"{path}: cannot load: {exc}") from exc
    return parse_config(raw, base_dir=path.parent)
