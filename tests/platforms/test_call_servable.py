"""call_servable: a servable's exception becomes one ModelError that says what went wrong."""

from __future__ import annotations

import numpy as np
import pytest

from pyserving.errors import InvalidInput, ModelError
from pyserving.platforms.servable import call_servable
from tests.batching.recording import RecordingServable


def test_writing_into_a_read_only_input_is_explained():
    def add_one(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        x += 1
        return {"y": x}

    x = np.zeros((1, 3), np.float32)
    x.flags.writeable = False
    with pytest.raises(ModelError, match="request inputs are read-only: copy one"):
        call_servable(RecordingServable(compute=add_one), "serving_default", {"x": x})


def test_other_errors_keep_their_own_words_and_serving_errors_pass_through():
    def fails(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise KeyError("missing")

    def refuses(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise InvalidInput("bad row")

    x = np.zeros((1, 3), np.float32)
    with pytest.raises(ModelError, match=r"^'missing'$"):
        call_servable(RecordingServable(compute=fails), "serving_default", {"x": x})
    with pytest.raises(InvalidInput, match="bad row"):
        call_servable(RecordingServable(compute=refuses), "serving_default", {"x": x})
