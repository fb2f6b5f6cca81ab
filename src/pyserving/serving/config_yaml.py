"""The YAML model config (docs/config.md) → the config dataclasses (serving/config.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pyserving.errors import InvalidInput
from pyserving.serving import request_log
from pyserving.serving.config import (
    ConfigError,
    ModelConfig,
    ModelServerConfig,
    absolute_base_path,
    check_model_name,
)
from pyserving.serving.pipeline_config import PIPELINE_ENTRY_KEYS, PipelineError, parse_pipeline
from pyserving.sources.storage_path import VersionPolicy

__all__ = ["EntryError", "parse_config"]


def parse_config(document: object, root: Path) -> ModelServerConfig:
    """Validate a parsed YAML document; relative base paths resolve against `root`."""
    if not isinstance(document, Mapping) or not isinstance(document.get("models"), list):
        raise ConfigError("model config must be a mapping with a 'models' list")
    default_load = document.get("load", "always")
    models = []
    for i, entry in enumerate(document["models"]):
        try:
            models.append(_parse_model(entry, i, root, default_load))
        except ConfigError as exc:
            raise EntryError(exc.message, i) from exc
    return ModelServerConfig.checked(tuple(models))


class EntryError(ConfigError):
    """A ConfigError in `models[index]`: the file's reader can name the entry's line."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


# --- helpers ---------------------------------------------------------------------------------


def _parse_pipeline_model(entry: Mapping[str, object], name: str) -> ModelConfig:
    """A pipeline's entry (docs/pipelines.md): no base path; its steps are the models."""
    extra = set(entry) - PIPELINE_ENTRY_KEYS
    if extra:
        raise ConfigError(
            f'model "{name}": a pipeline takes only name and pipeline, not'
            f" {', '.join(sorted(map(str, extra)))} (set those on its steps' models)"
        )
    try:
        spec = parse_pipeline(entry["pipeline"], name)
    except PipelineError as exc:
        raise ConfigError(exc.message) from None
    return ModelConfig(name=name, base_path="", options={"pipeline": spec})


def _check_router(entry: Mapping[str, object], name: str) -> None:
    """A `platform: shards` entry: `shards` lists host:port addresses, `model` is a name."""
    if "base_path" in entry:
        raise ConfigError(f'model "{name}": a shards router takes shards, not base_path')
    shards = entry.get("shards")
    if (
        not isinstance(shards, list)
        or not shards
        or not all(isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in shards)
    ):
        raise ConfigError(f'model "{name}": shards must list the shard servers as "host:port"')
    model = entry.get("model", name)
    if not isinstance(model, str) or not model:
        raise ConfigError(f'model "{name}": model (its name on the shards) must be a string')


def _parse_model(
    entry: object, index: int, root: Path, default_load: object = "always"
) -> ModelConfig:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"models[{index}] must be a mapping")
    name = check_model_name(entry.get("name"), f"models[{index}]")
    if "pipeline" in entry:
        return _parse_pipeline_model(entry, name)
    # `load:` at the top level is every model's default (issue 20); on_demand models load on
    # their first request (serving/on_demand.py)
    load = entry.get("load", default_load)
    if load not in ("always", "on_demand"):
        raise ConfigError(f'model "{name}": load must be always or on_demand, not {load!r}')
    idle = entry.get("idle_unload_seconds")
    if "idle_unload_seconds" in entry and (
        not isinstance(idle, int | float) or isinstance(idle, bool) or not idle > 0
    ):
        raise ConfigError(f'model "{name}": idle_unload_seconds must be a number above 0')
    if idle is not None and load != "on_demand":
        raise ConfigError(f'model "{name}": idle_unload_seconds needs load: on_demand')
    base_path = entry.get("base_path")
    if entry.get("platform") == "shards":  # a shard router has no files (docs/big-tables.md)
        _check_router(entry, name)
        base_path = ""
    elif not isinstance(base_path, str) or not base_path:
        raise ConfigError(f'model "{name}": base_path is required')
    platform = entry.get("platform")
    if platform is not None and (not isinstance(platform, str) or not platform):
        raise ConfigError(f'model "{name}": platform must be a non-empty string')
    labels = entry.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and k and _is_version(v) for k, v in labels.items()
    ):
        raise ConfigError(f'model "{name}": labels must map label names to version numbers')
    allow_python = entry.get("allow_python", False)
    if not isinstance(allow_python, bool):
        raise ConfigError(f'model "{name}": allow_python must be true or false')
    instances = entry.get("instances")
    # `instances: null` is refused too: as an option it would reach the executor as None
    if "instances" in entry and (
        not isinstance(instances, int) or isinstance(instances, bool) or not 1 <= instances <= 256
    ):
        raise ConfigError(
            f'model "{name}": instances (its concurrent calls) must be an integer from 1 to 256'
        )
    always_present = entry.get("servable_versions_always_present", False)
    if not isinstance(always_present, bool):
        raise ConfigError(f'model "{name}": servable_versions_always_present must be true or false')
    known = {
        "name",
        "base_path",
        "platform",
        "version_policy",
        "labels",
        "traffic",
        "servable_versions_always_present",
    }
    return ModelConfig(
        name=name,
        base_path=absolute_base_path(base_path, root) if base_path else "",
        platform=platform,
        version_policy=_parse_version_policy(entry.get("version_policy"), name),
        labels=dict(labels),
        options=_request_log({k: v for k, v in entry.items() if k not in known}, name, root)
        | ({"load": load} if load != "always" else {}),
        traffic=_parse_traffic(entry.get("traffic"), name, labels),
        servable_versions_always_present=always_present,
    )


def _parse_traffic(value: object, name: str, labels: Mapping[str, int]) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f'model "{name}": traffic must map label names to weights')
    for label, weight in value.items():
        if label not in labels:
            raise ConfigError(
                f'model "{name}": traffic names label "{label}", which is not in its labels'
                f" ({', '.join(sorted(labels)) or 'none'})"
            )
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            raise ConfigError(
                f'model "{name}": traffic weight of label "{label}" must be an integer >= 0,'
                f" got {weight!r}"
            )
    if sum(value.values()) == 0:
        raise ConfigError(f'model "{name}": traffic weights must not all be 0')
    return dict(value)


def _parse_version_policy(value: object, name: str) -> VersionPolicy:
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
        if not isinstance(versions, list) or not all(_is_version(v) for v in versions):
            raise ConfigError(f'model "{name}": version_policy specific must list version numbers')
        return VersionPolicy.specific(versions)
    raise ConfigError(
        f'model "{name}": version_policy must be all, {{latest: N}} or {{specific: [..]}}'
    )


def _is_version(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _request_log(options: dict[str, object], name: str, root: Path) -> dict[str, object]:
    """`options` with its `logging:` mapping checked and made a RequestLogConfig."""
    if "logging" in options:
        try:
            options["logging"] = request_log.config_from_yaml(options["logging"], name, root)
        except InvalidInput as exc:
            raise ConfigError(exc.message) from None
    return options
