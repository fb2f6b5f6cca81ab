"""The flag table of `pyserving`: every subcommand and flag, in both spellings."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pyserving import __version__, tf_flags
from pyserving.api.grpc.server import GrpcOptions
from pyserving.api.rest.http_server import HttpOptions
from pyserving.cli_flag_types import (
    boolean,
    comma_list,
    file_name,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    worker_count,
)
from pyserving.cli_help import SERVE_EXAMPLES, HelpFormatter, Parser
from pyserving.logs import LOG_FORMATS, LOG_LEVELS
from pyserving.serving.server_core import ServerOptions

#: the description `pyserving --help` starts with
_DESCRIPTION = "`pyserving serve | demo | --version`: flags in both spellings, wiring only."


def normalize_flag_spellings(argv: Sequence[str]) -> list[str]:
    """Accept TF Serving's `--rest_api_port` as well as `--rest-api-port` (with `=` or a space)."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            flag, eq, value = arg.partition("=")
            arg = flag.replace("_", "-") + eq + value
        out.append(arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pyserving", description=_DESCRIPTION, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"pyserving {__version__}")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser(
        "serve",
        help="serve models over REST and gRPC",
        usage="%(prog)s [FLAG ...]",
        description="Serve models over TF Serving and KServe V2 REST and gRPC.\nEvery flag also"
        " takes TF Serving's spelling (--rest_api_port=8501).",
        epilog=SERVE_EXAMPLES,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    serve.add_argument("--version", action="version", version=f"pyserving {__version__}")
    defaults = ServerOptions()
    serve.add_argument(
        "--port",
        type=non_negative_int,
        default=defaults.port,
        help="gRPC port (TF Serving and KServe V2 gRPC); 0 = off",
    )
    serve.add_argument(
        "--rest-api-port",
        type=non_negative_int,
        default=defaults.rest_api_port,
        help="REST port (TF Serving and KServe V2 REST, metrics, status page); 0 = off",
    )
    serve.add_argument("--host", default=defaults.host, help="address both listeners bind")
    serve.add_argument(
        "--model-name",
        default=defaults.model_name,
        help="name of the --model_base_path model (ignored with --model_config_file)",
    )
    serve.add_argument(
        "--model-base-path",
        metavar="PATH",
        help="serve one model: its versions are the numbered directories under PATH"
        " (a local path or s3://, gs://, ... URL)",
    )
    serve.add_argument(
        "--model-config-file",
        metavar="FILE",
        help="serve the models in FILE: YAML (.yaml/.yml) or a TF Serving ModelServerConfig"
        " text proto (any other name); --model_name/--model_base_path are then ignored",
    )
    serve.add_argument(
        "--file-system-poll-wait-seconds",
        type=float,
        default=defaults.file_system_poll_wait_seconds,
        help="look for new and removed versions this often (seconds); 0 = once at start",
    )
    serve.add_argument(
        "--num-load-threads",
        type=non_negative_int,
        default=defaults.num_load_threads,
        help="threads that load model versions",
    )
    serve.add_argument(
        "--num-unload-threads",
        type=non_negative_int,
        default=defaults.num_unload_threads,
        help="threads that unload model versions",
    )
    serve.add_argument(
        "--max-num-load-retries",
        type=non_negative_int,
        default=defaults.max_num_load_retries,
        help="retries after a failed load before the version is given up; 0 = no retry",
    )
    serve.add_argument(
        "--load-retry-interval-micros",
        type=int,
        default=defaults.load_retry_interval_micros,
        help="wait before the first retry (microseconds), doubling after each",
    )
    serve.add_argument(
        "--total-model-memory-limit-bytes",
        type=non_negative_int,
        metavar="BYTES",
        help="RAM budget for loaded models (estimated from their files); default: unlimited",
    )
    serve.add_argument(
        "--version-transition-policy",
        choices=("availability", "resource"),
        default=defaults.version_transition_policy,
        help="availability: load the new version before unloading the old one;"
        " resource: unload first (never two versions in memory)",
    )
    serve.add_argument(
        "--rest-api-timeout-in-ms",
        type=non_negative_int,
        default=defaults.rest_api_timeout_in_ms,
        help="deadline of a REST predict/infer request (queueing and execution); 0 = none",
    )
    serve.add_argument(
        "--max-request-bytes",
        type=non_negative_int,
        default=defaults.max_request_bytes,
        help="largest REST body (after decompression) or gRPC message; larger ones get 413",
    )
    serve.add_argument(
        "--model-cache-dir",
        help="local copies of remote (s3://, gs://, ...) versions; must be private to this user"
        " (0700); default: $XDG_CACHE_HOME/pyserving/model-cache or ~/.cache/pyserving/model-cache",
    )
    serve.add_argument(
        "--version-ready-marker",
        type=file_name,
        default=defaults.version_ready_marker,
        help="a version counts only once this file (e.g. _READY) exists in its directory",
    )
    serve.add_argument(
        "--enable-batching",
        type=boolean,
        nargs="?",
        const=True,
        default=defaults.enable_batching,
        help="batch requests to every model (per-model `batching:` in the config overrides)",
    )
    serve.add_argument(
        "--batching-parameters-file",
        help="BatchingParameters as a TF text proto, or YAML (.yaml/.yml); needs --enable_batching",
    )
    serve.add_argument(
        "--model-config-file-poll-wait-seconds",
        type=float,
        default=defaults.model_config_file_poll_wait_seconds,
        help="re-read --model_config_file this often and apply changes; 0 = read it once",
    )
    serve.add_argument(
        "--enable-model-warmup",
        type=boolean,
        nargs="?",
        const=True,
        default=defaults.enable_model_warmup,
        help="replay a version's warmup/ requests before it becomes AVAILABLE",
    )
    serve.add_argument(
        "--num-request-iterations-for-warmup",
        type=non_negative_int,
        default=defaults.num_request_iterations_for_warmup,
        help="times each warmup request is replayed (0 = 1)",
    )
    serve.add_argument(
        "--allow-version-labels-for-unavailable-models",
        type=boolean,
        nargs="?",
        const=True,
        default=defaults.allow_version_labels_for_unavailable_models,
        help="on reload, let a new label name a version that is not AVAILABLE yet",
    )
    serve.add_argument(
        "--enable-model-control",
        type=boolean,
        nargs="?",
        const=True,
        default=defaults.enable_model_control,
        help="allow load/unload/reload over the network (V2 repository API, ReloadConfig)",
    )
    serve.add_argument(
        "--model-control-roots",
        type=comma_list,
        default=defaults.model_control_roots,
        metavar="PREFIX[,PREFIX...]",
        help="comma-separated paths or URL prefixes that a ReloadConfig base path may lie under,"
        " besides the base paths the server started with",
    )
    serve.add_argument(
        "--control-token-file",
        metavar="FILE",
        help="model-control calls must send 'Authorization: Bearer <the token in FILE>'"
        " (read once at start; default: no token needed)",
    )
    serve.add_argument(
        "--allow-python-servables",
        type=boolean,
        nargs="?",
        const=True,
        default=defaults.allow_python_servables,
        help="let the --model_base_path model load a servable.py, which runs code as this user"
        " (config-file models: `allow_python: true` per model)",
    )
    serve.add_argument(
        "--ssl-config-file",
        metavar="FILE",
        help="TLS for gRPC and REST: a TF Serving SSLConfig text proto (server_key, server_cert,"
        " custom_ca, client_verify for mutual TLS); default: plain text",
    )
    serve.add_argument(
        "--log-level", default="info", choices=LOG_LEVELS, help="least severe level logged"
    )
    serve.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="text lines, or one JSON object per line",
    )
    serve.add_argument(
        "--access-log",
        type=boolean,
        nargs="?",
        const=True,
        default=False,
        help="log one line per REST request: client, method, path, status, duration, model",
    )
    serve.add_argument(
        "--drain-timeout-seconds",
        type=non_negative_float,
        default=30.0,
        help="on SIGTERM/SIGINT, wait this long for in-flight requests before cancelling them",
    )
    serve.add_argument(
        "--body-read-timeout-seconds",
        type=non_negative_float,
        default=60.0,
        help="a REST request body must arrive within this time, else 408; 0 = no limit",
    )
    _add_transport_flags(serve)
    serve.add_argument(
        "--workers",
        type=worker_count,
        default=1,
        metavar="N|auto",
        help="serving processes sharing both ports under one supervisor (auto: one per CPU this"
        " process may use; at most 4 per CPU); 1 = one process, no supervisor",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="write the demo repository to a new private temp dir, serve it, remove it at exit",
    )

    tf_flags.add_compat_flags(serve)

    demo = commands.add_parser("demo", help="write a demo model repository (made locally)")
    demo.add_argument("dir", type=Path)
    return parser


