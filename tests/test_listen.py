"""`--listen` never takes over a live socket, and on exit removes only the socket it made.

Real processes throughout: live dbus-daemons, real proxies, real clients.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from conftest import IPCPROXY, ProxyProcess, busctl
from ipcproxy.dbus.launcher import PrivateBus


def ipcproxy(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IPCPROXY, *args], capture_output=True, text=True, timeout=timeout)


def assert_refused(r: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith("ipcproxy") and fragment in line, line
    assert r.stdout == ""


def reachable(address: str) -> bool:
    return busctl(
        address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetId"
    ).stdout.startswith("s ")


def test_a_live_dbus_daemon_s_socket_is_not_taken_over(bus: Any) -> None:
    with PrivateBus() as other:
        r = ipcproxy("proxy", "--upstream", bus.address, "--listen", other.address, "-q")
        assert_refused(r, "address in use")
        assert reachable(other.address)  # still there, still the daemon's


def test_a_second_proxy_on_the_first_one_s_path_is_refused(bus: Any, proxy_factory: Any) -> None:
    first = proxy_factory(bus.address)
    r = ipcproxy("proxy", "--upstream", bus.address, "--listen", first.address, "-q")
    assert_refused(r, "address in use")
    assert reachable(first.address)
    assert first.proc.poll() is None


def test_listening_on_the_upstream_bus_s_own_socket_is_refused(bus: Any, tmp_path: Path) -> None:
    r = ipcproxy("proxy", "--upstream", bus.address, "--listen", bus.address, "-q")
    assert_refused(r, "the upstream bus's own socket")
    link = tmp_path / "bus-link.sock"
    link.symlink_to(bus.socket)  # the same socket under another name
    r = ipcproxy("proxy", "--upstream", bus.address, "--listen", f"unix:path={link}", "-q")
    assert_refused(r, "the upstream bus's own socket")
    assert reachable(bus.address)


def test_a_stale_socket_file_is_replaced_and_removed_on_exit(bus: Any, tmp_path: Path) -> None:
    stale = tmp_path / "proxy.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale))
    dead.close()  # the file stays, nobody accepts on it
    proxy = ProxyProcess(bus.address, tmp_path)
    try:
        assert proxy.socket == stale
        assert reachable(proxy.address)
    finally:
        assert proxy.stop() == 143  # SIGTERM
    assert not stale.exists()


def test_a_socket_put_there_by_someone_else_is_not_removed_on_exit(bus: Any, proxy_factory: Any) -> None:
    proxy = proxy_factory(bus.address)
    os.unlink(proxy.socket)
    theirs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        theirs.bind(str(proxy.socket))
        theirs.listen(1)
        inode = os.lstat(proxy.socket).st_ino
        assert proxy.stop() == 143  # SIGTERM
        assert os.lstat(proxy.socket).st_ino == inode
    finally:
        theirs.close()
