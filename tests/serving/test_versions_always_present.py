"""`servable_versions_always_present` from the YAML config to the serving stack (issue 15)."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import pytest

from pyserving.serving.config import ConfigError
from pyserving.serving.config_file import parse_config_text
from pyserving.serving.server_core import ServerCore, ServerOptions
from tests.fakes import wait_until
from tests.serving.counting import counting_registry, make_versions


def _core(tmp_path: Path, always_present: bool | None) -> ServerCore:
    base = make_versions(tmp_path / "m", 1)
    key = "" if always_present is None else f", servable_versions_always_present: {always_present}"
    text = f"models:\n  - {{name: m, base_path: {base}, platform: counting{key}}}\n"
    config = parse_config_text(text.replace("True", "true").replace("False", "false"), "c.yaml")
    gate = threading.Event()
    gate.set()
    options = ServerOptions(
        model_config=config, file_system_poll_wait_seconds=0, initial_load_timeout_s=30.0
    )
    return ServerCore(options, registry=counting_registry(gate))


def test_the_yaml_key_is_parsed_and_checked_issue_15(tmp_path: Path) -> None:
    text = (
        f"models:\n  - {{name: m, base_path: {tmp_path}, servable_versions_always_present: true}}"
    )
    model = parse_config_text(text, tmp_path / "c.yaml").models[0]
    assert model.servable_versions_always_present
    assert "servable_versions_always_present" not in model.options  # not a loader option
    with pytest.raises(ConfigError, match="servable_versions_always_present must be true or"):
        parse_config_text(text.replace("true", "'yes'"), tmp_path / "c.yaml")


@pytest.mark.parametrize("always_present", [True, False])
def test_an_emptied_base_path_keeps_serving_only_with_the_key_issue_15(
    tmp_path: Path, always_present: bool, caplog: pytest.LogCaptureFixture
) -> None:
    core = _core(tmp_path, always_present)
    try:
        core.start()
        assert core.manager.available_versions("m") == [1]
        shutil.rmtree(tmp_path / "m" / "1")  # the base path stays, empty
        with caplog.at_level(logging.WARNING):
            core._source.poll_once()  # the next poll of the base path
        if always_present:
            assert core.manager.available_versions("m") == [1]
            assert "Servable m: no versions under base path" in caplog.text
        else:
            wait_until(lambda: not core.manager.available_versions("m"), what="m unloaded")
            assert "Servable m: every version is gone from base path" in caplog.text
    finally:
        assert core.stop(30)
