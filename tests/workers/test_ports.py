"""A `--workers` supervisor holds its ports: no other server, whoever owns it, shares them."""

from __future__ import annotations

import argparse
import os
import socket

import pytest

from pyserving.cli_flag_types import WORKERS_PER_CPU_LIMIT, worker_count
from pyserving.listen_ports import PortTaken, bind_listeners, bind_port, reserve_port
from tests.e2e.server import serve_to_exit


def _reuse_port_listener() -> socket.socket:
    """Another program's SO_REUSEPORT listener on a free port."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_held_port_takes_its_own_workers_and_refuses_everyone_else() -> None:
    held = reserve_port("127.0.0.1", 0)
    port = held.getsockname()[1]
    try:
        worker = bind_port("127.0.0.1", port, reuse_port=True)
        worker.listen()
        worker.close()
        with pytest.raises(OSError):
            reserve_port("127.0.0.1", port)  # a second supervisor
        with pytest.raises(OSError):
            bind_port("127.0.0.1", port)  # a single-process server
    finally:
        held.close()


def test_a_reuse_port_listener_of_another_program_makes_the_check_fail() -> None:
    other = _reuse_port_listener()
    try:
        with pytest.raises(OSError):
            reserve_port("127.0.0.1", other.getsockname()[1])
    finally:
        other.close()


def test_workers_on_a_port_another_program_shares_exits_2_naming_it(tmp_path: object) -> None:
    other = _reuse_port_listener()
    port = other.getsockname()[1]
    try:
        result = serve_to_exit(
            f"--rest_api_port={port}",
            "--port=0",
            "--workers=2",
            "--model_name=m",
            f"--model_base_path={tmp_path}",
        )
    finally:
        other.close()
    assert result.returncode == 2, result.stderr
    assert f"cannot listen for REST on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "worker" not in result.stderr  # refused before any worker started


def test_worker_count_refuses_more_than_its_limit_per_cpu() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert worker_count(str(WORKERS_PER_CPU_LIMIT * cpus)) == WORKERS_PER_CPU_LIMIT * cpus
    assert worker_count("auto") == cpus
    with pytest.raises(argparse.ArgumentTypeError, match="more than 4 per CPU"):
        worker_count(str(WORKERS_PER_CPU_LIMIT * cpus + 1))
    with pytest.raises(argparse.ArgumentTypeError, match="more than"):
        worker_count("9" * 30)


def test_a_port_whose_connections_are_in_time_wait_can_be_held_again() -> None:
    listener = bind_port("127.0.0.1", 0, reuse_port=True)  # as a worker of the last run
    port = listener.getsockname()[1]
    listener.listen()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server closes first: its side of the connection goes to TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    reserve_port("127.0.0.1", port).close()


def test_a_taken_grpc_port_lets_the_rest_port_go_and_names_the_flag() -> None:
    taken = bind_port("127.0.0.1", 0)
    taken.listen()
    free = bind_port("127.0.0.1", 0)
    rest_port = free.getsockname()[1]
    free.close()
    grpc_port = taken.getsockname()[1]
    try:
        with pytest.raises(PortTaken) as raised:
            bind_listeners("127.0.0.1", rest_port, grpc_port, reserve_port)
        assert str(raised.value).startswith(
            f"pyserving: cannot listen for gRPC on 127.0.0.1:{grpc_port}: Address already in use"
        )
        assert "--port=N" in str(raised.value)
        reserve_port("127.0.0.1", rest_port).close()  # the REST port it bound was let go
        rest, grpc = bind_listeners("127.0.0.1", rest_port, 0, reserve_port)
        assert rest is not None and grpc is None  # port 0: no listener
        rest.close()
    finally:
        taken.close()


def test_the_same_port_for_grpc_and_rest_is_one_line_naming_both_flags(tmp_path: object) -> None:
    """Red team 4 F7: before, the REST socket and the gRPC probe both bound it (SO_REUSEADDR,
    neither listening) and gRPC's listen failed later: "pyserving: [Errno 98] ..."."""
    with pytest.raises(PortTaken, match="--port and --rest_api_port are both 8500"):
        bind_listeners("127.0.0.1", 8500, 8500, bind_port)
    free = bind_port("127.0.0.1", 0)
    port = free.getsockname()[1]
    free.close()
    flags = [f"--port={port}", f"--rest_api_port={port}", f"--model_base_path={tmp_path}"]
    result = serve_to_exit("--model_name=m", *flags)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"pyserving: --port and --rest_api_port are both {port}: give gRPC and REST a port each"
    )
