"""The `pyserving serve` command: from its parsed flags to a serving process (or a `--workers`
supervisor), and back: options, ports, the core's start and its stop after the drain."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import prometheus_client

from pyserving import metrics, tf_flags
from pyserving.api.control_auth import ControlAuth, ControlTokenError, load_control_token
from pyserving.api.tls import TlsConfig, TlsConfigError, load_tls_config
from pyserving.cli_flags import build_parser
from pyserving.cli_listeners import Drain, TransportLimits, exit_now, serve_listeners
from pyserving.errors import ServingError
from pyserving.listen_ports import PortTaken, bind_listeners, bind_port
from pyserving.logs import configure_logging
from pyserving.serving import tracing
from pyserving.serving.config import ModelConfig, ModelServerConfig
from pyserving.serving.server_core import ServerCore, ServerOptions
from pyserving.sources.storage_path import VersionPolicy
from pyserving.workers.hooks import WorkerHooks

logger = logging.getLogger("pyserving")


def serve_as_worker(argv: Sequence[str], worker: WorkerHooks) -> int:
    """`pyserving serve` in a `--workers` worker: the supervisor's serve command line."""
    return run_serve_command(build_parser().parse_args(list(argv)), worker=worker)


def run_serve_command(
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
    try:
        bind = functools.partial(bind_port, reuse_port=worker is not None)
        sock, grpc_probe = bind_listeners(options.host, options.rest_api_port, options.port, bind)
    except PortTaken as exc:
        print(exc, file=sys.stderr)
        return 2
    if grpc_probe is not None:  # probed here: grpc reports a taken port only as a C-core log line
        grpc_probe.close()
    metrics.PENDING_REQUESTS.set_function(lambda: core.service.pending_requests)
    # OpenTelemetry's environment (OTEL_EXPORTER_OTLP_ENDPOINT, ...): off when it names none
    tracing.configure()
    drain = Drain(
        args.drain_timeout_seconds,
        args.body_read_timeout_seconds,
        args.access_log,
        TransportLimits(args, options.max_request_bytes),
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
        _run_event_loop(serve_listeners(core, options, sock, drain, tls, auth, worker))
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
            exit_now(1)
    tracing.shutdown()
    logger.info("server stopped")
    return 0


#: the least time given to unloading models after the drain
_MIN_UNLOAD_WAIT_S = 10.0
#: ... and the least when a model call is stuck (the drain timeout bounds the exit then)
_STUCK_UNLOAD_WAIT_S = 0.5


def _demo_config(root: Path) -> ModelServerConfig:
    return ModelServerConfig(
        (
            ModelConfig("mlp", str(root / "mlp"), version_policy=VersionPolicy.latest(2)),
            ModelConfig("twoio", str(root / "twoio")),
        )
    )


def _run_event_loop(coro: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


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
