"""Every `tensorflow_model_server` flag, in one table: an existing TF Serving command line starts
pyserving unchanged.

A flag pyserving implements is the serve parser's own flag (same name, `--a_b` or `--a-b`). Every
other TF Serving flag is added to the parser by `add_compat_flags`: it parses its value as TF
Serving would (a bad value still fails) and `warn_ignored` logs one warning line saying it has no
effect here and why. `unknown_flag_message` reports a flag neither knows in the spelling the user
typed, with the closest known flag. docs/tf-flags.md is `markdown_table`'s output (a test keeps the
two equal). The list is `tensorflow_model_server --help` (TF Serving's model_servers/main.cc).
"""

from __future__ import annotations

import argparse
import difflib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from pyserving.cli_flag_types import boolean

__all__ = [
    "TF_FLAGS",
    "TfFlag",
    "add_compat_flags",
    "check_refused",
    "implemented",
    "markdown_table",
    "unknown_flag_message",
    "warn_ignored",
]


@dataclass(frozen=True, slots=True)
class TfFlag:
    """One `tensorflow_model_server` flag: its value kind, TF Serving's default, and what it does
    in pyserving (for an ignored flag: why it has no effect, and what to use instead)."""

    name: str
    kind: str  # "bool" | "int" | "float" | "str"
    tf_default: str
    note: str


_B, _I, _F, _S = "bool", "int", "float", "str"

