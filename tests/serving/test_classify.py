from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from pyserving.errors import InvalidInput
from pyserving.platforms import Servable, Signature, TensorSpec
from pyserving.proto import tf_example_pb2
from pyserving.proto import tf_serving_apis_pb2 as apis
from pyserving.protocols.tf_examples import examples_from_proto
from pyserving.serving.classify import classify, regress
from pyserving.serving.inference import InferenceService
from tests.serving.test_inference import FakeManager

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


class ExampleModel(Servable):
    """A TF-style model: classify and regress signatures over serialized tf.Examples."""

    platform = "test"

    def __init__(self) -> None:
        examples = (TensorSpec("inputs", "BYTES", (-1,)),)
        self._signatures = {
            "serving_default": Signature(
                "serving_default",
                examples,
                (
                    TensorSpec("classes", "BYTES", (-1, 2)),
                    TensorSpec("scores", "FP32", (-1, 2)),
                ),
                CLASSIFY,
            ),
            "regress_it": Signature(
                "regress_it", examples, (TensorSpec("outputs", "FP32", (-1,)),), REGRESS
            ),
            "predict_it": Signature("predict_it", examples, examples),
        }

    @property
    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parsed = [tf_example_pb2.Example.FromString(b) for b in inputs["inputs"]]
        totals = np.array(
            [
                sum(
                    f.float_list.value[0] if f.float_list.value else f.int64_list.value[0]
                    for k, f in e.features.feature.items()
                    if k != "tag"
                )
                for e in parsed
            ],
            dtype=np.float32,
        )
        if signature == "regress_it":
            return {"outputs": totals}
        tags = [e.features.feature["tag"].bytes_list.value[0] for e in parsed]
        classes = np.array([[b"low", tag] for tag in tags], dtype=object)
        return {"classes": classes, "scores": np.stack([-totals, totals], axis=1)}


@pytest.fixture
def service() -> Iterator[InferenceService]:
    service = InferenceService(FakeManager().add("m", 3, ExampleModel()))
    yield service
    service.close()


@pytest.mark.asyncio
async def test_classify_serializes_examples_with_context_as_tf_examples(service) -> None:
    examples = [
        {"a": np.array([1.5], np.float32), "tag": np.array([b"hi"], object)},
        {"a": np.array([-2.0], np.float32), "tag": np.array([b"yo"], object)},
    ]
    context = {"b": np.array([10], np.int64)}
    result = await classify(service, "m", None, None, None, examples, context)
    assert result.version == 3
    assert result.signature_name == "serving_default"
    assert result.classes == [
        [(b"low", -11.5), (b"hi", 11.5)],
        [(b"low", -8.0), (b"yo", 8.0)],
    ]


@pytest.mark.asyncio
async def test_regress_picks_the_only_regress_signature(service) -> None:
    examples = [{"a": np.array([2.0], np.float32)}, {"a": np.array([3], np.int64)}]
    result = await regress(service, "m", 3, None, None, examples)
    assert (result.signature_name, result.values) == ("regress_it", [2.0, 3.0])


@pytest.mark.asyncio
async def test_wrong_signature_method_and_bad_examples_are_invalid(service) -> None:
    example = [{"a": np.array([1.0], np.float32)}]
    with pytest.raises(InvalidInput, match="Expected classification signature method_name"):
        await classify(service, "m", None, None, "predict_it", example)
    with pytest.raises(InvalidInput, match='Serving signature key "nope" not found'):
        await regress(service, "m", None, None, "nope", example)
    with pytest.raises(InvalidInput, match="Input is empty"):
        await classify(service, "m", None, None, None, [])
    with pytest.raises(InvalidInput, match="must not repeat example features: a"):
        await classify(service, "m", None, None, None, example, {"a": np.array([1.0])})


def test_examples_from_proto_reads_both_input_kinds() -> None:
    request = apis.Input()
    example = request.example_list_with_context.examples.add()
    example.features.feature["x"].float_list.value.extend([1.0, 2.0])
    example.features.feature["w"].bytes_list.value.append(b"word")
    request.example_list_with_context.context.features.feature["n"].int64_list.value.append(7)
    examples, context = examples_from_proto(request)
    assert examples[0]["x"].tolist() == [1.0, 2.0]
    assert examples[0]["w"].tolist() == [b"word"]
    assert context is not None and context["n"].dtype == np.int64
    plain = apis.Input()
    plain.example_list.examples.add().features.feature["x"].int64_list.value.append(1)
    examples, context = examples_from_proto(plain)
    assert context is None and examples[0]["x"].tolist() == [1]
    with pytest.raises(InvalidInput, match="Input is empty"):
        examples_from_proto(apis.Input())
