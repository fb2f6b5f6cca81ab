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
and never delays a request. The sampler is the SDK's (`OTEL_TRACES_SAMPLER`, `_ARG`), asked once
per request; spans are built finished (`ReadableSpan`) rather than through a Tracer: 4 µs per
unsampled request instead of 19, 27 µs per sampled one (three spans) instead of 106. Encoding
them for export (the SDK's OTLP encoder, ~20-40 µs a span, on the export thread) is what tracing
every request costs most (benchmarks/bench_tracing.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
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

    Spans are handed to the SDK's span processor as finished `ReadableSpan`s with the times the
    request recorded: the SDK's own sampler, id generator and exporter, without a live span
    object per step (that costs more than the request itself at thousands per second).
    Thread-safety: used on the request's event loop only. Ownership: `finish` ends the span."""

    __slots__ = ("_attributes", "_name", "_parent", "_start_ns", "span_context")

    def __init__(
        self, name: str, span_context: Any, parent: Any, attributes: dict[str, Any]
    ) -> None:
        self._name = name
        #: the SpanContext of this span (its children's parent; a batch span links to it)
        self.span_context = span_context
        self._parent = parent
        self._attributes = attributes
        self._start_ns = time.time_ns()

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
        links = (_sdk.Link(batch_context),) if batch_context is not None else ()
        self._child("execute", record.started_ns, record.ended_ns or now, links)

    def finish(self, version: int | None, code: str) -> None:
        """End the span with the version that answered and the status code's name."""
        attributes = self._attributes
        if version is not None:
            attributes["pyserving.version"] = version
        attributes["pyserving.status"] = code
        status = _sdk.ok if code == "OK" else _sdk.Status(_sdk.StatusCode.ERROR, code)
        _emit(
            self._name,
            self.span_context,
            self._parent,
            self._start_ns,
            time.time_ns(),
            attributes,
            kind=_sdk.SpanKind.SERVER,
            status=status,
        )

    def _child(self, name: str, start_ns: int, end_ns: int, links: tuple[Any, ...] = ()) -> None:
        _emit(
            name, _sdk.child_of(self.span_context), self.span_context, start_ns, end_ns, None, links
        )


#: the current request's span (set by `InferenceService.infer` while tracing is enabled)
current: ContextVar[RequestSpan | None] = ContextVar("pyserving_trace_span", default=None)


def start_request(model: str) -> RequestSpan | None:
    """The SERVER span of a request for `model`, or None when the sampler does not sample it
    (then no child is made either). Call only while `enabled`."""
    sdk = _sdk
    seen = incoming.get()
    protocol = seen.protocol if seen is not None else "python"
    parent_context = None
    parent = None
    if seen is not None and seen.traceparent:
        parent_context = sdk.propagator.extract({"traceparent": seen.traceparent})
        found = sdk.get_current_span(parent_context).get_span_context()
        parent = found if found.is_valid else None
    name = f"{protocol} {model}"
    attributes: dict[str, Any] = {"pyserving.model": model, "pyserving.protocol": protocol}
    if seen is not None and seen.http_method:
        attributes["http.request.method"] = seen.http_method
    elif protocol.endswith("grpc"):
        attributes["rpc.system"] = "grpc"
    trace_id = parent.trace_id if parent is not None else sdk.ids.generate_trace_id()
    sampled = sdk.sampler.should_sample(
        parent_context, trace_id, name, sdk.SpanKind.SERVER, attributes
    )
    if not sampled.decision.is_sampled():
        return None
    if sampled.attributes:
        attributes.update(sampled.attributes)
    span_context = sdk.SpanContext(
        trace_id,
        sdk.ids.generate_span_id(),
        is_remote=False,
        trace_flags=sdk.sampled_flags,
        trace_state=sampled.trace_state,
    )
    return RequestSpan(name, span_context, parent, attributes)


def configure(environ: dict[str, str] | None = None) -> bool:
    """Turn tracing on when OpenTelemetry's environment names an OTLP endpoint (and the SDK
    is not disabled); True when it is on. Raises nothing: a missing `[otel]` extra is logged."""
    global enabled, _sdk
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if not (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return False
    try:
        sdk = _Sdk(env)
    except ImportError as exc:
        logger.error(
            "an OTLP endpoint is set but OpenTelemetry is not installed (pip install"
            " 'pyserving[otel]'): tracing is off (%s)",
            exc,
        )
        return False
    _sdk = sdk
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
    global enabled
    sdk = _sdk
    enabled = False
    if sdk is not None:
        sdk.processor.force_flush(int(timeout_s * 1000))
        sdk.processor.shutdown()


class _Sdk:
    """The OpenTelemetry SDK objects tracing uses, imported and made once by `configure`."""

    def __init__(self, env: Mapping[str, str]) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        class CountingProcessor(BatchSpanProcessor):
            """The SDK's batch processor (bounded queue, `OTEL_BSP_*`), counting the spans its
            full queue drops."""

            def on_end(self, span: ReadableSpan) -> None:
                inner = getattr(self, "_batch_processor", None)
                queue = getattr(inner, "_queue", None)
                if queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen:
                    metrics.TRACE_SPANS_DROPPED.inc()
                super().on_end(span)

        # The provider reads OTEL_TRACES_SAMPLER(_ARG) and makes the id generator; its
        # sampler and ids are used as they are, its per-span Tracer machinery is not.
        provider = TracerProvider(
            resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "pyserving"})
        )
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        self.resource = provider.resource
        self.scope = InstrumentationScope("pyserving")
        self.processor = CountingProcessor(OTLPSpanExporter())
        self.propagator = TraceContextTextMapPropagator()
        self.get_current_span = trace.get_current_span
        self.ReadableSpan = ReadableSpan
        self.SpanContext = trace.SpanContext
        self.SpanKind = trace.SpanKind
        self.Link = trace.Link
        self.Status = trace.Status
        self.StatusCode = trace.StatusCode
        self.ok = trace.Status(trace.StatusCode.UNSET)
        self.sampled_flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)

    def child_of(self, parent: Any) -> Any:
        """A new span's SpanContext in `parent`'s trace, with its flags and state."""
        return self.SpanContext(
            parent.trace_id,
            self.ids.generate_span_id(),
            is_remote=False,
            trace_flags=parent.trace_flags,
            trace_state=parent.trace_state,
        )


