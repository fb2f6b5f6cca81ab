"""OpenTelemetry traces of infer/predict requests (docs/operations.md, "Traces").

Off unless OpenTelemetry's own environment says where to send spans: `configure()` turns it on
only when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set and
`OTEL_SDK_DISABLED` is not true; only then is the SDK (extra `[otel]`) imported. Off, the request
path reads one module attribute (`enabled`) and does nothing else.

On, `InferenceService.infer` opens one SERVER span per request, named `<protocol> <model>`, whose
parent is the W3C `traceparent` the API edge saw (`incoming`: HTTP header or gRPC metadata). The
queue, batch and execute spans are made afterwards on the event loop from timestamps that the
execution and batch threads record (`CallTiming`, `batching.BatchRecord`), so no thread but the
loop touches the SDK. Spans go out through the SDK's BatchSpanProcessor: a bounded queue and one
export thread, so a slow or absent collector drops spans (`pyserving_trace_spans_dropped_total`)
and never delays a request. The sampler is the SDK's (`OTEL_TRACES_SAMPLER`, `_ARG`).
"""

from __future__ import annotations

import logging
import os
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from pyserving import metrics
from pyserving.batching import BatchRecord

__all__ = [
    "CallTiming",
    "Incoming",
    "RequestSpan",
    "configure",
    "current",
    "enabled",
    "incoming",
    "observe_edges",
    "observed",
    "protocol",
    "shutdown",
    "start_request",
]

logger = logging.getLogger("pyserving.tracing")

#: True once `configure` set up an exporter; read on every request (a plain attribute)
enabled = False
#: the API edges set `incoming`: tracing is on, or some model logs its requests (request_log)
observed = False
#: the OpenTelemetry tracer and provider while enabled (SDK objects: typed Any, the SDK is optional)
_tracer: Any = None
_provider: Any = None


@dataclass(frozen=True, slots=True)
class Incoming:
    """What the API edge knows of a request before the service sees it."""

    #: "v2-rest", "v2-grpc", "tfserving-rest" or "tfserving-grpc"
    protocol: str
    #: the W3C traceparent sent with the request, or None
    traceparent: str | None = None
    #: the HTTP method (REST only)
    http_method: str | None = None


#: set by the API edge (only while `observed`), read by `start_request` and `protocol`
incoming: ContextVar[Incoming | None] = ContextVar("pyserving_trace_incoming", default=None)


def protocol() -> str:
    """The current request's protocol as its API edge named it ("python": none did)."""
    seen = incoming.get()
    return seen.protocol if seen is not None else "python"


class CallTiming:
    """When one model call was queued, started and returned (epoch ns; 0 = not yet).

    Thread-safety: written by the one thread that runs the call, read on the loop after it."""

    __slots__ = ("ended_ns", "queued_ns", "started_ns")

    def __init__(self) -> None:
        self.queued_ns = time.time_ns()
        self.started_ns = 0
        self.ended_ns = 0


class RequestSpan:
    """One request's SERVER span and the child spans made from its timings.

    Thread-safety: used on the request's event loop only. Ownership: `finish` ends the span."""

    __slots__ = ("_span", "context")

    def __init__(self, span: Any, context: Any) -> None:
        self._span = span
        #: the span's OpenTelemetry context (the parent of the children)
        self.context = context

    @property
    def span_context(self) -> Any:
        """The SpanContext a batch span links to."""
        return self._span.get_span_context()

    def add_call(self, timing: CallTiming) -> None:
        """`queue` and `execute` children of one call on a model's execution thread."""
        now = time.time_ns()
        started = timing.started_ns or now
        self._child("queue", timing.queued_ns, started)
        if timing.started_ns:
            self._child("execute", started, timing.ended_ns or now)

    def add_batch(self, queued_ns: int, record: BatchRecord | None) -> None:
        """`queue` and `execute` children of a request that ran in a batch, the execute span
        linked to the batch's one span (made by the first of its requests to get here)."""
        now = time.time_ns()
        if record is None:  # dropped before its batch ran (deadline, cancellation)
            self._child("queue", queued_ns, now)
            return
        self._child("queue", queued_ns, record.started_ns)
        batch_context = _batch_span(record)
        links = [_link(batch_context)] if batch_context is not None else None
        self._child("execute", record.started_ns, record.ended_ns or now, links)

    def finish(self, version: int | None, code: str) -> None:
        """End the span with the version that answered and the status code's name."""
        span = self._span
        if version is not None:
            span.set_attribute("pyserving.version", version)
        span.set_attribute("pyserving.status", code)
        if code != "OK":
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, code))
        span.end()

    def _child(self, name: str, start_ns: int, end_ns: int, links: Any = None) -> None:
        child = _tracer.start_span(name, context=self.context, start_time=start_ns, links=links)
        child.end(end_time=max(start_ns, end_ns))


