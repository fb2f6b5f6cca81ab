"""Config entries of shard routers and lookup shards (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyserving.serving.config import ConfigError
from pyserving.serving.config_file import load_config_file
from pyserving.serving.config_keys import unknown_key_message


def parse(tmp_path: Path, entry: str):
    path = tmp_path / "models.yaml"
    path.write_text(f"models:\n  - name: table\n{entry}")
    return load_config_file(str(path))


def test_a_router_needs_no_base_path_and_keeps_its_shards(tmp_path: Path) -> None:
    config = parse(tmp_path, '    platform: shards\n    shards: ["a:1", "b:2"]\n    model: t\n')
    model = config.get("table")
    assert model is not None
    assert model.base_path == "" and model.platform == "shards"
    assert model.options["shards"] == ["a:1", "b:2"] and model.options["model"] == "t"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("    platform: shards\n", "shards must list the shard servers"),
        ("    platform: shards\n    shards: []\n", "shards must list"),
        ('    platform: shards\n    shards: ["nohost"]\n', "host:port"),
        ('    platform: shards\n    shards: ["a:1"]\n    base_path: /x\n', "not base_path"),
        ('    platform: shards\n    shards: ["a:1"]\n    model: 3\n', "model \\(its name"),
    ],
)
def test_bad_router_entries_name_the_problem(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(tmp_path, entry)


def test_shard_keys_are_known_and_checked() -> None:
    entry = "models:\n  - name: t\n    base_path: /x\n    shard: {index: 0, count: 2}\n"
    assert unknown_key_message(entry) is None
    typo = unknown_key_message(entry.replace("count", "cuont"))
    assert typo is not None and "did you mean 'count'" in typo
