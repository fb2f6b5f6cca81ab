"""pyserving.integrations.ray without a cluster: the Serve config in examples/ validates and
builds, and options from a Serve config's `args:` are typed, checked and named in errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray", reason="Ray is not installed: pip install 'pyserving[ray]'")
schema = pytest.importorskip("ray.serve.schema", reason="Ray Serve is not installed")

from pyserving.integrations.ray import (  # noqa: E402
    DEPLOYMENT_NAME,
    RayServingOptions,
    build_app,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ray"


def test_example_serve_config_validates_and_builds_the_application():
    config = yaml.safe_load((EXAMPLES / "serve_config.yaml").read_text())
    deploy = schema.ServeDeploySchema.model_validate(config)
    (app,) = deploy.applications
    assert app.import_path == "pyserving.integrations.ray:build_app"
    assert app.route_prefix == "/"
    assert [d.name for d in app.deployments] == [DEPLOYMENT_NAME]
    args = {**app.args, "model_config_file": str(EXAMPLES / "models.yaml")}
    application = build_app(args)
    assert application is not None


def test_args_given_as_strings_by_serve_run_get_the_options_types():
    options = RayServingOptions.from_args(
        {
            "model-config-file": "/models/models.yaml",
            "file_system_poll_wait_seconds": "2.5",
            "rest_api_timeout_in_ms": "100",
            "enable_batching": "true",
            "model_control_roots": "/a,/b",
            "max_inflight_request_bytes": "1024",
        }
    )
    server = options.server
    assert server.model_config_file == "/models/models.yaml"
    assert server.file_system_poll_wait_seconds == 2.5
    assert server.rest_api_timeout_in_ms == 100
    assert server.enable_batching is True
    assert server.model_control_roots == ("/a", "/b")
    assert options.max_inflight_request_bytes == 1024


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"model_config_fle": "x"}, "args.model_config_fle: not a pyserving option (did you mean"),
        ({"rest_api_port": 8501}, "Ray's proxy serves HTTP"),
        ({"enable_model_control": True}, "would reach one replica only"),
        ({"enable_batching": "maybe"}, "args.enable_batching: expected bool, got 'maybe'"),
        ({"num_load_threads": "two"}, "args.num_load_threads: expected int, got 'two'"),
    ],
)
def test_bad_args_are_refused_with_the_key_and_the_reason(args, message):
    with pytest.raises(ValueError) as caught:
        RayServingOptions.from_args(args)
    assert message in str(caught.value)


def test_a_missing_model_config_fails_at_build_not_in_every_replica(tmp_path):
    with pytest.raises(ValueError, match="cannot read model config file"):
        build_app({"model_config_file": str(tmp_path / "missing.yaml")})
    with pytest.raises(ValueError, match=r"args\.deployment"):
        build_app({"model_config_file": "x", "deployment": [1]})


def test_a_bad_model_config_names_the_file_and_key(tmp_path):
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": "m", "basepath": "/x"}]}))
    with pytest.raises(ValueError, match="base_path"):
        build_app({"model_config_file": str(config)})


def test_relative_paths_are_made_absolute_where_the_app_is_built(tmp_path, monkeypatch):
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": []}))
    monkeypatch.chdir(tmp_path)
    application = build_app({"model_config_file": "models.yaml"})
    (options,) = application._bound_deployment.init_args
    assert options.server.model_config_file == str(tmp_path / "models.yaml")
