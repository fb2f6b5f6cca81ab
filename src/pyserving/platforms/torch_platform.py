"""The PyTorch platform: `model.pt2` (a `torch.export` ExportedProgram) or `model.pt`
(TorchScript), run on the CPU under `torch.inference_mode()`.

An ExportedProgram's signature comes from the program: inputs named after `forward`'s
parameters with their traced dtypes and shapes (dynamic dimensions are -1), outputs named after
the keys of a returned dict, else `output_0`, `output_1`, ... TorchScript carries no dtypes or
shapes, so `model.pt` needs a `pyserving.yaml` signature (see `platforms.common`): its inputs
are passed to `forward` positionally, in order, and the returned tensor / tuple / dict fills its
outputs in order (a dict by key).

Trust: `torch.export.load` unpickles (weights and constants saved with `use_pickle`, its serde
fallback) with no safe mode, so a `model.pt2` runs code when loaded: it loads only with
`allow_pickle: true` in the model config, as `model.pkl` does. `torch.jit.load` reads TorchScript
with torch's own restricted unpickler, which rebuilds tensors and TorchScript classes only and
refuses any other Python global (e.g. `os.system`): it cannot run Python code, so `model.pt` needs
no opt-in; its TorchScript program can still call torch ops that read files, like any model
program (docs/operations.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from pyserving.errors import FailedPrecondition, InvalidInput
from pyserving.platforms.common import OVERRIDE_FILE, FileLoader
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import DEFAULT_SIGNATURE, Signature, TensorSpec

__all__ = ["EXPORT_FILE", "SCRIPT_FILE", "TorchLoader", "TorchServable"]

EXPORT_FILE = "model.pt2"
SCRIPT_FILE = "model.pt"

TORCH_TO_V2: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
}


class TorchLoader(FileLoader):
    """Loads `model.pt2` (with `allow_pickle: true`) or `model.pt` on the CPU.

    Config keys: `allow_pickle` (bool, default false). Thread-safety: as Loader.
    """

    resource_factor = 1.5

    def load_local(self, directory: str, override: Mapping[str, Signature] | None) -> Servable:
        exported = os.path.join(directory, EXPORT_FILE)
        if os.path.isfile(exported):
            if self.config.get("allow_pickle") is not True:
                raise FailedPrecondition(
                    f"{EXPORT_FILE} (torch.export) is unpickled when loaded, which runs code: set"
                    f" 'allow_pickle: true' in the model config to trust it, or save the model as"
                    f" TorchScript ({SCRIPT_FILE})"
                )
            program = torch.export.load(exported)
            signature = _exported_signature(program)
            return TorchServable(program.module(), signature, _output_keys(program))
        scripted = os.path.join(directory, SCRIPT_FILE)
        if not os.path.isfile(scripted):
            raise FailedPrecondition(f"no {EXPORT_FILE} or {SCRIPT_FILE} in {directory}")
        if override is None or DEFAULT_SIGNATURE not in override or len(override) != 1:
            raise FailedPrecondition(
                f"{SCRIPT_FILE} (TorchScript) has no signature: add {OVERRIDE_FILE} with"
                f" signatures: {{{DEFAULT_SIGNATURE}: {{inputs: [...], outputs: [...]}}}}"
            )
        module = torch.jit.load(scripted, map_location="cpu")
        module.eval()
        return TorchServable(module, override[DEFAULT_SIGNATURE], None)


class TorchServable(Servable):
    """A module called with the signature's inputs in order; inference mode, no autograd.

    Thread-safety: `run` may be called from many threads (forward passes of an eval-mode module
    share only read-only parameters; torch releases the GIL inside its kernels).
    """

    platform = "torch"

    def __init__(self, module: Any, signature: Signature, output_keys: list[str] | None) -> None:
        self.module = module
        self._signature = signature
        self._signatures = {signature.name: signature}
        self._output_keys = output_keys  # the dict keys the module returns, when it returns one

    @property
    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self._signature
        args = [_to_tensor(inputs[s.name]) for s in spec.inputs]
        with torch.inference_mode():
            result = self.module(*args)
        names = [s.name for s in spec.outputs]
        if isinstance(result, Mapping):
            keys = self._output_keys or names
            values = [result[k] for k in keys]
        else:
            values = pytree.tree_leaves(result)
        if len(values) != len(names):
            raise InvalidInput(
                f"the model returned {len(values)} tensors; the signature has {len(names)}"
                f" outputs ({', '.join(names)})"
            )
        return {name: _to_numpy(value) for name, value in zip(names, values, strict=True)}

    def memory_bytes(self) -> int | None:
        state = getattr(self.module, "state_dict", None)
        if state is None:
            return None
        tensors = [t for t in state().values() if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors) or None


def _exported_signature(program: torch.export.ExportedProgram) -> Signature:
    user_inputs = set(program.graph_signature.user_inputs)
    inputs = []
    outputs: list[TensorSpec] = []
    keys = _output_keys(program)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            inputs.append(_spec(node.name, node.meta.get("val")))
        elif node.op == "output":
            results = [a for a in pytree.tree_leaves(node.args[0]) if hasattr(a, "meta")]
            user_count = len(program.graph_signature.user_outputs)
            results = results[len(results) - user_count :]  # mutated buffers come first
            for i, arg in enumerate(results):
                name = keys[i] if keys is not None else f"output_{i}"
                outputs.append(_spec(name, arg.meta.get("val")))
    return Signature(DEFAULT_SIGNATURE, tuple(inputs), tuple(outputs))


def _output_keys(program: torch.export.ExportedProgram) -> list[str] | None:
    out_spec = program.call_spec.out_spec
    if out_spec is not None and out_spec.type is dict:
        return [str(k) for k in out_spec.context]
    return None


def _spec(name: str, value: Any) -> TensorSpec:
    if not isinstance(value, torch.Tensor):
        raise FailedPrecondition(f'"{name}" is not a tensor; only tensor inputs/outputs are served')
    datatype = TORCH_TO_V2.get(value.dtype)
    if datatype is None:
        raise FailedPrecondition(f'"{name}": torch dtype {value.dtype} is not served')
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
    return TensorSpec(name, datatype, shape)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array).copy()  # torch wants writable, contiguous memory
    return torch.from_numpy(array)


def _to_numpy(value: Any) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise InvalidInput(f"the model returned a {type(value).__name__}, not a tensor")
    return value.detach().cpu().numpy()
