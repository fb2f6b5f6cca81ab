"""Client side of the pipeline end-to-end test, run as a child process (tritonclient registers
protobuf names that clash with pyserving's): `python pipeline_clients.py ADDRESS KEYS` prints
`RESULT {json}`: the pipeline's answer over KServe V2 gRPC (tritonclient.grpc), its version, step
versions and metadata."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np


def triton(address: str, keys: np.ndarray) -> dict[str, Any]:
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(address)
    user = tg.InferInput("user", list(keys.shape), "INT64")
    user.set_data_from_numpy(keys)
    result = client.infer("scorer", [user])
    response = result.get_response()
    metadata = client.get_model_metadata("scorer", as_json=True)
    client.close()
    return {
        "score": result.as_numpy("score").tolist(),
        "known": result.as_numpy("known").tolist(),
        "version": response.model_version,
        "steps": response.parameters["pipeline_step_versions"].string_param,
        "inputs": metadata["inputs"],
    }


if __name__ == "__main__":
    address, keys = sys.argv[1], np.array(json.loads(sys.argv[2]), dtype=np.int64)
    result = {"triton": triton(address, keys)}
    print("RESULT " + json.dumps(result))
