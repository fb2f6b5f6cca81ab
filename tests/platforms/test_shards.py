"""The shard router's fan-out, over stubs that decode and answer with the V2 codec (issue 18)."""

from __future__ import annotations

import time
import types
import zlib
from typing import Any

import grpc
import numpy as np
import pytest

from pyserving.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from pyserving.platforms.lookup import LookupServable
from pyserving.platforms.servable import current_deadline
from pyserving.platforms.shard_checks import check_shards
from pyserving.platforms.shards import ShardRouter, ShardView
from pyserving.platforms.signature import DEFAULT_SIGNATURE
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.protocols import v2_metadata
from pyserving.protocols.request import InferResponse
from pyserving.protocols.v2_grpc import request_from_proto, response_to_proto

LIMITS = types.SimpleNamespace(max_tensor_elements=1 << 20, max_tensor_bytes=1 << 26)
WORDS = [f"word-{i}" for i in range(60)]


class Done:
    """A finished call: `result()` answers or raises, as a grpc future does."""

    def __init__(self, answer: Any) -> None:
        self._answer = answer

    def result(self) -> Any:
        if isinstance(self._answer, Exception):
            raise self._answer
        return self._answer

    def cancel(self) -> bool:
        return True

    def done(self) -> bool:
        return True

    def exception(self) -> BaseException | None:
        return self._answer if isinstance(self._answer, BaseException) else None


class ShardStub:
    """A shard server in-process: decodes the V2 request as a server does, runs its table."""

    def __init__(
        self, table: LookupServable, broken: bool = False, shard: tuple[int, int] | None = None
    ) -> None:
        self.table = table
        self.broken = broken
        self.requests: list[pb.ModelInferRequest] = []
        self.ModelInfer = types.SimpleNamespace(future=self._infer)
        if shard is not None:  # as FileLoader sets them from the `shard:` setting
            table.config_parameters = {"shard_index": str(shard[0]), "shard_count": str(shard[1])}
        self.ModelMetadata = types.SimpleNamespace(future=self._metadata)
        self.ModelConfig = types.SimpleNamespace(future=self._config)

    def _metadata(self, request: pb.ModelMetadataRequest, timeout: float) -> Done:
        signature = self.table.signatures[DEFAULT_SIGNATURE]
        answer = v2_metadata.model_metadata("t", [1], self.table, signature)
        return Done(pb.ModelMetadataResponse(**answer))

    def _config(self, request: pb.ModelConfigRequest, timeout: float) -> Done:
        signature = self.table.signatures[DEFAULT_SIGNATURE]
        config = v2_metadata.model_config("t", self.table, signature)
        del config["input"], config["output"]
        return Done(pb.ModelConfigResponse(config=pb.ModelConfig(**config)))

    def _infer(self, request: pb.ModelInferRequest, timeout: float) -> Done:
        assert timeout > 0
        self.requests.append(request)
        if self.broken:
            error = grpc.RpcError("connection refused")
            return Done(error)
        decoded = request_from_proto(request, None)
        signature = self.table.signatures[DEFAULT_SIGNATURE]
        assert callable(decoded.inputs)
        outputs = self.table.run(DEFAULT_SIGNATURE, decoded.inputs(signature, LIMITS))
        version = int(request.model_version)
        return Done(response_to_proto(InferResponse("t", version, DEFAULT_SIGNATURE, outputs)))


def view_of(stubs: list[ShardStub], model: str = "t") -> ShardView:
    return ShardView(model, tuple((f"shard-host:{i}", stub) for i, stub in enumerate(stubs)))  # type: ignore[misc]


class Routes:
    """As ShardRoutes: one view of the model and its shards, replaced whole by a reload."""

    def __init__(self, stubs: list[ShardStub]) -> None:
        self.current = view_of(stubs)

    def view(self) -> ShardView:
        return self.current


def shard_tables(count: int, width: int = 2) -> list[LookupServable]:
    keys = np.array([w.encode() for w in WORDS], dtype=object)
    values = np.arange(len(WORDS) * width, dtype=np.float32).reshape(-1, width)
    tables = []
    for index in range(count):
        mine = np.array([zlib.crc32(k) % count == index for k in keys.tolist()])
        tables.append(LookupServable(keys[mine], values[mine], default=[-1] * width))
    return tables


