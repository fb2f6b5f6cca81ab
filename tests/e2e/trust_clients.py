"""Client side of tests/e2e/test_trust.py, run as a child process (tritonclient.grpc and
pyserving.proto register the same protobuf names, so one process must not hold both):
`python trust_clients.py GRPC_ADDRESS REST_ADDRESS CERT_DIR` prints one JSON object."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

X = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(1, 64)


def _infer_input(module: Any) -> Any:
    item = module.InferInput("input", list(X.shape), "FP32")
    item.set_data_from_numpy(X)
    return item


def triton_grpc(address: str, certs: str) -> dict[str, Any]:
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    out: dict[str, Any] = {}
    client = tg.InferenceServerClient(
        address,
        ssl=True,
        root_certificates=f"{certs}/ca.crt",
        private_key=f"{certs}/client.key",
        certificate_chain=f"{certs}/client.crt",
    )
    out["live"] = client.is_server_live()
    result = client.infer("mlp", [_infer_input(tg)])
    out["output_shape"] = list(result.as_numpy("output").shape)
    client.close()
    anonymous = tg.InferenceServerClient(address, ssl=True, root_certificates=f"{certs}/ca.crt")
    try:
        anonymous.is_server_live()
        out["without_cert"] = "accepted"
    except InferenceServerException as exc:
        out["without_cert"] = str(exc.status())
    anonymous.close()
    return out


def triton_http(address: str, certs: str) -> dict[str, Any]:
    import gevent.ssl
    import tritonclient.http as th

    def context() -> Any:
        ctx = gevent.ssl.create_default_context(cafile=f"{certs}/ca.crt")
        ctx.load_cert_chain(f"{certs}/client.crt", f"{certs}/client.key")
        return ctx

    client = th.InferenceServerClient(address, ssl=True, ssl_context_factory=context)
    out: dict[str, Any] = {"live": client.is_server_live()}
    result = client.infer("mlp", [_infer_input(th)])
    out["output_shape"] = list(result.as_numpy("output").shape)
    client.close()
    return out


def main() -> None:
    grpc_address, rest_address, certs = sys.argv[1:4]
    print(
        json.dumps(
            {
                "grpc": triton_grpc(grpc_address, certs),
                "http": triton_http(rest_address, certs),
            }
        )
    )


if __name__ == "__main__":
    main()
