"""Clients that never authenticate cost the proxy little and the bus nothing.

The upstream connection is opened only once a client's identity is accepted;
a client that has not authenticated within --auth-timeout is closed; past
--max-pending such clients, new ones are refused. Real proxy, real
dbus-daemon; the bus's connections are counted from its open fds.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from conftest import wait_for
from test_proxy_faithful import RawClient, socket_path


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def events(proxy: Any, name: str) -> list[dict[str, Any]]:
    return [r for r in proxy.records() if r.get("type") == "event" and r.get("event") == name]


@contextmanager
def idle_clients(address: str, n: int, say: bytes = b"") -> Iterator[list[socket.socket]]:
    """``n`` connections that send ``say`` (at most the start of a handshake) and then nothing."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(20)
            s.connect(socket_path(address))
            if say:
                s.sendall(say)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def closed_by_proxy(s: socket.socket) -> bool:
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def test_idle_connections_open_no_upstream_connection(bus: Any, proxy_factory: Any) -> None:
    proxy = proxy_factory(bus.address)
    daemon = bus.daemon_pid
    assert daemon is not None
    before = fd_count(daemon)
    with idle_clients(proxy.address, 10), idle_clients(proxy.address, 10, b"\0AUTH EXTERNAL 30"):
        wait_for(lambda: len(events(proxy, "connect")) == 20, what="20 accepted connections")
        assert fd_count(daemon) == before  # the bus saw none of them
        client = RawClient(proxy.address)  # one that authenticates gets its own connection
        client.hello()
        assert fd_count(daemon) == before + 1
        assert client.driver("GetId").args
        client.close()


def test_a_client_that_does_not_authenticate_in_time_is_closed(bus: Any, proxy_factory: Any) -> None:
    proxy = proxy_factory(bus.address, "--auth-timeout", "0.5")
    prompt = RawClient(proxy.address)
    prompt.hello()
    with idle_clients(proxy.address, 3) as silent, idle_clients(proxy.address, 2, b"\0AUTH EXTERNAL\r\n") as halfway:
        assert all(closed_by_proxy(s) for s in silent + halfway)

    def gone() -> list[dict[str, Any]]:
        return [e for e in events(proxy, "disconnect") if e["reason"] == "not authenticated within 0.5 s"]

    wait_for(lambda: len(gone()) == 5, what="5 disconnect events")
    assert prompt.driver("GetId").args  # its handshake was over in time: it stays


def test_past_max_pending_new_clients_are_refused_and_an_authenticated_one_still_works(
    bus: Any, proxy_factory: Any
) -> None:
    proxy = proxy_factory(bus.address, "--max-pending", "3")
    client = RawClient(proxy.address)
    client.hello()
    with idle_clients(proxy.address, 3) as waiting:
        wait_for(lambda: len(events(proxy, "connect")) == 4, what="3 pending connections")
        with idle_clients(proxy.address, 1) as (extra,):
            assert closed_by_proxy(extra)
        (refused,) = wait_for(lambda: events(proxy, "refused"), what="the refusal in the trace")
        assert refused["reason"] == "3 connections already waiting to authenticate"
        assert refused["client"]["pid"] == os.getpid()
        assert client.driver("GetId").args
        waiting[0].close()
        wait_for(lambda: len(events(proxy, "disconnect")) == 1, what="a pending connection gone")
        newcomer = RawClient(proxy.address)  # room again
        newcomer.hello()
        newcomer.close()
    client.close()


def test_limits_must_be_positive_numbers(bus: Any) -> None:
    import subprocess

    from conftest import IPCPROXY

    for option, value in (("--auth-timeout", "0"), ("--max-pending", "-1"), ("--max-pending", "2.5")):
        r = subprocess.run(
            [*IPCPROXY, "proxy", "--upstream", bus.address, "--listen", "unix:path=/nonexistent/p.sock", option, value],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr
        (line,) = r.stderr.splitlines()
        assert option in line and value in line, line


def test_run_and_interpose_take_the_same_limits() -> None:
    import subprocess

    from conftest import IPCPROXY

    r = subprocess.run(
        [*IPCPROXY, "run", "-q", "--auth-timeout", "5", "--max-pending", "3", "--", "busctl", "--user", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [*IPCPROXY, "interpose", "--socket", "/nonexistent/bus", "--max-pending", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "--max-pending" in r.stderr and "Traceback" not in r.stderr
