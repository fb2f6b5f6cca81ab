"""CLI: both flag spellings, and the parser accepting a tensorflow_model_server command line."""

from pyserving.cli_flags import build_parser, normalize_flag_spellings


def test_tf_serving_spellings_become_dashes_with_either_value_form():
    argv = ["serve", "--rest_api_port=9000", "--model_base_path", "/m", "--model-name=x"]
    assert normalize_flag_spellings(argv) == [
        "serve",
        "--rest-api-port=9000",
        "--model-base-path",
        "/m",
        "--model-name=x",
    ]


def test_values_keep_their_underscores():
    assert normalize_flag_spellings(["--model_base_path=/a_b/c_d"]) == [
        "--model-base-path=/a_b/c_d"
    ]


def test_parser_reads_a_tensorflow_model_server_command_line():
    argv = normalize_flag_spellings(
        [
            "serve",
            "--port=8500",
            "--rest_api_port=8501",
            "--model_name=mlp",
            "--model_base_path=/models/mlp",
            "--file_system_poll_wait_seconds=2",
        ]
    )
    args = build_parser().parse_args(argv)
    assert (args.port, args.rest_api_port, args.model_name) == (8500, 8501, "mlp")
    assert args.model_base_path == "/models/mlp" and args.file_system_poll_wait_seconds == 2.0
