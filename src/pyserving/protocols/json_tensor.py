"""JSON ↔ numpy for both REST APIs: strict parsing typed by a V2 datatype, fast writing with orjson.

Reading follows TF Serving's `util/json_tensor.cc` rules (shared with the V2 JSON `data` field):
floats accept any number, integer dtypes reject decimals and out-of-range values, BOOL takes only
true/false, BYTES takes strings (and `{"b64": ...}` where the caller allows it). Nested lists must
be dense and rectangular; their shape comes from each level's first element. NaN / Infinity
literals are accepted through a fallback parser that runs only when orjson refuses a body.

Writing uses orjson's numpy support (floats round-trip, whole floats print as `1.0`); tensors with
NaN or ±Infinity go through the standard library, which prints those literals as TF Serving does.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

from pyserving.errors import InvalidInput
from pyserving.platforms.signature import V2_TO_NUMPY

__all__ = [
    "bytes_to_json",
    "dumps",
    "json_shape",
    "parse_json",
    "to_array",
]

_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_NONE = object()

# tensorflow DataTypeString names, used in TF Serving's type error messages.
_TF_TYPE_NAME = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "half",
    "FP32": "float",
    "FP64": "double",
    "BYTES": "string",
}


def parse_json(data: bytes | memoryview) -> object:
    """Parse a request body; raises InvalidInput naming the parse error.

    orjson parses strict JSON only. TF Serving accepts NaN, Infinity and -Infinity literals, so a
    body orjson refuses is parsed again with the standard library when it contains one of them.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        error: Exception = exc
    raw = bytes(data)
    if b"NaN" in raw or b"Infinity" in raw:
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            error = exc
    raise InvalidInput(f"JSON Parse error: {error}")


def json_shape(value: object, what: str, max_depth: int) -> list[int]:
    """The shape of a nested JSON list, read from each level's first element.

    Raises InvalidInput when the nesting is deeper than `max_depth` (checked before numpy sees it).
    """
    shape: list[int] = []
    while isinstance(value, list):
        if len(shape) >= max_depth:
            raise InvalidInput(f"{what}: JSON lists nested deeper than {max_depth} levels")
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def to_array(
    value: object,
    datatype: str,
    what: str,
    *,
    max_depth: int,
    max_elements: int,
    allow_b64: bool = False,
) -> np.ndarray:
    """Convert a JSON value (scalar or nested list) to an array of `datatype`.

    `what` names the tensor in messages (e.g. 'input "x"'). Raises InvalidInput for ragged lists,
    too deep nesting, too many elements, and values that do not fit the datatype.
    """
    shape = json_shape(value, what, max_depth)
    count = math.prod(shape)
    if count > max_elements:
        raise InvalidInput(f"{what}: {count} elements exceed the limit of {max_elements}")
    if datatype == "BYTES":
        return _strings_to_array(value, shape, what, allow_b64)
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InvalidInput(f'{what}: unsupported datatype "{datatype}"')
    try:
        parsed = np.array(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(
            f"{what}: Encountered list at unexpected size/level: nested lists must be dense and"
            f" rectangular with shape {shape} ({_first_line(exc)})"
        ) from exc
    if parsed.size == 0:
        return np.zeros(parsed.shape, dtype)
    kind = parsed.dtype.kind
    target = dtype.kind
    if kind in "iuf" and _has_bool(value):
        # numpy reads true / false among numbers as 1 / 0; TF Serving refuses them
        bad = _has_bool(value, True)  # the first kind found: true, else false
        raise InvalidInput(
            f"{what}: JSON Value: {_show(bad)} Type: {_json_type(bad)} is not of expected type:"
            f" {_TF_TYPE_NAME[datatype]}"
        )
    if target == "f":
        if kind not in "iuf":
            raise _type_error(what, parsed, datatype)
    elif target in "iu":
        if kind not in "iu":
            raise _type_error(what, parsed, datatype)
        info = np.iinfo(dtype)
        low, high = parsed.min(), parsed.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidInput(
                f"{what}: JSON Value: {bad} is out of range for type: {_TF_TYPE_NAME[datatype]}"
            )
    elif target == "b" and kind != "b":
        raise _type_error(what, parsed, datatype)
    return parsed.astype(dtype, copy=False)


def bytes_to_json(array: np.ndarray, *, encoding: str, what: str) -> Any:
    """A BYTES tensor as nested JSON values, element by element.

    `encoding`: "b64" writes `{"b64": ...}` objects; "utf8" writes strings and raises InvalidInput
    for bytes that are not UTF-8 (the client should ask for binary output); "utf8_or_b64" writes
    strings and falls back to `{"b64": ...}` for such bytes (TF REST); "utf8_replace" writes
    strings with U+FFFD for such bytes (Triton's generate extension, whose outputs are text).
    """
    flat = [_string_element(v, encoding, what) for v in array.ravel()]
    if array.ndim == 0:
        return flat[0]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(array.shape).tolist()


def dumps(
    document: object, arrays: Iterable[np.ndarray] = (), literal_nonfinite: bool = True
) -> bytes:
    """Serialise a response; `arrays` are the float tensors inside it, checked for NaN / ±Inf.

    orjson writes non-finite floats as null, which is valid JSON (KServe V2 answers so). With
    `literal_nonfinite` (TF Serving's REST API) they are written as TF Serving writes them,
    NaN / Infinity literally, so those documents take the standard library's slower path. The
    finiteness check runs only when orjson's output contains `null` (where a non-finite float
    would be), which keeps the common case at one orjson call: a numpy reduction per tensor
    costs more than the serialisation.
    """
    out = orjson.dumps(document, option=_ORJSON_OPTIONS, default=_orjson_default)
    if not literal_nonfinite or b"null" not in out:
        return out
    for array in arrays:
        if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
            return json.dumps(document, default=_stdlib_default, separators=(",", ":")).encode()
    return out


# --- helpers ------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0]


def _json_type(value: object) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool | np.bool_):
        return "True" if value else "False"
    if isinstance(value, str | np.str_):
        return "String"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "Number"


