from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from pyserving.core.ids import ServableData
from pyserving.sources.storage_path import (
    ServableToMonitor,
    StoragePathSource,
    StoragePathSourceOptions,
    VersionPolicy,
    redact_url,
)
from tests.fakes import wait_until

LOGGER = "pyserving.sources.storage_path"


class Recorder:
    """An aspired versions callback that records every call (thread-safe: list.append)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[ServableData[str]]]] = []
        self.threads: list[str] = []

    def __call__(self, name: str, items: list[ServableData[str]]) -> None:
        self.threads.append(threading.current_thread().name)
        self.calls.append((name, list(items)))

    def lists(self, name: str) -> list[list[int]]:
        return [[item.id.version for item in items] for n, items in self.calls if n == name]

    def last(self, name: str) -> list[ServableData[str]]:
        return [items for n, items in self.calls if n == name][-1]


def make_versions(base: Path, *names: str) -> None:
    for name in names:
        (base / name).mkdir(parents=True, exist_ok=True)
        (base / name / "model.onnx").write_bytes(b"x" * 10)


def make_source(
    *servables: ServableToMonitor, poll_wait_s: float = 1.0
) -> tuple[StoragePathSource, Recorder]:
    source = StoragePathSource(StoragePathSourceOptions(servables, poll_wait_s))
    recorder = Recorder()
    source.set_aspired_versions_callback(recorder)
    return source, recorder


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A fresh directory on fsspec's (process-global) memory filesystem."""
    url = f"memory://pyserving-test-{uuid.uuid4().hex}"
    fs, path = fsspec.core.url_to_fs(url)
    yield url
    if fs.exists(path):
        fs.rm(path, recursive=True)


# ------------------------------------------------------------------------------ version policy


def test_latest_policy_clamps_to_at_least_one_version() -> None:
    assert VersionPolicy.latest(0).num_versions == 1
    assert VersionPolicy.latest(-3).num_versions == 1
    assert VersionPolicy("latest", num_versions=0).select([1, 2, 3]) == [3]
    with pytest.raises(ValueError, match="unknown version policy"):
        VersionPolicy("newest")  # type: ignore[arg-type]


def test_policies_select_ascending_versions() -> None:
    assert VersionPolicy.latest(2).select([3, 1, 2]) == [2, 3]
    assert VersionPolicy.all().select([3, 1, 2]) == [1, 2, 3]
    assert VersionPolicy.specific([5, 1, 1]).versions == (1, 5)
    assert VersionPolicy.specific([5, 1]).select([1, 2, 3]) == [1]


def test_options_reject_duplicate_servable_names() -> None:
    with pytest.raises(ValueError, match="repeated: m"):
        StoragePathSourceOptions((ServableToMonitor("m", "/a"), ServableToMonitor("m", "/b")))


# ------------------------------------------------------------------------------ local files


def test_latest_version_of_local_base_path_is_sent_with_path_and_revision(tmp_path: Path) -> None:
    make_versions(tmp_path / "mlp", "1", "2", "3")
    source, recorder = make_source(ServableToMonitor("mlp", str(tmp_path / "mlp")))

    source.poll_once()

    assert recorder.lists("mlp") == [[3]]
    (item,) = recorder.last("mlp")
    assert item.data == str(tmp_path / "mlp" / "3")
    assert item.error is None
    assert item.revision


def test_latest_n_all_and_specific_policies(tmp_path: Path) -> None:
    make_versions(tmp_path / "m", "1", "2", "3", "10")
    source, recorder = make_source(
        ServableToMonitor("latest2", str(tmp_path / "m"), VersionPolicy.latest(2)),
        ServableToMonitor("all", str(tmp_path / "m"), VersionPolicy.all()),
        ServableToMonitor("specific", str(tmp_path / "m"), VersionPolicy.specific([2, 10])),
    )

    source.poll_once()

    assert recorder.lists("latest2") == [[3, 10]]  # numeric order, not name order
    assert recorder.lists("all") == [[1, 2, 3, 10]]
    assert recorder.lists("specific") == [[2, 10]]


def test_specific_matches_leading_zeros_numerically_and_warns_about_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_versions(tmp_path / "m", "00017", "3")
    source, recorder = make_source(
        ServableToMonitor("m", str(tmp_path / "m"), VersionPolicy.specific([17, 5]))
    )

    with caplog.at_level(logging.WARNING, LOGGER):
        source.poll_once()

    (item,) = recorder.last("m")
    assert item.id.version == 17
    assert item.data == str(tmp_path / "m" / "00017")
    assert "versions [5] not found" in caplog.text


