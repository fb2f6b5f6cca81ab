"""YAML model config: parsing, defaults, relative paths, and errors that name the model."""

from pathlib import Path

import pytest

from pyserving.serving.config import ConfigError, load_config_file, parse_config
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
