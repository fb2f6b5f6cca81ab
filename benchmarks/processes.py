"""Starting, waiting for and stopping benchmark server processes, and finding them in /proc.

Imports nothing from pyserving: a benchmark whose clients bring their own protos (tritonclient)
can use it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_stats() -> dict[int, list[str]]:
    """Every process's /proc/PID/stat fields after its name: [0] state, [1] parent pid,
    [3] session, [11] + [12] user + system CPU jiffies."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        found[int(entry)] = stat[stat.rindex(")") + 2 :].split()
    return found


def machine_busy_s() -> float:
    """Machine-wide busy CPU-seconds (user+nice+system+irq+softirq+steal) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait_s: float = 60, busy_cores: float = 0.3) -> tuple[float, float]:
    """Wait until the machine's busy cores over 2 s fall under `busy_cores` (other tenants of a
    shared machine), at most `max_wait_s`; (seconds waited, busy cores of the last 2 s)."""
    start = time.monotonic()
    while True:
        busy0 = machine_busy_s()
        time.sleep(2)
        busy = (machine_busy_s() - busy0) / 2
        if busy < busy_cores or time.monotonic() - start > max_wait_s:
            return time.monotonic() - start, busy


def session_pids(sid: int) -> list[tuple[int, int]]:
    """(pid, utime+stime jiffies) of every live process in session `sid`."""
    return [
        (pid, int(fields[11]) + int(fields[12]))
        for pid, fields in proc_stats().items()
        if int(fields[3]) == sid and fields[0] != "Z"
    ]


def stop_session(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM the session leader, then any process left in its session; SIGKILL after grace."""
    sid = proc.pid
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and session_pids(sid):
        time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, _ in session_pids(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and session_pids(sid):
            time.sleep(0.2)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        print(f"bench: server {sid} did not exit", file=sys.stderr)


def pyserving_command(rest_port: int, grpc_port: int, *flags: str) -> list[str]:
    """`pyserving serve` on 127.0.0.1 with these ports (0 turns that API off) and flags."""
    return [
        sys.executable,
        "-m",
        "pyserving",
        "serve",
        "--host=127.0.0.1",
        f"--rest_api_port={rest_port}",
        f"--port={grpc_port}",
        *flags,
    ]


def spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`command` in a session of its own (stop_session ends it all), its output in `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )


def wait_ready(
    proc: subprocess.Popen,
    log: Path,
    url: str,
    body: bytes | None = None,
    timeout_s: float = 120,
    stop: Callable[[subprocess.Popen], None] = stop_session,
) -> None:
    """Poll `url` (GET, or POST `body`) until it answers 200. Exits the benchmark with the log's
    tail if `proc` exits first or time runs out (then `stop`s it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: {url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:  # refused, or an error status (HTTPError is an OSError)
            pass
        time.sleep(0.1)
    stop(proc)
    sys.exit(f"bench: {url} not ready after {timeout_s:g} s:\n{log.read_text()[-3000:]}")


def start(
    command: list[str],
    log: Path,
    ready_url: str,
    *,
    body: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
    stop: Callable[[subprocess.Popen], None] = stop_session,
) -> subprocess.Popen:
    """spawn(command, log, env), returned once wait_ready says `ready_url` answers 200."""
    proc = spawn(command, log, env)
    wait_ready(proc, log, ready_url, body, timeout_s, stop)
    return proc
