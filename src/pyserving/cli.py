"""`pyserving serve | demo | --version`: the entry point; flags in both spellings, wiring only.

The flag table is cli_flags.py (value types: cli_flag_types.py; help layout: cli_help.py); the
serve command is cli_serve.py, its listeners and drain cli_listeners.py."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from pyserving import tf_flags
from pyserving.cli_flags import build_parser, normalize_flag_spellings, subparser
from pyserving.cli_help import Parser
from pyserving.cli_serve import run_serve_command


def main(argv: Sequence[str] | None = None) -> int:
    args_in = normalize_flag_spellings(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0].startswith("--") and args_in[0] not in ("--version", "--help"):
        args_in = ["serve", *args_in]  # a bare tensorflow_model_server command line
    parser = build_parser()
    if args_in and args_in[0] == "serve":
        raw = list(sys.argv[1:] if argv is None else argv)
        raw = raw[1:] if raw and raw[0] == "serve" else raw
        serve = subparser(parser, "serve")
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
        return run_serve_command(args, args_in)
    build_parser().print_help()
    return 2


def _write_demo(root: Path) -> int:
    from pyserving.demo import write_demo_repository

    write_demo_repository(root)
    print(f"demo repository written to {root}: models mlp (versions 1, 2) and twoio (version 1)")
    return 0
