from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pyserving.core.ids import ServableId
from pyserving.errors import FailedPrecondition
from pyserving.platforms.lookup import LookupLoader, LookupServable
from pyserving.platforms.signature import DEFAULT_SIGNATURE

ID = ServableId("table", 1)


def load(path: Path, **config: object) -> LookupServable:
    servable = LookupLoader(ID, str(path), config).load()
    assert isinstance(servable, LookupServable)
    return servable


def test_csv_with_int_keys_and_scalar_values_and_a_default(tmp_path: Path) -> None:
    (tmp_path / "table.csv").write_text("id,score\n10,0.5\n-3,1.5\n7,2.5\n")
    servable = load(tmp_path, default=-1.0)
    signature = servable.signatures[DEFAULT_SIGNATURE]
    assert [(s.name, s.datatype, s.shape) for s in signature.inputs] == [("keys", "INT64", (-1,))]
    assert [(s.name, s.datatype, s.shape) for s in signature.outputs] == [
        ("values", "FP32", (-1,)),
        ("found", "BOOL", (-1,)),
    ]
    out = servable.run(DEFAULT_SIGNATURE, {"keys": np.array([7, 8, -3, 10, 11], np.int64)})
    np.testing.assert_array_equal(out["values"], [2.5, -1.0, 1.5, 0.5, -1.0])
    np.testing.assert_array_equal(out["found"], [True, False, True, True, False])


def test_npz_with_string_keys_to_vectors(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.savez(tmp_path / "table.npz", keys=np.array(["w", "x", "y", "z"]), values=values)
    servable = load(tmp_path, default=[9, 9, 9])
    out = servable.run(DEFAULT_SIGNATURE, {"keys": np.array([b"y", b"nope"], dtype=object)})
    np.testing.assert_array_equal(out["values"], [values[2], [9, 9, 9]])
    np.testing.assert_array_equal(out["found"], [True, False])
    assert servable.memory_bytes() is not None
    assert servable.memory_bytes() >= values.nbytes


def test_parquet_table_maps_to_string_values(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": [1, 2, 3], "word": ["one", "two", "three"]})
    pq.write_table(table, tmp_path / "table.parquet")
    servable = load(tmp_path, default="<unk>")
    out = servable.run(DEFAULT_SIGNATURE, {"keys": np.array([3, 4, 1], np.int64)})
    assert out["values"].tolist() == [b"three", b"<unk>", b"one"]
    assert servable.signatures[DEFAULT_SIGNATURE].outputs[0].datatype == "BYTES"


def test_key_type_string_keeps_numeric_looking_keys_as_strings(tmp_path: Path) -> None:
    (tmp_path / "table.tsv").write_text("zip\tpop\n01234\t5\n1234\t6\n")
    servable = load(tmp_path, key_type="string")
    out = servable.run(DEFAULT_SIGNATURE, {"keys": np.array([b"01234", b"1234"], dtype=object)})
    np.testing.assert_array_equal(out["values"], [5.0, 6.0])


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("table.csv", "k,v\n1,2\n1,3\n", "duplicate keys"),
        ("table.csv", "k,v\n1,2\n2\n", "line 3: 1 columns"),
        ("table.csv", "k\n1\n", "first line must be a header"),
        ("table.csv", "k,a,b\n1,2,x\n", "must be numeric"),
    ],
)
def test_malformed_tables_fail_the_load(
    tmp_path: Path, name: str, content: str, match: str
) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(FailedPrecondition, match=match):
        load(tmp_path)


def test_default_that_does_not_fit_the_values_fails_the_load(tmp_path: Path) -> None:
    (tmp_path / "table.csv").write_text("k,a,b\n1,2,3\n")
    with pytest.raises(FailedPrecondition, match="does not fit"):
        load(tmp_path, default=[1, 2, 3])


def test_estimate_grows_with_the_table(tmp_path: Path) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir()
    large.mkdir()
    (small / "table.csv").write_text("k,v\n1,2\n")
    (large / "table.csv").write_text("k,v\n" + "".join(f"{i},{i}\n" for i in range(1000)))
    small_estimate = LookupLoader(ID, str(small), {}).estimate_resources()
    large_estimate = LookupLoader(ID, str(large), {}).estimate_resources()
    assert 0 < small_estimate < large_estimate
    assert load(large).memory_bytes() < large_estimate
