"""The scikit-learn platform: `model.skops` (trusted types only), or a pickle when allowed.

`model.skops` loads with skops' type check: a file naming types outside skops' trusted set is
refused with a message listing them, unless the model config lists them in `trusted_types`.
`model.joblib` / `model.pkl` run arbitrary code when loaded, so they load only with
`allow_pickle: true` in the model config. Signatures: see `TabularServable`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import skops.io as sio

from pyserving.errors import FailedPrecondition
from pyserving.platforms.common import (
    FileLoader,
    TabularServable,
    encode_labels,
    prediction_spec,
)
from pyserving.platforms.signature import Signature

__all__ = ["PICKLE_FILES", "SKOPS_FILE", "SklearnLoader", "SklearnServable"]

SKOPS_FILE = "model.skops"
PICKLE_FILES = ("model.joblib", "model.pkl")


class SklearnLoader(FileLoader):
    """Loads a fitted estimator (or Pipeline) from a version directory.

    Config keys: `allow_pickle` (bool, default false), `trusted_types` (list of extra type names
    skops may load). Thread-safety: as Loader.
    """

    resource_factor = 2.0  # unpickled estimators take about twice their serialized size

    def load_local(self, directory: str, override: Mapping[str, Signature] | None) -> Any:
        skops_file = os.path.join(directory, SKOPS_FILE)
        if os.path.isfile(skops_file):
            estimator = _load_skops(skops_file, self.config.get("trusted_types") or [])
        else:
            estimator = self._load_pickle(directory)
        return SklearnServable(estimator)

    def _load_pickle(self, directory: str) -> Any:
        candidates = (os.path.join(directory, name) for name in PICKLE_FILES)
        pickle_file = next((file for file in candidates if os.path.isfile(file)), None)
        if pickle_file is None:
            raise FailedPrecondition(
                f"no {SKOPS_FILE} or {' / '.join(PICKLE_FILES)} in {directory}"
            )
        if self.config.get("allow_pickle") is not True:
            raise FailedPrecondition(
                f"{os.path.basename(pickle_file)} is a pickle, which runs code when loaded: set"
                f" 'allow_pickle: true' in the model config to trust it, or save the model with"
                f" skops as {SKOPS_FILE}"
            )
        import joblib  # installed with scikit-learn

        return joblib.load(pickle_file)


def _load_skops(file: str, extra_trusted: list[str]) -> Any:
    untrusted = sio.get_untrusted_types(file=file)
    refused = sorted(set(untrusted) - set(extra_trusted))
    if refused:
        raise FailedPrecondition(
            f"{SKOPS_FILE} holds types that are not trusted: {', '.join(refused)}; list them in"
            " the model config's 'trusted_types' if you trust this file"
        )
    return sio.load(file, trusted=list(untrusted))


class SklearnServable(TabularServable):
    """A fitted scikit-learn estimator behind `TabularServable`'s signatures.

    Thread-safety: `run` may be called concurrently (predict does not mutate a fitted estimator).
    """

    platform = "sklearn"

    def __init__(self, estimator: Any) -> None:
        if not hasattr(estimator, "predict"):
            raise FailedPrecondition(
                f"the loaded object is a {type(estimator).__name__}, not an estimator (no predict)"
            )
        self.estimator = estimator
        labels = getattr(estimator, "classes_", None)
        labels = None if labels is None else np.asarray(labels)
        # a classifier without predict_proba (e.g. SVC) serves its labels only
        classes = labels if labels is not None and hasattr(estimator, "predict_proba") else None
        names = getattr(estimator, "feature_names_in_", None)
        n_outputs = int(getattr(estimator, "n_outputs_", 1) or 1)
        spec = prediction_spec(encode_labels(labels) if labels is not None else None, n_outputs)
        super().__init__(
            getattr(estimator, "n_features_in_", None),
            np.dtype(np.float64),
            None if names is None else list(names),
            classes,
            spec,
            regressor=labels is None,
        )

    def predict(self, features: np.ndarray) -> np.ndarray:
        return encode_labels(np.asarray(self.estimator.predict(self._frame(features))))

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(self._frame(features)))

    def _frame(self, features: np.ndarray) -> Any:
        # An estimator fitted on a DataFrame warns (an error under -W error) when given an array.
        if self.feature_names is None:
            return features
        try:
            import pandas as pd
        except ImportError:  # fitted on another kind of frame: the estimator takes arrays too
            return features
        return pd.DataFrame(features, columns=list(self.feature_names))
