"""Prometheus metrics of the host, read live at scrape time (a Collector).

``HOST_METRICS`` is the single list of what ``vcrypto-host`` exports (name,
type, labels, help); the collector builds every family from it, the
README's table is printed from it (``vcrypto-host --metrics-reference``),
and the tests check the live endpoint against it. Prometheus conventions:
a count that only goes up is a counter named ``..._total``, durations are
``_seconds``, and nothing is a precomputed ratio (rates and ratios are the
query's job: ``rate(a_total[5m]) / rate(b_total[5m])``).

Sources: the devices' ``DeviceStats`` (summed over live and closed
devices), the scheduler's ``PoolStats`` snapshot (pool-wide counters, and
one series per resource with labels ``resource`` and ``kind``), and the
process's CPU time.
"""
from __future__ import annotations

from typing import NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from vcrypto.host.device import host_cpu_seconds
from vcrypto.host.queue import DeviceStats


class MetricDef(NamedTuple):
    kind: str                 # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str


_RES = ("resource", "kind")

#: Full metric name (counters with their ``_total``) -> definition.
HOST_METRICS: dict[str, MetricDef] = {
    "vcrypto_host_devices": MetricDef("gauge", (), "devices attached now (engine-backends and QEMU guests, one per vhost-user connection)"),
    "vcrypto_host_sessions": MetricDef("gauge", (), "crypto sessions open now over all devices"),
    "vcrypto_host_inflight": MetricDef("gauge", (), "requests popped from the avail rings and not yet completed"),
    "vcrypto_host_kicks_total": MetricDef("counter", (), "kick eventfd notifications received from drivers (a driver woke the sleeping host)"),
    "vcrypto_host_calls_total": MetricDef("counter", (), "call eventfd notifications sent to drivers (the host woke a sleeping driver)"),
    "vcrypto_host_polls_total": MetricDef("counter", (), "data-queue poll loop passes (each pass drains the avail ring and publishes completions)"),
    "vcrypto_host_sleeps_total": MetricDef("counter", (), "times a data queue's poll loop parked on its kick eventfd (nothing to do)"),
    "vcrypto_host_requests_total": MetricDef("counter", (), "requests popped from the data queues' avail rings"),
    "vcrypto_host_batches_total": MetricDef("counter", (), "avail-ring batches drained (one or more requests each)"),
    "vcrypto_host_chain_errors_total": MetricDef("counter", (), "requests rejected because their descriptor chain was malformed or pointed outside registered memory"),
    "vcrypto_host_resource_faults_total": MetricDef("counter", (), "requests that failed on every resource they were tried on (completed with VIRTIO_CRYPTO_ERR)"),
    "vcrypto_host_reorder_held_total": MetricDef("counter", (), "completions held back to release them in FIFO order (the head-of-line cost of vcrypto.fifo)"),
    "vcrypto_host_split_pieces_total": MetricDef("counter", (), "16 KiB pieces of the cipher requests the host split into accelerator-sized jobs"),
    "vcrypto_host_completions_total": MetricDef("counter", ("op", "alg", "status"), "requests completed, by operation, algorithm and virtio-crypto status (ok, err, badmsg, notsupp, invsess, ...)"),
    "vcrypto_host_batch_size": MetricDef("histogram", (), "requests per drained avail-ring batch (batch fill)"),
    "vcrypto_host_cpu_seconds_total": MetricDef("counter", (), "CPU time of the vcrypto-host process, user plus system"),
    # the scheduler's pool (PoolStats)
    "vcrypto_host_pool_inflight": MetricDef("gauge", ("op",), "jobs running on the pool's resources now, by operation"),
    "vcrypto_host_pool_submitted_total": MetricDef("counter", (), "jobs submitted to the scheduler"),
    "vcrypto_host_pool_succeeded_total": MetricDef("counter", (), "jobs that returned a result (possibly after retries)"),
    "vcrypto_host_pool_op_errors_total": MetricDef("counter", (), "jobs that failed because the request itself was bad (not retried)"),
    "vcrypto_host_pool_failed_total": MetricDef("counter", (), "jobs that failed on every attempt (retries exhausted or no healthy capable resource)"),
    "vcrypto_host_pool_retries_total": MetricDef("counter", (), "job attempts retried after a resource fault or timeout"),
    "vcrypto_host_pool_spills_total": MetricDef("counter", (), "jobs sent to a failover secondary because the primary group was busy or unhealthy"),
    "vcrypto_host_pool_not_supported_total": MetricDef("counter", (), "jobs no resource in the pool is capable of (operation and algorithm)"),
    "vcrypto_host_pool_waits_total": MetricDef("counter", (), "times a job waited for a free slot on a capable resource (back-pressure)"),
    # per resource (ResourceStats)
    "vcrypto_host_pool_resource_max_inflight": MetricDef("gauge", _RES, "configured maximum of jobs in flight on the resource"),
    "vcrypto_host_pool_resource_healthy": MetricDef("gauge", _RES, "1 while the resource is healthy, 0 while it is marked unhealthy (until a probe re-admits it)"),
    "vcrypto_host_pool_resource_inflight": MetricDef("gauge", _RES, "jobs running on the resource now"),
    "vcrypto_host_pool_resource_assigned_total": MetricDef("counter", _RES, "job attempts started on the resource"),
    "vcrypto_host_pool_resource_completed_total": MetricDef("counter", _RES, "job attempts on the resource that returned a result"),
    "vcrypto_host_pool_resource_op_errors_total": MetricDef("counter", _RES, "job attempts on the resource that failed because the request was bad"),
    "vcrypto_host_pool_resource_errors_total": MetricDef("counter", _RES, "job attempts on the resource that failed with a resource fault"),
    "vcrypto_host_pool_resource_timeouts_total": MetricDef("counter", _RES, "job attempts on the resource cut off by the job timeout"),
    "vcrypto_host_pool_resource_retries_total": MetricDef("counter", _RES, "failed attempts on the resource that were retried (here or elsewhere)"),
    "vcrypto_host_pool_resource_spills_total": MetricDef("counter", _RES, "jobs the resource received as the failover secondary"),
    "vcrypto_host_pool_resource_unhealthy_marks_total": MetricDef("counter", _RES, "times the resource was marked unhealthy"),
    "vcrypto_host_pool_resource_readmissions_total": MetricDef("counter", _RES, "times a probe re-admitted the resource as healthy"),
    "vcrypto_host_pool_resource_queue_wait_seconds_total": MetricDef("counter", _RES, "time jobs waited for a slot before running on the resource (queueing, summed)"),
    "vcrypto_host_pool_resource_exec_seconds_total": MetricDef("counter", _RES, "time jobs spent executing on the resource (summed)"),
}

