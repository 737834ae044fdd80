"""`ipcproxy monitor` against real buses, services and clients: what it records, how it stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import IPCPROXY, ROOT, CommandProcess, busctl, gdbus, messages, trace_header, wait_for
from ipcproxy.dbus import wire
from ipcproxy.dbus.address import parse
from ipcproxy.dbus.auth import ClientAuth
from ipcproxy.dbus.launcher import PrivateBus
from ipcproxy.model import MessageType

MOCK = "org.example.Mock"


class MonitorProcess(CommandProcess):
    """`ipcproxy monitor` as a real process; ready once its trace shows it has become a monitor."""

    default_stop_signal = signal.SIGINT

    def __init__(self, address: str, workdir: Path, *extra: str, trace_name: str = "monitor.jsonl") -> None:
        trace = workdir / trace_name
        argv = [*IPCPROXY, "monitor", "--address", address, "-w", str(trace), "-q", *extra]
        super().__init__(argv, trace, workdir / "monitor.err")
        if not trace_name.endswith(".pcap"):
            wait_for(self._started, 15, "the monitor to start")

    def _started(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"monitor exited early: {self.stderr()}")
        return self.trace.exists() and b'"monitor_start"' in self.trace.read_bytes()


@pytest.fixture
def monitor_factory(tmp_path: Path) -> Any:
    started: list[MonitorProcess] = []

    def start(address: str, *extra: str, trace_name: str = "monitor.jsonl") -> MonitorProcess:
        workdir = tmp_path / f"monitor{len(started)}"
        workdir.mkdir()
        m = MonitorProcess(address, workdir, *extra, trace_name=trace_name)
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop(signal.SIGKILL)


def test_monitor_records_traffic_between_others(any_bus: PrivateBus, services: Any, monitor_factory: Any) -> None:
    mon = monitor_factory(any_bus.address)
    services.dbusmock(any_bus.address)
    busctl(any_bus.address, "introspect", MOCK, "/org/example/Mock")
    gdbus(
        any_bus.address,
        "call",
        "--dest",
        MOCK,
        "--object-path",
        "/org/example/Mock",
        "--method",
        "org.freedesktop.DBus.Peer.Ping",
    )
    assert mon.stop(signal.SIGINT) == 130
    recs = mon.records()
    head = trace_header(mon.trace)
    assert head["mode"] == "monitor" and head["capture"] == "BecomeMonitor"
    events = [r["event"] for r in recs if r["type"] == "event"]
    assert events[0] == "monitor_start" and events[-1] == "monitor_stop"
    msgs = messages(recs)
    assert msgs and all(r["direction"] == "observed" for r in msgs)
    # busctl introspects, and gdbus does before its call: two calls, each answered exactly once
    intro = [r for r in msgs if r["member"] == "Introspect" and r["type"] == "method_call"]
    assert len(intro) == 2
    for call in intro:
        assert MOCK in call["destination"]["names"]
        assert call["sender"]["bus_name"].startswith(":")
        replies = [
            r
            for r in msgs
            if r["type"] == "method_return"
            and r["reply_serial"] == call["serial"]
            and r["destination"]["bus_name"] == call["sender"]["bus_name"]
        ]
        assert len(replies) == 1 and replies[0]["latency_ns"] > 0
        assert MOCK in replies[0]["sender"]["names"]
        assert "<interface" in replies[0]["args"][0]
    pings = [r for r in msgs if r["member"] == "Ping"]
    assert len(pings) == 1 and pings[0]["interface"] == "org.freedesktop.DBus.Peer"
    # the bus driver's own messages, and the mock's name appearing
    owner_changes = [r for r in msgs if r["member"] == "NameOwnerChanged"]
    assert any(r["args"][0] == MOCK and r["args"][2] for r in owner_changes)
    assert all(r["sender"]["bus_name"] == "org.freedesktop.DBus" for r in owner_changes)
    # the monitor's own connections (itself, its resolver) do not show up
    start = [r for r in recs if r.get("event") == "monitor_start"][0]
    mine = {start["unique_name"], start["resolver"]}
    assert None not in mine
    assert not [r for r in msgs if r["sender"]["bus_name"] in mine or r["destination"]["bus_name"] in mine]
    seqs = [r["seq"] for r in recs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_monitor_match_rules_and_sigterm(bus: PrivateBus, services: Any, monitor_factory: Any) -> None:
    mon = monitor_factory(bus.address, "type='signal'")
    services.dbusmock(bus.address)
    busctl(bus.address, "introspect", MOCK, "/org/example/Mock")
    assert mon.stop(signal.SIGTERM) == 143
    msgs = messages(mon.records())
    assert msgs and {r["type"] for r in msgs} == {"signal"}
    assert any(r["member"] == "NameOwnerChanged" and r["args"][0] == MOCK for r in msgs)
    stop = [r for r in mon.records() if r.get("event") == "monitor_stop"]
    assert stop and stop[0]["reason"] == "signal SIGTERM"


ECHO_SERVICE = r"""
import os, socket, sys
from ipcproxy.dbus import wire
from ipcproxy.dbus.auth import ClientAuth
from ipcproxy.model import MessageType

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
auth = ClientAuth(os.geteuid(), unix_fd=False)
sock.sendall(auth.start())
while not auth.done:
    auth.feed(sock.recv(4096))
