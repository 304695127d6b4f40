"""Pipeline health metrics (Prometheus), shared by the compactor and the workers.

Labels stay low-cardinality: topic and outcome only; regions and pools appear in the API's domain
gauges, where their number is capped.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from streams.allocator import heap_stats, release_free_memory

EVENTS_CONSUMED = Counter(
    "hashatlas_events_consumed_total", "Input messages read from Kafka", ["topic"]
)
EVENTS_DEAD_LETTERED = Counter(
    "hashatlas_events_dead_lettered_total",
    "Input messages that could not be used and went to the dead-letter topic",
    ["topic"],
)
OFFSET_REREADS = Counter(
    "hashatlas_offset_rereads_total",
    "Input partitions read again from the state's next offset because Faust resumed them "
    "elsewhere (after a restore, or a jump of more than one offset)",
    ["topic"],
)
SHARES = Counter(
    "hashatlas_shares_total",
    "Shares seen, by what happened to them (credited, rejected, duplicate, late)",
    ["outcome"],
)
SHARE_BATCHES_APPLIED = Counter(
    "hashatlas_share_batches_applied_total",
    "share_batch messages a worker applied to its windows, credited or too late to count",
    ["outcome"],
)
SHARE_BATCHES_EMITTED = Counter(
    "hashatlas_share_batches_emitted_total", "share_batch messages the compactor produced"
)
EVENT_TIME_LAG = Gauge(
    "hashatlas_processing_lag_seconds",
    "Wall-clock time minus the event time of the newest event processed",
    ["topic"],
)
CONSUMER_LAG = Gauge(
    "hashatlas_consumer_lag_messages",
    "Messages behind the end of the topic, over the partitions this process owns",
    ["topic"],
)
SNAPSHOTS_PUBLISHED = Counter(
    "hashatlas_snapshots_published_total", "Estimate snapshots written to Redis and Kafka"
)
SNAPSHOT_PUBLISH_SECONDS = Histogram(
    "hashatlas_snapshot_publish_duration_seconds",
    "Time to build and publish one snapshot",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
ALERTS_PUBLISHED = Counter(
    "hashatlas_alerts_published_total", "Regional shift alert state changes", ["state"]
)
LABEL_OVERFLOW = Counter(
    "hashatlas_label_overflow_total",
    "Share batches credited under an overflow label because a cap was reached (pool, series)",
    ["cap"],
)
COMPACTOR_OVERFLOW_SHARES = Counter(
    "hashatlas_compactor_overflow_shares_total",
    "Single shares the compactor summed under pool 'other' because its key table was full "
    "(max_compactor_keys)",
)
for _state in ("firing", "resolved"):  # exported at 0 before the first alert
    ALERTS_PUBLISHED.labels(_state)
POOL_DIVERGENCE_ALERTS = Counter(
    "hashatlas_pool_divergence_alerts_published_total",
    "Pool divergence alert state changes (a pool's shares and blocks disagree)", ["state"]
)
for _state in ("firing", "resolved"):
    POOL_DIVERGENCE_ALERTS.labels(_state)
CHECKPOINTS = Counter(
    "hashatlas_checkpoints_total", "Partition state checkpoints written to the changelog"
)
MALLOC_BYTES = Gauge(
    "hashatlas_malloc_bytes",
    "What the C allocator (jemalloc, or glibc's malloc) holds for this process: in_use "
    "(allocated) and free (resident in its pages but not allocated; under glibc read just "
    "before the periodic malloc_trim)",
    ["state"],
)


def report_malloc(trim: bool) -> None:
    """Export what malloc holds, then (``trim``) give its free pages back to the system."""
    if (stats := heap_stats()) is not None:
        MALLOC_BYTES.labels("in_use").set(stats.in_use_bytes)
        MALLOC_BYTES.labels("free").set(stats.free_bytes)
    if trim:
        release_free_memory()


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose this process's metrics on ``host:port`` (port 0 disables)."""
    if port:
        start_http_server(port, addr=host)
