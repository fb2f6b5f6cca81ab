"""Every key a YAML model config may hold, and the check that names an unknown one with the
closest known key and its line: `basepath:` is "unknown key 'basepath' (did you mean
'base_path'?)", not a silent default or a later "base_path is required".

A model's keys are the parser's own (config.py) plus those the platforms, the batcher and the
execution read from the model's options; `tests/serving/test_config_keys.py` scans the sources so
that a key read anywhere is listed here.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping

import yaml
from google.protobuf import descriptor_pool

from pyserving.batching.options import BatchingOptions
from pyserving.serving.request_log import LOGGING_KEYS

__all__ = ["MODEL_KEYS", "TOP_LEVEL_KEYS", "proto_field_hint", "unknown_key_message"]

TOP_LEVEL_KEYS: frozenset[str] = frozenset({"models", "load"})

#: key → what reads it (docs/ lists them with their meaning)
MODEL_KEYS: Mapping[str, str] = {
    "name": "config",
    "base_path": "config",
    "platform": "config",
    "version_policy": "config",
    "labels": "config",
    "traffic": "config",
    "servable_versions_always_present": "config",
    "batching": "batching",
    "instances": "execution",
    "logging": "request log",
    "load": "on-demand loading",
    "idle_unload_seconds": "on-demand loading",
    "allow_python": "python platform",
    "class": "python platform",
    "allow_pickle": "sklearn and torch platforms",
    "trusted_types": "sklearn platform",
    "intra_op_num_threads": "onnx platform",
    "num_threads": "xgboost and lightgbm platforms",
    "header": "lookup platform",
    "key_type": "lookup platform",
    "default": "lookup platform",
    "shard": "lookup platform",
    "shards": "shards platform",
    "model": "shards platform",
    "pipeline": "pipelines",
}

#: a key whose value is a mapping with fixed keys → those keys (None: the value's keys are free)
_NESTED: Mapping[str, frozenset[str] | None] = {
    "version_policy": frozenset({"all", "latest", "specific"}),
    "batching": frozenset(f.name for f in dataclasses.fields(BatchingOptions)),
    "labels": None,
    "traffic": None,
    "logging": LOGGING_KEYS,
    "shard": frozenset({"index", "count"}),
    "pipeline": frozenset({"steps", "outputs"}),
}
_POLICY_NESTED: Mapping[str, frozenset[str]] = {
    "latest": frozenset({"num_versions"}),
    "specific": frozenset({"versions"}),
}


def unknown_key_message(text: str) -> str | None:
    """The first unknown key of the YAML model config `text`, as "line N: unknown key ...", or
    None (also when `text` is not YAML or not shaped like a config: the parser says why)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if not isinstance(root, yaml.MappingNode):
        return None
    problem = _check(root, TOP_LEVEL_KEYS, "the top level")
    if problem is not None:
        return problem
    for key, value in root.value:
        if key.value == "models" and isinstance(value, yaml.SequenceNode):
            for index, entry in enumerate(value.value):
                if isinstance(entry, yaml.MappingNode):
                    problem = _check_model(entry, index)
                    if problem is not None:
                        return problem
    return None


_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')


def proto_field_hint(parse_error: str) -> str:
    """For a text-proto ParseError naming an unknown field: " (did you mean 'base_path'?)" with
    the closest field of that message; "" when there is none (or another error)."""
    match = _NO_FIELD.search(parse_error)
    if match is None:
        return ""
    try:
        message = descriptor_pool.Default().FindMessageTypeByName(match.group(1))
    except KeyError:
        return ""
    fields = sorted(field.name for field in message.fields)
    close = difflib.get_close_matches(match.group(2), fields, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_model(entry: yaml.MappingNode, index: int) -> str | None:
    name = next(
        (v.value for k, v in entry.value if k.value == "name" and isinstance(v, yaml.ScalarNode)),
        None,
    )
    where = f'model "{name}"' if name else f"models[{index}]"
    problem = _check(entry, frozenset(MODEL_KEYS), where)
    if problem is not None:
        return problem
    for key, value in entry.value:
        known = _NESTED.get(key.value)
        if known is None or not isinstance(value, yaml.MappingNode):
            continue
        problem = _check(value, known, f"{where} {key.value}")
        if problem is not None:
            return problem
        if key.value == "version_policy":
            for kind, inner in value.value:
                fields = _POLICY_NESTED.get(kind.value)
                if fields is not None and isinstance(inner, yaml.MappingNode):
                    problem = _check(inner, fields, f"{where} version_policy {kind.value}")
                    if problem is not None:
                        return problem
    return None


def _check(node: yaml.MappingNode, known: frozenset[str], where: str) -> str | None:
    for key, _ in node.value:
        text = key.value if isinstance(key, yaml.ScalarNode) else None
        if text in known:
            continue
        mark = key.start_mark
        message = f"line {mark.line + 1}: unknown key {text!r} in {where}"
        close = difflib.get_close_matches(str(text), sorted(known), n=1, cutoff=0.6)
        if close:
            return f"{message} (did you mean {close[0]!r}?)"
        return f"{message} (known: {', '.join(sorted(known))})"
    return None
