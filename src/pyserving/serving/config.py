"""The model config: which models to serve, where from, with which version policy and labels.

One dataclass tree whatever the source: a YAML file (docs/config.md), TF Serving's text-proto
`ModelServerConfig` (any other file name, so an existing `models.config` works unchanged), the
same message from a gRPC `HandleReloadConfigRequest`, or the single model of `--model_name` /
`--model_base_path`. Validation follows TF Serving (docs/config.md): unique names,
a model's platform never changes across reloads, relative base paths resolve against the config
file's directory; every message names the model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from google.protobuf import text_format

from pyserving.errors import FailedPrecondition, InvalidInput
from pyserving.proto import model_server_config_pb2 as config_pb2
from pyserving.serving import request_log
from pyserving.serving.config_keys import proto_field_hint, unknown_key_message
from pyserving.serving.pipeline_config import (
    PIPELINE_ENTRY_KEYS,
    PipelineError,
    PipelineSpec,
    check_pipelines,
    parse_pipeline,
)
from pyserving.sources.storage_path import VersionPolicy

__all__ = [
    "ConfigError",
    "ModelConfig",
    "ModelServerConfig",
    "check_platforms",
    "check_transition",
    "config_from_proto",
    "load_config_file",
    "parse_config",
    "parse_config_text",
    "parse_text_proto",
    "pipeline_specs",
    "single_model_config",
]

#: TF Serving's deprecated `model_type` enum → platform name
_MODEL_TYPE_PLATFORM = {config_pb2.TENSORFLOW: "tensorflow"}


class ConfigError(InvalidInput):
    """A model config that cannot be used; the message names the model and the field."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One model: name, base path (local path or URI), platform, version policy, labels, and the
    traffic split over its labels (label → weight). `options` holds the other YAML keys (e.g.
    `batching`, `instances`: its execution threads), passed to the platform's Loader factory."""

    name: str
    base_path: str
    platform: str | None = None
    version_policy: VersionPolicy = field(default_factory=VersionPolicy.latest)
    labels: Mapping[str, int] = field(default_factory=dict)
    options: Mapping[str, object] = field(default_factory=dict)
    traffic: Mapping[str, int] = field(default_factory=dict)
    #: keep serving the loaded versions while the base path lists none (TF Serving's option)
    servable_versions_always_present: bool = False


@dataclass(frozen=True, slots=True)
class ModelServerConfig:
    """Every model the server serves."""

    models: tuple[ModelConfig, ...]

    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def get(self, name: str) -> ModelConfig | None:
        """The model called `name`, or None."""
        for model in self.models:
            if model.name == name:
                return model
        return None


def single_model_config(
    name: str, base_path: str, options: Mapping[str, object] | None = None
) -> ModelServerConfig:
    """The one model of `--model_name` / `--model_base_path` (with `options`, e.g. allow_python)."""
    return ModelServerConfig(
        (ModelConfig(name, _absolute(base_path, Path.cwd()), options=dict(options or {})),)
    )


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
        return parse_config(document, root)
    try:
        return parse_text_proto(text, root)
    except ConfigError as exc:
        raise ConfigError(f"model config file {path}: {exc.message}") from exc


def parse_config(document: object, root: Path) -> ModelServerConfig:
    """Validate a parsed YAML document; relative base paths resolve against `root`."""
    if not isinstance(document, Mapping) or not isinstance(document.get("models"), list):
        raise ConfigError("model config must be a mapping with a 'models' list")
    default_load = document.get("load", "always")
    models = tuple(
        _parse_model(entry, i, root, default_load) for i, entry in enumerate(document["models"])
    )
    return _checked(models)


def parse_text_proto(text: str, root: Path) -> ModelServerConfig:
    """Parse TF Serving's text-format `ModelServerConfig`; raises ConfigError."""
    message = config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        hint = proto_field_hint(str(exc))
        raise ConfigError(f"not a valid text-format ModelServerConfig: {exc}{hint}") from exc
    return config_from_proto(message, root)


def config_from_proto(message: config_pb2.ModelServerConfig, root: Path) -> ModelServerConfig:
    """Map a `ModelServerConfig` message onto the dataclasses (relative paths against `root`).

    Raises ConfigError for a custom_model_config (as TF Serving's binary refuses it) or an
    invalid model entry.
    """
    kind = message.WhichOneof("config")
    if kind == "custom_model_config":
        raise ConfigError("ModelServer does not yet support custom model config")
    if kind is None:
        return ModelServerConfig(())
    models = []
    for index, entry in enumerate(message.model_config_list.config):
        models.append(_model_from_proto(entry, index, root))
    return _checked(tuple(models))


def check_platforms(config: ModelServerConfig, known: Iterable[str]) -> None:
    """Raise ConfigError for a model naming a platform outside `known` (TF Serving's text)."""
    known_set = set(known)
    for model in config.models:
        if model.platform is not None and model.platform not in known_set:
            raise ConfigError(
                f"Model {model.name} requests unsupported platform {model.platform}"
                f" (known: {', '.join(sorted(known_set))})"
            )


