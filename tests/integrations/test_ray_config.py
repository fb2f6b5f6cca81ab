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
from pyserving.integrations.ray_shards import router_config, shard_config  # noqa: E402

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


def test_example_sharded_serve_config_builds_a_deployment_per_shard_and_the_router():
    config = yaml.safe_load((EXAMPLES / "sharded_serve_config.yaml").read_text())
    (app,) = schema.ServeDeploySchema.model_validate(config).applications
    args = {**app.args, "model_config_file": str(EXAMPLES / "sharded.yaml")}
    router = build_app(args)._bound_deployment
    _options, table, shards = router.init_args
    names = [router.name, *(s._bound_deployment.name for s in shards)]
    assert names == [d.name for d in app.deployments]
    assert names == [DEPLOYMENT_NAME, "pyserving-shard-0", "pyserving-shard-1"]
    assert [s._bound_deployment.init_args[1] for s in shards] == [
        shard_config(table, 0),
        shard_config(table, 1),
    ]
    (entry,) = shard_config(table, 1).models
    assert entry.options["shard"] == {"count": 2, "index": 1}
    (routed,) = router_config(table, ["10.0.0.1:1", "10.0.0.2:2"]).models
    assert (routed.platform, routed.options["shards"]) == ("shards", ["10.0.0.1:1", "10.0.0.2:2"])


@pytest.mark.parametrize(
    ("models", "args", "message"),
    [
        (
            [{"name": "a", "shard": {"count": 2}}, {"name": "b", "shard": {"count": 3}}],
            {},
            "one count: a: 2, b: 3",
        ),
        ([{"name": "a", "shard": {"count": 0}}], {}, "shard must be {count: n} with n >= 1"),
        (
            [{"name": "a", "shard": {"count": 2}}],
            {"shard_deployment": {"num_replicas": 2}},
            "shard_deployment.num_replicas: a shard deployment has one replica",
        ),
        ([{"name": "a"}], {"shard_deployment": {"num_cpus": 1}}, "no sharded table"),
    ],
)
def test_bad_sharded_configs_are_refused_at_build(tmp_path, models, args, message):
    config = tmp_path / "models.yaml"
    entries = [{**m, "base_path": str(tmp_path / m["name"])} for m in models]
    config.write_text(yaml.safe_dump({"models": entries}))
    with pytest.raises(ValueError) as caught:
        build_app({"model_config_file": str(config), **args})
    assert message in str(caught.value)