def test_non_numeric_names_and_plain_files_are_ignored(tmp_path: Path) -> None:
    base = tmp_path / "m"
    make_versions(base, "1", "v2", "0.3", "tmp", "-4", "+5", "٦")  # "٦" is an Arabic-Indic six
    (base / "7").write_text("a file, not a version directory")
    source, recorder = make_source(ServableToMonitor("m", str(base), VersionPolicy.all()))

    source.poll_once()

    assert recorder.lists("m") == [[1]]


def test_duplicate_versions_from_leading_zeros_warn_and_one_wins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_versions(tmp_path / "m", "001", "0001", "2")
    source, recorder = make_source(ServableToMonitor("m", str(tmp_path / "m"), VersionPolicy.all()))

    with caplog.at_level(logging.WARNING, LOGGER):
        source.poll_once()

    items = recorder.last("m")
    assert [item.id.version for item in items] == [1, 2]
    assert Path(items[0].data or "").name in {"001", "0001"}
    assert "are both version 1" in caplog.text


def test_file_url_yields_plain_local_paths(tmp_path: Path) -> None:
    make_versions(tmp_path / "m", "4")
    source, recorder = make_source(ServableToMonitor("m", (tmp_path / "m").as_uri()))

    source.poll_once()

    assert recorder.last("m")[0].data == str(tmp_path / "m" / "4")


def test_versions_appearing_later_are_sent_on_the_next_poll(tmp_path: Path) -> None:
    make_versions(tmp_path / "m", "1")
    source, recorder = make_source(ServableToMonitor("m", str(tmp_path / "m"), VersionPolicy.all()))
    source.poll_once()

    make_versions(tmp_path / "m", "2")
    source.poll_once()

    assert recorder.lists("m") == [[1], [1, 2]]


def test_identical_lists_are_not_sent_again(tmp_path: Path) -> None:
    make_versions(tmp_path / "m", "1")
    source, recorder = make_source(ServableToMonitor("m", str(tmp_path / "m")))

    for _ in range(3):
        source.poll_once()

    assert recorder.lists("m") == [[1]]


def test_revision_changes_when_a_file_changes(tmp_path: Path) -> None:
    make_versions(tmp_path / "m", "1")
    source, recorder = make_source(ServableToMonitor("m", str(tmp_path / "m")))
    source.poll_once()
    first = recorder.last("m")[0].revision

    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"longer contents")
    source.poll_once()
    second = recorder.last("m")[0].revision

    model = tmp_path / "m" / "1" / "model.onnx"
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # same size, newer
    source.poll_once()
    third = recorder.last("m")[0].revision

    (tmp_path / "m" / "1" / "sub").mkdir()
    (tmp_path / "m" / "1" / "sub" / "extra.bin").write_bytes(b"")  # a new nested file
    source.poll_once()
    fourth = recorder.last("m")[0].revision

    assert recorder.lists("m") == [[1], [1], [1], [1]]
    assert len({first, second, third, fourth}) == 4


def test_zero_versions_sends_an_empty_list_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "m" / "not-a-version").mkdir(parents=True)
    source, recorder = make_source(ServableToMonitor("m", str(tmp_path / "m")))

    with caplog.at_level(logging.WARNING, LOGGER):
        source.poll_once()

    assert recorder.lists("m") == [[]]
    assert (
        f"No versions of servable m found under base path {tmp_path / 'm'}. Did you forget to "
        "name your leaf directory as a number (eg. '/1/')?"
    ) in caplog.text


# ------------------------------------------------------------------------------ per-model errors


def test_missing_base_path_sends_nothing_while_other_servables_are_polled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_versions(tmp_path / "good", "1")
    make_versions(tmp_path / "later", "2")
    source, recorder = make_source(
        ServableToMonitor("missing", str(tmp_path / "missing")),
        ServableToMonitor("bad-protocol", "no-such-protocol://bucket/m"),
        ServableToMonitor("good", str(tmp_path / "good")),
        ServableToMonitor("later", str(tmp_path / "later")),
    )

    with caplog.at_level(logging.WARNING, LOGGER):
        source.poll_once()

    assert [name for name, _ in recorder.calls] == ["good", "later"]
    assert f"Could not find base path {tmp_path / 'missing'} for servable missing" in caplog.text
    assert "polling servable bad-protocol" in caplog.text


def test_repeated_error_is_logged_at_warning_once_then_at_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source, _ = make_source(ServableToMonitor("m", str(tmp_path / "m")))

    with caplog.at_level(logging.DEBUG, LOGGER):
        for _ in range(3):
            source.poll_once()
        (tmp_path / "m").mkdir()  # now the message changes: no versions
        source.poll_once()

    logged = [
        (r.levelno, r.getMessage().split()[0]) for r in caplog.records if "base path" in r.message
    ]
    assert logged == [
        (logging.WARNING, "Could"),
        (logging.DEBUG, "Could"),
        (logging.DEBUG, "Could"),
        (logging.INFO, "servable"),  # recovered: readable again
        (logging.WARNING, "No"),
    ]


