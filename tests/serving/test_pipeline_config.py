"""Pipeline definitions (issue 19): each kind of bad pipeline is refused with a message naming
the pipeline and the step, when the config is read or when the steps' signatures are known."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyserving.errors import FailedPrecondition
from pyserving.platforms.signature import Signature, TensorSpec
from pyserving.serving.config import ConfigError, check_transition
from pyserving.serving.config_yaml import parse_config
from pyserving.serving.pipeline_config import (
    PipelineError,
    derive_signature,
    parse_pipeline,
)

FEATURES = Signature(
    "serving_default",
    (TensorSpec("keys", "INT64", (-1,)),),
    (TensorSpec("values", "FP32", (-1, 8)), TensorSpec("found", "BOOL", (-1,))),
)
MLP = Signature(
    "serving_default",
    (TensorSpec("input", "FP32", (-1, 8)),),
    (TensorSpec("output", "FP32", (-1, 4)),),
)


def scorer(**overrides: object) -> dict[str, object]:
    pipeline: dict[str, object] = {
        "steps": [
            {"model": "features", "inputs": {"keys": "user"}},
            {"model": "mlp", "inputs": {"input": "features.values"}},
        ],
        "outputs": {"score": "mlp.output"},
    }
    pipeline.update(overrides)
    return pipeline


def config(pipeline: object, *extra: dict[str, object]) -> dict[str, object]:
    return {
        "models": [
            {"name": "features", "base_path": "/m/features"},
            {"name": "mlp", "base_path": "/m/mlp"},
            {"name": "scorer", "pipeline": pipeline},
            *extra,
        ]
    }


def test_a_pipeline_parses_in_dependency_order_and_derives_its_signature() -> None:
    steps = list(reversed(scorer()["steps"]))  # type: ignore[call-overload]
    spec = parse_pipeline(scorer(steps=steps), "scorer")
    assert [s.name for s in spec.steps] == ["features", "mlp"]
    signature = derive_signature(spec, {"features": FEATURES, "mlp": MLP})
    assert [(t.name, t.datatype, t.shape) for t in signature.inputs] == [("user", "INT64", (-1,))]
    assert [(t.name, t.datatype, t.shape) for t in signature.outputs] == [
        ("score", "FP32", (-1, 4))
    ]
    loaded = parse_config(config(scorer()), Path("/"))
    assert loaded.get("scorer") is not None and loaded.get("scorer").base_path == ""  # type: ignore[union-attr]


def test_independent_steps_share_a_level() -> None:
    spec = parse_pipeline(
        {
            "steps": [
                {"name": "a", "model": "features", "inputs": {"keys": "user"}},
                {"name": "b", "model": "features", "inputs": {"keys": "item"}},
                {"model": "mlp", "inputs": {"input": "a.values"}},
            ],
            "outputs": {"score": "mlp.output", "item": "b.values"},
        },
        "p",
    )
    assert [[s.name for s in level] for level in spec.levels] == [["a", "b"], ["mlp"]]


@pytest.mark.parametrize(
    ("pipeline", "extra", "message"),
    [
        (
            scorer(steps=[{"model": "nope", "inputs": {"keys": "user"}}], outputs={"s": "nope.v"}),
            (),
            'pipeline "scorer": step "nope": model "nope" is not configured',
        ),
        (
            scorer(
                steps=[
                    {"model": "features", "inputs": {"keys": "user"}},
                    {"model": "mlp", "inputs": {"input": "feature.values"}},
                ]
            ),
            (),
            'step "mlp": input "input" reads "feature.values", but there is no step "feature"',
        ),
        (
            scorer(
                steps=[
                    {"name": "a", "model": "mlp", "inputs": {"input": "b.output"}},
                    {"name": "b", "model": "mlp", "inputs": {"input": "a.output"}},
                ],
                outputs={"score": "b.output"},
            ),
            (),
            "steps form a cycle: a -> b -> a",
        ),
        (
            scorer(
                steps=[{"model": "mlp", "inputs": {"input": "mlp.output"}}],
                outputs={"score": "mlp.output"},
            ),
            (),
            "steps form a cycle: mlp -> mlp",
        ),
        (
            scorer(
                steps=[
                    {"model": "mlp", "inputs": {"input": "x"}},
                    {"model": "mlp", "inputs": {"input": "y"}},
                ]
            ),
            (),
            'step "mlp" appears twice',
        ),
        (scorer(outputs={"score": "mlp"}), (), 'output "score" must name a step\'s output'),
        (scorer(outputs={"score": "other.output"}), (), 'output "score" must name a step'),
        (scorer(steps=[]), (), "steps must be a non-empty list"),
        (
            scorer(steps=[{"model": "mlp", "inputs": {"input": "x"}, "version": 1, "label": "a"}]),
            (),
            'step "mlp": give a version or a label, not both',
        ),
        (
            scorer(steps=[{"model": "mlp", "input": {"input": "x"}}]),
            (),
            'step "mlp": unknown key(s) input',
        ),
        (
            scorer(steps=[{"model": "inner", "inputs": {"x": "user"}}], outputs={"s": "inner.v"}),
            ({"name": "inner", "pipeline": scorer()},),
            'step "inner": model "inner" is a pipeline',
        ),
        (
            scorer(steps=[{"model": "lazy", "inputs": {"x": "user"}}], outputs={"s": "lazy.v"}),
            ({"name": "lazy", "base_path": "/m/lazy", "load": "on_demand"},),
            'step "lazy": model "lazy" loads on demand',
        ),
    ],
    ids=[
        "unknown-model",
        "unknown-step",
        "cycle",
        "self-cycle",
        "duplicate-step",
        "output-not-a-step-output",
        "output-unknown-step",
        "no-steps",
        "version-and-label",
        "unknown-step-key",
        "nested-pipeline",
        "on-demand-step",
    ],
)
def test_bad_pipelines_are_refused_when_the_config_is_read(
    pipeline: object, extra: tuple[dict[str, object], ...], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config(pipeline, *extra), Path("/"))
    assert message in caught.value.message


def test_a_pipeline_entry_takes_no_model_keys() -> None:
    document = config(scorer())
    document["models"][2]["batching"] = True  # type: ignore[index]
    with pytest.raises(ConfigError, match="a pipeline takes only name and pipeline, not batching"):
        parse_config(document, Path("/"))


@pytest.mark.parametrize(
    ("steps", "mlp", "message"),
    [
        (
            [{"model": "features", "inputs": {"key": "user"}}],
            MLP,
            'step "features" (model "features"): its input "keys" (INT64 [-1]) is not wired',
        ),
        (
            [
                {"model": "features", "inputs": {"keys": "user"}},
                {"model": "mlp", "inputs": {"input": "features.values", "extra": "user"}},
            ],
            MLP,
            'step "mlp" (model "mlp"): it has no input "extra" (its inputs: input)',
        ),
        (
            [
                {"model": "features", "inputs": {"keys": "user"}},
                {"model": "mlp", "inputs": {"input": "features.vals"}},
            ],
            MLP,
            'reads "features.vals", but step "features" (model "features") has no output "vals"'
            " (its outputs: values, found)",
        ),
        (
            [
                {"model": "features", "inputs": {"keys": "user"}},
                {"model": "mlp", "inputs": {"input": "features.found"}},
            ],
            MLP,
            'step "mlp" (model "mlp"): input "input" takes FP32 [-1, 8], but "features.found"'
            " gives BOOL [-1]",
        ),
        (
            [
                {"model": "features", "inputs": {"keys": "user"}},
                {"model": "mlp", "inputs": {"input": "features.values"}},
            ],
            Signature(
                "serving_default",
                (TensorSpec("input", "FP32", (-1, 16)),),
                (TensorSpec("output", "FP32", (-1, 4)),),
            ),
            'input "input" takes FP32 [-1, 16], but "features.values" gives FP32 [-1, 8]',
        ),
        (
            [
                {"model": "features", "inputs": {"keys": "user"}},
                {"model": "mlp", "inputs": {"input": "user"}},
            ],
            MLP,
            'step "mlp" (model "mlp"): input "input" takes FP32 [-1, 8] from pipeline input'
            ' "user", which step "features" (model "features") takes as INT64 [-1]',
        ),
    ],
    ids=["unwired-input", "unknown-input", "unknown-output", "dtype", "shape", "input-clash"],
)
def test_wiring_that_does_not_fit_the_steps_signatures_names_the_step(
    steps: list[dict[str, object]], mlp: Signature, message: str
) -> None:
    outputs = {
        "score": steps[-1]["model"] + (".output" if steps[-1]["model"] == "mlp" else ".values")
    }  # type: ignore[operator]
    spec = parse_pipeline({"steps": steps, "outputs": outputs}, "scorer")
    with pytest.raises(PipelineError) as caught:
        derive_signature(spec, {"features": FEATURES, "mlp": mlp})
    assert message in caught.value.message
    assert caught.value.message.startswith('pipeline "scorer": ')


def test_a_reload_may_not_turn_a_model_into_a_pipeline_or_back() -> None:
    before = parse_config(config(scorer()), Path("/"))
    document = config(scorer())
    document["models"][2] = {"name": "scorer", "base_path": "/m/scorer"}  # type: ignore[index]
    after = parse_config(document, Path("/"))
    for old, new in ((before, after), (after, before)):
        with pytest.raises(FailedPrecondition, match="between a pipeline and a model with files"):
            check_transition(old, new)
