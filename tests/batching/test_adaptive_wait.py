"""AdaptiveWait's decisions with an explicit clock: when an open batch stops waiting for rows."""

from __future__ import annotations

from pyserving.batching.adaptive_wait import AdaptiveWait

TIMEOUT = 0.300  # the batch timeout the waits below are bounded by


def closed_loop(wait: AdaptiveWait, clients: int, run_s: float, rtt_s: float, rounds: int) -> float:
    """`clients` clients each sending one row when answered, every batch holding all of them;
    returns the time the last batch ended."""
    now = 0.0
    for _ in range(rounds):
        for i in range(clients):
            wait.arrived(now + i * rtt_s / clients, 1)
        now += rtt_s + run_s
        wait.ran(run_s, now, clients, 0)
    return now


def test_nothing_measured_yet_runs_only_on_an_idle_model():
    wait = AdaptiveWait(TIMEOUT)
    wait.arrived(0.0, 1)
    assert wait.runs_now(1, 0.0, model_idle=True)
    assert not wait.runs_now(1, 0.0, model_idle=False)
    assert wait.wakeup_at(TIMEOUT, model_idle=True) == TIMEOUT


def test_beside_a_running_batch_nothing_runs_early():
    # whatever the measures say, a second instance gets what the fixed wait gives it
    wait = AdaptiveWait(TIMEOUT)
    end = closed_loop(wait, clients=1, run_s=0.002, rtt_s=0.0005, rounds=10)
    wait.arrived(end + 0.0005, 1)
    assert wait.runs_now(1, end + 0.0005, model_idle=True)
    assert not wait.runs_now(1, end + 0.0005, model_idle=False)


def test_a_lone_closed_loop_client_runs_at_once():
    # its next row cannot come before its answer: the gap between rows exceeds a call
    wait = AdaptiveWait(TIMEOUT)
    end = closed_loop(wait, clients=1, run_s=0.002, rtt_s=0.0005, rounds=10)
    wait.arrived(end + 0.0005, 1)
    assert wait.runs_now(1, end + 0.0005, model_idle=True)


def test_closed_loop_clients_of_a_slow_model_wait_for_each_other_then_run_full():
    # 8 clients, a 20 ms call: one row arriving just after a batch ends must not run alone (it
    # would split the clients into two groups that alternate); the batch runs once all 8 are in
    wait = AdaptiveWait(TIMEOUT)
    end = closed_loop(wait, clients=8, run_s=0.020, rtt_s=0.001, rounds=10)
    first = end + 0.0001
    wait.arrived(first, 1)
    assert not wait.runs_now(1, first, model_idle=True)
    now = first
    for rows in range(2, 9):
        now += 0.001 / 8
        wait.arrived(now, 1)
        assert wait.runs_now(rows, now, model_idle=True) == (rows == 8)


def test_rows_that_stop_coming_are_waited_for_at_most_half_a_call_or_two_gaps():
    wait = AdaptiveWait(TIMEOUT)
    end = closed_loop(wait, clients=8, run_s=0.020, rtt_s=0.001, rounds=10)
    wait.arrived(end + 0.0001, 1)  # one client comes back, the seven others left
    wake = wait.wakeup_at(end + TIMEOUT, model_idle=True)
    assert end + 0.0001 < wake <= end + 0.0001 + 0.020  # far before the timeout
    assert not wait.runs_now(1, wake - 1e-6, model_idle=True)
    assert wait.runs_now(1, wake, model_idle=True)
    # beside a running batch only the timeout wakes it (the batch's end notifies): a time
    # already past would wake the batch threads in a loop
    assert wait.wakeup_at(end + TIMEOUT, model_idle=False) == end + TIMEOUT


def test_rows_that_took_two_calls_time_to_arrive_run_without_the_rest_due_back():
    # 8 rows due back, one every 4 ms, a 5 ms call: three rows took 12 ms, more than two calls,
    # so the model outpaces them and the batch runs with three
    wait = AdaptiveWait(0.010)
    now = 0.0
    for _ in range(40):
        for _ in range(8):
            now += 0.004
            wait.arrived(now, 1)
        wait.ran(0.005, now, 8, 0)
    for rows in (1, 2, 3):
        now += 0.004
        wait.arrived(now, 1)
        assert wait.runs_now(rows, now, model_idle=True) == (rows == 3)


def test_a_long_idle_spell_weighs_like_sparse_traffic_not_more():
    wait = AdaptiveWait(TIMEOUT)
    end = closed_loop(wait, clients=8, run_s=0.020, rtt_s=0.001, rounds=10)
    arrival = end + 3600.0  # an hour later: one gap, counted as two timeouts at most
    wait.arrived(arrival, 1)
    # counted whole, the hour would make the patience (two gaps) outlast the timeout
    assert wait.wakeup_at(arrival + TIMEOUT, model_idle=True) < arrival + TIMEOUT


def test_two_alternating_groups_merge_into_one_batch():
    # 7 clients answered while 1 waited (the split a first-idle-moment rule falls into): the
    # waiting row holds on for the 7, so the next batch has all 8
    wait = AdaptiveWait(TIMEOUT)
    end = closed_loop(wait, clients=8, run_s=0.020, rtt_s=0.001, rounds=10)
    wait.arrived(end + 0.005, 1)  # the straggler, during the next run
    end += 0.025
    wait.ran(0.020, end, 7, 1)
    now = end
    for rows in range(2, 9):
        now += 0.001 / 7
        wait.arrived(now, 1)
        assert wait.runs_now(rows, now, model_idle=True) == (rows == 8)