#: PoolStats field -> metric name (the pool-wide numbers).
POOL_FIELDS = {f: f"vcrypto_host_pool_{f}_total" for f in
               ("submitted", "succeeded", "op_errors", "failed", "retries", "spills", "not_supported",
                "waits")}
#: ResourceStats field -> metric name (one series per resource).
RESOURCE_FIELDS = {
    "max_inflight": "vcrypto_host_pool_resource_max_inflight",
    "healthy": "vcrypto_host_pool_resource_healthy",
    "inflight": "vcrypto_host_pool_resource_inflight",
    **{f: f"vcrypto_host_pool_resource_{f}_total" for f in
       ("assigned", "completed", "op_errors", "errors", "timeouts", "retries", "spills", "unhealthy_marks",
        "readmissions")},
    "queue_wait_s_total": "vcrypto_host_pool_resource_queue_wait_seconds_total",
    "exec_s_total": "vcrypto_host_pool_resource_exec_seconds_total",
}


def family(name: str):
    """An empty metric family of ``name``'s type, help and labels."""
    d = HOST_METRICS[name]
    base = name.removesuffix("_total") if d.kind == "counter" else name
    cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
           "histogram": HistogramMetricFamily}[d.kind]
    return cls(base, d.help, labels=list(d.labels))


def reference_table() -> str:
    """The Markdown table of ``HOST_METRICS`` (README's host-metrics-reference block)."""
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for name, d in HOST_METRICS.items():
        rows.append(f"| `{name}` | {d.kind} | {', '.join(d.labels) or '-'} | {d.help} |")
    return "\n".join(rows) + "\n"


class HostCollector(Collector):
    def __init__(self, host):
        self.host = host

    def collect(self):
        host = self.host
        total = DeviceStats()
        total.add(host.closed_stats)
        sessions = 0
        inflight = 0
        for dev in list(host.devices.values()):
            total.add(dev.stats)
            sessions += len(dev.sessions)
            for ring in list(dev.vrings.values()):
                queue = ring.queue
                if queue is not None:
                    inflight += queue.reorder.in_flight
        for name, value in (("vcrypto_host_devices", len(host.devices)), ("vcrypto_host_sessions", sessions),
                            ("vcrypto_host_inflight", inflight)):
            fam = family(name)
            fam.add_metric([], value)
            yield fam
        for field in DeviceStats.FIELDS:
            fam = family(f"vcrypto_host_{field}_total")
            fam.add_metric([], getattr(total, field))
            yield fam
        comp = family("vcrypto_host_completions_total")
        for (op, alg, status), n in sorted(total.by_op.items()):
            comp.add_metric([op, alg, status], n)
        yield comp
        buckets, cumulative = [], 0
        for bound, n in zip(DeviceStats.BATCH_BUCKETS, total.batch_counts):
            cumulative += n
            buckets.append((str(bound), cumulative))
        buckets.append(("+Inf", cumulative))
        hist = family("vcrypto_host_batch_size")
        hist.add_metric([], buckets, total.batch_sum)
        yield hist
        cpu = family("vcrypto_host_cpu_seconds_total")
        cpu.add_metric([], host_cpu_seconds())
        yield cpu
        stats = host.scheduler.stats() if hasattr(host.scheduler, "stats") else None
        if stats is None:
            return
        yield from _pool_families(stats)


def _pool_families(stats):
    """The scheduler's ``PoolStats``: pool-wide counters, in flight by op, and
    per resource every field of ``RESOURCE_FIELDS``."""
    for field, name in POOL_FIELDS.items():
        fam = family(name)
        fam.add_metric([], getattr(stats, field))
        yield fam
    g = family("vcrypto_host_pool_inflight")
    for op, n in sorted(stats.inflight_by_op.items()):
        g.add_metric([str(op)], n)
    yield g
    per_field = {field: family(name) for field, name in RESOURCE_FIELDS.items()}
    for rname, r in stats.resources.items():
        labels = [str(rname), str(r.kind)]
        for field, fam in per_field.items():
            fam.add_metric(labels, float(getattr(r, field)))
    yield from per_field.values()


if __name__ == "__main__":   # python -m vcrypto.host.metrics: the README table
    print(reference_table(), end="")
