"""Pipelines at request time: one request runs every step of a pipeline on one snapshot of
versions.

`PipelineServable` is what a pipeline's version holds in the Manager, so status, metadata, labels
and readiness treat it like any model. `InferenceService` sees it and, instead of a model call,
awaits `answer` (`run_steps`): handles on every step are taken first and released only when the
answer is complete, so a version swap mid-request never mixes versions; each step then runs
through `InferenceService.run` like a request of its own (its model's execution threads, or its
Batcher). Steps of one level (see `PipelineSpec.levels`) run concurrently.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import numpy as np

from pyserving.core.handle import ServableHandle
from pyserving.errors import ModelError, ServingError, Unimplemented
from pyserving.metrics import PIPELINE_STEP_DURATION
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import DEFAULT_SIGNATURE, Signature
from pyserving.protocols.request import InferRequest, InferResponse
from pyserving.serving.pipeline_config import PipelineSpec, Step
from pyserving.serving.signature_plan import describe_array, fits

if TYPE_CHECKING:
    from pyserving.serving.inference import InferenceService

__all__ = ["STEP_VERSIONS_PARAMETER", "PipelineServable", "client_watch"]

#: the response parameter that lists the version each step ran on, as JSON: {"step": version}
STEP_VERSIONS_PARAMETER = "pipeline_step_versions"

#: set (for one request) by a transport whose client can leave without cancelling the request's
#: task (REST): runs a pipeline's steps and cancels them when the client goes away, raising that
#: transport's own exception. gRPC needs none: a cancelled call cancels its task.
client_watch: ContextVar[Callable[[Awaitable[Any]], Awaitable[Any]] | None] = ContextVar(
    "pipeline_client_watch", default=None
)


class PipelineServable(Servable):
    """One version of a pipeline: its definition and the signature derived from its steps'.

    Thread-safety: immutable; `run_steps` may be awaited concurrently on any event loop.
    Ownership: holds no step handle between requests (each request takes and releases its own).
    """

    platform = "pipeline"
    version_batching = False  # a pipeline is never batched itself; its steps may be

    def __init__(self, spec: PipelineSpec, signature: Signature) -> None:
        self.spec = spec
        self._signatures = {DEFAULT_SIGNATURE: signature}
        # each step's latency series, bound once (a labels() lookup per request costs ~6 µs)
        self._step_durations = {
            step.name: PIPELINE_STEP_DURATION.labels(spec.name, step.name) for step in spec.steps
        }

    @property
    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Only reached through APIs that call a servable directly (classify, regress).
        raise Unimplemented(f'pipeline "{self.spec.name}" answers predict and infer requests only')

    async def answer(
        self,
        service: InferenceService,
        handle: ServableHandle,
        signature: Signature,
        inputs: dict[str, np.ndarray],
        request: InferRequest,
    ) -> InferResponse:
        """`request`'s answer from this version (`handle`): its inputs checked against the
        pipeline's signature, then its steps run (`run_steps`); the answer names the version
        each step ran on. Raises InvalidInput and what `run_steps` raises."""
        plan = service.plan(signature)
        plan.validate(inputs, service.options.max_tensor_elements)
        wanted = plan.outputs if request.outputs is None else plan.check_outputs(request.outputs)
        steps = self.run_steps(service, inputs, wanted, request.deadline)
        watch = client_watch.get()
        outputs, versions = await (steps if watch is None else watch(steps))
        return InferResponse(
            request.model,
            handle.id.version,
            signature.name,
            outputs,
            request.id,
            {STEP_VERSIONS_PARAMETER: json.dumps(versions, separators=(",", ":"))},
        )

    async def run_steps(
        self,
        service: InferenceService,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        deadline: float | None,
    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Run every step on one snapshot of versions; return the wanted outputs and the version
        each step ran on (step name → version).

        Raises what a step's acquire or run raises (NotFound, InvalidInput, DeadlineExceeded,
        Unavailable, ModelError, ...) and ModelError for a step whose outputs break its own
        signature, its message prefixed with the step. A cancelled request
        cancels its steps (their model calls are abandoned as `InferenceService.run` does).
        """
        spec = self.spec
        handles: dict[str, tuple[ServableHandle, Signature]] = {}
        try:
            for step in spec.steps:  # every handle before any step runs: one snapshot
                try:
                    # no on-demand loading: a step is never an on-demand model (check_pipelines)
                    handle = service.acquire(step.model, step.version, step.label)
                    try:
                        handles[step.name] = (handle, service.signature(handle, None))
                    except BaseException:
                        handle.release()
                        raise
                except ServingError as exc:
                    raise _name_step(exc, spec, step) from None
            produced: dict[str, dict[str, np.ndarray]] = {}
            for level in spec.levels:
                if len(level) == 1:
                    step = level[0]
                    produced[step.name] = await self._run_step(
                        service, step, handles[step.name], inputs, produced, deadline
                    )
                    continue
                results = await _gather(
                    [
                        self._run_step(
                            service, step, handles[step.name], inputs, produced, deadline
                        )
                        for step in level
                    ]
                )
                for step, result in zip(level, results, strict=True):
                    produced[step.name] = result
            versions = {name: handle.id.version for name, (handle, _) in handles.items()}
        finally:
            for handle, _ in handles.values():
                handle.release()
        wires = spec.outputs
        outputs = {}
        for name in output_names:
            wire = wires[name]
            assert wire.step is not None  # outputs always name a step (parse_pipeline)
            outputs[name] = produced[wire.step][wire.tensor]
        return outputs, versions

    async def _run_step(
        self,
        service: InferenceService,
        step: Step,
        held: tuple[ServableHandle, Signature],
        inputs: Mapping[str, np.ndarray],
        produced: Mapping[str, Mapping[str, np.ndarray]],
        deadline: float | None,
    ) -> dict[str, np.ndarray]:
        handle, signature = held
        step_inputs = {
            name: inputs[wire.tensor] if wire.step is None else produced[wire.step][wire.tensor]
            for name, wire in step.inputs.items()
        }
        started = time.perf_counter()
        try:
            outputs = await service.run(handle, signature, step_inputs, None, deadline)
            _check_outputs(outputs, signature)
            return _read_only_views(outputs)
        except ServingError as exc:
            raise _name_step(exc, self.spec, step) from None
        finally:
            self._step_durations[step.name].observe(time.perf_counter() - started)