def test_base_path_that_disappears_sends_nothing_and_keeps_the_last_list(tmp_path: Path) -> None:
    make_versions(tmp_path / "m", "1")
    source, recorder = make_source(ServableToMonitor("m", str(tmp_path / "m")))
    source.poll_once()

    (tmp_path / "m").rename(tmp_path / "elsewhere")
    source.poll_once()  # transiently missing: no empty list, which would unload the model
    (tmp_path / "elsewhere").rename(tmp_path / "m")
    source.poll_once()  # back as before: the list did not change, so nothing is re-sent

    assert recorder.lists("m") == [[1]]


# ------------------------------------------------------------------------------ memory filesystem


def test_memory_filesystem_versions_and_revisions(memory_root: str) -> None:
    fs, root = fsspec.core.url_to_fs(memory_root)
    fs.pipe(f"{root}/m/1/model.onnx", b"one")
    fs.pipe(f"{root}/m/0002/model.onnx", b"two")
    fs.pipe(f"{root}/m/latest/model.onnx", b"not a version")
    source, recorder = make_source(
        ServableToMonitor("m", f"{memory_root}/m", VersionPolicy.all()),
        ServableToMonitor("missing", f"{memory_root}/missing"),
    )

    source.poll_once()
    items = recorder.last("m")
    assert [item.id.version for item in items] == [1, 2]
    assert [item.data for item in items] == [f"{memory_root}/m/1", f"{memory_root}/m/0002"]
    assert recorder.lists("missing") == []

    fs.pipe(f"{root}/m/3/model.onnx", b"three")
    fs.pipe(f"{root}/m/1/model.onnx", b"one, rewritten")
    source.poll_once()
    new_items = recorder.last("m")
    assert [item.id.version for item in new_items] == [1, 2, 3]
    assert new_items[0].revision != items[0].revision
    assert new_items[1].revision == items[1].revision


# ------------------------------------------------------------------------------ config updates


def test_update_config_sends_empty_list_for_removed_and_polls_added(tmp_path: Path) -> None:
    make_versions(tmp_path / "a", "1")
    make_versions(tmp_path / "b", "5")
    a = ServableToMonitor("a", str(tmp_path / "a"))
    source, recorder = make_source(a)
    source.poll_once()

    source.update_config(StoragePathSourceOptions((ServableToMonitor("b", str(tmp_path / "b")),)))

    assert recorder.calls[1:] == [("a", []), ("b", recorder.last("b"))]
    assert recorder.lists("b") == [[5]]

    source.update_config(StoragePathSourceOptions((a, ServableToMonitor("b", str(tmp_path / "b")))))
    assert recorder.lists("a") == [[1], [], [1]]  # re-added: sent again even though unchanged


def test_update_config_polls_a_servable_whose_policy_changed(tmp_path: Path) -> None:
    make_versions(tmp_path / "m", "1", "2")
    source, recorder = make_source(ServableToMonitor("m", str(tmp_path / "m")))
    source.poll_once()

    source.update_config(
        StoragePathSourceOptions(
            (ServableToMonitor("m", str(tmp_path / "m"), VersionPolicy.all()),)
        )
    )

    assert recorder.lists("m") == [[2], [1, 2]]


def test_update_config_refuses_to_change_the_poll_wait() -> None:
    source, _ = make_source(poll_wait_s=1.0)
    with pytest.raises(ValueError, match="not supported"):
        source.update_config(StoragePathSourceOptions((), file_system_poll_wait_seconds=2.0))


def test_callback_is_required_and_can_be_set_only_once() -> None:
    source = StoragePathSource(StoragePathSourceOptions())
    with pytest.raises(RuntimeError, match="set_aspired_versions_callback"):
        source.poll_once()
    source.set_aspired_versions_callback(Recorder())
    with pytest.raises(RuntimeError, match="already set"):
        source.set_aspired_versions_callback(Recorder())


# ------------------------------------------------------------------------------ polling thread


def test_start_polls_in_background_and_stop_returns_promptly(tmp_path: Path) -> None:
    make_versions(tmp_path / "m", "1")
    source, recorder = make_source(ServableToMonitor("m", str(tmp_path / "m")), poll_wait_s=30)

    source.start()
    wait_until(lambda: bool(recorder.calls), timeout_s=10, what="the first background poll")
    started = time.monotonic()
    source.stop()

    assert time.monotonic() - started < 5  # does not sit out the 30 s poll interval
    assert recorder.lists("m") == [[1]]
    assert recorder.threads == ["pyserving-storage-path-poll"]


