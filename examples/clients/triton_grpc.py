"""KServe V2 over gRPC with tritonclient.grpc (`pip install "tritonclient[grpc]"`), against
`make demo` (gRPC on localhost:8500). Run: python examples/clients/triton_grpc.py [host:port]"""

import sys

import numpy as np
import tritonclient.grpc as grpcclient

url = sys.argv[1] if len(sys.argv) > 1 else "localhost:8500"
client = grpcclient.InferenceServerClient(url)
try:
    print("live:", client.is_server_live(), "ready:", client.is_server_ready())
    print("models:", [m.name for m in client.get_model_repository_index().models])
    metadata = client.get_model_metadata("mlp")
    print("mlp inputs:", [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs])

    rows = np.full((3, 64), 0.1, dtype=np.float32)
    x = grpcclient.InferInput("input", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)  # sent as raw_input_contents, no copy on the server
    result = client.infer("mlp", [x], client_timeout=5.0)  # the deadline covers queue + run
    print(
        "output:", result.as_numpy("output").shape, "version", result.get_response().model_version
    )

    stats = client.get_inference_statistics("mlp")
    print("mlp inference count:", [s.inference_count for s in stats.model_stats])
finally:
    client.close()
