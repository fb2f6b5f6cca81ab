"""`pyserving serve | demo | --version`: flags in both spellings, wiring only."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import uvicorn

from pyserving import __version__
from pyserving.api.rest.app import RestOptions, create_app
from pyserving.errors import ServingError
from pyserving.serving.config import ModelConfig, ModelServerConfig
from pyserving.serving.server_core import ServerCore, ServerOptions
from pyserving.sources.storage_path import VersionPolicy

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyserving", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pyserving {__version__}")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="serve models over REST")
    defaults = ServerOptions()
    serve.add_argument(
        "--port",
        type=_non_negative_int,
        default=defaults.port,
        help="gRPC port (the gRPC API is not built yet; see issue 3)",
    )
    serve.add_argument("--rest-api-port", type=_non_negative_int, default=defaults.rest_api_port)
    serve.add_argument("--host", default=defaults.host)
    serve.add_argument("--model-name", default=defaults.model_name)
    serve.add_argument("--model-base-path")
    serve.add_argument("--model-config-file")
    serve.add_argument(
        "--file-system-poll-wait-seconds",
        type=float,
        default=defaults.file_system_poll_wait_seconds,
    )
    serve.add_argument(
        "--num-load-threads", type=_non_negative_int, default=defaults.num_load_threads
    )
    serve.add_argument(
        "--num-unload-threads", type=_non_negative_int, default=defaults.num_unload_threads
    )
    serve.add_argument(
        "--max-num-load-retries", type=_non_negative_int, default=defaults.max_num_load_retries
    )
    serve.add_argument(
        "--load-retry-interval-micros", type=int, default=defaults.load_retry_interval_micros
    )
    serve.add_argument("--total-model-memory-limit-bytes", type=_non_negative_int)
    serve.add_argument(
        "--version-transition-policy",
        choices=("availability", "resource"),
        default=defaults.version_transition_policy,
    )
    serve.add_argument(
        "--rest-api-timeout-in-ms", type=_non_negative_int, default=defaults.rest_api_timeout_in_ms
    )
    serve.add_argument(
        "--max-request-bytes", type=_non_negative_int, default=defaults.max_request_bytes
    )
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.add_argument(
        "--demo", action="store_true", help="write the demo repository to a temp dir and serve it"
    )

    demo = commands.add_parser("demo", help="write a demo model repository (made locally)")
    demo.add_argument("dir", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = normalize_flag_spellings(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0].startswith("--") and args_in[0] not in ("--version", "--help"):
        args_in = ["serve", *args_in]  # a bare tensorflow_model_server command line
    args = build_parser().parse_args(args_in)
    if args.command == "demo":
        return _write_demo(args.dir)
    if args.command == "serve":
        return _serve(args)
    build_parser().print_help()
    return 2


def _write_demo(root: Path) -> int:
    from pyserving.demo import write_demo_repository

    write_demo_repository(root)
    print(f"demo repository written to {root}: models mlp (versions 1, 2) and twoio (version 1)")
    return 0


def _demo_config() -> ModelServerConfig:
    from pyserving.demo import write_demo_repository

    root = write_demo_repository(Path(tempfile.gettempdir()) / "pyserving-demo")
    return ModelServerConfig(
        (
            ModelConfig("mlp", str(root / "mlp"), version_policy=VersionPolicy.latest(2)),
            ModelConfig("twoio", str(root / "twoio")),
        )
    )


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        options = ServerOptions(
            port=args.port,
            rest_api_port=args.rest_api_port,
            host=args.host,
            model_name=args.model_name,
            model_base_path=args.model_base_path,
            model_config_file=args.model_config_file,
            model_config=_demo_config() if args.demo else None,
            file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
            num_load_threads=args.num_load_threads,
            num_unload_threads=args.num_unload_threads,
            max_num_load_retries=args.max_num_load_retries,
            load_retry_interval_micros=args.load_retry_interval_micros,
            total_model_memory_limit_bytes=args.total_model_memory_limit_bytes,
            version_transition_policy=args.version_transition_policy,
            rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
            max_request_bytes=args.max_request_bytes,
        )
        core = ServerCore(options)
    except ServingError as exc:
        print(f"pyserving: {exc.message}", file=sys.stderr)
        return 2
    if options.rest_api_port == 0:
        print(
            "pyserving: --rest_api_port=0 leaves nothing to serve (gRPC comes with issue 3)",
            file=sys.stderr,
        )
        return 2
    try:
        sock = _bind(options.host, options.rest_api_port)
    except OSError as exc:
        print(
            f"pyserving: cannot listen on {options.host}:{options.rest_api_port}: {exc}",
            file=sys.stderr,
        )
        return 2
    try:
        _run_event_loop(_serve_rest(core, options, sock))
    finally:
        core.stop()
        sock.close()
    logger.info("server stopped")
    return 0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


class _Server(uvicorn.Server):
    """uvicorn's server with our own signal handling: stop, then unload, then exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        logger.info("received %s: stopping", signal.Signals(sig).name)
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


async def _serve_rest(core: ServerCore, options: ServerOptions, sock: socket.socket) -> None:
    app = create_app(
        core.service,
        RestOptions(
            rest_api_timeout_in_ms=options.rest_api_timeout_in_ms,
            max_request_bytes=options.max_request_bytes,
            server_version=__version__,
            ready_names=core.model_names,
        ),
    )
    config = uvicorn.Config(
        app,
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=30,
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    host, port = sock.getsockname()[:2]
    logger.info("REST API listening on http://%s:%d", host, port)
    if options.port:
        logger.warning("gRPC API (--port=%d) is not built yet; only REST is served", options.port)
    # Initial loads run off the event loop, so health/live answers while models load; a daemon
    # thread, so a SIGTERM during a long first load does not wait for it.
    threading.Thread(target=core.start, name="pyserving-initial-load", daemon=True).start()
    await serving
