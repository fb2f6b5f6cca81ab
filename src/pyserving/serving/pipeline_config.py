"""A pipeline's definition: its steps, how their tensors are wired, and the checks that name the
step at fault.

A model config entry with `pipeline:` (docs/pipelines.md) becomes a `PipelineSpec`:

    pipeline:
      steps:
        - model: features                 # optional: name (default: the model), version or label
          inputs: {keys: user}            # step input <- pipeline input, or `<step>.<output>`
        - model: mlp
          inputs: {input: features.values}
      outputs: {score: mlp.output}        # pipeline output <- step output

Two checks: `parse_pipeline` / `check_pipelines` when the config is read (shape of the entry,
unknown steps and models, cycles), and `derive_signature` when the pipeline loads, against the
steps' real signatures (unknown tensors, unwired inputs, dtype and shape mismatches).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pyserving.errors import InvalidInput
from pyserving.platforms.signature import DEFAULT_SIGNATURE, Signature, TensorSpec

__all__ = [
    "PIPELINE_ENTRY_KEYS",
    "PipelineError",
    "PipelineSpec",
    "Step",
    "Wire",
    "check_pipelines",
    "derive_signature",
    "parse_pipeline",
]

#: the keys a pipeline's config entry may have (batching, instances, ... are its steps' models')
PIPELINE_ENTRY_KEYS = frozenset({"name", "pipeline"})
_STEP_KEYS = frozenset({"name", "model", "version", "label", "inputs"})


class PipelineError(InvalidInput):
    """A pipeline that cannot be built; the message names the pipeline and the step."""


@dataclass(frozen=True, slots=True)
class Wire:
    """Where a tensor comes from: a pipeline input (`step` None) or an earlier step's output."""

    step: str | None
    tensor: str

    def __str__(self) -> str:
        return self.tensor if self.step is None else f"{self.step}.{self.tensor}"


