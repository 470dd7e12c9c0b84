"""``reload.watch_config``: reload when the config or a certificate file changes.

Why a watch and not only SIGHUP: in Kubernetes the config is a ConfigMap and
the certificates a Secret, and nothing sends a signal when either changes.
The kubelet updates a volume mounted as a directory (never one mounted with
``subPath``, which is a copy that is never updated) in one atomic step::

    /etc/vcproxy/vcproxy.yaml -> ..data/vcproxy.yaml
    /etc/vcproxy/..data       -> ..2026_12_04_21_00_00.123     (swapped by rename)
    /etc/vcproxy/..2026_12_04_21_00_00.123/vcproxy.yaml        (a new file)

so the path keeps its name while the file it resolves to is a different inode.
A file's *identity* here is ``stat()`` of the path with symlinks followed:
device, inode, size and mtime in ns. The symlink swap changes the inode, an
editor or ``cp`` over the file changes mtime (and usually size). Polling the
identity every ``reload.watch_interval_s`` is enough: a reload is a rare
event, and polling needs no inotify watch on directories that are replaced.

The decision is sans-IO (:class:`ConfigWatch` compares identities it is given);
:func:`file_identities` does the ``stat`` calls and the supervisor's loop
sleeps and then takes the same reload path as SIGHUP.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from vcproxy.config import Config

#: (st_dev, st_ino, st_size, st_mtime_ns) of one path, or None: it does not exist (now)
FileIdentity = tuple[int, int, int, int] | None


def watched_paths(config_path: str, config: Config) -> tuple[str, ...]:
    """The config file and every certificate and key file it names (what a
    reload reads), in a stable order, each once."""
    paths = [config_path]
    for lis in config.listeners:
        if not lis.tls.enabled:
            continue
        for cert in lis.tls.certificates:
            paths.append(cert.cert)
            if cert.key is not None:
                paths.append(cert.key)
    return tuple(dict.fromkeys(paths))


def file_identities(paths: tuple[str, ...]) -> dict[str, FileIdentity]:
    out: dict[str, FileIdentity] = {}
    for path in paths:
        try:
            st = os.stat(path)  # follows the ..data symlink: the file it resolves to now
        except OSError:
            out[path] = None
        else:
            out[path] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return out


@dataclass
class ConfigWatch:
    """The last identities seen; :meth:`observe` says whether to reload.

    A file that is missing right now defers the decision (the baseline is
    kept): a writer that replaces a file by delete-then-create is caught on a
    later poll, when the file is back, instead of reloading a config whose
    certificate is not there yet.
    """

    baseline: dict[str, FileIdentity]

    def observe(self, current: dict[str, FileIdentity]) -> list[str]:
        """The paths that changed since the baseline (empty: nothing to do).
        A non-empty answer moves the baseline to ``current``."""
        if any(identity is None for identity in current.values()):
            return []
        changed = [path for path, identity in current.items() if self.baseline.get(path) != identity]
        if changed:
            self.baseline = dict(current)
        return changed

    def rebase(self, current: dict[str, FileIdentity]) -> None:
        """After a reload the watched set may differ (new certificate paths):
        start comparing against what is there now."""
        self.baseline = dict(current)
