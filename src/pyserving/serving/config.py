"""The model config: which models to serve, where from, with which version policy and labels.

One dataclass tree whatever the source: a YAML file (docs/config.md, serving/config_yaml.py),
TF Serving's text-proto `ModelServerConfig` (any other file name, so an existing
`models.config` works unchanged) or the same message from a gRPC `HandleReloadConfigRequest`
(serving/config_proto.py), or the single model of `--model_name` / `--model_base_path`; a
config file picks its parser by name (serving/config_file.py). This module holds the tree and
the rules every source shares, after TF Serving (docs/config.md): unique names, a model's
platform never changes across reloads, relative base paths resolve against the config file's
directory; every message names the model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pyserving.errors import FailedPrecondition, InvalidInput
from pyserving.serving.pipeline_config import PipelineError, PipelineSpec, check_pipelines
from pyserving.sources.storage_path import VersionPolicy

__all__ = [
    "ConfigError",
    "ModelConfig",
    "ModelServerConfig",
    "absolute_base_path",
    "check_model_name",
    "check_platforms",
    "check_transition",
    "pipeline_specs",
    "single_model_config",
]


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

    @classmethod
    def checked(cls, models: tuple[ModelConfig, ...]) -> ModelServerConfig:
        """`models` as a config, after the checks every source shares (unique names, pipelines
        over configured models); raises ConfigError."""
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
        return cls(models)


def single_model_config(
    name: str, base_path: str, options: Mapping[str, object] | None = None
) -> ModelServerConfig:
    """The one model of `--model_name` / `--model_base_path` (with `options`, e.g. allow_python)."""
    return ModelServerConfig(
        (ModelConfig(name, absolute_base_path(base_path, Path.cwd()), options=dict(options or {})),)
    )


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


def pipeline_specs(models: Iterable[ModelConfig]) -> dict[str, PipelineSpec]:
    """Pipeline name → its definition, for the models that are pipelines."""
    return {
        m.name: spec for m in models if isinstance(spec := m.options.get("pipeline"), PipelineSpec)
    }


def check_model_name(name: object, where: str) -> str:
    """`name` when it can name a model; raises ConfigError naming `where` otherwise."""
    if not isinstance(name, str) or not name or "/" in name or ":" in name:
        raise ConfigError(f"{where}: 'name' must be a non-empty string without '/' or ':'")
    return name


def absolute_base_path(base_path: str, root: Path) -> str:
    """`base_path` as is when it is a URI or absolute, else resolved against `root`."""
    if "://" in base_path or os.path.isabs(base_path):
        return base_path
    return str((root / base_path).resolve())
