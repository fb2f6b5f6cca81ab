"""The model config: which models to serve, where from, with which version policy.

One dataclass tree whatever the source: a YAML file (INTERFACE.md §4) or the single model of
`--model_name` / `--model_base_path`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pyserving.errors import InvalidInput
from pyserving.sources.storage_path import VersionPolicy


class ConfigError(InvalidInput):
    """A model config that cannot be used; the message names the model and the field."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One model: name, base path (local path or URI), optional platform, version policy, labels."""

    name: str
    base_path: str
    platform: str | None = None
    version_policy: VersionPolicy = field(default_factory=VersionPolicy.latest)
    labels: Mapping[str, int] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelServerConfig:
    """Every model the server serves."""

    models: tuple[ModelConfig, ...]

    def names(self) -> list[str]:
        return [m.name for m in self.models]


def single_model_config(name: str, base_path: str) -> ModelServerConfig:
    return ModelServerConfig((ModelConfig(name, _absolute(base_path, Path.cwd())),))


def load_config_file(path: str | os.PathLike[str]) -> ModelServerConfig:
    """Read a YAML model config; raises ConfigError naming the problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read model config file {path}: {exc.strerror}") from exc
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(
            f"model config file {path}: only YAML (.yaml/.yml) is supported so far; "
            "TF Serving's text-proto form comes with runtime reload"
        )
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"model config file {path} is not valid YAML: {exc}") from exc
    return parse_config(document, path.parent.resolve())


def parse_config(document: Any, root: Path) -> ModelServerConfig:
    """Validate a parsed YAML document; relative base paths resolve against `root`."""
    if not isinstance(document, Mapping) or not isinstance(document.get("models"), list):
        raise ConfigError("model config must be a mapping with a 'models' list")
    models = tuple(_parse_model(entry, i, root) for i, entry in enumerate(document["models"]))
    seen: set[str] = set()
    for model in models:
        if model.name in seen:
            raise ConfigError(f'model "{model.name}" is configured twice; names must be unique')
        seen.add(model.name)
    return ModelServerConfig(models)


def _parse_model(entry: Any, index: int, root: Path) -> ModelConfig:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"models[{index}] must be a mapping")
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name or ":" in name:
        raise ConfigError(f"models[{index}]: 'name' must be a non-empty string without '/' or ':'")
    base_path = entry.get("base_path")
    if not isinstance(base_path, str) or not base_path:
        raise ConfigError(f'model "{name}": base_path is required')
    platform = entry.get("platform")
    if platform is not None and not isinstance(platform, str):
        raise ConfigError(f'model "{name}": platform must be a string')
    labels = entry.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in labels.items()
    ):
        raise ConfigError(f'model "{name}": labels must map label names to version numbers')
    known = {"name", "base_path", "platform", "version_policy", "labels"}
    return ModelConfig(
        name=name,
        base_path=_absolute(base_path, root),
        platform=platform,
        version_policy=_parse_version_policy(entry.get("version_policy"), name),
        labels=dict(labels),
        options={k: v for k, v in entry.items() if k not in known},
    )


def _parse_version_policy(value: Any, name: str) -> VersionPolicy:
    if value is None:
        return VersionPolicy.latest(1)
    if value == "all" or (isinstance(value, Mapping) and "all" in value):
        return VersionPolicy.all()
    if isinstance(value, Mapping) and "latest" in value:
        n = value["latest"]
        if isinstance(n, Mapping):
            n = n.get("num_versions", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f'model "{name}": version_policy latest must be a positive integer')
        return VersionPolicy.latest(n)
    if isinstance(value, Mapping) and "specific" in value:
        versions = value["specific"]
        if isinstance(versions, Mapping):
            versions = versions.get("versions", [])
        if not isinstance(versions, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in versions
        ):
            raise ConfigError(f'model "{name}": version_policy specific must list version numbers')
        return VersionPolicy.specific(versions)
    raise ConfigError(
        f'model "{name}": version_policy must be all, {{latest: N}} or {{specific: [..]}}'
    )


def _absolute(base_path: str, root: Path) -> str:
    if "://" in base_path or os.path.isabs(base_path):
        return base_path
    return str((root / base_path).resolve())