def _check_outputs(outputs: Mapping[str, np.ndarray], signature: Signature) -> None:
    """Raise ModelError when a step's output breaks its own signature: the next step (or the
    client) would otherwise be told its input is wrong, for a fault of this step's model."""
    for name, array in outputs.items():
        spec = signature.output(name)
        if spec is not None and not fits(array, spec):
            raise ModelError(
                f'output "{name}" is {describe_array(array)}, but the model\'s signature'
                f" declares {spec.describe()}"
            )


def _read_only_views(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A step's outputs as read-only views (no copy): a later step gets read-only inputs, as it
    would from a client, and cannot change what another step also reads. Views, so an array
    the model keeps (and may write next call) stays writable for it."""
    views = {}
    for name, array in outputs.items():
        view = array.view()
        view.flags.writeable = False
        views[name] = view
    return views


async def _gather(
    calls: Sequence[Coroutine[Any, Any, dict[str, np.ndarray]]],
) -> list[dict[str, np.ndarray]]:
    """Run `calls` (coroutines) as tasks; the first failure cancels the others and is raised
    once they have finished (so no step still uses a handle the caller is about to release)."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        raise


def _name_step(exc: ServingError, spec: PipelineSpec, step: Step) -> ServingError:
    """A copy of `exc` whose message starts with the pipeline and step: same class, same status.

    A copy, because one exception may answer several requests (every task of a failed batch
    gets the same one), and only this request is a pipeline's. Made without calling __init__,
    whose parameters differ between subclasses.
    """
    cls = type(exc)
    named = cls.__new__(cls)
    named.__dict__.update(exc.__dict__)
    named.message = (
        f'pipeline "{spec.name}" step "{step.name}" (model "{step.model}"): {exc.message}'
    )
    named.args = (named.message,)
    return named
