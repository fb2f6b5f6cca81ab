"""YAML model config: parsing, defaults, relative paths, and errors that name the model."""

from pathlib import Path

import pytest

from pyserving.errors import FailedPrecondition
from pyserving.serving.config import ConfigError, check_platforms, check_transition
from pyserving.serving.config_file import load_config_file
from pyserving.serving.config_yaml import parse_config
from pyserving.sources.storage_path import VersionPolicy


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_full_entry_parses_with_relative_path_resolved_against_the_file(tmp_path):
    config = load_config_file(
        write(
            tmp_path,
            """
models:
  - name: mlp
    base_path: models/mlp
    platform: onnx
    version_policy: {latest: 2}
    labels: {stable: 1, canary: 2}
  - name: other
    base_path: /abs/other
    version_policy: all
  - name: pinned
    base_path: s3://bucket/pinned
    version_policy: {specific: [1, 3]}
""",
        )
    )
    mlp, other, pinned = config.models
    assert mlp.base_path == str(tmp_path / "models" / "mlp")
    assert mlp.platform == "onnx" and mlp.version_policy == VersionPolicy.latest(2)
    assert mlp.labels == {"stable": 1, "canary": 2}
    assert other.base_path == "/abs/other" and other.version_policy == VersionPolicy.all()
    assert pinned.base_path == "s3://bucket/pinned"
    assert pinned.version_policy == VersionPolicy.specific([1, 3])


def test_default_version_policy_is_latest_one(tmp_path):
    config = parse_config({"models": [{"name": "m", "base_path": "/x"}]}, tmp_path)
    assert config.models[0].version_policy == VersionPolicy.latest(1)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"models": [{"name": "m", "base_path": "/a"}, {"name": "m", "base_path": "/b"}]},
            'model "m" is configured twice',
        ),
        ({"models": [{"name": "m"}]}, 'model "m": base_path is required'),
        ({"models": [{"base_path": "/a"}]}, "models[0]: 'name'"),
        (
            {"models": [{"name": "m", "base_path": "/a", "version_policy": {"latest": 0}}]},
            'model "m": version_policy latest',
        ),
        (
            {"models": [{"name": "m", "base_path": "/a", "labels": {"x": "one"}}]},
            'model "m": labels',
        ),
        ({"nothing": 1}, "'models' list"),
    ],
)
def test_invalid_configs_name_the_problem(tmp_path, document, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(document, tmp_path)


def test_unreadable_or_malformed_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(write(tmp_path, "models: [unclosed"))


TEXT_PROTO = """
model_config_list {
  config {
    name: "mlp"
    base_path: "models/mlp"
    model_platform: "onnx"
    model_version_policy { latest { num_versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config { name: "other" base_path: "/abs/other" model_version_policy { all {} } }
  config { name: "pinned" base_path: "s3://b/p" model_version_policy { specific { versions: 3 } } }
}
"""


def test_text_proto_maps_onto_the_same_dataclasses_as_yaml(tmp_path):
    proto = load_config_file(write_named(tmp_path, "models.config", TEXT_PROTO))
    yaml_config = load_config_file(
        write(
            tmp_path,
            """
models:
  - {name: mlp, base_path: models/mlp, platform: onnx, version_policy: {latest: 2},
     labels: {stable: 1, canary: 2}}
  - {name: other, base_path: /abs/other, version_policy: all}
  - {name: pinned, base_path: "s3://b/p", version_policy: {specific: [3]}}
""",
        )
    )
    assert proto == yaml_config
    assert proto.models[0].base_path == str(tmp_path / "models" / "mlp")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_config_list { config { name: 'a' } }", 'model "a": base_path is required'),
        ("model_config_list { config { nme: 'a' } }", "not a valid text-format"),
        (
            "model_config_list { config { name: 'a' base_path: '/a' } config { name: 'a'"
            " base_path: '/b' } }",
            'model "a" is configured twice',
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/a' model_type: TENSORFLOW"
            " model_platform: 'onnx' } }",
            "Illegal setting both model_type",
        ),
        ("custom_model_config {}", "does not yet support custom model config"),
    ],
)
def test_invalid_text_protos_name_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config_file(write_named(tmp_path, "models.config", text))


def test_traffic_must_name_labels_with_weights(tmp_path):
    entry = {"name": "m", "base_path": "/a", "labels": {"s": 1, "c": 2}}
    config = parse_config({"models": [{**entry, "traffic": {"s": 90, "c": 10}}]}, tmp_path)
    assert config.models[0].traffic == {"s": 90, "c": 10}
    with pytest.raises(ConfigError, match='traffic names label "x"'):
        parse_config({"models": [{**entry, "traffic": {"x": 1}}]}, tmp_path)
    with pytest.raises(ConfigError, match="must not all be 0"):
        parse_config({"models": [{**entry, "traffic": {"s": 0}}]}, tmp_path)


def test_platform_may_not_change_and_must_be_known(tmp_path):
    old = parse_config({"models": [{"name": "m", "base_path": "/a", "platform": "onnx"}]}, tmp_path)
    new = parse_config({"models": [{"name": "m", "base_path": "/a"}]}, tmp_path)
    with pytest.raises(FailedPrecondition, match="For model m platform was onnx"):
        check_transition(old, new)
    with pytest.raises(ConfigError, match="Model m requests unsupported platform onnx"):
        check_platforms(old, ["torch"])


def write_named(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_allow_python_is_a_per_model_boolean_issue_15(tmp_path):
    config = parse_config(
        {
            "models": [
                {"name": "p", "base_path": "/m", "allow_python": True},
                {"name": "q", "base_path": "/n"},
            ]
        },
        tmp_path,
    )
    assert config.get("p").options["allow_python"] is True
    assert "allow_python" not in config.get("q").options
    with pytest.raises(ConfigError, match='model "p": allow_python must be true or false'):
        parse_config(
            {"models": [{"name": "p", "base_path": "/m", "allow_python": "yes"}]}, tmp_path
        )


@pytest.mark.parametrize("instances", [None, 0, 257, True, "2", 1.5])
def test_instances_must_be_an_integer_from_1_to_256_issue_14(tmp_path, instances):
    # null used to pass and reach the executor as None: every call to the model then failed
    with pytest.raises(ConfigError, match=r'model "m": instances .* from 1 to 256'):
        parse_config(
            {"models": [{"name": "m", "base_path": "/m", "instances": instances}]}, tmp_path
        )
    config = parse_config({"models": [{"name": "m", "base_path": "/m", "instances": 3}]}, tmp_path)
    assert config.get("m").options["instances"] == 3