def test_bytes_keys_fan_out_one_call_per_shard_and_merge_in_request_order() -> None:
    stubs = [ShardStub(t) for t in shard_tables(3)]
    whole = shard_tables(1)[0]
    router = ShardRouter(Routes(stubs), 4, whole.signatures[DEFAULT_SIGNATURE])  # type: ignore[arg-type]
    probe = np.array([w.encode() for w in [*reversed(WORDS), "missing", "word-3"]], dtype=object)
    out = router.run(DEFAULT_SIGNATURE, {"keys": probe})
    expected = whole.run(DEFAULT_SIGNATURE, {"keys": probe})
    np.testing.assert_array_equal(out["values"], expected["values"])
    np.testing.assert_array_equal(out["found"], expected["found"])
    assert [len(s.requests) for s in stubs] == [1, 1, 1]
    assert {r.model_version for s in stubs for r in s.requests} == {"4"}


def test_one_broken_shard_fails_the_whole_request_naming_it() -> None:
    tables = shard_tables(3)
    stubs = [ShardStub(tables[0]), ShardStub(tables[1], broken=True), ShardStub(tables[2])]
    signature = tables[0].signatures[DEFAULT_SIGNATURE]
    router = ShardRouter(Routes(stubs), 1, signature)  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match=r"shard 1 \(shard-host:1\) is unavailable"):
        router.run(DEFAULT_SIGNATURE, {"keys": np.array([w.encode() for w in WORDS], dtype=object)})


def test_no_keys_answers_empty_outputs_without_calling_a_shard() -> None:
    stubs = [ShardStub(t) for t in shard_tables(2)]
    signature = stubs[0].table.signatures[DEFAULT_SIGNATURE]
    router = ShardRouter(Routes(stubs), 1, signature)  # type: ignore[arg-type]
    out = router.run(DEFAULT_SIGNATURE, {"keys": np.zeros(0, dtype=object)})
    assert out["values"].shape == (0, 2) and out["found"].shape == (0,)
    assert not any(s.requests for s in stubs)


class CallError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A failed call as grpc raises it: an RpcError that is also a Call with a code."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def __getattr__(self, name: str) -> Any:  # the rest of grpc.Call is never used here
        raise AttributeError(name)


@pytest.mark.parametrize(
    ("code", "error", "message"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded, "did not answer within the deadline"),
        (grpc.StatusCode.NOT_FOUND, Unavailable, "does not have version 7 of model t"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Unavailable, "RESOURCE_EXHAUSTED: too big"),
    ],
)
def test_a_shards_status_becomes_the_requests_naming_the_shard(
    code: grpc.StatusCode, error: type[Exception], message: str
) -> None:
    tables = shard_tables(2)
    stubs = [ShardStub(t) for t in tables]
    stubs[1].ModelInfer = types.SimpleNamespace(
        future=lambda request, timeout: Done(CallError(code, "too big"))
    )
    router = ShardRouter(Routes(stubs), 7, tables[0].signatures[DEFAULT_SIGNATURE])  # type: ignore[arg-type]
    keys = np.array([w.encode() for w in WORDS], dtype=object)
    with pytest.raises(error, match="shard 1 \\(shard-host:1\\)") as raised:
        router.run(DEFAULT_SIGNATURE, {"keys": keys})
    assert message in str(raised.value)


def test_check_passes_shards_in_index_order_and_a_whole_table_alone() -> None:
    stubs = [ShardStub(t, shard=(i, 3)) for i, t in enumerate(shard_tables(3))]
    signature = check_shards(view_of(stubs), 1)
    assert signature == stubs[0].table.signatures[DEFAULT_SIGNATURE]
    assert check_shards(view_of([ShardStub(shard_tables(1)[0])]), 1)


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ((1, 0, 2), r"shard 0 \(shard-host:0\) serves shard 1 of 3 .*lists it as shard 0 of 3"),
        ((0, 0, 2), r"shard 1 \(shard-host:1\) serves shard 0 of 3 .*lists it as shard 1 of 3"),
        ((0, 1, None), r"shard 2 \(shard-host:2\) serves .* without a `shard:` setting"),
    ],
)
def test_check_refuses_a_shard_listed_out_of_place_naming_it(
    order: tuple[int | None, ...], message: str
) -> None:
    tables = shard_tables(3)
    stubs = [
        ShardStub(tables[i if i is not None else 2], shard=None if i is None else (i, 3))
        for i in order
    ]
    with pytest.raises(FailedPrecondition, match=message):
        check_shards(view_of(stubs), 1)


