"""Write the models of examples/pipeline.yaml: a user feature table and a model that scores the
features (both made here, nothing downloaded).

    python examples/pipeline_models.py examples/pipeline-models
    pyserving serve --model_config_file=examples/pipeline.yaml
    curl -s localhost:8501/v1/models/scorer:predict -d '{"inputs": {"user": [3, 7, 1000]}}'

`features` is a lookup table: user id (INT64) -> 8 features (FP32); an unknown user gets zeros.
`ranker` is an ONNX MLP: 8 features -> 4 scores. The pipeline `scorer` takes user ids and answers
the scores and whether each user was known, in one request.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pyserving.demo import make_mlp

USERS = 1000
FEATURES = 8


def write_models(root: Path) -> None:
    """features/1/table.tsv and ranker/1/model.onnx under `root`."""
    table = root / "features" / "1"
    table.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((USERS, FEATURES)).astype(np.float32)
    lines = ["user\tfeatures"]
    lines += [f"{user}\t{','.join(f'{x:.6g}' for x in row)}" for user, row in enumerate(rows)]
    (table / "table.tsv").write_text("\n".join(lines) + "\n")
    make_mlp(root / "ranker" / "1" / "model.onnx", seed=3, dims=(FEATURES, 32, 4))


if __name__ == "__main__":
    write_models(Path(sys.argv[1] if len(sys.argv) > 1 else "pipeline-models"))
