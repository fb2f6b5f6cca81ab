from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pyserving.core.ids import ServableId
from pyserving.errors import FailedPrecondition
from pyserving.platforms.lookup import LookupLoader, LookupServable
from pyserving.platforms.registry import detect_platform, make_loader
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
        ("table.csv", "k\n1\n", "needs a key column and at least one value column"),
        ("table.csv", "", "is empty"),
        ("table.tsv", "1\t0.1,0.2\n2\t0.3\n", "row 2 holds 1 numbers, the first 2"),
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


# --- header detection and vector columns (issue 16) -------------------------------------------


def served(path: Path, keys: list[object], **config: object) -> dict[str, np.ndarray]:
    """Load `path` the way the server does (detect the platform, ask the registry for its loader)
    and look `keys` up."""
    platform = detect_platform(str(path))
    assert platform == "lookup"
    servable = make_loader(platform, ID, str(path), config).load()
    key_dtype = servable.signatures[DEFAULT_SIGNATURE].inputs[0].datatype
    array = np.array(keys, np.int64) if key_dtype == "INT64" else np.array(keys, dtype=object)
    return servable.run(DEFAULT_SIGNATURE, {"keys": array})


def test_headerless_tsv_keeps_its_first_row_issue_16(tmp_path: Path) -> None:
    (tmp_path / "table.tsv").write_text("1\t0.5\n2\t1.5\n3\t2.5\n")
    out = served(tmp_path, [1, 2, 3])
    np.testing.assert_array_equal(out["values"], [0.5, 1.5, 2.5])
    assert out["found"].all()


def test_headerless_csv_with_string_keys_keeps_its_first_row_issue_16(tmp_path: Path) -> None:
    (tmp_path / "table.csv").write_text("apple,3\npear,4\n")
    out = served(tmp_path, [b"apple", b"pear", b"plum"])
    np.testing.assert_array_equal(out["values"], [3.0, 4.0, 0.0])
    np.testing.assert_array_equal(out["found"], [True, True, False])


def test_a_header_is_detected_by_its_non_numeric_values_issue_16(tmp_path: Path) -> None:
    (tmp_path / "table.tsv").write_text("word\tscore\napple\t3\npear\t4\n")
    out = served(tmp_path, [b"word", b"apple"])
    np.testing.assert_array_equal(out["found"], [False, True])


def test_a_header_is_detected_by_its_non_integer_key_issue_16(tmp_path: Path) -> None:
    (tmp_path / "table.csv").write_text("id,name\n1,one\n2,two\n")
    servable = load(tmp_path)
    assert len(servable) == 2
    out = servable.run(DEFAULT_SIGNATURE, {"keys": np.array([2], np.int64)})
    assert out["values"].tolist() == [b"two"]


def test_a_table_of_strings_reads_its_first_line_as_data_unless_header_is_set_issue_16(
    tmp_path: Path,
) -> None:
    (tmp_path / "table.tsv").write_text("word\ttranslation\nhello\tbonjour\n")
    assert len(load(tmp_path)) == 2
    assert len(load(tmp_path, header=True)) == 1
    numeric = tmp_path / "numeric"
    numeric.mkdir()
    (numeric / "table.csv").write_text("0,1\n2,3\n")
    assert len(load(numeric, header=True)) == 1
    assert len(load(numeric, header=False)) == 2


def test_header_must_be_a_boolean_issue_16(tmp_path: Path) -> None:
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(FailedPrecondition, match="header must be true or false"):
        load(tmp_path, header="yes")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("table.tsv", "7\t0.1,0.2,0.3\n8\t1,2,3\n"),
        ("table.tsv", "7\t0.1 0.2 0.3\n8\t1 2 3\n"),
        ("table.tsv", "key\tvector\n7\t[0.1, 0.2, 0.3]\n8\t[1, 2, 3]\n"),
        ("table.csv", '7,"0.1,0.2,0.3"\n8,"1,2,3"\n'),
        ("table.csv", "id,embedding\n7,0.1 0.2 0.3\n8,1 2 3\n"),
    ],
)
def test_one_column_of_number_lists_is_an_fp32_vector_issue_16(
    tmp_path: Path, name: str, content: str
) -> None:
    (tmp_path / name).write_text(content)
    servable = load(tmp_path, default=[-1, -1, -1])
    outputs = servable.signatures[DEFAULT_SIGNATURE].outputs
    assert (outputs[0].datatype, outputs[0].shape) == ("FP32", (-1, 3))
    out = served(tmp_path, [8, 9, 7], default=[-1, -1, -1])
    assert out["values"].dtype == np.float32
    np.testing.assert_allclose(out["values"], [[1, 2, 3], [-1, -1, -1], [0.1, 0.2, 0.3]])


def test_parquet_list_column_is_an_fp32_vector_issue_16(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": [1, 2], "embedding": [[0.5, 1.5], [2.5, 3.5]]})
    pq.write_table(table, tmp_path / "table.parquet")
    out = served(tmp_path, [2, 1])
    assert out["values"].dtype == np.float32
    np.testing.assert_array_equal(out["values"], [[2.5, 3.5], [0.5, 1.5]])
