"""`pyserving serve | demo | --version`: flags in both spellings, wiring only."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import prometheus_client

from pyserving import __version__, metrics, tf_flags
from pyserving.api.control_auth import ControlAuth, ControlTokenError, load_control_token
from pyserving.api.grpc.server import GrpcOptions, GrpcServer
from pyserving.api.limits import RequestBytesBudget
from pyserving.api.rest.app import ASGIApp, RestOptions, create_app
from pyserving.api.rest.http_server import HttpOptions, HttpServer
from pyserving.api.tls import TlsConfig, TlsConfigError, load_tls_config
from pyserving.cli_help import SERVE_EXAMPLES, HelpFormatter, Parser
from pyserving.errors import ServingError
from pyserving.logs import LOG_FORMATS, LOG_LEVELS, configure_logging
from pyserving.serving import tracing
from pyserving.serving.config import ModelConfig, ModelServerConfig
from pyserving.serving.monitoring import watch_event_loop_lag
from pyserving.serving.server_core import ServerCore, ServerOptions
from pyserving.sources.storage_path import VersionPolicy
from pyserving.workers.hooks import WorkerHooks

logger = logging.getLogger("pyserving")

_SUBCOMMANDS = ("serve", "demo")


def normalize_flag_spellings(argv: Sequence[str]) -> list[str]:
    """Accept TF Serving's `--rest_api_port` as well as `--rest-api-port` (with `=` or a space)."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            flag, eq, value = arg.partition("=")
            arg = flag.replace("_", "-") + eq + value
        out.append(arg)
    return out


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _bool(text: str) -> bool:
    """TF Serving's boolean flag values: `--flag`, `--flag=true|false|1|0`."""
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _file_name(text: str) -> str:
    if "/" in text or "\\" in text or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"expected a plain file name, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pyserving", description=__doc__, allow_abbrev=False)
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
        type=_non_negative_int,
        default=defaults.port,
        help="gRPC port (TF Serving and KServe V2 gRPC); 0 = off",
    )
    serve.add_argument(
        "--rest-api-port",
        type=_non_negative_int,
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
        type=_non_negative_int,
        default=defaults.num_load_threads,
        help="threads that load model versions",
    )
    serve.add_argument(
        "--num-unload-threads",
        type=_non_negative_int,
        default=defaults.num_unload_threads,
        help="threads that unload model versions",
    )
    serve.add_argument(
        "--max-num-load-retries",
        type=_non_negative_int,
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
        type=_non_negative_int,
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
        type=_non_negative_int,
        default=defaults.rest_api_timeout_in_ms,
        help="deadline of a REST predict/infer request (queueing and execution); 0 = none",
    )
    serve.add_argument(
        "--max-request-bytes",
        type=_non_negative_int,
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
        type=_file_name,
        default=defaults.version_ready_marker,
        help="a version counts only once this file (e.g. _READY) exists in its directory",
    )
    serve.add_argument(
        "--enable-batching",
        type=_bool,
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
        type=_bool,
        nargs="?",
        const=True,
        default=defaults.enable_model_warmup,
        help="replay a version's warmup/ requests before it becomes AVAILABLE",
    )
    serve.add_argument(
        "--num-request-iterations-for-warmup",
        type=_non_negative_int,
        default=defaults.num_request_iterations_for_warmup,
        help="times each warmup request is replayed (0 = 1)",
    )
    serve.add_argument(
        "--allow-version-labels-for-unavailable-models",
        type=_bool,
        nargs="?",
        const=True,
        default=defaults.allow_version_labels_for_unavailable_models,
        help="on reload, let a new label name a version that is not AVAILABLE yet",
    )
    serve.add_argument(
        "--enable-model-control",
        type=_bool,
        nargs="?",
        const=True,
        default=defaults.enable_model_control,
        help="allow load/unload/reload over the network (V2 repository API, ReloadConfig)",
    )
    serve.add_argument(
        "--model-control-roots",
        type=_comma_list,
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
        type=_bool,
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
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="log one line per REST request: client, method, path, status, duration, model",
    )
    serve.add_argument(
        "--drain-timeout-seconds",
        type=_non_negative_float,
        default=30.0,
        help="on SIGTERM/SIGINT, wait this long for in-flight requests before cancelling them",
    )
    serve.add_argument(
        "--body-read-timeout-seconds",
        type=_non_negative_float,
        default=60.0,
        help="a REST request body must arrive within this time, else 408; 0 = no limit",
    )
    _add_transport_flags(serve)
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N|auto",
        help="serving processes sharing both ports under one supervisor (auto: one per CPU this"
        " process may use); 1 = one process, no supervisor",
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
        type=_non_negative_int,
        default=512 * 1024 * 1024,
        metavar="BYTES",
        help="request bytes held at once, REST and gRPC together; a request past it gets"
        " 503/UNAVAILABLE (one request is always admitted); 0 = no budget",
    )
    serve.add_argument(
        "--rest-max-connections",
        type=_positive_int,
        default=http.max_connections,
        help="open REST connections; one more is answered 503 and closed",
    )
    serve.add_argument(
        "--rest-write-timeout-seconds",
        type=_positive_float,
        default=http.write_timeout_s,
        help="a REST client that reads none of its response for this long is disconnected",
    )
    serve.add_argument(
        "--grpc-max-connections",
        type=_positive_int,
        default=grpc_defaults.max_connections,
        help="open gRPC connections; one more is closed at once (serve raises its soft"
        " open-files limit to this plus --rest-max-connections plus 256, the hard limit"
        " allowing)",
    )
    serve.add_argument(
        "--grpc-max-concurrent-rpcs",
        type=_non_negative_int,
        default=grpc_defaults.max_concurrent_rpcs,
        help="gRPC calls served at once; more get RESOURCE_EXHAUSTED; 0 = no bound (health"
        " and readiness calls have a pool of the same size of their own)",
    )
    serve.add_argument(
        "--grpc-max-concurrent-streams",
        type=_positive_int,
        default=grpc_defaults.max_concurrent_streams,
        help="gRPC streams one connection may open at once",
    )
    serve.add_argument(
        "--grpc-max-connection-idle-seconds",
        type=_non_negative_float,
        default=grpc_defaults.max_connection_idle_s,
        help="close a gRPC connection that has had no call for this long; 0 = never",
    )
    serve.add_argument(
        "--grpc-keepalive-time-seconds",
        type=_positive_float,
        default=grpc_defaults.keepalive_time_s,
        help="ping a quiet gRPC connection this often to find dead peers",
    )
    serve.add_argument(
        "--grpc-keepalive-timeout-seconds",
        type=_positive_float,
        default=grpc_defaults.keepalive_timeout_s,
        help="close a gRPC connection whose keepalive ping is unanswered this long",
    )
    serve.add_argument(
        "--grpc-stream-message-timeout-seconds",
        type=_non_negative_float,
        default=grpc_defaults.stream_message_timeout_s,
        help="a gRPC client stream (ModelStreamInfer) whose next message does not arrive"
        " within this time ends with DEADLINE_EXCEEDED; 0 = no limit",
    )
    serve.add_argument(
        "--grpc-request-timeout-seconds",
        type=_non_negative_float,
        default=grpc_defaults.request_timeout_s,
        help="a unary gRPC call whose request message has not fully arrived within this time"
        " ends with DEADLINE_EXCEEDED; 0 = no limit",
    )
    serve.add_argument(
        "--grpc-max-streaming-calls",
        type=_non_negative_int,
        default=grpc_defaults.max_streaming_calls,
        help="gRPC streaming calls (ModelStreamInfer, health Watch) open at once; more get"
        " RESOURCE_EXHAUSTED; they count in --grpc-max-concurrent-rpcs too; 0 = no bound",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _workers(text: str) -> int:
    if text == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    return _positive_int(text)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


#: descriptors besides REST and gRPC connections: model files, logs, pipes
_OTHER_FILES = 256


def _fit_open_files_limit(needed: int) -> None:
    """Raise this process's soft open-files limit towards `needed` (never above the hard one),
    so that the connection cap, not accept() failing with EMFILE, is what refuses connections."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        logger.warning(
            "open-files limit %d is below --rest_max_connections + --grpc_max_connections + %d:"
            " connections past it wait in the listen queue (raise `ulimit -n` or lower the caps)",
            target,
            _OTHER_FILES,
        )


class _TransportLimits:
    """The listeners' limits from the flags; the one in-flight budget REST and gRPC share."""

    def __init__(self, args: argparse.Namespace, max_request_bytes: int) -> None:
        self.budget = RequestBytesBudget(args.max_inflight_request_bytes)
        self.http = HttpOptions(
            max_connections=args.rest_max_connections,
            write_timeout_s=args.rest_write_timeout_seconds,
        )
        self.grpc = GrpcOptions(
            max_message_bytes=max_request_bytes,
            max_connections=args.grpc_max_connections,
            max_concurrent_rpcs=args.grpc_max_concurrent_rpcs,
            max_concurrent_streams=args.grpc_max_concurrent_streams,
            max_connection_idle_s=args.grpc_max_connection_idle_seconds,
            keepalive_time_s=args.grpc_keepalive_time_seconds,
            keepalive_timeout_s=args.grpc_keepalive_timeout_seconds,
            stream_message_timeout_s=args.grpc_stream_message_timeout_seconds,
            request_timeout_s=args.grpc_request_timeout_seconds,
            max_streaming_calls=args.grpc_max_streaming_calls,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args_in = normalize_flag_spellings(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0].startswith("--") and args_in[0] not in ("--version", "--help"):
        args_in = ["serve", *args_in]  # a bare tensorflow_model_server command line
    parser = build_parser()
    if args_in and args_in[0] == "serve":
        raw = list(sys.argv[1:] if argv is None else argv)
        raw = raw[1:] if raw and raw[0] == "serve" else raw
        serve = _subparser(parser, "serve")
        unknown = tf_flags.unknown_flag_message(raw, serve._option_string_actions)
        if unknown is not None:
            print(f"pyserving: {unknown}; see pyserving serve --help", file=sys.stderr)
            return 2
        if isinstance(serve, Parser):
            flags = (arg.partition("=")[0] for arg in raw if arg.startswith("--"))
            serve.typed = {normalize_flag_spellings([f])[0]: f for f in flags}
    args = parser.parse_args(args_in)
    if args.command == "demo":
        return _write_demo(args.dir)
    if args.command == "serve":
        return _serve(args, args_in)
    build_parser().print_help()
    return 2


def serve_as_worker(argv: Sequence[str], worker: WorkerHooks) -> int:
    """`pyserving serve` in a `--workers` worker: the supervisor's serve command line."""
    return _serve(build_parser().parse_args(list(argv)), worker=worker)


def serve_parser() -> argparse.ArgumentParser:
    """The parser of `pyserving serve` (its flags are documented from it)."""
    return _subparser(build_parser(), "serve")


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def _write_demo(root: Path) -> int:
    from pyserving.demo import write_demo_repository

    write_demo_repository(root)
    print(f"demo repository written to {root}: models mlp (versions 1, 2) and twoio (version 1)")
    return 0


def _demo_config(root: Path) -> ModelServerConfig:
    return ModelServerConfig(
        (
            ModelConfig("mlp", str(root / "mlp"), version_policy=VersionPolicy.latest(2)),
            ModelConfig("twoio", str(root / "twoio")),
        )
    )


def _serve(
    args: argparse.Namespace, argv: Sequence[str] = (), worker: WorkerHooks | None = None
) -> int:
    """Serve until SIGTERM; `argv` (the serve command line) starts the workers of a
    `--workers` supervisor; `worker` is set in a worker process."""
    configure_logging(args.log_level, args.log_format, args.access_log)
    refused = tf_flags.check_refused(args)
    if refused is not None:
        print(f"pyserving: {refused}", file=sys.stderr)
        return 2
    tf_flags.warn_ignored(args)
    # Each `_created` sample doubles the series count and no dashboard of ours reads it.
    prometheus_client.disable_created_metrics()
    try:
        tls = load_tls_config(args.ssl_config_file) if args.ssl_config_file else None
        auth = load_control_token(args.control_token_file) if args.control_token_file else None
    except (TlsConfigError, ControlTokenError) as exc:
        print(f"pyserving: {exc}", file=sys.stderr)
        return 2
    demo_root = worker.demo_root if worker is not None else None
    if args.demo and demo_root is None:
        from pyserving.demo import write_private_demo_repository

        demo_root = write_private_demo_repository()
        logger.info("demo repository written to %s (removed at exit)", demo_root)
    try:
        if worker is None and args.workers != 1:
            from pyserving.workers.supervisor import run_supervisor

            return run_supervisor(args, argv, demo_root)
        return _serve_models(args, tls, auth, demo_root, worker)
    finally:
        if demo_root is not None and worker is None:  # the supervisor's to remove
            shutil.rmtree(demo_root, ignore_errors=True)


def _serve_models(
    args: argparse.Namespace,
    tls: TlsConfig | None,
    auth: ControlAuth | None,
    demo_root: Path | None,
    worker: WorkerHooks | None = None,
) -> int:
    try:
        options = ServerOptions(
            port=args.port,
            rest_api_port=args.rest_api_port,
            host=args.host,
            model_name=args.model_name,
            model_base_path=args.model_base_path,
            model_config_file=args.model_config_file,
            model_config=_demo_config(demo_root) if demo_root is not None else None,
            file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
            num_load_threads=args.num_load_threads,
            num_unload_threads=args.num_unload_threads,
            max_num_load_retries=args.max_num_load_retries,
            load_retry_interval_micros=args.load_retry_interval_micros,
            total_model_memory_limit_bytes=args.total_model_memory_limit_bytes,
            version_transition_policy=args.version_transition_policy,
            rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
            max_request_bytes=args.max_request_bytes,
            model_cache_dir=args.model_cache_dir,
            version_ready_marker=args.version_ready_marker,
            enable_batching=args.enable_batching,
            batching_parameters_file=args.batching_parameters_file,
            model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
            enable_model_warmup=args.enable_model_warmup,
            num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
            allow_version_labels_for_unavailable_models=(
                args.allow_version_labels_for_unavailable_models
            ),
            enable_model_control=args.enable_model_control,
            model_control_roots=args.model_control_roots,
            allow_python_servables=args.allow_python_servables,
        )
        core = ServerCore(options) if worker is None else worker.build_core(options)
    except ServingError as exc:
        print(f"pyserving: {exc.message}", file=sys.stderr)
        return 2
    if options.rest_api_port == 0 and options.port == 0:
        print("pyserving: --port=0 and --rest_api_port=0 leave nothing to serve", file=sys.stderr)
        return 2
    sock = None
    try:
        if options.rest_api_port:
            sock = _bind(options.host, options.rest_api_port, reuse_port=worker is not None)
    except OSError as exc:
        print(
            _port_error("REST", "--rest_api_port", options.host, options.rest_api_port, exc),
            file=sys.stderr,
        )
        return 2
    if options.port:
        try:
            # Probed here: grpc reports a taken port only as a raw C-core log line.
            _bind(options.host, options.port, reuse_port=worker is not None).close()
        except OSError as exc:
            if sock is not None:
                sock.close()
            print(_port_error("gRPC", "--port", options.host, options.port, exc), file=sys.stderr)
            return 2
    metrics.PENDING_REQUESTS.set_function(lambda: core.service.pending_requests)
    # OpenTelemetry's environment (OTEL_EXPORTER_OTLP_ENDPOINT, ...): off when it names none
    tracing.configure()
    drain = _Drain(
        args.drain_timeout_seconds,
        args.body_read_timeout_seconds,
        args.access_log,
        _TransportLimits(args, options.max_request_bytes),
    )
    metrics.INFLIGHT_REQUEST_BYTES.set_function(lambda: drain.limits.budget.used_bytes)
    _fit_open_files_limit(args.rest_max_connections + args.grpc_max_connections + _OTHER_FILES)
    if auth is not None and not options.enable_model_control:
        logger.warning("--control-token-file has no effect without --enable-model-control")
    if options.allow_python_servables and options.model_config_file:
        logger.warning(
            "--allow-python-servables applies to the --model_base_path model only; with"
            " --model_config_file set `allow_python: true` on each model that needs it"
        )
    try:
        _run_event_loop(_serve_listeners(core, options, sock, drain, tls, auth, worker))
    except OSError as exc:  # the gRPC port could not be bound
        print(f"pyserving: {exc}", file=sys.stderr)
        return 2
    finally:
        if sock is not None:
            sock.close()
        # Unload every version; a request still running (the drain timed out) delays only its
        # own version's unload, and never beyond this bound. A call stuck in model code holds
        # its version for as long as it runs: then only what is left of the drain is waited for.
        unload_wait_s = max(args.drain_timeout_seconds, _MIN_UNLOAD_WAIT_S)
        if core.service.executor.stuck_calls:
            unload_wait_s = max(drain.remaining_s(), _STUCK_UNLOAD_WAIT_S)
        if not core.stop(timeout_s=unload_wait_s):
            logger.error("models did not unload in time (a model call is stuck): exiting now")
            _exit_now(1)
    tracing.shutdown()
    logger.info("server stopped")
    return 0


#: the least time given to unloading models after the drain
_MIN_UNLOAD_WAIT_S = 10.0
#: ... and the least when a model call is stuck (the drain timeout bounds the exit then)
_STUCK_UNLOAD_WAIT_S = 0.5


def _exit_now(code: int) -> None:
    """Flush the logs and end the process at once (threads stuck in model code cannot be
    joined, and a normal exit would wait for them)."""
    logging.shutdown()
    os._exit(code)


def _port_error(what: str, flag: str, host: str, port: int, exc: OSError) -> str:
    """One line for stderr: which listener could not bind, why, and which flag moves it."""
    reason = exc.strerror or str(exc)
    return (
        f"pyserving: cannot listen for {what} on {host}:{port}: {reason}"
        f" (another server on that port? choose another with {flag}=N, or {flag}=0 for none)"
    )


def _bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # --workers: every worker listens on the port; the kernel spreads connections
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _run_event_loop(coro: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


class _Drain:
    """The graceful-stop state of one `serve`: the first SIGTERM/SIGINT starts the drain, a
    second one exits at once.

    Thread-safety: signals arrive on the event loop; `is_draining` may be read from any thread.
    """

    def __init__(
        self,
        timeout_s: float,
        body_read_timeout_s: float,
        access_log: bool,
        limits: _TransportLimits,
    ) -> None:
        self.timeout_s = timeout_s
        self.body_read_timeout_s = body_read_timeout_s
        self.access_log = access_log
        self.limits = limits
        self.requested: asyncio.Event | None = None  # made on the serving loop
        self._draining = False
        self._started_at: float | None = None  # time.monotonic() when the drain started
        self._refused_before = 0  # _answers_refusing() when the drain started

    def is_draining(self) -> bool:
        return self._draining

    def install(self) -> None:
        """Handle SIGINT and SIGTERM on the running loop from now on."""
        loop = asyncio.get_running_loop()
        self.requested = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    def start(self) -> None:
        """Readiness answers false from now on (the first step of the drain)."""
        self._draining = True
        self._started_at = time.monotonic()
        self._refused_before = _answers_refusing()

    def report(self, still_running: int) -> None:
        """Log what the drain did, as clients saw it: how long it took, whether the timeout
        cut it short, and how many requests were answered 503 (CANCELLED on gRPC) meanwhile.

        `still_running`: calls whose clients were answered but whose model code still runs.
        """
        elapsed = self.timeout_s - self.remaining_s()
        refused = _answers_refusing() - self._refused_before
        running = f"; {still_running} call(s) still running in model code" if still_running else ""
        if elapsed >= self.timeout_s:
            logger.warning(
                "drain timed out after %gs: %d request(s) cancelled (answered 503 or CANCELLED)%s",
                self.timeout_s,
                refused,
                running,
            )
        elif refused or still_running:
            logger.warning(
                "drain finished in %.3fs, within its %gs: %d request(s) answered 503 or"
                " CANCELLED%s",
                elapsed,
                self.timeout_s,
                refused,
                running,
            )
        else:
            logger.info("drain finished in %.3fs: every in-flight request completed", elapsed)

    def remaining_s(self) -> float:
        """What is left of the drain timeout (all of it before the drain started)."""
        if self._started_at is None:
            return self.timeout_s
        return max(0.0, self.timeout_s - (time.monotonic() - self._started_at))

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        assert self.requested is not None
        if self.requested.is_set():
            logger.warning("received %s again: exiting now, without draining", name)
            _exit_now(1)
        logger.info(
            "received %s: draining (readiness false, no new connections, up to %gs for"
            " in-flight requests)",
            name,
            self.timeout_s,
        )
        self.requested.set()


def _answers_refusing() -> int:
    """Requests answered so far with 503 (REST, or gRPC UNAVAILABLE) or 499 (CANCELLED)."""
    return int(
        sum(
            sample.value
            for family in metrics.REQUESTS.collect()
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels.get("code") in ("503", "499")
        )
    )


async def _serve_listeners(
    core: ServerCore,
    options: ServerOptions,
    sock: socket.socket | None,
    drain: _Drain,
    tls: TlsConfig | None = None,
    auth: ControlAuth | None = None,
    worker: WorkerHooks | None = None,
) -> None:
    """Serve REST (on `sock`) and gRPC until SIGTERM/SIGINT, then drain: readiness goes false,
    both listeners stop accepting, in-flight requests finish (bounded by `drain.timeout_s`;
    later ones are cancelled). Models are unloaded by the caller afterwards. With `tls`, both
    listeners speak only TLS; with `auth`, model-control calls need its token."""
    drain.install()
    assert drain.requested is not None
    grpc_server: GrpcServer | None = None
    rest: HttpServer | None = None
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(drain.requested.wait())]
    lag_watcher = asyncio.ensure_future(watch_event_loop_lag(metrics.EVENT_LOOP_LAG.observe))
    control: Any = core if options.enable_model_control else None
    if control is not None and worker is not None:
        control = worker.model_control(core)
    load_first = worker is not None and worker.load_before_listening
    try:
        if load_first:
            await asyncio.to_thread(core.start)
        if options.port:
            grpc_server = GrpcServer(
                core.service,
                replace(
                    drain.limits.grpc,
                    host=options.host,
                    port=options.port,
                    reuse_port=worker is not None,
                    server_version=__version__,
                    tls=tls,
                ),
                ready_names=core.model_names,
                model_control=control,
                request_budget=drain.limits.budget,
                control_auth=auth,
            )
            await grpc_server.start()  # logs "gRPC API listening on HOST:PORT"
        if sock is not None:
            rest = HttpServer(
                options=drain.limits.http, app=_rest_app(core, options, drain, auth, control)
            )
            ssl_context: ssl.SSLContext | None = tls.ssl_context() if tls is not None else None
            await rest.start(sock, ssl=ssl_context)
            host, port = sock.getsockname()[:2]
            scheme = "https" if ssl_context is not None else "http"
            logger.info("REST API listening on %s://%s:%d", scheme, host, port)
        # Initial loads run off the event loop, so health/live answers while models load; a
        # daemon thread, so a SIGTERM during a long first load does not wait for it.
        if not load_first:
            threading.Thread(target=core.start, name="pyserving-initial-load", daemon=True).start()
        if worker is not None:
            worker.serving(core, lambda: drain.limits.budget.used_bytes)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        drain.start()
        # Calls that were abandoned before the drain (deadline) are no drained requests.
        stuck_before = core.service.executor.stuck_calls
        stopping: list[Awaitable[Any]] = []
        if rest is not None:
            stopping.append(rest.shutdown(drain.timeout_s))
        if grpc_server is not None:
            stopping.append(grpc_server.stop(drain.timeout_s))
        await asyncio.gather(*stopping)
        drain.report(max(0, core.service.pending_requests - stuck_before))
    finally:
        lag_watcher.cancel()
        for waiter in waiters:
            waiter.cancel()
        if grpc_server is not None:
            await grpc_server.stop(0)  # idempotent; stops it when serving failed early
        drain.uninstall()


def _rest_app(
    core: ServerCore,
    options: ServerOptions,
    drain: _Drain,
    auth: ControlAuth | None = None,
    control: Any = None,
) -> ASGIApp:
    return create_app(
        core.service,
        RestOptions(
            rest_api_timeout_in_ms=options.rest_api_timeout_in_ms,
            max_request_bytes=options.max_request_bytes,
            server_version=__version__,
            ready_names=core.model_names,
            model_control=control,
            control_auth=auth,
            is_draining=drain.is_draining,
            access_log=drain.access_log,
            body_read_timeout_s=drain.body_read_timeout_s,
            request_budget=drain.limits.budget,
            labels=lambda: {m.name: m.labels for m in core.config.models},
        ),
    )