#: the current request's span (set by `InferenceService.infer` while tracing is enabled)
current: ContextVar[RequestSpan | None] = ContextVar("pyserving_trace_span", default=None)


def start_request(model: str) -> RequestSpan | None:
    """The SERVER span of a request for `model`, or None when it is not sampled (then no
    child is made either). Call only while `enabled`."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    seen = incoming.get()
    protocol = seen.protocol if seen is not None else "python"
    parent = None
    if seen is not None and seen.traceparent:
        parent = TraceContextTextMapPropagator().extract({"traceparent": seen.traceparent})
    attributes: dict[str, str] = {"pyserving.model": model, "pyserving.protocol": protocol}
    if seen is not None and seen.http_method:
        attributes["http.request.method"] = seen.http_method
    elif protocol.endswith("grpc"):
        attributes["rpc.system"] = "grpc"
    span = _tracer.start_span(
        f"{protocol} {model}", context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
    )
    if not span.is_recording():
        return None
    return RequestSpan(span, trace.set_span_in_context(span))


def configure(environ: dict[str, str] | None = None) -> bool:
    """Turn tracing on when OpenTelemetry's environment names an OTLP endpoint (and the SDK
    is not disabled); True when it is on. Raises nothing: a missing `[otel]` extra is logged."""
    global enabled, _tracer, _provider
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if not (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError as exc:
        logger.error(
            "an OTLP endpoint is set but OpenTelemetry is not installed (pip install"
            " 'pyserving[otel]'): tracing is off (%s)",
            exc,
        )
        return False
    provider = TracerProvider(
        resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "pyserving"})
    )
    provider.add_span_processor(_counting_processor(OTLPSpanExporter()))
    _provider = provider
    _tracer = provider.get_tracer("pyserving")
    enabled = True
    observe_edges(True)
    logger.info("tracing: exporting spans over OTLP/HTTP")
    return True


def observe_edges(on: bool) -> None:
    """Have the API edges record `incoming` (`on`), or not (unless tracing still needs it)."""
    global observed
    observed = on or enabled


def shutdown(timeout_s: float = 5.0) -> None:
    """Export what is queued (up to `timeout_s`) and turn tracing off."""
    global enabled, _tracer, _provider
    provider, _provider = _provider, None
    enabled = False
    _tracer = None
    if provider is not None:
        provider.force_flush(int(timeout_s * 1000))
        provider.shutdown()


def _counting_processor(exporter: Any) -> Any:
    """The SDK's BatchSpanProcessor (bounded queue, `OTEL_BSP_*` settings), counting the spans
    its full queue drops."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    class CountingProcessor(BatchSpanProcessor):
        def on_end(self, span: Any) -> None:
            inner = getattr(self, "_batch_processor", None)
            queue = getattr(inner, "_queue", None)
            if queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen:
                metrics.TRACE_SPANS_DROPPED.inc()
            super().on_end(span)

    return CountingProcessor(exporter)


def _batch_span(record: BatchRecord) -> Any:
    """The SpanContext of `record`'s one span, made on first call: a child of the first traced
    request of the batch, linked to every traced request in it."""
    with record.lock:
        if record.span_context is None and record.traces:
            from opentelemetry import trace

            first = record.traces[0]
            assert isinstance(first, RequestSpan)
            links = [_link(t.span_context) for t in record.traces if isinstance(t, RequestSpan)]
            span = _tracer.start_span(
                f"batch {record.model}",
                context=first.context,
                start_time=record.started_ns,
                links=links,
                attributes={"pyserving.batch_size": record.size, "pyserving.model": record.model},
            )
            span.end(end_time=max(record.started_ns, record.ended_ns or time.time_ns()))
            record.span_context = trace.SpanContext(
                span.get_span_context().trace_id,
                span.get_span_context().span_id,
                is_remote=False,
                trace_flags=span.get_span_context().trace_flags,
            )
        return record.span_context


def _link(span_context: Any) -> Any:
    from opentelemetry.trace import Link

    return Link(span_context)
