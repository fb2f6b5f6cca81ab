"""What the shards router checks of its shards before it serves a version (docs/big-tables.md).

Shard i of the router's list must be the server that holds shard i of n: its V2 model config
`parameters` `shard_index` / `shard_count` (from its `shard:` setting) must say so, else a
misordered or repeated address would answer existing keys as missing. Every shard must have the
same signature, else the merged answer would not be the router's. A router with one address
may point at a whole table (no `shard:` setting).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import grpc

from pyserving.errors import FailedPrecondition, Unavailable
from pyserving.platforms.signature import DEFAULT_SIGNATURE, Signature, TensorSpec
from pyserving.proto import grpc_service_pb2 as pb

__all__ = ["check_shards", "describe_rpc_error", "describe_signature"]

#: how long the checks wait for each shard's metadata and config (asked in parallel)
_CHECK_TIMEOUT_S = 10.0


class _ShardView(Protocol):
    """What the checks read of a router's routes (shards.ShardView): one snapshot."""

    @property
    def model(self) -> str: ...

    @property
    def targets(self) -> Sequence[tuple[str, Any]]: ...


def check_shards(view: _ShardView, version: int) -> Signature:
    """The shards' common signature of `version` once every shard is the one the router lists at
    its place and has that signature; raises naming the first shard that is not or does not.

    Raises Unavailable (a shard did not answer: retried) or FailedPrecondition (a wrong shard).
    """
    model, targets = view.model, view.targets
    count = len(targets)
    calls = []
    for address, stub in targets:
        metadata = pb.ModelMetadataRequest(name=model, version=str(version))
        config = pb.ModelConfigRequest(name=model, version=str(version))
        calls.append(
            (
                address,
                stub.ModelMetadata.future(metadata, timeout=_CHECK_TIMEOUT_S),
                stub.ModelConfig.future(config, timeout=_CHECK_TIMEOUT_S),
            )
        )
    try:
        first: Signature | None = None
        for index, (address, metadata_call, config_call) in enumerate(calls):
            where = f"shard {index} ({address})"
            try:
                metadata = metadata_call.result()
                parameters = config_call.result().config.parameters
            except grpc.RpcError as exc:
                raise Unavailable(f"{where}: {describe_rpc_error(exc)}") from exc
            _check_identity(where, index, count, parameters, model, version)
            signature = _signature(metadata)
            if first is None:
                first = signature
            elif signature != first:
                raise FailedPrecondition(
                    f"{where} has signature {describe_signature(signature)} for version"
                    f" {version} of model {model}, shard 0 has"
                    f" {describe_signature(first)}: every shard must serve the same table"
                )
    finally:
        for _, metadata_call, config_call in calls:
            metadata_call.cancel()
            config_call.cancel()
    assert first is not None  # routes has at least one target
    return first


def _check_identity(
    where: str, index: int, count: int, parameters: Mapping[str, Any], model: str, version: int
) -> None:
    held = {
        k: parameters[k].string_value for k in ("shard_index", "shard_count") if k in parameters
    }
    if not held and count == 1:
        return  # one address: a whole table is fine
    listed = f"the router lists it as shard {index} of {count}"
    if not held:
        raise FailedPrecondition(
            f"{where} serves version {version} of model {model} without a `shard:` setting (a"
            f" whole table), but {listed}: give each shard server its `shard: {{index: i,"
            f" count: {count}}}`"
        )
    found = (held.get("shard_index"), held.get("shard_count"))
    if found != (str(index), str(count)):
        raise FailedPrecondition(
            f"{where} serves shard {found[0]} of {found[1]} of model {model} (its `shard:`"
            f" setting), but {listed}: list the shard addresses in index order, each once"
        )


def _signature(metadata: pb.ModelMetadataResponse) -> Signature:
    return Signature(
        DEFAULT_SIGNATURE,
        tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in metadata.inputs),
        tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in metadata.outputs),
    )


def describe_signature(signature: Signature) -> str:
    """`keys INT64 [-1] -> values FP32 [-1, 4], found BOOL [-1]`."""

    def tensors(specs: Sequence[TensorSpec]) -> str:
        return ", ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in specs)

    return f"{tensors(signature.inputs)} -> {tensors(signature.outputs)}"


def describe_rpc_error(exc: grpc.RpcError) -> str:
    """`CODE: details` of a failed call (the error's text when it has no code)."""
    if isinstance(exc, grpc.Call):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)
