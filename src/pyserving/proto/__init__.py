"""Protocol buffer messages and gRPC stubs (TF Serving, KServe V2) generated from the .proto here.

A leaf package: it imports nothing from pyserving, so every layer may use the config messages.
Regenerate with `python scripts/gen_protos.py`. These modules register `tensorflow.serving.*` and
`inference.*` in protobuf's default descriptor pool, as `tensorflow-serving-api` and
`tritonclient` do: one process must not import both.
"""