def _add_transport_flags(serve: argparse.ArgumentParser) -> None:
    """Limits of the listeners (issue 14); --max-request-bytes bounds REST bodies and gRPC
    messages alike."""
    http, grpc_defaults = HttpOptions(), GrpcOptions()
    serve.add_argument(
        "--max-inflight-request-bytes",
        type=non_negative_int,
        default=512 * 1024 * 1024,
        metavar="BYTES",
        help="request bytes held at once, REST and gRPC together; a request past it gets"
        " 503/UNAVAILABLE (one request is always admitted); 0 = no budget",
    )
    serve.add_argument(
        "--rest-max-connections",
        type=positive_int,
        default=http.max_connections,
        help="open REST connections; one more is answered 503 and closed",
    )
    serve.add_argument(
        "--rest-write-timeout-seconds",
        type=positive_float,
        default=http.write_timeout_s,
        help="a REST client that reads none of its response for this long is disconnected",
    )
    serve.add_argument(
        "--grpc-max-connections",
        type=positive_int,
        default=grpc_defaults.max_connections,
        help="open gRPC connections; one more is closed at once (serve raises its soft"
        " open-files limit to this plus --rest-max-connections plus 256, the hard limit"
        " allowing)",
    )
    serve.add_argument(
        "--grpc-max-concurrent-rpcs",
        type=non_negative_int,
        default=grpc_defaults.max_concurrent_rpcs,
        help="gRPC calls served at once; more get RESOURCE_EXHAUSTED; 0 = no bound (health"
        " and readiness calls have a pool of the same size of their own)",
    )
    serve.add_argument(
        "--grpc-max-concurrent-streams",
        type=positive_int,
        default=grpc_defaults.max_concurrent_streams,
        help="gRPC streams one connection may open at once",
    )
    serve.add_argument(
        "--grpc-max-connection-idle-seconds",
        type=non_negative_float,
        default=grpc_defaults.max_connection_idle_s,
        help="close a gRPC connection that has had no call for this long; 0 = never",
    )
    serve.add_argument(
        "--grpc-keepalive-time-seconds",
        type=positive_float,
        default=grpc_defaults.keepalive_time_s,
        help="ping a quiet gRPC connection this often to find dead peers",
    )
    serve.add_argument(
        "--grpc-keepalive-timeout-seconds",
        type=positive_float,
        default=grpc_defaults.keepalive_timeout_s,
        help="close a gRPC connection whose keepalive ping is unanswered this long",
    )
    serve.add_argument(
        "--grpc-stream-message-timeout-seconds",
        type=non_negative_float,
        default=grpc_defaults.stream_message_timeout_s,
        help="a gRPC client stream (ModelStreamInfer) whose next message does not arrive"
        " within this time ends with DEADLINE_EXCEEDED; 0 = no limit",
    )
    serve.add_argument(
        "--grpc-request-timeout-seconds",
        type=non_negative_float,
        default=grpc_defaults.request_timeout_s,
        help="a unary gRPC call whose request message has not fully arrived within this time"
        " ends with DEADLINE_EXCEEDED; 0 = no limit",
    )
    serve.add_argument(
        "--grpc-max-streaming-calls",
        type=non_negative_int,
        default=grpc_defaults.max_streaming_calls,
        help="gRPC streaming calls (ModelStreamInfer, health Watch) open at once; more get"
        " RESOURCE_EXHAUSTED; they count in --grpc-max-concurrent-rpcs too; 0 = no bound",
    )


def serve_parser() -> argparse.ArgumentParser:
    """The parser of `pyserving serve` (its flags are documented from it)."""
    return subparser(build_parser(), "serve")


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The subcommand `name` of `parser`; raises KeyError when it has none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)
