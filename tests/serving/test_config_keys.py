"""Unknown keys in a YAML model config are named, with the closest known key and their line
(issue 16)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyserving.proto import model_server_config_pb2  # noqa: F401 - registers the messages
from pyserving.serving.config import ConfigError
from pyserving.serving.config_file import load_config_file
from pyserving.serving.config_keys import (
    MODEL_KEYS,
    TOP_LEVEL_KEYS,
    proto_field_hint,
    unknown_key_message,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "pyserving"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "models:\n  - name: mlp\n    basepath: /m\n",
            "line 3: unknown key 'basepath' in model \"mlp\" (did you mean 'base_path'?)",
        ),
        (
            "models:\n  - name: mlp\n    base_path: /m\n    lables: {stable: 1}\n",
            "line 4: unknown key 'lables' in model \"mlp\" (did you mean 'labels'?)",
        ),
        (
            "models:\n  - name: mlp\n    base_path: /m\n    version_polcy: all\n",
            "line 4: unknown key 'version_polcy' in model \"mlp\" (did you mean 'version_policy'?)",
        ),
        ("modles: []\n", "line 1: unknown key 'modles' in the top level (did you mean 'models'?)"),
        (
            "models:\n  - base_path: /m\n    nmae: x\n",
            "line 3: unknown key 'nmae' in models[0] (did you mean 'name'?)",
        ),
        (
            "models:\n  - name: m\n    base_path: /m\n    version_policy: {latest: {num: 2}}\n",
            "line 4: unknown key 'num' in model \"m\" version_policy latest (known: num_versions)",
        ),
        (
            "models:\n  - name: m\n    base_path: /m\n    batching:\n      max_batch_siz: 8\n",
            "line 5: unknown key 'max_batch_siz' in model \"m\" batching"
            " (did you mean 'max_batch_size'?)",
        ),
    ],
)
def test_an_unknown_key_is_named_with_its_line_and_the_closest_key_issue_16(text, expected):
    assert unknown_key_message(text) == expected


def test_known_keys_and_free_form_maps_pass_issue_16():
    text = (
        "models:\n"
        "  - name: mlp\n    base_path: /m\n    platform: onnx\n"
        "    version_policy: {specific: {versions: [1]}}\n"
        "    labels: {any_label: 1}\n    traffic: {any_label: 100}\n"
        "    batching: {max_batch_size: 8}\n    instances: 2\n    intra_op_num_threads: 2\n"
    )
    assert unknown_key_message(text) is None
    assert unknown_key_message("not: [valid") is None  # the parser reports bad YAML itself


def _keys_read_in_sources() -> set[str]:
    """Model keys read anywhere: platform loaders' `self.config.get("k")`, the serving layer's
    `options["k"]` / `options.get("k")` and the config parser's `entry.get("k")`."""
    everywhere = (
        re.compile(r"self\.config\.get\(\s*\"(\w+)\""),
        re.compile(r"self\.config\[\"(\w+)\"\]"),
    )
    serving = (
        re.compile(r"\boptions\[\"(\w+)\"\]"),
        re.compile(r"\boptions\.get\(\"(\w+)\""),
        re.compile(r"\"(\w+)\" in m\.options"),
        re.compile(r"\bentry\.get\(\"(\w+)\""),
        re.compile(r"\"(\w+)\" in entry\b"),
    )
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        if "proto" in path.parts:
            continue
        text = path.read_text()
        patterns = everywhere + (serving if path.parent.name == "serving" else ())
        for pattern in patterns:
            found.update(pattern.findall(text))
    return found


def test_every_model_key_the_sources_read_is_known_issue_16():
    read = _keys_read_in_sources()
    assert {"base_path", "batching", "intra_op_num_threads", "logging"} <= read  # the scan works
    missing = read - set(MODEL_KEYS)
    assert not missing, f"add these to serving/config_keys.MODEL_KEYS (and docs/): {missing}"


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (
            '4:5 : Message type "tensorflow.serving.ModelConfig" has no field named "basepath".',
            " (did you mean 'base_path'?)",
        ),
        (
            '5:27 : Message type "tensorflow.serving.FileSystemStoragePathSourceConfig'
            '.ServableVersionPolicy" has no field named "latst".',
            " (did you mean 'latest'?)",
        ),
        ('1:1 : Message type "tensorflow.serving.ModelConfig" has no field named "zzzz".', ""),
        ('1:1 : Message type "no.such.Type" has no field named "name".', ""),
        ("1:7 : Expected identifier.", ""),
    ],
)
def test_a_text_proto_unknown_field_gets_the_closest_field_issue_16(error, hint):
    assert proto_field_hint(error) == hint


def test_every_top_level_key_the_parser_reads_is_known_issue_16():
    text = (SRC / "serving" / "config_yaml.py").read_text()
    read = set(re.findall(r"document\.get\(\"(\w+)\"", text))
    read |= set(re.findall(r"document\[\"(\w+)\"\]", text))
    assert "models" in read
    assert read <= TOP_LEVEL_KEYS, f"add to serving/config_keys.TOP_LEVEL_KEYS: {read}"


def test_a_yaml_config_file_names_the_unknown_key_its_line_and_the_fix_issue_16(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - name: mlp\n    basepath: /models/mlp\n")
    with pytest.raises(ConfigError) as raised:
        load_config_file(path)
    assert raised.value.message == (
        f"model config file {path}, line 3: unknown key 'basepath' in model \"mlp\""
        " (did you mean 'base_path'?)"
    )


def test_a_tf_config_file_names_the_unknown_field_and_the_closest_issue_16(tmp_path):
    path = tmp_path / "models.config"
    path.write_text(
        'model_config_list {\n  config {\n    name: "mlp"\n    basepath: "/m"\n  }\n}\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_config_file(path)
    assert raised.value.message.startswith(f"model config file {path}: ")
    assert raised.value.message.endswith(
        '4:5 : Message type "tensorflow.serving.ModelConfig" has no field named "basepath".'
        " (did you mean 'base_path'?)"
    )


def test_serve_stops_on_an_unknown_key_with_one_line_issue_16(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  - name: mlp\n    base_path: /models/mlp\n    version_polcy: {latest: 2}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pyserving", "serve", f"--model_config_file={path}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"pyserving: model config file {path}, line 4: unknown key 'version_polcy' in model"
        " \"mlp\" (did you mean 'version_policy'?)\n"
    )
