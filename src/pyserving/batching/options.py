"""BatchingOptions: TF Serving's BatchingParameters, from a text proto, YAML or a mapping.

Field names and defaults follow `session_bundle_config.proto` as TF Serving applies it
(docs/config.md#batching): an unset field takes the scheduler's default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pyserving.errors import InvalidInput

__all__ = [
    "BATCH_WAITS",
    "BatchingConfigError",
    "BatchingOptions",
    "BatchingPolicy",
    "load_batching_parameters",
    "parse_batching_text_proto",
]


#: the values of `batch_wait`
BATCH_WAITS = ("adaptive", "timeout")


class BatchingConfigError(InvalidInput):
    """Batching parameters that cannot be used; the message names the field and the problem."""


def _default_threads() -> int:
    # TF: port::MaxParallelism(), the cores this process may use.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class BatchingOptions:
    """One queue's batching knobs (plus the shared pool's), TF Serving's names and defaults."""

    #: largest task (and, without splitting, batch) a queue accepts
    max_batch_size: int = 1000
    #: how long the oldest task of the open batch may wait for more before the batch runs
    batch_timeout_micros: int = 0
    #: queue capacity in batches; a batch handed to a thread no longer counts
    max_enqueued_batches: int = 10
    #: shared pool size; only the server-wide value is used (all queues share one pool)
    num_batch_threads: int = field(default_factory=_default_threads)
    #: pool name, used for the batch threads' names
    thread_pool_name: str = "batch_threads"
    #: pad each batch up to the smallest of these >= its size; must end with the batch limit
    allowed_batch_sizes: tuple[int, ...] = ()
    #: pad non-batch dimensions of same-named inputs to the batch maximum
    pad_variable_length_inputs: bool = False
    #: split tasks across batches (to fill the open batch, or to fit max_execution_batch_size)
    enable_large_batch_splitting: bool = False
    #: largest batch actually executed (only with splitting); None: max_batch_size
    max_execution_batch_size: int | None = None
    #: "adaptive": an open batch runs before its timeout when waiting cannot pay (the model is
    #: idle, or no request is expected in time); "timeout": TF Serving's fixed wait. Not in TF's
    #: BatchingParameters, so YAML only.
    batch_wait: Literal["adaptive", "timeout"] = "adaptive"

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise BatchingConfigError(
                    f"batching: {name} must be a positive integer, got {value!r}"
                )
        if self.batch_wait not in BATCH_WAITS:
            raise BatchingConfigError(
                f"batching: batch_wait must be one of {', '.join(BATCH_WAITS)},"
                f" got {self.batch_wait!r}"
            )
        if not _is_int(self.batch_timeout_micros) or self.batch_timeout_micros < 0:
            raise BatchingConfigError(
                "batching: batch_timeout_micros must be a non-negative integer,"
                f" got {self.batch_timeout_micros!r}"
            )
        if self.max_execution_batch_size is not None:
            if not _is_int(self.max_execution_batch_size) or self.max_execution_batch_size < 1:
                raise BatchingConfigError(
                    "batching: max_execution_batch_size must be a positive integer,"
                    f" got {self.max_execution_batch_size!r}"
                )
            if self.max_execution_batch_size > self.max_batch_size:
                raise BatchingConfigError(
                    f"batching: max_execution_batch_size ({self.max_execution_batch_size}) must"
                    f" be <= max_batch_size ({self.max_batch_size})"
                )
        sizes = self.allowed_batch_sizes
        if sizes:
            if not all(_is_int(s) and s > 0 for s in sizes) or any(
                a >= b for a, b in itertools.pairwise(sizes)
            ):
                raise BatchingConfigError(
                    "batching: allowed_batch_sizes must be positive and strictly increasing,"
                    f" got {list(sizes)}"
                )
            limit = self.execution_batch_size
            if sizes[-1] != limit:
                raise BatchingConfigError(
                    "batching: Last entry in allowed_batch_sizes must match max_batch_size;"
                    f" last entry was {sizes[-1]}; expected {limit}"
                )

    @property
    def execution_batch_size(self) -> int:
        """The most rows one model call gets (padding included)."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size is not None:
            return self.max_execution_batch_size
        return self.max_batch_size

    @property
    def batch_timeout_s(self) -> float:
        return self.batch_timeout_micros / 1e6

    def padded_size(self, size: int) -> int:
        """The smallest allowed batch size >= `size` (`size` itself when none are configured)."""
        for allowed in self.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size

    def with_overrides(
        self, overrides: Mapping[str, Any], where: str = "batching"
    ) -> BatchingOptions:
        """These options with the fields in `overrides` replaced (a YAML `batching:` mapping);
        raises BatchingConfigError naming `where`."""
        fields = _fields_from_mapping(overrides, where)
        with _errors_naming(where):
            return dataclasses.replace(self, **fields)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], where: str = "batching") -> BatchingOptions:
        """Options from a YAML mapping; unset fields take the defaults. Raises
        BatchingConfigError naming `where`."""
        fields = _fields_from_mapping(mapping, where)
        with _errors_naming(where):
            return cls(**fields)


@contextlib.contextmanager
def _errors_naming(where: str) -> Iterator[None]:
    """Re-raise a BatchingConfigError from BatchingOptions' own checks (which say "batching:")
    naming `where`: the model or the file whose setting it is."""
    try:
        yield
    except BatchingConfigError as exc:
        raise BatchingConfigError(f"{where}: {str(exc).removeprefix('batching: ')}") from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_FIELDS = {f.name: f for f in dataclasses.fields(BatchingOptions)}
_BOOL_FIELDS = {"pad_variable_length_inputs", "enable_large_batch_splitting"}


def _fields_from_mapping(mapping: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(mapping, Mapping):
        raise BatchingConfigError(f"{where} must be a mapping of BatchingParameters fields")
    values: dict[str, Any] = {}
    for key, value in mapping.items():
        if key not in _FIELDS:
            raise BatchingConfigError(
                f'{where}: unknown field "{key}" (known: {", ".join(sorted(_FIELDS))})'
            )
        if isinstance(value, Mapping) and set(value) == {"value"}:
            value = value["value"]  # the proto wrapper spelling: {max_batch_size: {value: 32}}
        if key == "allowed_batch_sizes":
            if not isinstance(value, list | tuple):
                raise BatchingConfigError(f"{where}: allowed_batch_sizes must be a list")
            value = tuple(value)
        elif key in _BOOL_FIELDS:
            if not isinstance(value, bool):
                raise BatchingConfigError(f"{where}: {key} must be true or false, got {value!r}")
        elif key in ("thread_pool_name", "batch_wait"):
            if not isinstance(value, str):
                raise BatchingConfigError(f"{where}: {key} must be a string")
        elif not _is_int(value):
            raise BatchingConfigError(f"{where}: {key} must be an integer, got {value!r}")
        values[key] = value
    return values


def parse_batching_text_proto(text: str, where: str = "batching parameters") -> BatchingOptions:
    """Options from a TF Serving BatchingParameters text proto; unset fields take the defaults."""
    from google.protobuf import text_format

    from pyserving.proto.session_bundle_config_pb2 import BatchingParameters

    message = BatchingParameters()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise BatchingConfigError(
            f"{where} is not a valid BatchingParameters text proto: {exc}"
        ) from None
    values: dict[str, Any] = {}
    for name in (
        "max_batch_size",
        "batch_timeout_micros",
        "max_enqueued_batches",
        "num_batch_threads",
        "thread_pool_name",
        "enable_large_batch_splitting",
        "max_execution_batch_size",
    ):
        if message.HasField(name):
            values[name] = getattr(message, name).value
    if message.allowed_batch_sizes:
        values["allowed_batch_sizes"] = tuple(message.allowed_batch_sizes)
    values["pad_variable_length_inputs"] = message.pad_variable_length_inputs
    with _errors_naming(where):
        return BatchingOptions(**values)


def load_batching_parameters(path: str | os.PathLike[str]) -> BatchingOptions:
    """Read `--batching_parameters_file`: YAML by extension (.yaml/.yml), else a text proto."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BatchingConfigError(
            f"cannot read batching parameters file {path}: {exc.strerror}"
        ) from None
    if path.suffix not in (".yaml", ".yml"):
        return parse_batching_text_proto(text, f"batching parameters file {path}")
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BatchingConfigError(
            f"batching parameters file {path} is not valid YAML: {exc}"
        ) from None
    return BatchingOptions.from_mapping(document or {}, f"batching parameters file {path}")


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """Which models batch, with which options: server-wide settings plus per-model overrides.

    With `enabled` (the `--enable_batching` flag) every model batches with `server` options,
    overridden field by field by its `batching:` mapping; without it only models that have a
    `batching:` mapping batch. A model whose mapping is `false` never batches. A model the config
    says nothing about follows its version's own setting (the version's `pyserving.yaml`) when it
    has one, the same way, and else the flag.
    """

    enabled: bool = False
    server: BatchingOptions = field(default_factory=BatchingOptions)
    per_model: Mapping[str, BatchingOptions | None] = field(default_factory=dict)
    #: id(a version's setting) → (that setting, its options): parsed once per policy
    _per_version: dict[int, tuple[Any, BatchingOptions]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def build(
        cls,
        enabled: bool,
        server: BatchingOptions | None,
        model_settings: Mapping[str, Any],
    ) -> BatchingPolicy:
        """A policy from the server-wide options and each model's raw `batching:` value.

        `model_settings` maps a model name to its `batching:` value: a mapping, True (batch with
        the server-wide options) or False (never batch). Raises BatchingConfigError naming the
        model.
        """
        base = server or BatchingOptions()
        per_model: dict[str, BatchingOptions | None] = {}
        for name, setting in model_settings.items():
            if setting is False:
                per_model[name] = None
            elif setting is True:
                per_model[name] = base
            else:
                per_model[name] = base.with_overrides(setting, f'model "{name}": batching')
        return cls(enabled=enabled, server=base, per_model=per_model)

    @property
    def any_enabled(self) -> bool:
        return self.enabled or any(o is not None for o in self.per_model.values())

    def options_for(
        self, model: str, version_setting: Mapping[str, Any] | bool | None = None
    ) -> BatchingOptions | None:
        """The options `model`'s queues use, or None when it does not batch.

        `version_setting` is the serving version's own setting (parameters, True or False;
        None: it has none), checked when the version loaded.
        """
        if model in self.per_model:
            return self.per_model[model]
        if version_setting is None:
            return self.server if self.enabled else None
        if isinstance(version_setting, bool):
            return self.server if version_setting else None
        cached = self._per_version.get(id(version_setting))
        if cached is None or cached[0] is not version_setting:
            if len(self._per_version) >= 1024:  # bound it across many reloaded versions
                self._per_version.clear()
            cached = (version_setting, self.server.with_overrides(version_setting))
            self._per_version[id(version_setting)] = cached
        return cached[1]