def test_start_after_poll_once_with_zero_poll_wait_starts_no_thread(tmp_path: Path) -> None:
    make_versions(tmp_path / "m", "1")
    source, recorder = make_source(ServableToMonitor("m", str(tmp_path / "m")), poll_wait_s=0)
    source.poll_once()
    threads_before = threading.active_count()

    source.start()
    source.stop()

    assert threading.active_count() == threads_before
    assert recorder.lists("m") == [[1]]


def test_ready_marker_latest_policy_picks_the_highest_ready_versions(tmp_path: Path) -> None:
    make_versions(tmp_path / "m", "1", "2", "3", "4")
    for version in ("1", "2"):
        (tmp_path / "m" / version / "_READY").write_bytes(b"")
    source = StoragePathSource(
        StoragePathSourceOptions(
            (ServableToMonitor("m", str(tmp_path / "m"), VersionPolicy.latest(2)),),
            version_ready_marker="_READY",
        )
    )
    recorder = Recorder()
    source.set_aspired_versions_callback(recorder)

    source.poll_once()
    (tmp_path / "m" / "4" / "_READY").write_bytes(b"")
    source.poll_once()

    assert recorder.lists("m") == [[1, 2], [2, 4]]


def test_ready_marker_specific_policy_warns_about_unready_versions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_versions(tmp_path / "m", "1", "2")
    (tmp_path / "m" / "1" / "_READY").write_bytes(b"")
    source = StoragePathSource(
        StoragePathSourceOptions(
            (ServableToMonitor("m", str(tmp_path / "m"), VersionPolicy.specific([1, 2])),),
            version_ready_marker="_READY",
        )
    )
    recorder = Recorder()
    source.set_aspired_versions_callback(recorder)
    with caplog.at_level(logging.WARNING, LOGGER):
        source.poll_once()
    assert recorder.lists("m") == [[1]]
    assert "versions [2] not ready (no _READY file) or found" in caplog.text


@pytest.mark.parametrize("marker", ["a/b", "..", "x\\y"])
def test_ready_marker_must_be_a_plain_file_name(marker: str) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        StoragePathSourceOptions(version_ready_marker=marker)


def test_marker_cannot_change_on_update_config(tmp_path: Path) -> None:
    source, _ = make_source(ServableToMonitor("m", str(tmp_path / "m")))
    with pytest.raises(ValueError, match="version_ready_marker"):
        source.update_config(StoragePathSourceOptions(version_ready_marker="_READY"))


def test_credentials_in_base_path_urls_never_reach_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "ftp://user:hunter2@127.0.0.1:1/models/m"
    assert redact_url(url) == "ftp://***@127.0.0.1:1/models/m"
    assert redact_url("s3://bucket/m") == "s3://bucket/m"
    assert redact_url("/plain/path") == "/plain/path"
    source, recorder = make_source(ServableToMonitor("m", url))
    with caplog.at_level(logging.DEBUG, LOGGER):
        source.poll_once()
    assert recorder.calls == []
    assert "servable m" in caplog.text
    assert "hunter2" not in caplog.text


# ------------------------------------------------------------------------------ emptied base path


def test_emptied_base_path_unloads_with_a_warning_naming_the_model_issue_15(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_versions(tmp_path / "m", "1")
    source, recorder = make_source(ServableToMonitor("m", str(tmp_path / "m")))
    source.poll_once()

    for child in (tmp_path / "m" / "1").iterdir():
        child.unlink()
    (tmp_path / "m" / "1").rmdir()
    with caplog.at_level(logging.WARNING, LOGGER):
        source.poll_once()

    assert recorder.lists("m") == [[1], []]  # TF Serving's behaviour
    assert "Servable m: every version is gone from base path" in caplog.text
    assert "servable_versions_always_present" in caplog.text


def test_versions_always_present_keeps_serving_when_the_base_path_empties_issue_15(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_versions(tmp_path / "m", "1")
    source, recorder = make_source(
        ServableToMonitor("m", str(tmp_path / "m"), servable_versions_always_present=True)
    )
    source.poll_once()

    (tmp_path / "m" / "1").rename(tmp_path / "old-1")  # every version directory gone
    with caplog.at_level(logging.WARNING, LOGGER):
        source.poll_once()
    assert recorder.lists("m") == [[1]]  # no empty list: version 1 keeps serving
    assert "Servable m: no versions under base path" in caplog.text

    make_versions(tmp_path / "m", "2")
    source.poll_once()
    assert recorder.lists("m") == [[1], [2]]
