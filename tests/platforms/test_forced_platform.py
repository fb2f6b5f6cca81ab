"""A platform forced by the model config that does not match a version's files says which files
it found and what to change (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyserving.core.ids import ServableId
from pyserving.demo import write_demo_repository
from pyserving.errors import FailedPrecondition
from pyserving.platforms.registry import make_loader, platform_mismatch
from tests.e2e.server import ServerProcess
from tests.fakes import wait_until

ID = ServableId("mlp", 1)
EXPECTED = 'model.onnx is platform "onnx". Set model_platform: "onnx"'


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return write_demo_repository(tmp_path_factory.mktemp("forced"))


def test_tensorflow_forced_on_an_onnx_version_names_the_files_and_the_fix_issue_16(repo):
    version = repo / "mlp" / "1"
    with pytest.raises(FailedPrecondition) as raised:
        make_loader("tensorflow", ID, str(version))
    message = raised.value.message
    assert message.startswith('model mlp version 1: the model config sets platform "tensorflow"')
    assert "needs saved_model.pb" in message and f"but {version} holds model.onnx" in message
    assert 'model.onnx is platform "onnx". Set model_platform: "onnx"' in message
    assert "leave it out to detect the platform from the files" in message


def test_a_matching_or_unknown_layout_is_left_to_the_loader_issue_16(repo, tmp_path):
    assert platform_mismatch("onnx", ID, str(repo / "mlp" / "1")) is None
    assert platform_mismatch("tensorflow", ID, str(tmp_path)) is None  # empty: loader's error
    assert platform_mismatch("tensorflow", ID, str(tmp_path / "missing")) is None
    assert platform_mismatch("my_platform", ID, str(repo / "mlp" / "1")) is None


def test_credentials_in_a_url_stay_out_of_the_message_issue_16(repo):
    url = f"file://user:secret@{repo / 'mlp' / '1'}"
    message = platform_mismatch("tensorflow", ID, url)
    if message is not None:  # fsspec may not list a file URL with a netloc
        assert "secret" not in message


@pytest.mark.slow
def test_a_tf_models_config_forcing_tensorflow_on_onnx_files_says_what_to_change_issue_16(
    repo, tmp_path
):
    config = tmp_path / "models.config"
    config.write_text(
        'model_config_list {\n  config {\n    name: "mlp"\n'
        f'    base_path: "{repo / "mlp"}"\n    model_platform: "tensorflow"\n  }}\n}}\n'
    )
    server = ServerProcess(f"--model_config_file={config}")
    try:
        wait_until(lambda: server.proc.poll() is not None or EXPECTED in server.log(), 60)
    finally:
        server.stop()
    assert EXPECTED in server.log(), server.log()
