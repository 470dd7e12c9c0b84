"""Prometheus metrics of the host, read live at scrape time (a Collector).

Exported families (all prefixed ``vcrypto_host_``):

- ``devices`` / ``sessions`` (gauges): attached devices, live sessions;
- ``inflight`` (gauge): requests popped from avail rings, not yet completed;
- ``kicks_total``, ``calls_total``, ``polls_total``, ``sleeps_total``,
  ``requests_total``, ``batches_total``, ``chain_errors_total``,
  ``resource_faults_total``, ``reorder_held_total`` (completions held back
  for FIFO order: the head-of-line cost), ``split_pieces_total`` (16 KiB
  pieces of the cipher requests the host split): summed over live and closed
  devices;
- ``completions_total{op,alg,status}``;
- ``batch_size`` (histogram): requests per drained avail batch (batch fill);
- ``cpu_seconds_total``: the host process's CPU time (user + system);
- ``pool_*``: the scheduler's ``stats()`` (a ``PoolStats``), per resource
  where it has per-resource fields: every numeric field becomes a gauge
  ``vcrypto_host_pool_resource_<field>{resource, kind}``, pool-wide numeric
  fields ``vcrypto_host_pool_<field>``.
"""
from __future__ import annotations

import dataclasses

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from vcrypto.host.device import host_cpu_seconds
from vcrypto.host.queue import DeviceStats


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fields(obj) -> dict:
    if dataclasses.is_dataclass(obj):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return obj
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")} if hasattr(obj, "__dict__") else {}


class HostCollector(Collector):
    def __init__(self, host):
        self.host = host

    def collect(self):
        host = self.host
        total = DeviceStats()
        total.add(host.closed_stats)
        sessions = 0
        for dev in list(host.devices.values()):
            total.add(dev.stats)
            sessions += len(dev.sessions)
        yield GaugeMetricFamily("vcrypto_host_devices", "attached devices", value=len(host.devices))
        yield GaugeMetricFamily("vcrypto_host_sessions", "live sessions", value=sessions)
        inflight = 0
        for dev in list(host.devices.values()):
            for ring in list(dev.vrings.values()):
                queue = ring.queue
                if queue is not None:
                    inflight += queue.reorder.in_flight
        yield GaugeMetricFamily("vcrypto_host_inflight", "requests popped and not yet completed",
                                value=inflight)
        for field in DeviceStats.FIELDS:
            yield CounterMetricFamily(f"vcrypto_host_{field}", f"{field} over all devices",
                                      value=getattr(total, field))
        comp = CounterMetricFamily("vcrypto_host_completions", "requests completed",
                                   labels=["op", "alg", "status"])
        for (op, alg, status), n in sorted(total.by_op.items()):
            comp.add_metric([op, alg, status], n)
        yield comp
        buckets, cumulative = [], 0
        for bound, n in zip(DeviceStats.BATCH_BUCKETS, total.batch_counts):
            cumulative += n
            buckets.append((str(bound), cumulative))
        buckets.append(("+Inf", cumulative))
        yield HistogramMetricFamily("vcrypto_host_batch_size", "requests per drained avail batch",
                                    buckets=buckets, sum_value=total.batch_sum)
        yield CounterMetricFamily("vcrypto_host_cpu_seconds", "host process CPU time",
                                  value=host_cpu_seconds())
        stats = host.scheduler.stats() if hasattr(host.scheduler, "stats") else None
        if stats is None:
            return
        for name, value in _fields(stats).items():
            if _numeric(value):
                yield GaugeMetricFamily(f"vcrypto_host_pool_{name}", f"pool {name}", value=value)
            elif name == "inflight_by_op" and isinstance(value, dict):
                g = GaugeMetricFamily("vcrypto_host_pool_inflight", "in flight by op", labels=["op"])
                for op, n in value.items():
                    g.add_metric([str(op)], n)
                yield g
        resources = _fields(stats).get("resources") or {}
        per_field: dict[str, GaugeMetricFamily] = {}
        for rname, rstats in resources.items():
            fields = _fields(rstats)
            kind = str(fields.get("kind", ""))
            for fname, value in fields.items():
                if not _numeric(value) and not isinstance(value, bool):
                    if fname == "health":
                        value = 1 if str(getattr(value, "value", value)).lower() == "healthy" else 0
                        fname = "healthy"
                    else:
                        continue
                fam = per_field.setdefault(fname, GaugeMetricFamily(
                    f"vcrypto_host_pool_resource_{fname}", f"resource {fname}",
                    labels=["resource", "kind"]))
                fam.add_metric([str(rname), kind], float(value))
        yield from per_field.values()
