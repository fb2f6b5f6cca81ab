"""TF Serving's `ModelServerConfig` message (text proto or gRPC) → the config dataclasses."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from pyserving.errors import InvalidInput
from pyserving.proto import model_server_config_pb2 as config_pb2
from pyserving.serving import request_log
from pyserving.serving.config import (
    ConfigError,
    ModelConfig,
    ModelServerConfig,
    absolute_base_path,
    check_model_name,
)
from pyserving.serving.config_keys import proto_field_hint
from pyserving.sources.storage_path import VersionPolicy

__all__ = ["config_from_proto", "parse_text_proto"]

#: TF Serving's deprecated `model_type` enum → platform name
_MODEL_TYPE_PLATFORM = {config_pb2.TENSORFLOW: "tensorflow"}


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
    return ModelServerConfig.checked(tuple(models))


# --- helpers ---------------------------------------------------------------------------------


def _model_from_proto(entry: config_pb2.ModelConfig, index: int, root: Path) -> ModelConfig:
    name = check_model_name(entry.name, f"model_config_list.config[{index}]")
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
        base_path=absolute_base_path(entry.base_path, root),
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


def _proto_request_log(entry: config_pb2.ModelConfig, name: str, root: Path) -> dict[str, object]:
    """TF Serving's `logging_config` as the `logging` option (none when it names no file)."""
    if not entry.HasField("logging_config"):
        return {}
    try:
        config = request_log.config_from_proto(entry.logging_config, name, root)
    except InvalidInput as exc:
        raise ConfigError(exc.message) from None
    return {} if config is None else {"logging": config}
