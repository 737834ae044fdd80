"""`ipcproxy interpose` on real buses: taking a socket path over, giving it back whatever happens,
and a non-root client going through a root proxy seen by the bus and by services as itself."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import IPCPROXY, ROOT, CommandProcess, busctl, messages, wait_for
from ipcproxy.dbus.launcher import PrivateBus

ASIDE = ".ipcproxy-real"
NOBODY = 65534

# A real service: on every WhoAmI it asks the bus driver who called, and answers with that.
WHO_SERVICE = r"""
import asyncio, json, sys
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

DRIVER = dict(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus")

async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()

    async def answer(call):
        facts = {}
        for member in ("GetConnectionCredentials", "GetConnectionUnixUser", "GetConnectionUnixProcessID"):
            reply = await bus.call(Message(member=member, signature="s", body=[call.sender], **DRIVER))
            value = reply.body[0]
            if isinstance(value, dict):
                value = {k: v.value for k, v in value.items() if k in ("UnixUserID", "ProcessID", "UnixGroupIDs")}
            facts[member] = value
        bus.send(Message.new_method_return(call, "s", [json.dumps(facts)]))

    def handler(msg):
        if msg.message_type == MessageType.METHOD_CALL and msg.member == "WhoAmI":
            asyncio.ensure_future(answer(msg))
            return True
        return None

    bus.add_message_handler(handler)
    await bus.request_name(sys.argv[2])
    await bus.wait_for_disconnect()

asyncio.run(main())
"""


def inode(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def reachable(address: str) -> bool:
    return busctl(address, "list", check=False, timeout=10).returncode == 0


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


class Interposer(CommandProcess):
    """`ipcproxy interpose --socket PATH` as a real process; ready when it prints the address it took."""

    def __init__(self, path: str, workdir: Path, *extra: str) -> None:
        self.path = path
        trace = workdir / "trace.jsonl"
        argv = [*IPCPROXY, "interpose", "--socket", path, "-w", str(trace), "-q", *extra]
        super().__init__(argv, trace, workdir / "interpose.err")
        line = self.first_line()
        if line != f"unix:path={path}":
            self.proc.kill()
            raise AssertionError(f"interpose did not start: {line!r} {self.stderr()}")

    def watchdog(self) -> int:
        (pid,) = children(self.proc.pid)  # the connector helpers start only with non-root clients
        return pid


@pytest.fixture
def interposer(tmp_path: Path) -> Any:
    started: list[Interposer] = []

    def start(path: str, *extra: str) -> Interposer:
        workdir = tmp_path / f"interpose{len(started)}"
        workdir.mkdir()
        i = Interposer(path, workdir, *extra)
        started.append(i)
        return i

    yield start
    for i in started:
        i.stop()
        if os.path.lexists(i.path + ASIDE):  # never leave a test bus moved aside
            subprocess.run([*IPCPROXY, "interpose", "--socket", i.path, "--recover"], cwd=ROOT, timeout=30)


def run_ipcproxy(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IPCPROXY, *argv], capture_output=True, text=True, timeout=30, cwd=ROOT)


def who(address: str, name: str, as_nobody: bool = True) -> tuple[int, dict[str, Any]]:
    """Call WhoAmI with busctl (as uid 65534 by default); returns busctl's pid and the service's answer."""
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if as_nobody else []
    argv = [*prefix, "busctl", f"--address={address}", "--json=short", "call", name, "/", "org.example.Who", "WhoAmI"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return proc.pid, json.loads(json.loads(out)["data"][0])


def test_interpose_proxies_new_clients_and_gives_the_path_back(
    any_bus: PrivateBus, services: Any, interposer: Any
) -> None:
    path = any_bus.socket
    original = os.lstat(path)
    # a connection made before interposing: it must keep working throughout
    services.start([sys.executable, "-c", WHO_SERVICE, any_bus.address, "org.example.Before"], any_bus.address)
    wait_for(
        lambda: (
            reachable(any_bus.address)
            and busctl(any_bus.address, "status", "org.example.Before", check=False).returncode == 0
        )
    )
    ip = interposer(path)
    taken = os.lstat(path)
    assert stat.S_ISSOCK(taken.st_mode) and inode(path) != (original.st_dev, original.st_ino)
    assert stat.S_IMODE(taken.st_mode) == stat.S_IMODE(original.st_mode)
    assert (taken.st_uid, taken.st_gid) == (original.st_uid, original.st_gid)
    assert inode(path + ASIDE) == (original.st_dev, original.st_ino)
    pid, facts = who(any_bus.address, "org.example.Before", as_nobody=False)
    assert facts["GetConnectionUnixUser"] == 0
    assert "org.example.Before" in busctl(any_bus.address, "list").stdout
    assert ip.stop(signal.SIGTERM) == 143
    assert not os.path.lexists(path + ASIDE)
    assert inode(path) == (original.st_dev, original.st_ino)  # the bus's own socket, back at its path
    pid_after, _ = who(any_bus.address, "org.example.Before", as_nobody=False)
    recs = ip.records()
    events = [r["event"] for r in recs if r["type"] == "event"]
    assert events[:2] == ["proxy_start", "interpose"] and "restore" in events and events[-1] == "proxy_stop"
    msgs = messages(recs)
    calls = [r for r in msgs if r["member"] == "WhoAmI" and r["direction"] == "to_bus"]
    assert len(calls) == 1 and calls[0]["sender"]["pid"] == pid and calls[0]["sender"]["comm"] == "busctl"
    assert "org.example.Before" in calls[0]["destination"]["names"]
    answer = [
        r
        for r in msgs
        if r["type"] == "method_return"
        and r["reply_serial"] == calls[0]["serial"]
        and r["connection"] == calls[0]["connection"]
    ]
    assert len(answer) == 1 and answer[0]["direction"] == "from_bus"
    assert not [r for r in msgs if r["sender"].get("pid") == pid_after]  # after the stop: not through us


def test_interpose_survives_sigkill_and_recovers(bus: PrivateBus, interposer: Any) -> None:
    path = bus.socket
    original = inode(path)
    # SIGKILL of the proxy: its watchdog gives the path back
    ip = interposer(path)
    assert reachable(bus.address)
    ip.stop(signal.SIGKILL)
    wait_for(lambda: not os.path.lexists(path + ASIDE), 10, "the watchdog to restore the path")
    assert inode(path) == original and reachable(bus.address)
    assert "watchdog: restored" in ip.stderr()
    # proxy and watchdog both killed: the path is left dead, until --recover
    ip = interposer(path)
    r = run_ipcproxy("interpose", "--socket", path, "--recover")
    assert r.returncode == 1 and "running" in r.stderr  # refuses to take the path from a live proxy
    os.kill(ip.watchdog(), signal.SIGKILL)
    ip.stop(signal.SIGKILL)
    assert os.path.lexists(path + ASIDE) and not reachable(bus.address)
    r = run_ipcproxy("interpose", "--socket", path, "-q")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--recover" in r.stderr
    r = run_ipcproxy("interpose", "--socket", path, "--recover")
    assert r.returncode == 0, r.stderr
    assert inode(path) == original and reachable(bus.address) and not os.path.lexists(path + ASIDE)
    r = run_ipcproxy("interpose", "--socket", path, "--recover")
    assert r.returncode == 0 and "nothing to recover" in r.stderr


def test_interpose_usage_errors(tmp_path: Path) -> None:
    r = run_ipcproxy("interpose", "--socket", str(tmp_path / "nothing-here"))
    assert r.returncode == 2 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    plain = tmp_path / "plain"
    plain.write_text("")
    r = run_ipcproxy("interpose", "--socket", str(plain))
    assert r.returncode == 2 and "not a socket" in r.stderr


def test_interpose_runs_the_chain(bus: PrivateBus, services: Any, interposer: Any, tmp_path: Path) -> None:
    services.dbusmock(bus.address)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "version: 1\n"
        "faults:\n"
        "  - name: no-introspection\n"
        "    match: {type: method_call, member: Introspect, destination: org.example.Mock}\n"
        "    action: {error: {name: org.example.Error.Injected, message: injected by the plan}}\n"
    )
    interposer(bus.socket, "--faults", str(plan))
    r = busctl(bus.address, "introspect", "org.example.Mock", "/org/example/Mock", check=False)
    assert r.returncode != 0 and "injected by the plan" in r.stderr
    assert busctl(bus.address, "status", "org.example.Mock", check=False).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="a root proxy and a client of another user need root")
def test_non_root_client_is_seen_as_itself(any_bus: PrivateBus, services: Any, interposer: Any) -> None:
    """Proxy as root, busctl as uid 65534: bus and services must see 65534 and no root process."""
    os.chmod(any_bus.socket, 0o777)  # as the bus would set it up for everybody (dbus-broker's here is 0755)
    # a service connected before interposing (talks to the bus directly) ...
    services.start([sys.executable, "-c", WHO_SERVICE, any_bus.address, "org.example.Direct"], any_bus.address)
    wait_for(lambda: busctl(any_bus.address, "status", "org.example.Direct", check=False).returncode == 0)
    ip = interposer(any_bus.socket)
    # ... and one started after (it is behind the proxy, like the client)
    services.start([sys.executable, "-c", WHO_SERVICE, any_bus.address, "org.example.Behind"], any_bus.address)
    wait_for(lambda: busctl(any_bus.address, "status", "org.example.Behind", check=False).returncode == 0)

    client_pid, facts = who(any_bus.address, "org.example.Behind")
    assert facts["GetConnectionUnixUser"] == NOBODY
    assert facts["GetConnectionCredentials"]["UnixUserID"] == NOBODY
    assert facts["GetConnectionCredentials"]["UnixGroupIDs"] == [NOBODY]
    assert facts["GetConnectionUnixProcessID"] == client_pid
    assert facts["GetConnectionCredentials"]["ProcessID"] == client_pid

    client_pid, facts = who(any_bus.address, "org.example.Direct")
    assert facts["GetConnectionUnixUser"] == NOBODY
    assert facts["GetConnectionCredentials"]["UnixUserID"] == NOBODY
    seen_pid = facts["GetConnectionUnixProcessID"]
    assert facts["GetConnectionCredentials"]["ProcessID"] == seen_pid
    # the bus can only name the process that connected: never the root proxy, always one running as the client
    assert seen_pid != ip.proc.pid
    with open(f"/proc/{seen_pid}/status") as f:
        ids = {line.split(":")[0]: line.split()[1:] for line in f if line.startswith(("Uid:", "Gid:", "Groups:"))}
    assert ids["Uid"] == [str(NOBODY)] * 4 and ids["Gid"] == [str(NOBODY)] * 4
    assert ids["Groups"] == []  # exactly the client's supplementary groups (setpriv --clear-groups)

    ip.stop()
    msgs = messages(ip.records())
    calls = [r for r in msgs if r["member"] == "WhoAmI" and r["direction"] == "to_bus"]
    assert len(calls) == 2 and all(r["sender"]["uid"] == NOBODY for r in calls)
