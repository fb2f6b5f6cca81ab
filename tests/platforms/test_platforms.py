"""One contract suite over every file-based platform: detect, load, signature, run, unload."""

from __future__ import annotations

import json
import os
import pickle
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pyserving.core.ids import ServableId
from pyserving.errors import FailedPrecondition
from pyserving.platforms.common import SignatureOverride
from pyserving.platforms.registry import PlatformRegistry, detect_platform, make_loader
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import DEFAULT_SIGNATURE
from tests.platforms import models
from tests.platforms.models import Case

# TensorFlow runs in a process of its own: see test_tensorflow.py
CASES: dict[str, Callable[[Path, int], Case]] = {
    **{name: build for name, build in models.BUILDERS.items() if name != "tensorflow"},
    "torchscript": models.make_torchscript,
    "sklearn-regressor": models.make_sklearn_regressor,
}
PLATFORM_OF = {"torchscript": "torch", "sklearn-regressor": "sklearn"}
#: the opt-in every servable.py needs (docs/operations.md)
ALLOW_PYTHON = {"allow_python": True}
#: the opt-in a model.pt2 needs: torch.export.load unpickles
ALLOW_PICKLE = {"allow_pickle": True}


def check_outputs(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(outputs) >= set(expected)
    for name, want in expected.items():
        got = outputs[name]
        if want.dtype == object or want.dtype.kind == "b":
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def check_platform_contract(platform: str, build: Callable[[Path, int], Case], root: Path) -> None:
    """Detect, load, signature (batch dimension 0), run against the framework, unload."""
    version_dir = root / "m" / "1"
    inputs, expected = build(version_dir, 0)
    assert detect_platform(str(version_dir)) == platform
    config = ALLOW_PYTHON if platform == "python" else ALLOW_PICKLE if platform == "torch" else {}
    loader = make_loader(platform, ServableId("m", 1), str(version_dir), config)
    assert loader.estimate_resources() > 0
    servable = loader.load()
    try:
        assert isinstance(servable, Servable)
        assert servable.platform == platform
        signature = servable.signatures[DEFAULT_SIGNATURE]
        assert set(signature.input_names) == set(inputs)
        assert set(expected) <= set(signature.output_names)
        for spec in signature.inputs:
            assert spec.shape[0] == -1
            assert spec.shape_matches(inputs[spec.name].shape)
            array = inputs[spec.name]
            assert array.dtype == spec.numpy_dtype or spec.datatype == "BYTES"
        outputs = servable.run(DEFAULT_SIGNATURE, inputs)
        check_outputs(outputs, expected)
        for spec in signature.outputs:
            assert spec.shape_matches(outputs[spec.name].shape), spec
    finally:
        loader.unload()


# TorchScript is deprecated in torch 2.13, and still what many deployed models are
JIT_DEPRECATED = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=JIT_DEPRECATED) if c == "torchscript" else c for c in CASES]
)
def test_platform_contract_matches_the_framework(case: str, tmp_path: Path) -> None:
    check_platform_contract(PLATFORM_OF.get(case, case), CASES[case], tmp_path)


