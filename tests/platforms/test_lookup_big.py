"""Big tables on the lookup platform: shards, deltas, vectorised INT64 and BYTES indexes."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from pyserving.core.ids import ServableId
from pyserving.errors import FailedPrecondition, Unavailable
from pyserving.platforms.lookup import LookupLoader, LookupServable
from pyserving.platforms.lookup_index import KeyIndex, shard_of
from pyserving.platforms.signature import DEFAULT_SIGNATURE


def lookup(servable: object, keys: np.ndarray) -> tuple[list[object], list[bool]]:
    assert isinstance(servable, LookupServable)
    out = servable.run(DEFAULT_SIGNATURE, {"keys": keys})
    return out["values"].tolist(), out["found"].tolist()


def write_npz(directory: Path, keys: np.ndarray, values: np.ndarray) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / "table.npz", keys=keys, values=values)
    return directory


def loader(directory: Path, version: int, **config: object) -> LookupLoader:
    return LookupLoader(ServableId("table", version), str(directory), config)


@pytest.mark.parametrize("fmt", ["npz", "parquet", "csv"])
def test_shards_hold_only_their_rows_and_together_the_whole_table(tmp_path: Path, fmt: str) -> None:
    keys = np.arange(-50, 250, dtype=np.int64)
    values = np.stack([keys * 1.0, keys * 2.0], axis=1).astype(np.float32)
    directory = tmp_path / "1"
    directory.mkdir()
    if fmt == "npz":
        write_npz(directory, keys, values)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"k": keys, "a": values[:, 0], "b": values[:, 1]})
        pq.write_table(table, directory / "table.parquet", row_group_size=37)
    else:
        lines = [f"{k},{a},{b}" for k, (a, b) in zip(keys.tolist(), values.tolist(), strict=True)]
        (directory / "table.csv").write_text("\n".join(lines) + "\n")
    answered = np.zeros(len(keys), dtype=int)
    for index in range(3):
        shard = loader(directory, 1, shard={"index": index, "count": 3}).load()
        assert len(shard) == int((keys % 3 == index).sum())
        got, found = lookup(shard, keys)
        mine = keys % 3 == index
        assert found == mine.tolist()
        np.testing.assert_array_equal(np.array(got)[mine], values[mine])
        answered += mine
    assert (answered == 1).all()


def test_string_keys_shard_by_crc32(tmp_path: Path) -> None:
    words = np.array([f"w{i}".encode() for i in range(100)], dtype=object)
    write_npz(tmp_path / "1", np.array([w.decode() for w in words]), np.arange(100.0))
    shard = loader(tmp_path / "1", 1, shard={"index": 1, "count": 4}).load()
    _, found = lookup(shard, words)
    assert found == [zlib.crc32(w) % 4 == 1 for w in words]
    np.testing.assert_array_equal(shard_of(words, 4), [zlib.crc32(w) % 4 for w in words])


@pytest.mark.parametrize("setting", [{"index": 3, "count": 3}, {"index": 0}, [0, 2], "0/2"])
def test_a_bad_shard_setting_fails_the_load_naming_it(tmp_path: Path, setting: object) -> None:
    write_npz(tmp_path / "1", np.arange(3), np.arange(3.0))
    with pytest.raises(FailedPrecondition, match="shard must be"):
        loader(tmp_path / "1", 1, shard=setting).load()


def test_bytes_index_finds_keys_and_misses_others_vectorised() -> None:
    keys = np.array([f"key-{i}".encode() for i in range(1000)], dtype=object)
    index = KeyIndex(keys)
    wanted = np.array([b"key-7", b"nope", b"key-999", b"", "key-3"], dtype=object)
    np.testing.assert_array_equal(index.rows(wanted), [7, -1, 999, -1, 3])


def test_bytes_index_resolves_keys_whose_hashes_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyserving.platforms import lookup_index

    # every key hashes alike: the collision path must still find each key and only it
    monkeypatch.setattr(lookup_index, "_hashes", lambda keys: np.zeros(len(keys), np.int64))
    index = KeyIndex(np.array([b"a", b"b", b"c"], dtype=object))
    np.testing.assert_array_equal(
        index.rows(np.array([b"c", b"x", b"a"], dtype=object)), [2, -1, 0]
    )
    with pytest.raises(FailedPrecondition, match="duplicate"):
        KeyIndex(np.array([b"a", b"a"], dtype=object))


def make_versions(root: Path) -> dict[int, dict[int, float]]:
    """Version 1 full, 2 a delta on 1, 3 a delta on 2; returns each version's whole table."""
    full = {k: float(k) for k in range(20)}
    write_npz(root / "1", np.array(list(full)), np.array(list(full.values())))
    v2 = dict(full)
    v2.update({3: 30.0, 25: 250.0})
    for key in (4, 5):
        del v2[key]
    write_npz(root / "2", np.array([3, 25]), np.array([30.0, 250.0]))
    (root / "2" / "delta.yaml").write_text("base: 1\n")
    (root / "2" / "deleted.txt").write_text("4\n5\n")
    v3 = dict(v2)
    v3.update({4: 44.0, 25: 2500.0})
    del v3[3]
    write_npz(root / "3", np.array([4, 25]), np.array([44.0, 2500.0]))
    (root / "3" / "delta.yaml").write_text("base: 2\n")
    (root / "3" / "deleted.txt").write_text("3\n")
    return {1: full, 2: v2, 3: v3}


