"""Big tables on the lookup platform: shards, deltas, vectorised INT64 and BYTES indexes."""

from __future__ import annotations

import os
import sys
import threading
import uuid
import zlib
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest

from pyserving.core.ids import ServableData, ServableId
from pyserving.errors import FailedPrecondition
from pyserving.platforms import lookup as lookup_module
from pyserving.platforms.common import FileLoader
from pyserving.platforms.lookup import LookupLoader, LookupServable
from pyserving.platforms.lookup_index import KeyIndex, shard_of
from pyserving.platforms.registry import detect_platform
from pyserving.platforms.signature import DEFAULT_SIGNATURE
from pyserving.sources.adapter import PlatformAdapter
from pyserving.sources.cache import ModelCache, ModelCacheOptions
from tests.fakes import wait_until


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


def test_a_delta_whose_base_is_not_loaded_reads_its_base_and_shares_it_after(
    tmp_path: Path,
) -> None:
    """A restart with latest: 1 loads only the newest delta: it reads its bases itself; a base
    version loaded after it shares the table the delta read (one copy in memory)."""
    tables = make_versions(tmp_path)
    probe = np.arange(-2, 30, dtype=np.int64)
    three = loader(tmp_path / "3", 3, default=-1.0)
    assert three.estimate_resources() > FileLoader.estimate_resources(three)  # + its bases
    v3 = three.load()
    assert lookup(v3, probe)[0] == [tables[3].get(int(k), -1.0) for k in probe]
    v1 = loader(tmp_path / "1", 1, default=-1.0).load()
    assert isinstance(v3, LookupServable) and v3.memory_bytes()
    assert v3._base is not None and v3._base._base is v1  # shared, not read again
    assert lookup(v1, probe)[0] == [tables[1].get(int(k), -1.0) for k in probe]
    # the bases are in memory now: the estimate is the delta's own files
    again = loader(tmp_path / "3", 3, default=-1.0)
    assert again.estimate_resources() == FileLoader.estimate_resources(again)


def test_a_base_rewritten_on_disk_is_read_again_not_shared(tmp_path: Path) -> None:
    make_versions(tmp_path)
    v2 = loader(tmp_path / "2", 2).load()
    write_npz(tmp_path / "1", np.array([0, 1]), np.array([7.0, 8.0]))
    os.utime(tmp_path / "1" / "table.npz", ns=(1, 1))  # same second: the stamp still differs
    v1 = loader(tmp_path / "1", 1).load()
    assert isinstance(v2, LookupServable) and v2._base is not v1
    assert lookup(v1, np.array([0, 1, 2]))[0] == [7.0, 8.0, 0.0]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("base: -1\n", r"base must be an earlier version, an integer from 0 to 1 \(got -1\)"),
        ("base: one\n", "base must be an earlier version.*got 'one'"),
        ("base: 1.0\n", "base must be an earlier version.*got 1.0"),
        ("base: true\n", "base must be an earlier version.*got True"),
        ("base: 2\n", "base must be an earlier version.*got 2"),
        ("{}\n", "base must be an earlier version.*got None"),
        ("[1]\n", "must be a mapping with the key base"),
        ("bse: 1\n", "unknown key 'bse' \\(did you mean 'base'\\?\\)"),
        ("base: 1\nrows: 3\n", "unknown key 'rows' \\(known: base\\)"),
        ("base: [1\n", "cannot read it"),
    ],
)
def test_a_bad_delta_yaml_fails_naming_the_key(tmp_path: Path, text: str, problem: str) -> None:
    write_npz(tmp_path / "1", np.arange(3), np.arange(3.0))
    write_npz(tmp_path / "2", np.arange(1), np.arange(1.0))
    (tmp_path / "2" / "delta.yaml").write_text(text)
    with pytest.raises(FailedPrecondition, match=f"version 2's delta.yaml.*{problem}"):
        loader(tmp_path / "2", 2).load()


def test_a_delta_on_a_version_that_does_not_exist_says_so(tmp_path: Path) -> None:
    write_npz(tmp_path / "2", np.arange(1), np.arange(1.0))
    (tmp_path / "2" / "delta.yaml").write_text("base: 1\n")
    with pytest.raises(FailedPrecondition, match=r"delta on version 1.*which does not exist"):
        loader(tmp_path / "2", 2).load()
    (tmp_path / "1").mkdir()  # there, but with no table: cannot be read
    with pytest.raises(FailedPrecondition, match="on version 1, which cannot be read: no table"):
        loader(tmp_path / "2", 2).load()


def test_a_delta_may_only_remove_keys_and_is_detected_as_a_table(tmp_path: Path) -> None:
    write_npz(tmp_path / "1", np.arange(4), np.arange(4.0))
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "delta.yaml").write_text("base: 1\n")
    with pytest.raises(FailedPrecondition, match=r"delta on version 1 .* holds neither rows"):
        loader(tmp_path / "2", 2).load()
    (tmp_path / "2" / "deleted.txt").write_text("1\n3\n")
    assert detect_platform(str(tmp_path / "2")) == "lookup"
    got, found = lookup(loader(tmp_path / "2", 2).load(), np.arange(4))
    assert (got, found) == ([0.0, 0.0, 2.0, 0.0], [True, False, True, False])