@pytest.mark.parametrize("platform", ["torch", "sklearn", "xgboost", "lightgbm", "tensorflow"])
def test_missing_framework_fails_with_the_extra_to_install(
    platform: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = {"sklearn": "skops", "torch": "torch"}.get(platform, platform)
    module = "pyserving.platforms." + ("sklearn" if platform == "sklearn" else platform)
    monkeypatch.delitem(sys.modules, module + "_platform", raising=False)
    monkeypatch.setitem(sys.modules, library, None)  # importing it raises ImportError
    with pytest.raises(FailedPrecondition) as info:
        PlatformRegistry().make_loader(platform, ServableId("m", 1), "/nowhere")
    assert info.value.message == (
        f'platform "{platform}" is not installed: pip install "pyserving[{platform}]"'
    )


def test_sklearn_pickle_is_refused_without_allow_pickle(tmp_path: Path) -> None:
    models.make_sklearn_regressor(tmp_path, pickle="model.joblib")
    loader = make_loader("sklearn", ServableId("m", 1), str(tmp_path), {})
    with pytest.raises(FailedPrecondition, match="allow_pickle: true"):
        loader.load()


def test_sklearn_pickle_loads_with_allow_pickle(tmp_path: Path) -> None:
    inputs, expected = models.make_sklearn_regressor(tmp_path, pickle="model.pkl")
    loader = make_loader("sklearn", ServableId("m", 1), str(tmp_path), {"allow_pickle": True})
    servable = loader.load()
    check_outputs(servable.run(DEFAULT_SIGNATURE, inputs), expected)
    assert servable.signatures["regression"].method_name == "tensorflow/serving/regress"
    loader.unload()


def test_skops_file_with_untrusted_types_is_refused_listing_them(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x = models.features(0, 20)
    pipeline = make_pipeline(FunctionTransformer(models.double), Ridge()).fit(x, x[:, 0])
    sio.dump(pipeline, tmp_path / "model.skops")
    untrusted = sio.get_untrusted_types(file=tmp_path / "model.skops")
    assert "tests.platforms.models.double" in untrusted
    loader = make_loader("sklearn", ServableId("m", 1), str(tmp_path), {})
    with pytest.raises(FailedPrecondition) as info:
        loader.load()
    assert "not trusted" in info.value.message
    for name in untrusted:
        assert name in info.value.message
    trusted = make_loader(
        "sklearn", ServableId("m", 1), str(tmp_path), {"trusted_types": untrusted}
    )
    servable = trusted.load()
    predictions = servable.run(DEFAULT_SIGNATURE, {"inputs": x})["predictions"]
    np.testing.assert_allclose(predictions, pipeline.predict(x))
    trusted.unload()


def test_sklearn_classifier_classification_signature_gives_labels_and_scores(
    tmp_path: Path,
) -> None:
    inputs, expected = models.make_sklearn_classifier(tmp_path)
    loader = make_loader("sklearn", ServableId("m", 1), str(tmp_path), {})
    servable = loader.load()
    result = servable.run("classification", inputs)
    assert result["classes"].shape == (5, 2)
    assert result["classes"][0].tolist() == [b"no", b"yes"]
    np.testing.assert_allclose(result["scores"], expected["probabilities"], rtol=1e-6)
    loader.unload()


class _Touch:
    """Unpickling it creates a file: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def _poison_pt2(file: Path, marker: Path) -> None:
    """Rewrite a torch.export archive so its first weight is a pickle (`use_pickle`) that creates
    `marker` when unpickled."""
    source = file.with_suffix(".clean")
    file.rename(source)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(file, "w") as dst:
        config_name = next(n for n in src.namelist() if "weights_config" in n)
        config = json.loads(src.read(config_name))
        meta = next(iter(config["config"].values()))
        meta["use_pickle"] = True
        for name in src.namelist():
            data = src.read(name)
            if name == config_name:
                data = json.dumps(config).encode()
            elif name.endswith("/" + meta["path_name"]) and "weights" in name:
                data = pickle.dumps(_Touch(marker))
            dst.writestr(name, data)
    source.unlink()


def test_torch_export_is_refused_without_allow_pickle_issue_15(tmp_path: Path) -> None:
    models.make_torch_export(tmp_path / "1")
    marker = tmp_path / "code-ran"
    _poison_pt2(tmp_path / "1" / "model.pt2", marker)
    loader = make_loader("torch", ServableId("m", 1), str(tmp_path / "1"), {})
    with pytest.raises(FailedPrecondition) as info:
        loader.load()
    assert "'allow_pickle: true'" in info.value.message
    assert "model.pt2" in info.value.message
    assert not marker.exists()
    # the opt-in really is what stands between the file and its code
    trusting = make_loader("torch", ServableId("m", 1), str(tmp_path / "1"), ALLOW_PICKLE)
    with pytest.raises(Exception):  # noqa: B017 - the poisoned weight is not a tensor
        trusting.load()
    assert marker.exists()


@JIT_DEPRECATED
def test_torchscript_unpickler_refuses_python_globals_issue_15(tmp_path: Path) -> None:
    models.make_torchscript(tmp_path)
    marker = tmp_path / "code-ran"
    scripted = tmp_path / "model.pt"
    source = tmp_path / "clean.zip"
    scripted.rename(source)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(scripted, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(
                name,
                pickle.dumps(_Touch(marker), protocol=2) if name.endswith("/data.pkl") else data,
            )
    source.unlink()
    loader = make_loader("torch", ServableId("m", 1), str(tmp_path), {})
    with pytest.raises(RuntimeError, match="Unknown type name"):
        loader.load()
    assert not marker.exists()


def test_torchscript_without_a_signature_file_says_how_to_add_one(tmp_path: Path) -> None:
    models.make_torchscript(tmp_path)
    (tmp_path / "pyserving.yaml").unlink()
    loader = make_loader("torch", ServableId("m", 1), str(tmp_path), {})
    with pytest.raises(FailedPrecondition, match=r"add pyserving\.yaml with signatures"):
        loader.load()


def test_pyserving_yaml_renames_a_platforms_tensors_positionally(tmp_path: Path) -> None:
    inputs, expected = models.make_xgboost(tmp_path)
    (tmp_path / "pyserving.yaml").write_text(
        "signatures:\n"
        "  serving_default:\n"
        "    inputs: [{name: features, datatype: FP32, shape: [-1, 4]}]\n"
        "    outputs:\n"
        "      - {name: label, datatype: INT64, shape: [-1]}\n"
        "      - {name: proba, datatype: FP64, shape: [-1, 2]}\n"
    )
    loader = make_loader("xgboost", ServableId("m", 1), str(tmp_path), {})
    servable = loader.load()
    assert isinstance(servable, SignatureOverride)
    assert servable.signatures[DEFAULT_SIGNATURE].input_names == ("features",)
    out = servable.run(DEFAULT_SIGNATURE, {"features": inputs["inputs"]})
    np.testing.assert_array_equal(out["label"], expected["predictions"])
    np.testing.assert_allclose(out["proba"], expected["probabilities"], rtol=1e-6)
    loader.unload()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("signatures: [1]\n", "must map signature names"),
        (
            "signatures:\n  other: {inputs: [{name: a, datatype: FP32, shape: [-1]}], "
            "outputs: [{name: b, datatype: FP32, shape: [-1]}]}\n",
            'signature "other" is not one',
        ),
        (
            "signatures:\n  serving_default: {inputs: [{name: a, datatype: F32, shape: [-1]}], "
            "outputs: [{name: b, datatype: FP32, shape: [-1]}]}\n",
            "unknown datatype F32",
        ),
        (
            "signatures:\n  serving_default: {inputs: [{name: a, datatype: FP32, shape: [-1]}], "
            "outputs: [{name: b, datatype: FP32, shape: [-1]}]}\n",
            "declares 1 outputs",
        ),
        ("signatures: {serving_default: {inputs: [x]}}\n", "name, datatype and shape"),
    ],
)
def test_malformed_pyserving_yaml_fails_the_load_naming_the_problem(
    tmp_path: Path, content: str, match: str
) -> None:
    models.make_xgboost(tmp_path)
    (tmp_path / "pyserving.yaml").write_text(content)
    loader = make_loader("xgboost", ServableId("m", 1), str(tmp_path), {})
    with pytest.raises(FailedPrecondition, match=match):
        loader.load()


def test_two_versions_of_a_python_servable_keep_their_own_module(tmp_path: Path) -> None:
    inputs, expected_1 = models.make_python(tmp_path / "1", seed=1)
    _, expected_2 = models.make_python(tmp_path / "2", seed=2)
    loader_1 = make_loader("python", ServableId("m", 1), str(tmp_path / "1"), ALLOW_PYTHON)
    loader_2 = make_loader("python", ServableId("m", 2), str(tmp_path / "2"), ALLOW_PYTHON)
    first, second = loader_1.load(), loader_2.load()
    assert first.module_name != second.module_name
    assert first.module_name in sys.modules
    check_outputs(first.run(DEFAULT_SIGNATURE, inputs), expected_1)
    check_outputs(second.run(DEFAULT_SIGNATURE, inputs), expected_2)
    loader_1.unload()
    assert first.module_name not in sys.modules
    check_outputs(second.run(DEFAULT_SIGNATURE, inputs), expected_2)
    loader_2.unload()


def test_python_servable_with_two_classes_needs_the_class_config(tmp_path: Path) -> None:
    models.make_python(tmp_path)
    source = (tmp_path / "servable.py").read_text()
    (tmp_path / "servable.py").write_text(source + "\n\nclass Other(Scaler):\n    pass\n")
    loader = make_loader("python", ServableId("m", 1), str(tmp_path), ALLOW_PYTHON)
    with pytest.raises(FailedPrecondition, match=r"found: Other, Scaler"):
        loader.load()
    chosen = make_loader(
        "python", ServableId("m", 1), str(tmp_path), {**ALLOW_PYTHON, "class": "Other"}
    )
    assert chosen.load().instance.__class__.__name__ == "Other"
    chosen.unload()


def test_python_servable_whose_load_raises_fails_and_leaves_no_module(tmp_path: Path) -> None:
    models.make_python(tmp_path)
    (tmp_path / "factor.txt").unlink()
    before = set(sys.modules)
    loader = make_loader("python", ServableId("m", 1), str(tmp_path), ALLOW_PYTHON)
    with pytest.raises(FileNotFoundError):
        loader.load()
    assert {m for m in sys.modules if m.startswith("pyserving_servable_")} <= before


def test_sklearn_classifier_without_predict_proba_serves_labels_only(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.svm import SVC

    x = models.features(1, 30)
    model = SVC().fit(x, np.where(x[:, 0] > 0, 3, 7))
    sio.dump(model, tmp_path / "model.skops")
    loader = make_loader("sklearn", ServableId("m", 1), str(tmp_path), {})
    servable = loader.load()
    assert list(servable.signatures) == [DEFAULT_SIGNATURE]
    signature = servable.signatures[DEFAULT_SIGNATURE]
    assert [(s.name, s.datatype) for s in signature.outputs] == [("predictions", "INT64")]
    outputs = servable.run(DEFAULT_SIGNATURE, {"inputs": x})
    np.testing.assert_array_equal(outputs["predictions"], model.predict(x))
    assert set(outputs) == {"predictions"}
    loader.unload()


def test_servable_py_without_allow_python_is_refused_before_it_runs_issue_15(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    models.make_python(tmp_path / "1")
    source = (tmp_path / "1" / "servable.py").read_text()
    planted = f"open({str(marker)!r}, 'w').close()\n"
    (tmp_path / "1" / "servable.py").write_text(planted + source)
    for config in ({}, {"allow_python": "yes"}, {"allow_python": False}):
        loader = make_loader("python", ServableId("m", 1), str(tmp_path / "1"), config)
        with pytest.raises(FailedPrecondition, match=r"allow_python: true.*allow-python-servables"):
            loader.load()
    assert not marker.exists()
    allowed = make_loader("python", ServableId("m", 1), str(tmp_path / "1"), ALLOW_PYTHON)
    allowed.load()
    assert marker.exists()
    allowed.unload()