@dataclass(frozen=True, slots=True)
class Step:
    """One model call of a pipeline: which model (and version or label), and its inputs' wires."""

    name: str
    model: str
    version: int | None
    label: str | None
    inputs: Mapping[str, Wire]

    def depends_on(self) -> set[str]:
        """The steps whose outputs this step reads."""
        return {wire.step for wire in self.inputs.values() if wire.step is not None}


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    """A checked pipeline: steps in an order where each comes after those it reads from, grouped
    in `levels` (the steps of one level do not depend on each other and may run together)."""

    name: str
    outputs: Mapping[str, Wire]
    levels: tuple[tuple[Step, ...], ...]
    #: every step, level by level: derived from `levels` once (requests walk it)
    steps: tuple[Step, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps = tuple(step for level in self.levels for step in level)
        object.__setattr__(self, "steps", steps)  # frozen: set once, here


def parse_pipeline(value: object, name: str) -> PipelineSpec:
    """The pipeline of model `name` from its YAML `pipeline:` value. Raises PipelineError naming
    the step for a malformed entry, a duplicate step, a wire to an unknown step, or a cycle."""
    where = f'pipeline "{name}"'
    if not isinstance(value, Mapping) or set(value) - {"steps", "outputs"}:
        raise PipelineError(f"{where}: pipeline must be a mapping with steps and outputs")
    entries = value.get("steps")
    if not isinstance(entries, list) or not entries:
        raise PipelineError(f"{where}: steps must be a non-empty list")
    steps: dict[str, Step] = {}
    for index, entry in enumerate(entries):
        step = _parse_step(entry, index, where)
        if step.name in steps:
            raise PipelineError(
                f'{where}: step "{step.name}" appears twice; give one of them a name:'
            )
        steps[step.name] = step
    for step in steps.values():
        for input_name, wire in step.inputs.items():
            if wire.step is not None and wire.step not in steps:
                raise PipelineError(
                    f'{where}: step "{step.name}": input "{input_name}" reads "{wire}", but there'
                    f' is no step "{wire.step}" (steps: {", ".join(steps)})'
                )
    outputs = value.get("outputs")
    if not isinstance(outputs, Mapping) or not outputs:
        raise PipelineError(f"{where}: outputs must map output names to <step>.<output>")
    wired_outputs: dict[str, Wire] = {}
    for output, text in outputs.items():
        wire = _parse_wire(text, f'{where}: output "{output}"')
        if wire.step is None or wire.step not in steps:
            raise PipelineError(
                f'{where}: output "{output}" must name a step\'s output as <step>.<output>, got'
                f' "{text}" (steps: {", ".join(steps)})'
            )
        wired_outputs[str(output)] = wire
    return PipelineSpec(name, wired_outputs, _levels(steps, where))


def check_pipelines(
    pipelines: Mapping[str, PipelineSpec], configured: Iterable[str], on_demand: Iterable[str]
) -> None:
    """Raise PipelineError for a step naming a model that is not configured, another pipeline,
    or a model loaded on demand (a pipeline serves only while all its steps are loaded)."""
    names = set(configured)
    lazy = set(on_demand)
    for spec in pipelines.values():
        for step in spec.steps:
            where = f'pipeline "{spec.name}": step "{step.name}"'
            if step.model not in names:
                raise PipelineError(
                    f'{where}: model "{step.model}" is not configured'
                    f" (models: {', '.join(sorted(names - set(pipelines))) or 'none'})"
                )
            if step.model in pipelines:
                raise PipelineError(
                    f'{where}: model "{step.model}" is a pipeline; a step must be a model'
                )
            if step.model in lazy:
                raise PipelineError(
                    f'{where}: model "{step.model}" loads on demand; load it always'
                )


def derive_signature(spec: PipelineSpec, steps: Mapping[str, Signature]) -> Signature:
    """The pipeline's signature from its steps' signatures (step name → signature). Inputs are
    the pipeline inputs the steps read, in order of first use; a pipeline input read by several
    steps takes the most specific shape they agree on. Raises PipelineError naming the step for
    an unknown or unwired tensor and for a dtype or shape that does not fit between steps."""
    where = f'pipeline "{spec.name}"'
    inputs: dict[str, tuple[TensorSpec, str]] = {}  # name → (spec, the step that set it)
    for step in spec.steps:
        signature = steps[step.name]
        at = f'{where}: step "{step.name}" (model "{step.model}")'
        for wanted in signature.inputs:
            if wanted.name not in step.inputs:
                raise PipelineError(
                    f'{at}: its input "{wanted.name}" ({wanted.describe()}) is not wired'
                )
        for input_name, wire in step.inputs.items():
            taken = signature.input(input_name)
            if taken is None:
                raise PipelineError(
                    f'{at}: it has no input "{input_name}"'
                    f" (its inputs: {', '.join(signature.input_names) or 'none'})"
                )
            if wire.step is None:
                earlier = inputs.get(wire.tensor)
                if earlier is None:
                    inputs[wire.tensor] = (TensorSpec(wire.tensor, taken.datatype, taken.shape), at)
                    continue
                merged = _merge_shapes(earlier[0].shape, taken.shape)
                if earlier[0].datatype != taken.datatype or merged is None:
                    raise PipelineError(
                        f'{at}: input "{input_name}" takes {taken.describe()} from pipeline input'
                        f' "{wire.tensor}", which {earlier[1].removeprefix(where + ": ")} takes as'
                        f" {earlier[0].describe()}"
                    )
                inputs[wire.tensor] = (TensorSpec(wire.tensor, taken.datatype, merged), earlier[1])
                continue
            given = _step_output(spec, steps, wire, f'{at}: input "{input_name}"')
            if given.datatype != taken.datatype or _merge_shapes(given.shape, taken.shape) is None:
                raise PipelineError(
                    f'{at}: input "{input_name}" takes {taken.describe()}, but "{wire}" gives'
                    f" {given.describe()}"
                )
    outputs = tuple(
        TensorSpec(name, given.datatype, given.shape)
        for name, wire in spec.outputs.items()
        for given in (_step_output(spec, steps, wire, f'{where}: output "{name}"'),)
    )
    return Signature(DEFAULT_SIGNATURE, tuple(spec for spec, _ in inputs.values()), outputs)


# --- helpers -------------------------------------------------------------------------------------


def _parse_step(raw: object, index: int, where: str) -> Step:
    if not isinstance(raw, Mapping):
        raise PipelineError(f"{where}: steps[{index}] must be a mapping with model and inputs")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise PipelineError(f"{where}: steps[{index}]: model must be a model name")
    name = raw.get("name", model)
    if not isinstance(name, str) or not name or "." in name:
        raise PipelineError(f"{where}: steps[{index}]: name must be a string without '.'")
    at = f'{where}: step "{name}"'
    unknown = set(raw) - _STEP_KEYS
    if unknown:
        raise PipelineError(
            f"{at}: unknown key(s) {', '.join(sorted(map(str, unknown)))}"
            f" (known: {', '.join(sorted(_STEP_KEYS))})"
        )
    version = raw.get("version")
    if version is not None and (
        not isinstance(version, int) or isinstance(version, bool) or version < 0
    ):
        raise PipelineError(f"{at}: version must be a version number")
    label = raw.get("label")
    if label is not None and (not isinstance(label, str) or not label):
        raise PipelineError(f"{at}: label must be a label name")
    if version is not None and label is not None:
        raise PipelineError(f"{at}: give a version or a label, not both")
    inputs = raw.get("inputs")
    if not isinstance(inputs, Mapping) or not inputs:
        raise PipelineError(f"{at}: inputs must map the model's inputs to their sources")
    wires = {str(key): _parse_wire(text, f'{at}: input "{key}"') for key, text in inputs.items()}
    return Step(name, model, version, label, wires)


def _parse_wire(text: object, where: str) -> Wire:
    if not isinstance(text, str) or not text or text.startswith(".") or text.endswith("."):
        raise PipelineError(
            f"{where}: a source must be a pipeline input name or <step>.<output>, got {text!r}"
        )
    step, dot, tensor = text.partition(".")
    return Wire(step, tensor) if dot else Wire(None, text)


def _levels(steps: Mapping[str, Step], where: str) -> tuple[tuple[Step, ...], ...]:
    """Kahn's topological sort in levels; raises PipelineError naming the steps of a cycle."""
    waiting = {name: step.depends_on() for name, step in steps.items()}
    levels: list[tuple[Step, ...]] = []
    done: set[str] = set()
    while waiting:
        ready = [name for name, needs in waiting.items() if needs <= done]
        if not ready:
            cycle = _cycle(waiting)
            raise PipelineError(
                f'{where}: steps form a cycle: {" -> ".join(cycle)} (step "{cycle[0]}" reads its'
                " own output through them)"
            )
        levels.append(tuple(steps[name] for name in ready))
        done.update(ready)
        for name in ready:
            del waiting[name]
    return tuple(levels)


def _cycle(waiting: Mapping[str, set[str]]) -> list[str]:
    """One cycle among steps that all wait on each other, as step names, first name repeated."""
    path: list[str] = []
    current = min(waiting)
    while current not in path:
        path.append(current)
        current = min(name for name in waiting[current] if name in waiting)
    return [*path[path.index(current) :], current]


def _step_output(
    spec: PipelineSpec, steps: Mapping[str, Signature], wire: Wire, where: str
) -> TensorSpec:
    assert wire.step is not None  # parse_pipeline checked it names a step
    signature = steps[wire.step]
    given = signature.output(wire.tensor)
    if given is None:
        model = next(s.model for s in spec.steps if s.name == wire.step)
        raise PipelineError(
            f'{where} reads "{wire}", but step "{wire.step}" (model "{model}") has no output'
            f' "{wire.tensor}" (its outputs: {", ".join(signature.output_names) or "none"})'
        )
    return given


def _merge_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """The most specific shape both allow (-1: any size), or None when they conflict."""
    if len(a) != len(b):
        return None
    merged = []
    for x, y in zip(a, b, strict=True):
        if x != -1 and y != -1 and x != y:
            return None
        merged.append(y if x == -1 else x)
    return tuple(merged)
