"""OnDemandModels with FakeLoaders: held until asked for, one load per model, LRU eviction of idle
on-demand models only, RESOURCE_EXHAUSTED naming the budget, idle unload on a fake clock."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from pyserving.core.ids import ServableData, ServableId, ServableRequest
from pyserving.core.manager import Manager, ManagerOptions
from pyserving.core.scheduler import RetryScheduler
from pyserving.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from pyserving.metrics import REGISTRY
from pyserving.serving.config import ConfigError, ModelServerConfig
from pyserving.serving.config_file import parse_config_text
from pyserving.serving.on_demand import OnDemandModels, on_demand_settings
from pyserving.serving.server_core import ServerCore, ServerOptions
from tests.fakes import FakeLoader, ManualClock, item, wait_until

SIZE = 100


class Rig:
    """A Manager with a budget and the on-demand gate in front of it; as the adapter does, every
    forwarded list gets fresh FakeLoaders (made with the model's kwargs)."""

    def __init__(
        self, budget: int | None, names: dict[str, float | None], room_wait_s: float = 0.0
    ) -> None:
        self.clock = ManualClock()
        self.scheduler = RetryScheduler(clock=self.clock, threaded=False)
        self.manager = Manager(
            ManagerOptions(total_model_memory_limit_bytes=budget, max_num_load_retries=0)
        )
        self.gate: OnDemandModels[str] = OnDemandModels(
            self.manager,
            forward=self._adapt,
            estimate=lambda _item: SIZE,
            clock=self.clock,
            scheduler=self.scheduler,
            load_timeout_s=10,
            room_wait_s=room_wait_s,
        )
        self.gate.configure(names)
        self.kwargs: dict[str, dict[str, object]] = {}
        #: every loader made per model, in order
        self.made: dict[str, list[FakeLoader]] = {}

    def _adapt(self, name: str, versions: list[ServableData[str]]) -> None:
        loaders = []
        for version in versions:
            loader = FakeLoader(version.id, size_bytes=SIZE, **self.kwargs.get(name, {}))  # type: ignore[arg-type]
            self.made.setdefault(name, []).append(loader)
            loaders.append(item(name, version.id.version, loader))
        self.manager.aspire_versions(name, loaders)

    def add(self, name: str, version: int = 1, **kwargs: object) -> None:
        self.kwargs[name] = kwargs
        self.gate.aspire_versions(name, [ServableData(ServableId(name, version), f"/m/{name}")])

    def loads(self, name: str) -> int:
        return sum(loader.load_calls for loader in self.made.get(name, ()))

    def unloads(self, name: str) -> int:
        return sum(loader.unload_calls for loader in self.made.get(name, ()))

    def last(self, name: str) -> FakeLoader:
        wait_until(lambda: name in self.made, what=f"a loader for {name}")
        return self.made[name][-1]

    def ensure(self, name: str, deadline: float | None = None) -> None:
        self.clock.advance(1)
        if asyncio.run(self.gate.ensure(name, deadline)):
            self.gate.unpin(name)  # as a request does once it holds its handle

    def loaded(self) -> set[str]:
        return {n for n in self.kwargs if self.manager.available_versions(n)}

    def close(self) -> None:
        self.gate.close()
        self.manager.stop(10)


@pytest.fixture
def rig_factory() -> Iterator[type[Rig]]:
    made: list[Rig] = []

    class Made(Rig):
        def __init__(
            self, budget: int | None, names: dict[str, float | None], room_wait_s: float = 0.0
        ) -> None:
            super().__init__(budget, names, room_wait_s)
            made.append(self)

    yield Made
    for rig in made:
        rig.close()


def _evictions(name: str) -> float:
    return REGISTRY.get_sample_value("pyserving_model_evictions_total", {"model": name}) or 0.0


def test_on_demand_model_is_known_but_not_loaded_until_asked_issue_20(rig_factory):
    rig = rig_factory(None, {"od_known": None})
    rig.add("od_known")
    assert "od_known" in rig.manager.stream_names()
    assert rig.manager.available_versions("od_known") == []
    assert rig.loads("od_known") == 0
    assert rig.gate.held_versions("od_known") == [1]
    rig.ensure("od_known")
    assert rig.manager.available_versions("od_known") == [1]
    assert rig.loads("od_known") == 1


def test_always_loaded_models_pass_straight_through_issue_20(rig_factory):
    rig = rig_factory(None, {})
    rig.add("od_always")
    wait_until(lambda: rig.manager.available_versions("od_always") == [1], what="loaded")


def test_concurrent_requests_share_one_load_issue_20(rig_factory):
    rig = rig_factory(None, {"od_single": None})
    rig.add("od_single", block=True)

    async def many() -> None:
        waiters = [asyncio.ensure_future(rig.gate.ensure("od_single", None)) for _ in range(8)]
        loader = await asyncio.to_thread(rig.last, "od_single")
        await asyncio.to_thread(loader.load_started.wait, 10)
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        loader.release.set()
        await asyncio.gather(*waiters)

    asyncio.run(many())
    assert rig.loads("od_single") == 1
    assert rig.manager.available_versions("od_single") == [1]


def test_a_request_past_its_deadline_leaves_the_load_running_for_others_issue_20(rig_factory):
    rig = rig_factory(None, {"od_deadline": None})
    rig.add("od_deadline", block=True)
    with pytest.raises(DeadlineExceeded, match="still loading"):
        rig.ensure("od_deadline", time.monotonic() + 0.05)
    rig.last("od_deadline").release.set()
    rig.ensure("od_deadline")
    assert rig.loads("od_deadline") == 1


def test_lru_idle_model_is_evicted_to_make_room_issue_20(rig_factory):
    rig = rig_factory(3 * SIZE, dict.fromkeys(["lru_a", "lru_b", "lru_c", "lru_d"]))
    for name in ("lru_a", "lru_b", "lru_c", "lru_d"):
        rig.add(name)
    rig.ensure("lru_a")
    rig.ensure("lru_b")
    rig.ensure("lru_c")
    rig.ensure("lru_a")  # a is now more recent than b
    before = _evictions("lru_b")
    rig.ensure("lru_d")
    assert rig.loaded() == {"lru_a", "lru_c", "lru_d"}
    assert rig.unloads("lru_b") == 1
    assert _evictions("lru_b") == before + 1
    assert rig.manager.resources.used_bytes <= 3 * SIZE
    rig.ensure("lru_b")  # evicts c, the least recent now; b loads with a fresh Loader
    assert rig.loaded() == {"lru_a", "lru_b", "lru_d"}
    assert [loader.load_calls for loader in rig.made["lru_b"]] == [1, 1]


def test_a_model_held_by_a_request_is_never_evicted_issue_20(rig_factory):
    rig = rig_factory(2 * SIZE, dict.fromkeys(["held_a", "held_b", "held_c"]))
    for name in ("held_a", "held_b", "held_c"):
        rig.add(name)
    rig.ensure("held_a")  # oldest
    rig.ensure("held_b")
    with rig.manager.get_handle(ServableRequest("held_a", None)):
        rig.ensure("held_c")
        assert rig.loaded() == {"held_a", "held_c"}
        with (
            rig.manager.get_handle(ServableRequest("held_c", None)),
            pytest.raises(ResourceExhausted) as refused,
        ):
            rig.ensure("held_b")
    assert "--total-model-memory-limit-bytes=200" in refused.value.message
    assert rig.unloads("held_a") == 0
    rig.ensure("held_b")  # nothing held now: the LRU (a) makes room
    assert rig.loaded() == {"held_b", "held_c"}


def test_a_load_waits_for_a_model_in_use_to_be_released_issue_20(rig_factory):
    rig = rig_factory(2 * SIZE, dict.fromkeys(["wait_a", "wait_b", "wait_c"]), room_wait_s=30)
    for name in ("wait_a", "wait_b", "wait_c"):
        rig.add(name)
    rig.ensure("wait_a")
    rig.ensure("wait_b")
    held_a = rig.manager.get_handle(ServableRequest("wait_a", None))
    held_b = rig.manager.get_handle(ServableRequest("wait_b", None))
    loading = threading.Thread(target=rig.ensure, args=("wait_c",))
    loading.start()
    wait_until(lambda: "wait_c" in rig.gate._flights, what="the load to start")
    assert rig.loads("wait_c") == 0  # no room while both are held
    held_b.release()  # b is released: the waiting load evicts it, never the held a
    loading.join(10)
    assert rig.loaded() == {"wait_a", "wait_c"}
    assert rig.unloads("wait_a") == 0
    held_a.release()


def test_a_model_loaded_for_a_waiting_request_stays_until_it_takes_its_handle_issue_20(
    rig_factory,
):
    rig = rig_factory(SIZE, dict.fromkeys(["pin_a", "pin_b"]))
    rig.add("pin_a")
    rig.add("pin_b")
    assert asyncio.run(rig.gate.ensure("pin_a", None)) is True  # pinned: no handle yet
    with pytest.raises(ResourceExhausted):
        rig.ensure("pin_b")
    rig.gate.unpin("pin_a")
    rig.ensure("pin_b")
    assert rig.loaded() == {"pin_b"}


def test_a_load_waiting_for_room_gives_up_when_the_server_stops_issue_20(rig_factory):
    rig = rig_factory(SIZE, dict.fromkeys(["stop_a", "stop_b"]), room_wait_s=300)
    rig.add("stop_a")
    rig.add("stop_b")
    rig.ensure("stop_a")
    errors: list[BaseException] = []

    def load_b() -> None:
        try:
            rig.ensure("stop_b")
        except (ResourceExhausted, Unavailable) as exc:  # as far as its load got
            errors.append(exc)

    with rig.manager.get_handle(ServableRequest("stop_a", None)):
        loading = threading.Thread(target=load_b)
        loading.start()
        wait_until(lambda: "stop_b" in rig.gate._flights, what="the load to wait for room")
        rig.gate.close()
        loading.join(10)
        assert not loading.is_alive() and len(errors) == 1


def test_an_always_loaded_model_is_never_evicted_issue_20(rig_factory):
    rig = rig_factory(2 * SIZE, dict.fromkeys(["alw_a", "alw_b"]))
    rig.add("alw_fixed")  # not on demand
    wait_until(lambda: rig.manager.available_versions("alw_fixed") == [1], what="loaded")
    rig.add("alw_a")
    rig.add("alw_b")
    rig.ensure("alw_a")
    rig.ensure("alw_b")  # the only candidate is a
    assert rig.loaded() == {"alw_fixed", "alw_b"}
    with (
        rig.manager.get_handle(ServableRequest("alw_b", None)),
        pytest.raises(ResourceExhausted, match="always loaded"),
    ):
        rig.ensure("alw_a")
    assert rig.unloads("alw_fixed") == 0


def test_a_failed_load_answers_unavailable_and_spares_the_others_issue_20(rig_factory):
    rig = rig_factory(2 * SIZE, dict.fromkeys(["fail_bad", "fail_good"]))
    rig.add("fail_bad", always_fail=True, error="corrupt model file")
    rig.add("fail_good")
    with pytest.raises(Unavailable, match="corrupt model file"):
        rig.ensure("fail_bad")
    rig.ensure("fail_good")
    assert rig.loaded() == {"fail_good"}
    assert rig.manager.resources.used_bytes == SIZE  # the failure holds no memory
    with pytest.raises(Unavailable, match="corrupt model file"):
        rig.ensure("fail_bad")
    assert rig.loads("fail_bad") == 2  # each new request tries again


def test_idle_models_unload_after_their_idle_time_issue_20(rig_factory):
    rig = rig_factory(None, {"idle_a": 10.0, "idle_keep": None})
    rig.add("idle_a")
    rig.add("idle_keep")
    rig.ensure("idle_a")
    rig.ensure("idle_keep")
    rig.clock.advance(5)
    assert rig.gate.unload_idle() == []
    rig.clock.advance(6)
    # the timer (period idle/4) is due: it hands the sweep to a pool thread
    assert rig.scheduler.run_due() == 1
    wait_until(lambda: not rig.gate.is_loaded("idle_a"), what="idle unload")
    wait_until(lambda: rig.unloads("idle_a") == 1, what="unloaded")
    assert rig.loaded() == {"idle_keep"}
    rig.ensure("idle_a")  # loads again on the next request
    assert "idle_a" in rig.loaded()


def test_a_new_version_of_an_unloaded_model_stays_unloaded_issue_20(rig_factory):
    rig = rig_factory(None, {"poll_a": None})
    rig.add("poll_a", 1)
    rig.add("poll_a", 2)  # the poller found version 2
    assert rig.loads("poll_a") == 0
    rig.ensure("poll_a")
    assert rig.manager.available_versions("poll_a") == [2]
    rig.add("poll_a", 3)  # loaded: swaps as usual
    wait_until(lambda: rig.manager.available_versions("poll_a") == [3], what="swap")
    assert [loader.id.version for loader in rig.made["poll_a"]] == [2, 3]


def test_a_model_that_stops_being_on_demand_loads_at_once_issue_20(rig_factory):
    rig = rig_factory(None, {"sw_a": None})
    rig.add("sw_a")
    assert rig.loads("sw_a") == 0
    rig.gate.configure({})  # a reload made it `load: always`
    wait_until(lambda: rig.manager.available_versions("sw_a") == [1], what="loaded")
    rig.add("sw_a", 2)  # from now on its lists go straight through
    wait_until(lambda: rig.manager.available_versions("sw_a") == [2], what="swapped")


def test_settings_come_from_the_load_key_issue_20():
    models = [
        ("a", {"load": "on_demand", "idle_unload_seconds": 30}),
        ("b", {"load": "on_demand"}),
        ("c", {}),
    ]
    assert on_demand_settings(models) == {"a": 30.0, "b": None}


def test_the_load_key_is_checked_and_the_top_level_one_is_the_default_issue_20(tmp_path):
    def parse(text: str) -> ModelServerConfig:
        return parse_config_text(text, tmp_path / "models.yaml")

    config = parse(
        "load: on_demand\nmodels:\n  - {name: a, base_path: /m/a, idle_unload_seconds: 5}\n"
        "  - {name: b, base_path: /m/b, load: always}\n"
    )
    assert on_demand_settings([(m.name, m.options) for m in config.models]) == {"a": 5.0}
    with pytest.raises(ConfigError, match="load must be always or on_demand"):
        parse("models:\n  - {name: a, base_path: /m/a, load: lazy}\n")
    with pytest.raises(ConfigError, match="idle_unload_seconds must be a number above 0"):
        parse("models:\n  - {name: a, base_path: /m/a, load: on_demand, idle_unload_seconds: 0}\n")
    with pytest.raises(ConfigError, match="idle_unload_seconds needs load: on_demand"):
        parse("models:\n  - {name: a, base_path: /m/a, idle_unload_seconds: 3}\n")


def test_server_core_is_ready_without_loading_on_demand_models_issue_20(tmp_path):
    base = tmp_path / "table"
    (base / "1").mkdir(parents=True)
    (base / "1" / "table.csv").write_text("1,2.0\n3,4.0\n")
    config = parse_config_text(
        f"load: on_demand\nmodels:\n  - {{name: lazy, base_path: {base}}}\n"
        f"  - {{name: eager, base_path: {base}, load: always}}\n",
        tmp_path / "models.yaml",
    )
    core = ServerCore(ServerOptions(model_config=config, file_system_poll_wait_seconds=0))
    core.start()
    try:
        assert core.model_names() == ["eager"]
        assert core.is_ready()
        assert core.manager.available_versions("lazy") == []
        assert "lazy" in core.service.model_names()
        assert core.service.model_status("lazy") == []
        lazy = [e for e in core.repository_index() if e["name"] == "lazy"]
        assert lazy == [
            {"name": "lazy", "version": "1", "state": "UNAVAILABLE", "reason": "not loaded"}
        ]
        core.load_model("lazy")  # model control does not wait: it loads on its first request
        assert asyncio.run(core.on_demand.ensure("lazy", None)) is True
        core.on_demand.unpin("lazy")
        assert core.manager.available_versions("lazy") == [1]
        assert [e["state"] for e in core.repository_index() if e["name"] == "lazy"] == ["READY"]
    finally:
        core.stop()