def check_transition(old: ModelServerConfig, new: ModelServerConfig) -> None:
    """Raise FailedPrecondition when `new` changes the platform of a model `old` has."""
    for model in new.models:
        before = old.get(model.name)
        if before is not None and ("pipeline" in before.options) != ("pipeline" in model.options):
            raise FailedPrecondition(
                f"model {model.name} cannot change between a pipeline and a model with files;"
                " remove it in one reload and add it back in the next"
            )
        if before is not None and before.platform != model.platform:
            raise FailedPrecondition(
                f"Illegal to change a model's platform. For model {model.name} platform was"
                f" {before.platform or '(detected)'} and new platform requested is"
                f" {model.platform or '(detected)'}"
            )


# --- helpers ---------------------------------------------------------------------------------


def _checked(models: tuple[ModelConfig, ...]) -> ModelServerConfig:
    seen: set[str] = set()
    for model in models:
        if model.name in seen:
            raise ConfigError(f'model "{model.name}" is configured twice; names must be unique')
        seen.add(model.name)
    pipelines = pipeline_specs(models)
    if pipelines:
        on_demand = (m.name for m in models if m.options.get("load") == "on_demand")
        try:
            check_pipelines(pipelines, seen, on_demand)
        except PipelineError as exc:
            raise ConfigError(exc.message) from None
    return ModelServerConfig(models)


def pipeline_specs(models: Iterable[ModelConfig]) -> dict[str, PipelineSpec]:
    """Pipeline name → its definition, for the models that are pipelines."""
    return {
        m.name: spec for m in models if isinstance(spec := m.options.get("pipeline"), PipelineSpec)
    }


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


def _check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or ":" in name:
        raise ConfigError(f"{where}: 'name' must be a non-empty string without '/' or ':'")
    return name


def _parse_model(
    entry: object, index: int, root: Path, default_load: object = "always"
) -> ModelConfig:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"models[{index}] must be a mapping")
    name = _check_name(entry.get("name"), f"models[{index}]")
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
        base_path=_absolute(base_path, root) if base_path else "",
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


def _model_from_proto(entry: config_pb2.ModelConfig, index: int, root: Path) -> ModelConfig:
    name = _check_name(entry.name, f"model_config_list.config[{index}]")
    if not entry.base_path:
        raise ConfigError(f'model "{name}": base_path is required')
    platform: str | None = entry.model_platform or None
    if entry.model_type != config_pb2.MODEL_TYPE_UNSPECIFIED:
        if platform is not None:
            raise ConfigError(
                f'model "{name}": Illegal setting both model_type (deprecated) and model_platform'
            )
        platform = _MODEL_TYPE_PLATFORM.get(entry.model_type)
        if platform is None:
            raise ConfigError(f'model "{name}": model_type OTHER names no platform; set one')
    for label, version in entry.version_labels.items():
        if not label or version < 0:
            raise ConfigError(f'model "{name}": version_labels must map names to versions >= 0')
    return ModelConfig(
        name=name,
        base_path=_absolute(entry.base_path, root),
        platform=platform,
        version_policy=_policy_from_proto(entry, name),
        labels=dict(entry.version_labels),
        options=_proto_request_log(entry, name, root),
    )


def _policy_from_proto(entry: config_pb2.ModelConfig, name: str) -> VersionPolicy:
    if not entry.HasField("model_version_policy"):
        return VersionPolicy.latest(1)
    policy = entry.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return VersionPolicy.all()
    if kind == "specific":
        versions = list(policy.specific.versions)
        if not versions or any(v < 0 for v in versions):
            raise ConfigError(
                f'model "{name}": model_version_policy specific must list versions >= 0'
            )
        return VersionPolicy.specific(versions)
    # latest, or an empty policy: TF Serving clamps num_versions to at least 1
    return VersionPolicy.latest(policy.latest.num_versions if kind == "latest" else 1)


def _is_version(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _absolute(base_path: str, root: Path) -> str:
    if "://" in base_path or os.path.isabs(base_path):
        return base_path
    return str((root / base_path).resolve())


def _request_log(options: dict[str, object], name: str, root: Path) -> dict[str, object]:
    """`options` with its `logging:` mapping checked and made a RequestLogConfig."""
    if "logging" in options:
        try:
            options["logging"] = request_log.config_from_yaml(options["logging"], name, root)
        except InvalidInput as exc:
            raise ConfigError(exc.message) from None
    return options


def _proto_request_log(entry: config_pb2.ModelConfig, name: str, root: Path) -> dict[str, object]:
    """TF Serving's `logging_config` as the `logging` option (none when it names no file)."""
    if not entry.HasField("logging_config"):
        return {}
    try:
        config = request_log.config_from_proto(entry.logging_config, name, root)
    except InvalidInput as exc:
        raise ConfigError(exc.message) from None
    return {} if config is None else {"logging": config}