#: TF Serving's flags, in the order of its `--help`
TF_FLAGS: tuple[TfFlag, ...] = (
    TfFlag("port", _I, "8500", "gRPC port (TF Serving and KServe V2 gRPC); 0 = off"),
    TfFlag(
        "grpc_socket_path",
        _S,
        "",
        "gRPC listens on TCP only (--port); a UNIX socket is not offered",
    ),
    TfFlag("rest_api_port", _I, "0", "REST port; pyserving's default is 8501 (0 = off)"),
    TfFlag(
        "rest_api_num_threads",
        _I,
        "4 x CPUs",
        "REST runs on one event loop; model calls use the inference executor",
    ),
    TfFlag("rest_api_timeout_in_ms", _I, "30000", "REST deadline (queueing and execution)"),
    TfFlag(
        "rest_api_enable_cors_support",
        _B,
        "false",
        "no CORS headers are sent; put a proxy in front to add them",
    ),
    TfFlag("enable_batching", _B, "false", "batch requests to every model"),
    TfFlag(
        "allow_version_labels_for_unavailable_models",
        _B,
        "false",
        "on reload, let a new label name a version that is not AVAILABLE yet",
    ),
    TfFlag("batching_parameters_file", _S, "", "BatchingParameters (text proto or YAML)"),
    TfFlag(
        "enable_per_model_batching_parameters",
        _B,
        "false",
        "per-model batching comes from the config's `batching:` or a version's pyserving.yaml",
    ),
    TfFlag("model_config_file", _S, "", "ModelServerConfig text proto, or YAML (.yaml/.yml)"),
    TfFlag(
        "model_config_file_poll_wait_seconds",
        _I,
        "0",
        "re-read the config file this often; 0 = once",
    ),
    TfFlag("model_name", _S, "default", "name of the --model_base_path model"),
    TfFlag("model_base_path", _S, "", "serve one model from this path"),
    TfFlag("num_load_threads", _I, "0", "threads that load versions; pyserving's default is 2"),
    TfFlag("num_unload_threads", _I, "0", "threads that unload versions; pyserving's default is 1"),
    TfFlag("max_num_load_retries", _I, "5", "retries after a failed load"),
    TfFlag(
        "load_retry_interval_micros",
        _I,
        "60000000",
        "first retry interval (then doubling); pyserving's default is 1 s",
    ),
    TfFlag("file_system_poll_wait_seconds", _I, "1", "poll base paths this often; 0 = once"),
    TfFlag(
        "flush_filesystem_caches",
        _B,
        "true",
        "the OS page cache is left to the OS",
    ),
    TfFlag(
        "tensorflow_session_parallelism",
        _I,
        "0",
        "TensorFlow models use TensorFlow's default thread pools",
    ),
    TfFlag(
        "tensorflow_session_config_file",
        _S,
        "",
        "TensorFlow models use the default session config",
    ),
    TfFlag(
        "tensorflow_intra_op_parallelism",
        _I,
        "0",
        "TensorFlow models use TensorFlow's default thread pools",
    ),
    TfFlag(
        "tensorflow_inter_op_parallelism",
        _I,
        "0",
        "TensorFlow models use TensorFlow's default thread pools",
    ),
    TfFlag(
        "use_alts_credentials",
        _B,
        "false",
        "ALTS is not offered: `true` stops the start; use --ssl_config_file for TLS",
    ),
    TfFlag("ssl_config_file", _S, "", "TLS for gRPC and REST from an SSLConfig text proto"),
    TfFlag(
        "platform_config_file",
        _S,
        "",
        "platforms are detected from a version's files or set per model (`platform:`)",
    ),
    TfFlag(
        "per_process_gpu_memory_fraction",
        _F,
        "0",
        "GPU memory is managed by each platform's runtime",
    ),
    TfFlag(
        "saved_model_tags",
        _S,
        "serve",
        "a SavedModel is loaded with its `serve` tag",
    ),
    TfFlag(
        "grpc_channel_arguments",
        _S,
        "",
        "the gRPC server uses its own settings (2 GiB message limit)",
    ),
    TfFlag(
        "grpc_max_threads",
        _I,
        "4 x CPUs",
        "gRPC runs on the asyncio event loop, not a thread per call",
    ),
    TfFlag(
        "enable_model_warmup",
        _B,
        "true",
        "replay a version's warmup requests before it becomes AVAILABLE",
    ),
    TfFlag(
        "num_request_iterations_for_warmup",
        _I,
        "0",
        "times each warmup request is replayed",
    ),
    TfFlag("version", _B, "false", "print the version and exit"),
    TfFlag(
        "monitoring_config_file",
        _S,
        "",
        "Prometheus metrics are always served at /monitoring/prometheus/metrics and /metrics",
    ),
    TfFlag(
        "remove_unused_fields_from_bundle_metagraph",
        _B,
        "true",
        "no MetaGraphDef is kept after a TensorFlow model loads",
    ),
    TfFlag("prefer_tflite_model", _B, "false", "TensorFlow Lite models are not served"),
    TfFlag("num_tflite_pools", _I, "CPUs", "TensorFlow Lite models are not served"),
    TfFlag("num_tflite_interpreters_per_pool", _I, "1", "TensorFlow Lite models are not served"),
    TfFlag(
        "enable_signature_method_name_check",
        _B,
        "false",
        "signature method names are not checked (TF2 behaviour)",
    ),
    TfFlag("xla_cpu_compilation_enabled", _B, "false", "TensorFlow's XLA setting is left as is"),
    TfFlag("xla_gpu_compilation_enabled", _B, "false", "TensorFlow's XLA setting is left as is"),
    TfFlag("enable_profiler", _B, "true", "there is no profiler service; see `make bench`"),
    TfFlag(
        "thread_pool_factory_config_file",
        _S,
        "",
        "model calls run on the inference executor",
    ),
    TfFlag("mixed_precision", _S, "", "models run in the precision they were saved in"),
    TfFlag("skip_initialize_tpu", _B, "false", "TPUs are not used"),
    TfFlag(
        "enable_grpc_healthcheck_service",
        _B,
        "false",
        "grpc.health.v1.Health is always served",
    ),
    TfFlag(
        "enable_serialization_as_tensor_content",
        _B,
        "false",
        "gRPC responses fill tensor_content for numeric tensors already",
    ),
)

#: the dest prefix of a flag `add_compat_flags` adds (keeps them apart from the server's own)
_DEST_PREFIX = "tf_ignored_"
logger = logging.getLogger("pyserving")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


_TYPES = {_I: int, _F: float, _S: str}


def implemented(parser: argparse.ArgumentParser, flag: TfFlag) -> bool:
    """True when the serve parser has this flag as its own (not added by `add_compat_flags`)."""
    action = parser._option_string_actions.get(_option(flag.name))
    return action is not None and not action.dest.startswith(_DEST_PREFIX)


