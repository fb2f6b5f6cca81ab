"""The gRPC API: KServe V2 (`inference.GRPCInferenceService`), TF Serving (`PredictionService`,
`ModelService`) and `grpc.health.v1.Health` on one `grpc.aio` server (see `server.py`)."""