#: the SDK's objects while enabled (None until `configure` turns tracing on)
_sdk: Any = None


def _emit(
    name: str,
    span_context: Any,
    parent: Any,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Any] | None,
    links: tuple[Any, ...] = (),
    kind: Any = None,
    status: Any = None,
) -> None:
    """Hand one finished span to the export queue (never waits: a full queue drops it)."""
    sdk = _sdk
    sdk.processor.on_end(
        sdk.ReadableSpan(
            name,
            context=span_context,
            parent=parent,
            resource=sdk.resource,
            attributes=attributes,
            links=links,
            kind=kind if kind is not None else sdk.SpanKind.INTERNAL,
            status=status if status is not None else sdk.ok,
            start_time=start_ns,
            end_time=max(start_ns, end_ns),
            instrumentation_scope=sdk.scope,
        )
    )


def _batch_span(record: BatchRecord) -> Any:
    """The SpanContext of `record`'s one span, made on first call: a child of the first traced
    request of the batch, linked to every traced request in it."""
    with record.lock:
        if record.span_context is None and record.traces:
            first = record.traces[0]
            assert isinstance(first, RequestSpan)
            context = _sdk.child_of(first.span_context)
            links = tuple(
                _sdk.Link(t.span_context) for t in record.traces if isinstance(t, RequestSpan)
            )
            _emit(
                f"batch {record.model}",
                context,
                first.span_context,
                record.started_ns,
                record.ended_ns or time.time_ns(),
                {"pyserving.batch_size": record.size, "pyserving.model": record.model},
                links,
            )
            record.span_context = context
        return record.span_context