def add_compat_flags(parser: argparse.ArgumentParser) -> None:
    """Add every TF Serving flag `parser` lacks, in a help group of their own; each parses its
    value as TF Serving does and has no effect beyond `warn_ignored`'s warning."""
    group = parser.add_argument_group(
        "TensorFlow Serving flags accepted for compatibility",
        "accepted so that a tensorflow_model_server command line works; each logs one warning"
        " that it has no effect here (see docs/tf-flags.md)",
    )
    for flag in TF_FLAGS:
        if _option(flag.name) in parser._option_string_actions:
            continue
        kwargs: dict[str, object] = {
            "dest": _DEST_PREFIX + flag.name,
            "default": None,
            "help": f"no effect: {flag.note}",
        }
        if flag.kind == _B:
            kwargs.update(type=boolean, nargs="?", const=True, metavar="BOOL")
        else:
            kwargs.update(type=_TYPES[flag.kind], metavar=flag.kind.upper())
        group.add_argument(_option(flag.name), **kwargs)  # type: ignore[arg-type]


def check_refused(args: argparse.Namespace) -> str | None:
    """A reason not to start: an ignored flag asking for a security the server cannot give."""
    if getattr(args, _DEST_PREFIX + "use_alts_credentials", None):
        return (
            "--use_alts_credentials=true: ALTS is not supported; use --ssl_config_file for TLS"
            " (refusing to serve in plain text)"
        )
    return None


def warn_ignored(args: argparse.Namespace, log: logging.Logger = logger) -> list[str]:
    """Log one warning line per ignored TF Serving flag the command line gave; returns them."""
    given = []
    for flag in TF_FLAGS:
        value = getattr(args, _DEST_PREFIX + flag.name, None)
        if value is None:
            continue
        shown = str(value).lower() if isinstance(value, bool) else value
        log.warning("--%s=%s has no effect in pyserving: %s", flag.name, shown, flag.note)
        given.append(flag.name)
    return given


def unknown_flag_message(argv: Iterable[str], known: Iterable[str]) -> str | None:
    """The first flag in `argv` (as the user typed it) that is not in `known` (option strings
    such as `--rest-api-port`), with the closest known flag in the user's spelling; or None."""
    known_names = sorted({k[2:].replace("-", "_") for k in known if k.startswith("--")})
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("--"):
            continue
        flag = arg.partition("=")[0]
        name = flag[2:].replace("-", "_")
        if name in known_names:
            continue
        message = f"unknown flag {flag}"
        close = difflib.get_close_matches(name, known_names, n=1, cutoff=0.6)
        if close:
            dashes = "-" in flag[2:] and "_" not in flag
            spelled = close[0].replace("_", "-") if dashes else close[0]
            message += f" (did you mean --{spelled}?)"
        return message
    return None


def markdown_table(parser: argparse.ArgumentParser) -> str:
    """docs/tf-flags.md: every TF Serving flag, whether pyserving implements it, and what it
    does here."""
    lines = [
        "# TensorFlow Serving flags",
        "",
        "`pyserving serve` accepts every flag of `tensorflow_model_server --help`, in TF",
        "Serving's spelling (`--rest_api_port=8501`) or ours (`--rest-api-port 8501`). A flag",
        "marked *implemented* works as in TF Serving (differences in the notes). A flag marked",
        "*no effect* is accepted, its value is checked, and the server logs one warning line",
        "saying it has no effect, then starts. `--use_alts_credentials=true` is the one",
        "exception: the server refuses to start rather than serve in plain text.",
        "",
        "An unknown flag stops the start with its name as typed and the closest known flag, e.g.",
        "`pyserving: unknown flag --rest_api_prot (did you mean --rest_api_port?)`.",
        "",
        "This page is generated from `src/pyserving/tf_flags.py` (`python -m pyserving.tf_flags`).",
        "",
        "| flag | TF Serving default | in pyserving | notes |",
        "| --- | --- | --- | --- |",
    ]
    for flag in TF_FLAGS:
        status = "implemented" if implemented(parser, flag) else "no effect"
        default = f"`{flag.tf_default}`" if flag.tf_default else '`""`'
        lines.append(f"| `--{flag.name}` | {default} | {status} | {flag.note} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Print docs/tf-flags.md."""
    from pyserving.cli_flags import serve_parser

    print(markdown_table(serve_parser()), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
