"""TF Serving's metadata and version status, as REST JSON and as gRPC messages: signature defs
(GetModelMetadata) and ModelVersionStatus (GetModelStatus). Pure translation."""

from __future__ import annotations

from collections.abc import Iterable

from pyserving.core.monitor import VersionStatus
from pyserving.platforms.signature import V2_TO_TF, Signature, TensorSpec
from pyserving.proto import tf_error_codes_pb2, tf_meta_graph_pb2
from pyserving.proto import tf_serving_apis_pb2 as apis

__all__ = ["signature_def_json", "signature_def_proto", "status_json", "status_proto"]

_ERROR_CODES: dict[str, int] = dict(tf_error_codes_pb2.Code.items())


def signature_def_json(signature: Signature) -> dict[str, object]:
    """A SignatureDef as TF Serving's REST metadata writes it."""
    return {
        "inputs": {spec.name: _tensor_info_json(spec) for spec in signature.inputs},
        "outputs": {spec.name: _tensor_info_json(spec) for spec in signature.outputs},
        "method_name": signature.method_name,
    }


def signature_def_proto(signature: Signature) -> tf_meta_graph_pb2.SignatureDef:
    """A SignatureDef message (gRPC GetModelMetadata)."""
    out = tf_meta_graph_pb2.SignatureDef(method_name=signature.method_name)
    for spec in signature.inputs:
        out.inputs[spec.name].CopyFrom(_tensor_info_proto(spec))
    for spec in signature.outputs:
        out.outputs[spec.name].CopyFrom(_tensor_info_proto(spec))
    return out


def status_json(states: Iterable[VersionStatus]) -> list[dict[str, object]]:
    """`model_version_status` as TF Serving's REST status writes it."""
    return [
        {
            "version": str(s.id.version),
            "state": s.state.name,
            "status": {"error_code": s.error_code, "error_message": s.error or ""},
        }
        for s in states
    ]


def status_proto(status: VersionStatus) -> apis.ModelVersionStatus:
    """One ModelVersionStatus message (gRPC GetModelStatus)."""
    # Enum fields by name: ServableState's names and numbers are TF's ModelVersionStatus.State.
    code = status.error_code if status.error_code in _ERROR_CODES else "UNKNOWN"
    return apis.ModelVersionStatus(
        version=status.id.version,
        state=status.state.name,
        status=apis.StatusProto(error_code=code, error_message=status.error or ""),
    )


def _tensor_info_json(spec: TensorSpec) -> dict[str, object]:
    return {
        "dtype": V2_TO_TF.get(spec.datatype, "DT_INVALID"),
        "tensor_shape": {
            "dim": [{"size": str(size), "name": ""} for size in spec.shape],
            "unknown_rank": False,
        },
        "name": spec.name,
    }


def _tensor_info_proto(spec: TensorSpec) -> tf_meta_graph_pb2.TensorInfo:
    info = tf_meta_graph_pb2.TensorInfo(
        name=spec.name, dtype=V2_TO_TF.get(spec.datatype, "DT_INVALID")
    )
    for size in spec.shape:
        info.tensor_shape.dim.add(size=size)
    return info
