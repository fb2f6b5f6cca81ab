"""KServe V2 over REST with tritonclient.http (`pip install "tritonclient[http]"`), against
`make demo` (REST on localhost:8501). Run: python examples/clients/triton_http.py [host:port]"""

import sys

import numpy as np
import tritonclient.http as httpclient

url = sys.argv[1] if len(sys.argv) > 1 else "localhost:8501"
client = httpclient.InferenceServerClient(url)
try:
    print("ready:", client.is_server_ready(), client.is_model_ready("twoio"))
    print("metadata:", client.get_model_metadata("twoio"))

    a = np.array([[1, 2, 3, 4]], dtype=np.float32)
    b = np.ones((1, 4), dtype=np.float32)
    inputs = [
        httpclient.InferInput("a", [1, 4], "FP32"),
        httpclient.InferInput("b", [1, 4], "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)  # binary_data=True (the default) uses the binary extension
    inputs[1].set_data_from_numpy(b, binary_data=False)  # JSON "data"
    outputs = [httpclient.InferRequestedOutput("sum"), httpclient.InferRequestedOutput("max_index")]
    result = client.infer("twoio", inputs, outputs=outputs)
    print("sum:", result.as_numpy("sum"), "max_index:", result.as_numpy("max_index"))
    print("answered by version", result.get_response()["model_version"])

    rows = np.full((2, 64), 0.1, dtype=np.float32)
    x = httpclient.InferInput("input", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)
    print("mlp v1:", client.infer("mlp", [x], model_version="1").as_numpy("output").shape)
finally:
    client.close()