def test_a_delta_must_keep_the_value_type(tmp_path: Path) -> None:
    write_npz(tmp_path / "1", np.arange(3), np.arange(3.0))
    write_npz(tmp_path / "2", np.arange(3), np.ones((3, 2)))
    (tmp_path / "2" / "delta.yaml").write_text("base: 1\n")
    loader(tmp_path / "1", 1).load()
    with pytest.raises(FailedPrecondition, match="keep the value type"):
        loader(tmp_path / "2", 2).load()
    (tmp_path / "2" / "delta.yaml").write_text("base: 2\n")
    with pytest.raises(FailedPrecondition, match="an earlier version"):
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


def test_a_remote_delta_loaded_from_the_model_cache_reads_its_base_from_the_store(
    tmp_path: Path,
) -> None:
    """Through the model cache the loader reads a local copy of version 2 only: it finds version
    1 next to version 2 on the store, not in the cache."""
    remote = f"memory://lookup-delta-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    try:
        for version, keys, values in ((1, [1, 2, 3], [10.0, 20.0, 30.0]), (2, [1], [11.0])):
            write_npz(tmp_path / str(version), np.array(keys), np.array(values))
            fs.put_file(str(tmp_path / str(version) / "table.npz"), f"{remote}/{version}/table.npz")
        fs.pipe(f"{remote}/2/delta.yaml", b"base: 1\n")
        fs.pipe(f"{remote}/2/deleted.txt", b"3\n")
        cache = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path / "cache")))
        adapter, loaders = PlatformAdapter(cache=cache), []
        adapter.set_aspired_versions_callback(lambda name, items: loaders.extend(items))
        adapter.aspire_versions("table", [ServableData(ServableId("table", 2), f"{remote}/2")])
        (item,) = loaders
        assert item.data is not None
        got, found = lookup(item.data.load(), np.array([1, 2, 3]))
        assert (got, found) == ([11.0, 20.0, 0.0], [True, True, False])
        item.data.unload()
    finally:
        if fs.exists(remote):
            fs.rm(remote, recursive=True)


def test_two_loads_that_need_one_base_at_once_read_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 2 reads its base 1 while version 1 itself loads: the second waits for the first
    read (held until the other load is seen waiting for it) and shares its table."""
    make_versions(tmp_path)
    reads: list[str] = []
    reading_base, release = threading.Event(), threading.Event()
    real_read_table = lookup_module.read_table

    def read_table(file: str, *args: Any) -> Any:
        reads.append(Path(file).parent.name)
        if Path(file).parent.name == "1":
            reading_base.set()
            release.wait(10)
        return real_read_table(file, *args)

    monkeypatch.setattr(lookup_module, "read_table", read_table)
    results: dict[int, Any] = {}

    def load(version: int) -> None:
        results[version] = loader(tmp_path / str(version), version).load()

    delta = threading.Thread(target=load, args=(2,), daemon=True)
    base = threading.Thread(target=load, args=(1,), daemon=True)
    try:
        delta.start()
        assert reading_base.wait(10)
        base.start()
        wait_until(lambda: _waits_for_a_table(base), 10, "the base's load to wait for the read")
    finally:
        release.set()
        delta.join(10)
        base.join(10)
    assert sorted(reads) == ["1", "2"]
    assert results[2]._base is results[1]


def _waits_for_a_table(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "reading" and frame.f_code.co_filename.endswith(
            "lookup_delta.py"
        ):
            return True
        frame = frame.f_back
    return False


def write_chain(root: Path, depth: int) -> None:
    """Version 1 full (keys 0..depth, value = key), each later version v a delta on v - 1
    setting key v to 10 v and deleting key v - 1 (so a probe of every key walks every layer)."""
    write_npz(root / "1", np.arange(depth + 1), np.arange(depth + 1, dtype=np.float64))
    for version in range(2, depth + 1):
        write_npz(root / str(version), np.array([version]), np.array([10.0 * version]))
        (root / str(version) / "delta.yaml").write_text(f"base: {version - 1}\n")
        (root / str(version) / "deleted.txt").write_text(f"{version - 1}\n")


def test_a_chain_of_500_deltas_loads_answers_and_estimates_without_recursion(
    tmp_path: Path,
) -> None:
    depth = 500  # past Python's recursion limit (1000 frames) when each layer was a nested call
    write_chain(tmp_path, depth)
    top = loader(tmp_path / str(depth), depth, default=-1.0)
    assert top.estimate_resources() > FileLoader.estimate_resources(top) * (depth - 1)
    table = top.load()
    got, found = lookup(table, np.arange(-1, depth + 2, dtype=np.int64))
    assert got[:2] == [-1.0, 0.0] and found[:2] == [False, True]  # -1 missing, 0 from version 1
    assert got[2:-2] == [-1.0] * (depth - 1)  # 1 .. depth-1 deleted along the way
    assert got[-2:] == [10.0 * depth, -1.0] and found[-2:] == [True, False]
    assert isinstance(table, LookupServable) and table.memory_bytes()


def test_a_broken_base_deep_in_a_chain_names_the_chain_to_it(tmp_path: Path) -> None:
    write_chain(tmp_path, 6)
    (tmp_path / "3" / "table.npz").unlink()
    (tmp_path / "3" / "deleted.txt").unlink()
    with pytest.raises(FailedPrecondition) as caught:
        loader(tmp_path / "6", 6).load()
    assert caught.value.message.startswith(
        "version 6 is a delta on version 5, which cannot be read (its bases 5 → 4 → 3):"
        " version 3 is a delta on version 2 (delta.yaml) but holds neither"
    )