def test_delta_and_delta_on_delta_answer_like_the_rewritten_table(tmp_path: Path) -> None:
    tables = make_versions(tmp_path)
    loaders = {v: loader(tmp_path / str(v), v, default=-1.0) for v in (1, 2, 3)}
    servables = {v: loaders[v].load() for v in (1, 2, 3)}
    probe = np.arange(-2, 30, dtype=np.int64)
    for version, table in tables.items():
        got, found = lookup(servables[version], probe)
        assert found == [int(k) in table for k in probe]
        assert got == [table.get(int(k), -1.0) for k in probe]
    loaders[1].unload()  # the delta keeps its base's rows: still whole
    assert lookup(servables[3], probe)[0] == [tables[3].get(int(k), -1.0) for k in probe]
    assert servables[3].memory_bytes() > servables[2].memory_bytes() > 0


def test_a_delta_whose_base_is_not_loaded_fails_saying_so(tmp_path: Path) -> None:
    make_versions(tmp_path)
    with pytest.raises(Unavailable, match="delta on version 1, which is not loaded"):
        loader(tmp_path / "2", 2).load()
    base = loader(tmp_path / "1", 1)
    base.load()
    base.unload()  # unloaded again: no longer a base
    with pytest.raises(Unavailable, match="not loaded"):
        loader(tmp_path / "2", 2).load()


def test_a_delta_must_keep_the_value_type(tmp_path: Path) -> None:
    write_npz(tmp_path / "1", np.arange(3), np.arange(3.0))
    write_npz(tmp_path / "2", np.arange(3), np.ones((3, 2)))
    (tmp_path / "2" / "delta.yaml").write_text("base: 1\n")
    loader(tmp_path / "1", 1).load()
    with pytest.raises(FailedPrecondition, match="keep the value type"):
        loader(tmp_path / "2", 2).load()
    (tmp_path / "2" / "delta.yaml").write_text("base: 2\n")
    with pytest.raises(FailedPrecondition, match="earlier version"):
        loader(tmp_path / "2", 2).load()


def test_sharded_delta_on_string_keys(tmp_path: Path) -> None:
    words = [f"w{i}" for i in range(30)]
    write_npz(tmp_path / "1", np.array(words), np.arange(30.0))
    write_npz(tmp_path / "2", np.array(["w1", "new"]), np.array([100.0, 200.0]))
    (tmp_path / "2" / "delta.yaml").write_text("base: 1\n")
    (tmp_path / "2" / "deleted.txt").write_text("w2\nw3\n")
    expected = {w.encode(): float(i) for i, w in enumerate(words)}
    expected.update({b"w1": 100.0, b"new": 200.0})
    del expected[b"w2"], expected[b"w3"]
    probe = np.array([w.encode() for w in [*words, "new", "zzz"]], dtype=object)
    for index in range(2):
        setting = {"index": index, "count": 2}
        loader(tmp_path / "1", 1, shard=setting).load()
        delta = loader(tmp_path / "2", 2, shard=setting).load()
        got, found = lookup(delta, probe)
        for key, value, hit in zip(probe.tolist(), got, found, strict=True):
            mine = zlib.crc32(key) % 2 == index and key in expected
            assert hit == mine, key
            assert value == (expected[key] if mine else 0.0)
