"""How `pyserving serve --help` reads: every flag with its default, and examples at the end."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from typing import NoReturn

from pyserving import cli_flag_types

__all__ = ["SERVE_EXAMPLES", "HelpFormatter", "Parser"]

SERVE_EXAMPLES = """\
examples:
  # one model: versions are the numbered directories under the base path
  pyserving serve --model_name=mlp --model_base_path=/models/mlp

  # several models from a config file (YAML, or TF Serving's models.config text proto)
  pyserving serve --model_config_file=models.yaml --model_config_file_poll_wait_seconds=30

  # an existing tensorflow_model_server command line works unchanged
  pyserving --port=8500 --rest_api_port=8501 --model_config_file=/models/models.config

  # the demo models on other ports
  pyserving serve --demo --port=9500 --rest_api_port=9501

  # then: the status page at http://localhost:8501/ and the API at /openapi.json
  curl -d '{"instances": [[1.0, 2.0]]}' localhost:8501/v1/models/mlp:predict

TF Serving flags pyserving does not implement are accepted with a warning (docs/tf-flags.md).
"""


#: argparse names a flag's value type in its errors ("invalid non_negative_int value"); our
#: types' names mean nothing to a user (int and float are kept)
_OUR_TYPE_NAMES = re.compile(rf"invalid (?:{'|'.join(cli_flag_types.__all__)}) value")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks and appends `(default: X)` to every flag that has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default is None
            or default is argparse.SUPPRESS
            or not action.option_strings
            or isinstance(action, argparse._StoreTrueAction | argparse._VersionAction)
            or action.dest.startswith("tf_ignored_")
        ):
            return text
        if isinstance(default, tuple | list):
            default = ",".join(str(item) for item in default) or "none"
        elif isinstance(default, bool):
            default = str(default).lower()
        elif default == "":
            default = '""'
        return f"{text} (default: {str(default).replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line that names each flag as the user typed it
    (`--rest_api_port`, though the parser knows it as `--rest-api-port`)."""

    #: a flag as the parser spells it → as the command line spelled it
    typed: Mapping[str, str] = {}

    def error(self, message: str) -> NoReturn:
        message = _OUR_TYPE_NAMES.sub("invalid value", message)
        for ours, typed in self.typed.items():
            message = re.sub(rf"{re.escape(ours)}(?![\w-])", typed, message)
        self.exit(2, f"pyserving: {message}; see {self.prog} --help\n")