parser = wire.FrameParser()
parser.feed(auth.leftover)
driver = dict(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus")
sock.sendall(wire.build(MessageType.METHOD_CALL, serial=1, member="Hello", **driver).raw)
sock.sendall(wire.build(MessageType.METHOD_CALL, serial=2, member="RequestName", signature="su",
                        body=["org.example.Mock", 4], **driver).raw)
serial = 2
while True:
    data = sock.recv(1 << 20)
    if not data:
        break
    parser.feed(data)
    for m in parser.frames():
        if m.type is MessageType.METHOD_CALL and m.member == "Echo":
            serial += 1
            reply = wire.build(MessageType.METHOD_RETURN, serial=serial, reply_serial=m.serial,
                               destination=m.sender, signature="ay", body=m.args)
            sock.sendall(reply.raw)
"""


def echo_calls(address: str, count: int, payload: bytes, window: int = 8) -> int:
    """Call Echo(ay) ``count`` times, ``window`` at a time, over a plain blocking socket; returns good replies."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(parse(address)[0].path or "")
    auth = ClientAuth(os.geteuid(), unix_fd=False)
    sock.sendall(auth.start())
    while not auth.done:
        auth.feed(sock.recv(4096))
    parser = wire.FrameParser()
    parser.feed(auth.leftover)
    serial = 0

    def send(member: str, destination: str, path: str, interface: str, body: list[Any], signature: str) -> None:
        nonlocal serial
        serial += 1
        msg = wire.build(
            MessageType.METHOD_CALL,
            serial=serial,
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body,
        )
        sock.sendall(msg.raw)

    def replies() -> list[Any]:
        while True:
            got = [m for m in parser.frames() if m.type in (MessageType.METHOD_RETURN, MessageType.ERROR)]
            if got:
                return got
            parser.feed(sock.recv(1 << 20))

    send("Hello", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", [], "")
    replies()
    sent = good = 0
    while sent < min(window, count):
        send("Echo", MOCK, "/org/example/Mock", MOCK, [payload], "ay")
        sent += 1
    while good < count:
        for reply in replies():
            assert reply.type is MessageType.METHOD_RETURN and reply.args == [payload], reply.error_name
            good += 1
            if sent < count:
                send("Echo", MOCK, "/org/example/Mock", MOCK, [payload], "ay")
                sent += 1
    sock.close()
    return good


def test_monitor_loses_nothing_with_64k_messages(bus: PrivateBus, services: Any, monitor_factory: Any) -> None:
    services.start([sys.executable, "-c", ECHO_SERVICE, bus.socket], bus.address, wait_name=MOCK)
    mon = monitor_factory(bus.address)
    count, size = 300, 65536
    assert echo_calls(bus.address, count, bytes(range(256)) * (size // 256)) == count
    assert mon.stop(signal.SIGINT) == 130
    msgs = messages(mon.records())
    calls = [m for m in msgs if m["type"] == "method_call" and m["member"] == "Echo"]
    returns = [m for m in msgs if m["type"] == "method_return" and m["signature"] == "ay"]
    assert len(calls) == count and len(returns) == count
    expected = (bytes(range(256)) * (size // 256)).hex()
    assert all(m["args"] == [expected] for m in calls + returns)
    assert all(m["size"] > size for m in calls + returns)
    serials = {m["serial"] for m in calls}
    assert {m["reply_serial"] for m in returns} == serials
    assert all(m.get("latency_ns", 0) > 0 for m in returns)


def test_monitor_exits_1_when_the_bus_goes_away(tmp_path: Path, monitor_factory: Any) -> None:
    b = PrivateBus().start()
    try:
        mon = monitor_factory(b.address)
    finally:
        b.stop()
    mon.proc.wait(15)
    assert mon.proc.returncode == 1
    err = mon.stderr().strip().splitlines()
    assert len(err) == 1 and "went away" in err[0] and "Traceback" not in mon.stderr()
    events = [r for r in mon.records() if r.get("event") == "monitor_stop"]
    assert events and "went away" in events[0]["reason"]


def test_monitor_falls_back_to_eavesdropping_when_refused(services: Any, monitor_factory: Any) -> None:
    deny = (
        '<policy context="default"><deny send_destination="org.freedesktop.DBus"'
        ' send_interface="org.freedesktop.DBus.Monitoring"/></policy>'
    )
    with PrivateBus(extra_config=deny) as b:
        mon = monitor_factory(b.address)
        services.dbusmock(b.address)
        busctl(b.address, "introspect", MOCK, "/org/example/Mock")
        assert mon.stop() == 130  # SIGINT
        assert "BecomeMonitor refused" in mon.stderr() and "eavesdropping" in mon.stderr()
        assert trace_header(mon.trace)["capture"] == "eavesdrop"
        msgs = messages(mon.records())
        assert [r for r in msgs if r["member"] == "Introspect" and MOCK in r["destination"]["names"]]
        assert [r for r in msgs if r["type"] == "method_return" and r["args"] and "<interface" in str(r["args"][0])]


def test_monitor_writes_pcap(bus: PrivateBus, services: Any, monitor_factory: Any) -> None:
    mon = monitor_factory(bus.address, trace_name="capture.pcap")
    wait_for(lambda: mon.trace.exists() and mon.trace.stat().st_size >= 24, 15, "the pcap header")
    services.dbusmock(bus.address)
    busctl(bus.address, "introspect", MOCK, "/org/example/Mock")
    assert mon.stop() == 130  # SIGINT
    data = mon.trace.read_bytes()
    assert int.from_bytes(data[20:24], "little") == 231  # DLT_DBUS
    assert b"Introspect" in data and b"org.example.Mock" in data


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--address", "unix:path=/nonexistent/bus"], "cannot connect"),
        (["--address", "nonsense"], "no transport"),
    ],
)
def test_monitor_usage_errors_are_one_line(argv: list[str], needle: str) -> None:
    r = subprocess.run([*IPCPROXY, "monitor", *argv, "-q"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_monitor_bad_match_rule_is_a_usage_error(bus: PrivateBus) -> None:
    r = subprocess.run(
        [*IPCPROXY, "monitor", "--address", bus.address, "-q", "type='bogus'"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=dict(os.environ),
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "match rules" in lines[0], r.stderr
