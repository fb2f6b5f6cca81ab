"""Every Prometheus metric of the server, defined once (docs/metrics.md); others import the objects.

The metrics live in their own registry, not prometheus-client's global one, so embedding the
server (or running several in one test process) never collides with the host's metrics.
Under `--workers` (PROMETHEUS_MULTIPROC_DIR set by the supervisor before a worker starts), every
value lives in prometheus-client's per-process files and `render` sums them over the workers; the
gauges sum over the live workers only (`multiprocess_mode="livesum"`, ignored in one process).
This module imports nothing from the package.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = [
    "BATCH_SIZE",
    "CONTENT_TYPE",
    "EVENT_LOOP_LAG",
    "INFLIGHT_REQUEST_BYTES",
    "LOAD_DURATION",
    "MODEL_EVICTIONS",
    "MODEL_LOADS",
    "MODEL_MEMORY_BYTES",
    "MODEL_VERSIONS",
    "PENDING_REQUESTS",
    "QUEUE_DURATION",
    "REGISTRY",
    "REQUESTS",
    "REQUEST_DURATION",
    "REQUEST_LOGS_DROPPED",
    "TRACE_SPANS_DROPPED",
    "observe_request",
    "render",
]

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)

#: requests answered, by model, version ("" when none resolved), api and status code
REQUESTS = Counter(
    "pyserving_requests",
    "Inference and status requests answered.",
    ("model", "version", "api", "code"),
    registry=REGISTRY,
)
#: wall time from the request's arrival to its answer
REQUEST_DURATION = Histogram(
    "pyserving_request_duration_seconds",
    "Time to answer one request.",
    ("model", "api"),
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
#: rows in each batch the Batcher ran (padding included)
BATCH_SIZE = Histogram(
    "pyserving_batch_size",
    "Rows per batch run by the Batcher.",
    ("model",),
    buckets=_BATCH_BUCKETS,
    registry=REGISTRY,
)
#: time a task waited in a batch queue before its batch ran
QUEUE_DURATION = Histogram(
    "pyserving_queue_duration_seconds",
    "Time a task spent queued before execution.",
    ("model",),
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
#: versions per model in each lifecycle state
MODEL_VERSIONS = Gauge(
    "pyserving_model_versions",
    "Versions of a model in each state.",
    ("model", "state"),
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
#: time from LOADING to AVAILABLE
LOAD_DURATION = Histogram(
    "pyserving_load_duration_seconds",
    "Time to load one version.",
    ("model",),
    buckets=_LOAD_BUCKETS,
    registry=REGISTRY,
)

#: loads that made a version AVAILABLE; reason "request" (an on-demand model a request named)
#: or "aspired" (found by the source: start-up, a new version, a reload)
MODEL_LOADS = Counter(
    "pyserving_model_loads",
    "Versions loaded, by why they were loaded.",
    ("model", "reason"),
    registry=REGISTRY,
)
#: on-demand models unloaded to make room for another or for being idle
MODEL_EVICTIONS = Counter(
    "pyserving_model_evictions",
    "On-demand models unloaded for room (least recently used) or idleness.",
    ("model",),
    registry=REGISTRY,
)
#: bytes the resource tracker holds for each loaded version (measured after load when the
#: platform reports it, else the loader's estimate)
MODEL_MEMORY_BYTES = Gauge(
    "pyserving_model_memory_bytes",
    "Memory counted against --total-model-memory-limit-bytes for each loaded version.",
    ("model", "version"),
    registry=REGISTRY,
    multiprocess_mode="livesum",
)

#: how late the event loop resumed a task that slept (sampled every 0.1 s by the server)
EVENT_LOOP_LAG = Histogram(
    "pyserving_event_loop_lag_seconds",
    "How late the event loop resumed a sleeping task (sampled): what any request waits for.",
    buckets=_LAG_BUCKETS,
    registry=REGISTRY,
)

#: requests queued or running in the InferenceService (the server binds it with set_function)
PENDING_REQUESTS = Gauge(
    "pyserving_pending_requests",
    "Requests queued or running in the server.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
#: request bytes held in the server-wide in-flight budget, REST and gRPC (the server binds it)
INFLIGHT_REQUEST_BYTES = Gauge(
    "pyserving_inflight_request_bytes",
    "Bytes of request bodies and messages the server holds now (--max-inflight-request-bytes).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)

#: sampled request-log lines dropped: the writer's queue was full or writing failed (issue 22)
REQUEST_LOGS_DROPPED = Counter(
    "pyserving_request_logs_dropped",
    "Sampled request-log lines dropped (writer queue full, slow or failing disk); requests are"
    " never dropped for them.",
    ["model"],
    registry=REGISTRY,
)
#: one pipeline step's time within a pipeline request: queueing for its model and running
PIPELINE_STEP_DURATION = Histogram(
    "pyserving_pipeline_step_duration_seconds",
    "Time one step of a pipeline took within a pipeline request (its queue and its run).",
    ("pipeline", "step"),
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
#: spans the OpenTelemetry export queue dropped (a slow or absent collector; issue 22)
TRACE_SPANS_DROPPED = Counter(
    "pyserving_trace_spans_dropped",
    "Trace spans dropped because the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE).",
    registry=REGISTRY,
)


def render() -> bytes:
    """The registry in Prometheus' text exposition format; under `--workers` the sum over every
    worker's files (those of exited workers included, so counters never go back)."""
    if _MULTIPROCESS_DIR:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, _MULTIPROCESS_DIR)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


#: read once: prometheus-client chose how to store values when it was imported
_MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def observe_request(
    model: str, version: int | None, api: str, code: int, duration_s: float
) -> None:
    """Count one answered request and its duration (api: "rest" | "grpc"; code: HTTP status).

    Thread-safety: callable from any thread. The label children are bound once per
    (model, version, api, code) and cached, so the hot path is two dict lookups and two updates.
    """
    key = (model, version, api, code)
    children = _children.get(key)
    if children is None:
        children = (
            REQUESTS.labels(model, "" if version is None else str(version), api, str(code)),
            REQUEST_DURATION.labels(model, api),
        )
        if len(_children) >= _MAX_CACHED_CHILDREN:
            _children.clear()  # a bound against label churn; the series themselves stay
        _children[key] = children  # whole-entry assignment: safe without a lock under the GIL
    children[0].inc()
    children[1].observe(duration_s)


#: (model, version, api, code) → (request counter child, duration histogram child)
_children: dict[tuple[str, int | None, str, int], tuple[Counter, Histogram]] = {}
_MAX_CACHED_CHILDREN = 4096
