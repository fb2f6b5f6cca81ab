"""Small real models of every platform, written into version directories for the tests.

Each `make_*` writes one version directory and returns `(inputs, expected)`: a request's inputs
and the outputs the framework itself computes for them in-process.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import numpy as np

Case = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]

N_FEATURES = 4


def features(seed: int, rows: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, N_FEATURES))


def make_sklearn_classifier(version_dir: Path, seed: int = 0) -> Case:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    x = features(seed, 60)
    y = np.where(x[:, 0] + x[:, 1] > 0, "yes", "no")
    model = LogisticRegression().fit(x, y)
    version_dir.mkdir(parents=True, exist_ok=True)
    sio.dump(model, version_dir / "model.skops")
    request = x[:5]
    expected = {
        "predictions": np.array([v.encode() for v in model.predict(request)], dtype=object),
        "probabilities": model.predict_proba(request),
    }
    return {"inputs": request}, expected


def make_sklearn_regressor(version_dir: Path, seed: int = 0, pickle: str = "") -> Case:
    from sklearn.linear_model import Ridge

    x = features(seed, 40)
    model = Ridge().fit(x, x @ np.arange(1.0, N_FEATURES + 1) + seed)
    version_dir.mkdir(parents=True, exist_ok=True)
    if pickle:
        import joblib

        joblib.dump(model, version_dir / pickle)
    else:
        import skops.io as sio

        sio.dump(model, version_dir / "model.skops")
    return {"inputs": x[:5]}, {"predictions": model.predict(x[:5])}


def make_xgboost(version_dir: Path, seed: int = 0) -> Case:
    import xgboost

    x = features(seed, 80).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    booster = xgboost.train(
        {"objective": "binary:logistic", "seed": seed, "nthread": 1},
        xgboost.DMatrix(x, label=y),
        num_boost_round=4,
    )
    version_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(version_dir / "model.ubj")
    p = booster.predict(xgboost.DMatrix(x[:5])).astype(np.float64)
    expected = {
        "predictions": (p > 0.5).astype(np.int64),
        "probabilities": np.stack([1 - p, p], axis=1),
    }
    return {"inputs": x[:5]}, expected


def make_lightgbm(version_dir: Path, seed: int = 0) -> Case:
    import lightgbm

    x = features(seed, 120)
    y = (x[:, 0] * 1.5 + 1.5).clip(0, 2.99).astype(np.int64)
    booster = lightgbm.train(
        {"objective": "multiclass", "num_class": 3, "verbose": -1, "num_threads": 1},
        lightgbm.Dataset(x, label=y),
        num_boost_round=4,
    )
    version_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(version_dir / "model.lgb"))
    p = booster.predict(x[:5])
    return {"inputs": x[:5]}, {"predictions": p.argmax(axis=1), "probabilities": p}


def make_torch_export(version_dir: Path, seed: int = 0) -> Case:
    import torch

    torch.manual_seed(seed)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(N_FEATURES, 3)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.linear(x)
            return {"logits": logits, "best": logits.argmax(dim=1)}

    net = Net().eval()
    example = torch.randn(2, N_FEATURES)
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (example,), dynamic_shapes={"x": {0: batch}})
    version_dir.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(version_dir / "model.pt2"))
    x = features(seed).astype(np.float32)
    with torch.no_grad():
        out = net(torch.from_numpy(x))
    return {"x": x}, {"logits": out["logits"].numpy(), "best": out["best"].numpy()}


def make_torchscript(version_dir: Path, seed: int = 0) -> Case:
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(N_FEATURES, 2), torch.nn.Tanh()).eval()
    version_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # TorchScript is deprecated, and still what people deploy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(net).save(str(version_dir / "model.pt"))
    (version_dir / "pyserving.yaml").write_text(
        textwrap.dedent(
            f"""\
            signatures:
              serving_default:
                inputs: [{{name: features, datatype: FP32, shape: [-1, {N_FEATURES}]}}]
                outputs: [{{name: scores, datatype: FP32, shape: [-1, 2]}}]
            """
        )
    )
    x = features(seed).astype(np.float32)
    with torch.no_grad():
        out = net(torch.from_numpy(x))
    return {"features": x}, {"scores": out.numpy()}


def make_tensorflow(version_dir: Path, seed: int = 0) -> Case:
    """Half plus two (plus `seed`), TF Serving's classic test model, saved by tf.Module."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": x * 0.5 + 2.0 + float(seed)}

    module = HalfPlusTwo()
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
    x = np.array([1.0, 2.0, 5.0], dtype=np.float32)
    return {"x": x}, {"y": x * 0.5 + 2.0 + seed}


def make_lookup(version_dir: Path, seed: int = 0) -> Case:
    """`table.tsv`: word → 2-vector; "c" is missing (default zeros)."""
    version_dir.mkdir(parents=True, exist_ok=True)
    rows = {"a": [1.0 + seed, 2.0], "b": [3.0, 4.0 + seed], "zz": [5.0, 6.0]}
    lines = ["key\tv0\tv1"] + [f"{k}\t{v[0]}\t{v[1]}" for k, v in rows.items()]
    (version_dir / "table.tsv").write_text("\n".join(lines) + "\n")
    keys = np.array([b"b", b"c", b"a"], dtype=object)
    values = np.array([rows["b"], [0.0, 0.0], rows["a"]], dtype=np.float32)
    return {"keys": keys}, {"values": values, "found": np.array([True, False, True])}


SERVABLE_SOURCE = """\
import numpy as np

from pyserving.platforms import Signature, TensorSpec

OFFSET = {offset}


class Scaler:
    def load(self, path):
        with open(path + "/factor.txt") as stream:
            self.factor = float(stream.read())
        self.signatures = {{
            "serving_default": Signature(
                "serving_default",
                (TensorSpec("x", "FP64", (-1,)),),
                (TensorSpec("y", "FP64", (-1,)),),
            )
        }}

    def run(self, signature, inputs):
        return {{"y": inputs["x"] * self.factor + OFFSET}}
"""


def make_python(version_dir: Path, seed: int = 0) -> Case:
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "servable.py").write_text(SERVABLE_SOURCE.format(offset=seed))
    (version_dir / "factor.txt").write_text("3")
    x = np.array([1.0, 2.0, -1.0])
    return {"x": x}, {"y": x * 3 + seed}


def double(x: np.ndarray) -> np.ndarray:
    """A function a skops file refers to: not a type skops trusts by default."""
    return x * 2


#: platform → builder; every builder takes (version_dir, seed)
BUILDERS = {
    "sklearn": make_sklearn_classifier,
    "xgboost": make_xgboost,
    "lightgbm": make_lightgbm,
    "torch": make_torch_export,
    "tensorflow": make_tensorflow,
    "lookup": make_lookup,
    "python": make_python,
}
