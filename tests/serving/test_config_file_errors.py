"""serving/config_file.py (F5): a YAML config's semantic error names the file and the line of the
model entry it is in, as a text-proto error names file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyserving.serving.config import ConfigError
from pyserving.serving.config_file import load_config_file


def test_an_entrys_error_names_the_file_and_the_entrys_line(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        "  - name: a\n"
        "    base_path: a\n"
        "\n"
        "  - name: b\n"
        "    base_path: b\n"
        "    version_policy: {specific: {versions: [x]}}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config_file(path)
    assert error.value.message == (
        f'model config file {path}, line 5: model "b": version_policy specific must list'
        " version numbers"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("models: {}\n", "model config must be a mapping with a 'models' list"),
        ("models:\n  - {name: a, base_path: a}\n  - {name: a, base_path: b}\n", '"a"'),
    ],
)
def test_a_whole_file_error_names_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "models.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config_file(path)
    assert error.value.message.startswith(f"model config file {path}: ")
    assert problem in error.value.message
