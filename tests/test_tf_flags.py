"""Every `tensorflow_model_server` flag starts pyserving; unknown flags are named as typed; the
serve help documents every flag with its default and ends with examples (issue 16)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from pyserving import __version__, tf_flags
from pyserving.cli import main
from pyserving.cli_flags import build_parser, normalize_flag_spellings, serve_parser
from pyserving.demo import write_demo_repository
from tests.e2e.server import ServerProcess, serve_to_exit

#: `tensorflow_model_server --help` (TF Serving's model_servers/main.cc), each with a value of its
#: kind: TF Serving's default where it has a plain one.
TF_SERVING_HELP = {
    "port": "8500",
    "grpc_socket_path": "",
    "rest_api_port": "8501",
    "rest_api_num_threads": "8",
    "rest_api_timeout_in_ms": "30000",
    "rest_api_enable_cors_support": "false",
    "enable_batching": "false",
    "allow_version_labels_for_unavailable_models": "false",
    "batching_parameters_file": "",
    "enable_per_model_batching_parameters": "false",
    "model_config_file": "",
    "model_config_file_poll_wait_seconds": "0",
    "model_name": "default",
    "model_base_path": "/models/default",
    "num_load_threads": "0",
    "num_unload_threads": "0",
    "max_num_load_retries": "5",
    "load_retry_interval_micros": "60000000",
    "file_system_poll_wait_seconds": "1",
    "flush_filesystem_caches": "true",
    "tensorflow_session_parallelism": "0",
    "tensorflow_session_config_file": "",
    "tensorflow_intra_op_parallelism": "0",
    "tensorflow_inter_op_parallelism": "0",
    "use_alts_credentials": "false",
    "ssl_config_file": "",
    "platform_config_file": "",
    "per_process_gpu_memory_fraction": "0",
    "saved_model_tags": "serve",
    "grpc_channel_arguments": "",
    "grpc_max_threads": "8",
    "enable_model_warmup": "true",
    "num_request_iterations_for_warmup": "0",
    "version": None,  # exits: tested on its own
    "monitoring_config_file": "",
    "remove_unused_fields_from_bundle_metagraph": "true",
    "prefer_tflite_model": "false",
    "num_tflite_pools": "2",
    "num_tflite_interpreters_per_pool": "1",
    "enable_signature_method_name_check": "false",
    "xla_cpu_compilation_enabled": "false",
    "xla_gpu_compilation_enabled": "false",
    "enable_profiler": "true",
    "thread_pool_factory_config_file": "",
    "mixed_precision": "",
    "skip_initialize_tpu": "false",
    "enable_grpc_healthcheck_service": "false",
    "enable_serialization_as_tensor_content": "false",
}

#: flags pyserving implements (the others are accepted with a warning; --ssl_config_file is
#: implemented with TLS)
IMPLEMENTED = {
    "port",
    "rest_api_port",
    "rest_api_timeout_in_ms",
    "enable_batching",
    "allow_version_labels_for_unavailable_models",
    "batching_parameters_file",
    "model_config_file",
    "model_config_file_poll_wait_seconds",
    "model_name",
    "model_base_path",
    "num_load_threads",
    "num_unload_threads",
    "max_num_load_retries",
    "load_retry_interval_micros",
    "file_system_poll_wait_seconds",
    "enable_model_warmup",
    "num_request_iterations_for_warmup",
    "version",
}

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tf-flags.md"


def _command_line(values: dict[str, str | None]) -> list[str]:
    return [f"--{name}={value}" for name, value in values.items() if value is not None]


def test_the_table_lists_exactly_tf_servings_flags_issue_16():
    assert [flag.name for flag in tf_flags.TF_FLAGS] == list(TF_SERVING_HELP)


def test_implemented_flags_are_the_servers_own_issue_16():
    parser = serve_parser()
    implemented = {f.name for f in tf_flags.TF_FLAGS if tf_flags.implemented(parser, f)}
    assert implemented >= IMPLEMENTED, (
        "an implemented TF Serving flag is missing from `pyserving serve`"
    )
    # A flag implemented since this list was written: move it to IMPLEMENTED (and docs/).
    assert implemented <= IMPLEMENTED | {"ssl_config_file"}


def test_every_tf_serving_flag_parses_and_maps_issue_16(caplog):
    argv = normalize_flag_spellings(["serve", *_command_line(TF_SERVING_HELP)])
    args = build_parser().parse_args(argv)
    assert (args.port, args.rest_api_port, args.model_name) == (8500, 8501, "default")
    assert args.model_base_path == "/models/default"
    assert (args.num_load_threads, args.num_unload_threads) == (0, 0)
    assert args.load_retry_interval_micros == 60_000_000
    assert args.enable_model_warmup is True and args.enable_batching is False
    assert tf_flags.check_refused(args) is None
    with caplog.at_level(logging.WARNING, logger="pyserving"):
        ignored = tf_flags.warn_ignored(args)
    parser = serve_parser()
    expected = [
        f.name
        for f in tf_flags.TF_FLAGS
        if not tf_flags.implemented(parser, f) and TF_SERVING_HELP[f.name] is not None
    ]
    assert ignored == expected
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(expected)  # one line each
    assert (
        "--rest_api_num_threads=8 has no effect in pyserving: "
        in lines[expected.index("rest_api_num_threads")]
    )


def test_bool_flags_take_tf_servings_forms_issue_16():
    for form, value in (("--flush_filesystem_caches", True), ("--enable_profiler=false", False)):
        args = build_parser().parse_args(normalize_flag_spellings(["serve", form]))
        name = form[2:].partition("=")[0]
        assert getattr(args, "tf_ignored_" + name) is value


def test_a_bad_value_of_an_ignored_flag_still_fails_issue_16(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--grpc_max_threads=many"])
    assert stop.value.code == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--rest_api_port=abc"], "argument --rest_api_port: invalid value: 'abc'"),
        (["serve", "--model_name"], "argument --model_name: expected one argument"),
        (["serve", "--num-load-threads=-1"], "argument --num-load-threads: must be >= 0, got -1"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag_as_typed_issue_16(argv, expected, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"pyserving: {expected}; see pyserving serve --help\n"


def test_alts_true_refuses_to_start_issue_16(capsys):
    assert main(["--use_alts_credentials=true", "--model_base_path=/nowhere"]) == 2
    assert "ALTS is not supported; use --ssl_config_file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        (
            "--rest_api_num_thread=8",
            "unknown flag --rest_api_num_thread (did you mean --rest_api_num_threads?)",
        ),
        ("--rest-api-prot=1", "unknown flag --rest-api-prot (did you mean --rest-api-port?)"),
        ("--modle_name", "unknown flag --modle_name (did you mean --model_name?)"),
        ("--zzzzzz=1", "unknown flag --zzzzzz"),
    ],
)
def test_unknown_flags_are_named_as_typed_with_the_closest_issue_16(typed, expected, capsys):
    assert main(["serve", typed]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pyserving: {expected};"), err
    assert err.count("\n") == 1


def test_an_unknown_flag_on_a_bare_tf_command_line_issue_16(capsys):
    assert main(["--port=1", "--enable_batchin"]) == 2
    assert "unknown flag --enable_batchin (did you mean --enable_batching?)" in (
        capsys.readouterr().err
    )


def test_version_everywhere_issue_16(capsys):
    for argv in (["--version"], ["serve", "--version"], ["--port=1", "--version"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 0
        assert capsys.readouterr().out.strip() == f"pyserving {__version__}"


def test_every_serve_flag_has_help_and_the_help_shows_defaults_and_examples_issue_16(capsys):
    parser = serve_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help text"
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    assert "(default: 8500)" in text and "(default: 8501)" in text
    assert "(default: info)" in text and "(default: availability)" in text
    assert text.rstrip().endswith("docs/tf-flags.md).")
    assert "examples:\n  # one model" in text


def test_docs_tf_flags_md_is_generated_from_the_table_issue_16():
    assert DOCS.read_text() == tf_flags.markdown_table(serve_parser()), (
        "regenerate: python -m pyserving.tf_flags > docs/tf-flags.md"
    )


@pytest.mark.slow
def test_a_server_starts_with_every_tf_serving_flag_issue_16(tmp_path):
    """One real start with the whole `tensorflow_model_server --help` on the command line."""
    repo = write_demo_repository(tmp_path / "repo")
    values = dict(TF_SERVING_HELP)
    # ServerProcess gives the host, a free REST port and gRPC off
    for own in ("port", "rest_api_port"):
        values.pop(own)
    values["model_name"] = "mlp"
    values["model_base_path"] = str(repo / "mlp")
    server = ServerProcess(*_command_line(values))
    try:
        server.wait_ready()
    finally:
        code = server.stop()
    log = server.log()
    assert code == 0, log
    parser = serve_parser()
    for flag in tf_flags.TF_FLAGS:
        warned = log.count(f"--{flag.name}=")
        if flag.name in values and values[flag.name] is not None:
            assert warned == (0 if tf_flags.implemented(parser, flag) else 1), (flag.name, log)


@pytest.mark.parametrize(
    ("what", "flag", "other"),
    [("gRPC", "--port", "--rest_api_port=0"), ("REST", "--rest_api_port", "--port=0")],
)
def test_a_taken_port_is_one_clear_line_issue_16(what, flag, other, tmp_path):
    repo = write_demo_repository(tmp_path / "repo")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve_to_exit(f"{flag}={port}", other, f"--model_base_path={repo / 'mlp'}")
    assert result.returncode == 2
    assert result.stderr == (
        f"pyserving: cannot listen for {what} on 127.0.0.1:{port}: Address already in use"
        f" (another server on that port? choose another with {flag}=N, or {flag}=0 for none)\n"
    )