def test_check_refuses_a_shard_whose_signature_differs_naming_it() -> None:
    narrow, wide = shard_tables(2), shard_tables(2, width=8)
    stubs = [ShardStub(narrow[0], shard=(0, 2)), ShardStub(wide[1], shard=(1, 2))]
    with pytest.raises(FailedPrecondition, match=r"shard 1 \(shard-host:1\) has signature .*8\]"):
        check_shards(view_of(stubs), 1)


def test_an_answer_not_of_the_routers_signature_is_unavailable_naming_the_shard() -> None:
    narrow, wide = shard_tables(2), shard_tables(2, width=8)
    stubs = [ShardStub(narrow[0]), ShardStub(wide[1])]  # shard 1 changed after the check
    router = ShardRouter(Routes(stubs), 1, narrow[0].signatures[DEFAULT_SIGNATURE])  # type: ignore[arg-type]
    keys = np.array([w.encode() for w in WORDS], dtype=object)
    with pytest.raises(Unavailable, match=r"shard 1 \(shard-host:1\) answered 'values' as FP32"):
        router.run(DEFAULT_SIGNATURE, {"keys": keys})


class Pending(Done):
    """A call still waiting for its shard when another one's deadline passed."""

    def done(self) -> bool:
        return False


def test_a_deadline_names_every_shard_that_did_not_answer_before_the_requests() -> None:
    tables = shard_tables(3)
    stubs = [ShardStub(t) for t in tables]
    late = CallError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    timeouts = []

    def hanging(request: pb.ModelInferRequest, timeout: float) -> Done:
        timeouts.append(timeout)
        return Done(late)

    stubs[1].ModelInfer = types.SimpleNamespace(future=hanging)
    stubs[2].ModelInfer = types.SimpleNamespace(future=lambda r, timeout: Pending(late))
    router = ShardRouter(Routes(stubs), 1, tables[0].signatures[DEFAULT_SIGNATURE])  # type: ignore[arg-type]
    keys = np.array([w.encode() for w in WORDS], dtype=object)
    token = current_deadline.set(time.monotonic() + 1.0)
    try:
        with pytest.raises(DeadlineExceeded) as raised:
            router.run(DEFAULT_SIGNATURE, {"keys": keys})
    finally:
        current_deadline.reset(token)
    assert str(raised.value).startswith(
        "shard 1 (shard-host:1), shard 2 (shard-host:2) did not answer within the deadline"
    )
    assert timeouts[0] <= 0.8  # the fan-out ends before the request's own deadline


def test_a_reload_during_the_fan_out_leaves_the_request_on_the_view_it_began_with() -> None:
    tables = shard_tables(2)
    before, after = [ShardStub(t) for t in tables], [ShardStub(t) for t in tables]
    routes = Routes(before)
    answer = before[0].ModelInfer.future

    def answer_then_reload(request: pb.ModelInferRequest, timeout: float) -> Done:
        routes.current = view_of(after, model="renamed")  # lands between two shards' calls
        return answer(request, timeout)

    before[0].ModelInfer = types.SimpleNamespace(future=answer_then_reload)
    router = ShardRouter(routes, 1, tables[0].signatures[DEFAULT_SIGNATURE])  # type: ignore[arg-type]
    out = router.run(
        DEFAULT_SIGNATURE, {"keys": np.array([w.encode() for w in WORDS], dtype=object)}
    )
    assert out["found"].all()
    assert [r.model_name for s in before for r in s.requests] == ["t", "t"]
    assert not any(s.requests for s in after)
    router.run(DEFAULT_SIGNATURE, {"keys": np.array([b"word-1"], dtype=object)})
    assert [r.model_name for s in after for r in s.requests] == ["renamed"]  # the next request