def _show(value: object) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    try:
        return orjson.dumps(value).decode()[:100]
    except TypeError:
        return repr(value)[:100]


def _type_error(what: str, parsed: np.ndarray, datatype: str) -> InvalidInput:
    """TF Serving's message for a JSON value of the wrong type, naming the first offender."""
    flat = parsed.ravel()
    target = V2_TO_NUMPY[datatype].kind
    if parsed.dtype.kind == "f" and target in "iu":
        non_integral = np.flatnonzero(~np.isfinite(flat) | (flat != np.trunc(flat)))
        bad: object = flat[non_integral[0]] if non_integral.size else flat[0]
    elif parsed.dtype.kind == "O":
        bad = next((v for v in flat if not _is_number(v, target)), _NONE)
        if bad is _NONE:  # only numbers: Python ints too large for any numpy integer
            bad = next(v for v in flat if isinstance(v, int))
            return InvalidInput(
                f"{what}: JSON Value: {bad} is out of range for type: {_TF_TYPE_NAME[datatype]}"
            )
    else:
        bad = flat[0]
    return InvalidInput(
        f"{what}: JSON Value: {_show(bad)} Type: {_json_type(bad)} is not of expected type:"
        f" {_TF_TYPE_NAME[datatype]}"
    )


def _has_bool(value: object, which: object = None) -> bool:
    """True when the nested list `value` holds a JSON boolean (`which` one, if given)."""
    if type(value) is bool:
        return which is None or value is which
    if type(value) is not list or not value:
        return False
    if type(value[0]) is list:
        return any(_has_bool(item, which) for item in value)
    if which is None:
        return bool in map(type, value)
    return any(item is which for item in value)


def _is_number(value: object, target_kind: str) -> bool:
    if isinstance(value, bool):
        return target_kind == "b"
    if isinstance(value, int):
        return target_kind in "iuf"
    if isinstance(value, float):
        return target_kind == "f"
    return False


def _strings_to_array(value: object, shape: list[int], what: str, allow_b64: bool) -> np.ndarray:
    flat: list[bytes] = []
    _collect_strings(value, shape, 0, flat, what, allow_b64)
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(shape)


def _collect_strings(
    value: object, shape: list[int], level: int, out: list[bytes], what: str, allow_b64: bool
) -> None:
    if level < len(shape):
        if not isinstance(value, list) or len(value) != shape[level]:
            raise InvalidInput(
                f"{what}: Encountered list at unexpected size/level: nested lists must be dense"
                f" and rectangular with shape {shape}"
            )
        for item in value:
            _collect_strings(item, shape, level + 1, out, what, allow_b64)
        return
    if isinstance(value, str):
        try:
            out.append(value.encode())
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"{what}: string is not valid Unicode: {exc}") from exc
    elif isinstance(value, dict) and allow_b64:
        out.append(_b64_value(value, what))
    elif isinstance(value, list):
        raise InvalidInput(
            f"{what}: Encountered list at unexpected size/level: found at incorrect level"
            f" (shape {shape})"
        )
    else:
        raise InvalidInput(
            f"{what}: JSON Value: {_show(value)} Type: {_json_type(value)} is not of expected"
            " type: string"
        )


def _b64_value(value: dict[str, object], what: str) -> bytes:
    encoded = value.get("b64")
    if len(value) != 1 or not isinstance(encoded, str):
        raise InvalidInput(
            f"{what}: JSON Value: {_show(value)} not formatted correctly for base64 data"
        )
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(
            f"{what}: JSON Value: {_show(value)} not formatted correctly for base64 data: {exc}"
        ) from exc


def _string_element(value: object, encoding: str, what: str) -> str | dict[str, str]:
    if isinstance(value, str):
        return value if encoding != "b64" else {"b64": base64.b64encode(value.encode()).decode()}
    if not isinstance(value, bytes):
        value = bytes(value) if isinstance(value, bytearray | memoryview) else str(value).encode()
    if encoding == "b64":
        return {"b64": base64.b64encode(value).decode("ascii")}
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        if encoding == "utf8_or_b64":
            return {"b64": base64.b64encode(value).decode("ascii")}
        if encoding == "utf8_replace":
            return value.decode(errors="replace")
        raise InvalidInput(
            f"{what} holds bytes that are not UTF-8 and cannot be written as JSON: request it as"
            " binary data"
        ) from exc


def _orjson_default(value: object) -> object:
    # orjson hands over what its numpy support does not cover: 0-d and non-contiguous arrays,
    # non-native byte orders, numpy scalars of other types.
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _stdlib_default(value: object) -> object:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
