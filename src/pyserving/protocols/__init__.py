"""Protocol rules below the API layer: wire formats ⇄ the neutral InferRequest / InferResponse.

`request` (the neutral request and response), `tensors` (checks before allocating, the raw tensor
format), `json_tensor` (JSON ⇄ numpy), `v2` (KServe V2) and `tfserving` (TF Serving): pure
translation used by every REST and gRPC codec and by warmup; no service calls.
"""
