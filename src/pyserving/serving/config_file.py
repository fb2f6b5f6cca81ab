"""A model config file: YAML for `.yaml`/`.yml`, TF Serving's text proto for any other name."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from pyserving.serving.config import ConfigError, ModelServerConfig
from pyserving.serving.config_keys import unknown_key_message
from pyserving.serving.config_proto import parse_text_proto
from pyserving.serving.config_yaml import EntryError, parse_config

__all__ = ["load_config_file", "parse_config_text"]


def load_config_file(path: str | os.PathLike[str]) -> ModelServerConfig:
    """Read a model config file: YAML for `.yaml`/`.yml`, TF Serving's text proto otherwise.

    Raises ConfigError naming the file and the problem.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read model config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"model config file {path} is not UTF-8 text: {exc}") from exc
    return parse_config_text(text, path)


def parse_config_text(text: str, path: str | os.PathLike[str]) -> ModelServerConfig:
    """Parse the contents of the model config file at `path` (its name picks YAML or text
    proto; its directory anchors relative base paths). Raises ConfigError naming the file."""
    path = Path(path)
    root = path.parent.resolve()
    if path.suffix in (".yaml", ".yml"):
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"model config file {path} is not valid YAML: {exc}") from exc
        # before the parser: `basepath:` is an unknown key, not a missing base_path
        unknown = unknown_key_message(text)
        if unknown is not None:
            raise ConfigError(f"model config file {path}, {unknown}")
        try:
            return parse_config(document, root)
        except EntryError as exc:
            where = _entry_line(text, exc.index)
            raise ConfigError(f"model config file {path}{where}: {exc.message}") from exc
        except ConfigError as exc:
            raise ConfigError(f"model config file {path}: {exc.message}") from exc
    try:
        return parse_text_proto(text, root)
    except ConfigError as exc:
        raise ConfigError(f"model config file {path}: {exc.message}") from exc


def _entry_line(text: str, index: int) -> str:
    """ ", line N" where `models[index]` starts in the YAML `text` ("" when it cannot tell): the
    document is composed again (nodes keep their marks), only on this error path."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return ""
    if not isinstance(root, yaml.MappingNode):
        return ""
    for key, value in root.value:
        items = value.value if isinstance(value, yaml.SequenceNode) else []
        if key.value == "models" and index < len(items):
            return f", line {items[index].start_mark.line + 1}"
    return ""
