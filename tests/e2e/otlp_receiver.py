"""A real OTLP/HTTP trace receiver on 127.0.0.1: decodes every ExportTraceServiceRequest."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


class OtlpReceiver:
    """Collects the spans POSTed to /v1/traces; `wait_for` blocks until a predicate holds."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.posts = 0
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                with receiver._cond:
                    receiver.posts += 1
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            receiver.spans.extend(scope.spans)
                    receiver._cond.notify_all()
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(
        self, found: Callable[[list[trace_pb2.Span]], bool], timeout_s: float = 30.0
    ) -> list[trace_pb2.Span]:
        """The spans received so far, once `found(spans)` is true (AssertionError at timeout)."""
        with self._cond:
            if not self._cond.wait_for(lambda: found(self.spans), timeout_s):
                raise AssertionError(f"spans not received in time: {[s.name for s in self.spans]}")
            return list(self.spans)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
