"""Learn from a real workload's trace, then enforce it in the real proxy (busctl, gdbus, systemd-hostnamed)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    HOSTNAMED,
    IPCPROXY,
    ROOT,
    ProxyProcess,
    Services,
    busctl,
    gdbus,
    have,
    messages,
    read_trace,
    wait_for,
    wait_name_owned,
)
from ipcproxy.cli import main
from ipcproxy.dbus.launcher import PrivateBus

HOST = "org.freedesktop.hostname1"
HOST_PATH = "/org/freedesktop/hostname1"
# hostnamed runs as the unprivileged 'daemon' user: even a call that wrongly got through could change nothing
SERVICE = ["setpriv", "--reuid=daemon", "--regid=daemon", "--clear-groups", HOSTNAMED]

pytestmark = pytest.mark.skipif(not (have("setpriv") and have(HOSTNAMED)), reason="needs setpriv and hostnamed")


def workload(address: str) -> None:
    """What the client normally does: busctl reads Hostname, gdbus reads KernelName."""
    out = busctl(address, "get-property", HOST, HOST_PATH, HOST, "Hostname").stdout
    assert out.startswith('s "')
    gdbus(
        address,
        "call",
        "--dest",
        HOST,
        "--object-path",
        HOST_PATH,
        "--method",
        "org.freedesktop.DBus.Properties.Get",
        HOST,
        "KernelName",
    )


def open_proxy(bus: PrivateBus, *extra: str) -> ProxyProcess:
    """A proxy whose socket sits in the bus's own directory, which the unprivileged service can reach."""
    work = Path(bus.dir) / f"proxy{len(list(Path(bus.dir).glob('proxy*')))}"
    work.mkdir(mode=0o755)
    return ProxyProcess(bus.address, work, list(extra))


@pytest.fixture
def proxy_factory(bus: PrivateBus) -> Iterator[Any]:
    """Like conftest's, but reachable by services running as another user."""
    started: list[ProxyProcess] = []

    def start(*extra: str) -> ProxyProcess:
        started.append(open_proxy(bus, *extra))
        return started[-1]

    yield start
    for proxy in started:
        proxy.stop()


def start_hostnamed(services: Services, proxy: ProxyProcess, bus: PrivateBus) -> None:
    services.start(SERVICE, proxy.address)
    wait_name_owned(bus.address, HOST)  # asked on the bus itself, so it is not part of the workload


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A policy learnt from one run of the workload through a recording proxy."""
    work = tmp_path_factory.mktemp("learn")
    with PrivateBus() as bus:
        proxy = open_proxy(bus)
        services = Services()
        try:
            start_hostnamed(services, proxy, bus)
            workload(proxy.address)
        finally:
            services.stop()
            proxy.stop()
        policy = work / "policy.yaml"
        assert main(["learn", str(proxy.trace), "-o", str(policy)]) == 0
    yield policy


@pytest.fixture
def policy_copy(learned: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "policy.yaml"
    copy.write_text(learned.read_text())
    return copy


def verdicts(records: list[dict[str, Any]], member: str) -> list[Any]:
    return [r["verdict"] for r in messages(records) if r["member"] == member and r["direction"] == "to_bus"]


def test_enforce_lets_the_learned_calls_through_and_denies_the_rest(bus, proxy_factory, services, learned, tmp_path):
    text = learned.read_text()
    assert "member: Get" in text and "1: {values: [Hostname]}" in text and "own: [org.freedesktop.hostname1]" in text
    proxy = proxy_factory("--policy", str(learned), "--mode", "enforce")
    start_hostnamed(services, proxy, bus)
    workload(proxy.address)
    # a setter it never called: AccessDenied naming the missing rule
    setter = gdbus(
        proxy.address,
        "call",
        "--dest",
        HOST,
        "--object-path",
        HOST_PATH,
        "--method",
        f"{HOST}.SetPrettyHostname",
        "pwned",
        "false",
        check=False,
    )
    assert setter.returncode != 0
    assert "org.freedesktop.DBus.Error.AccessDenied: Rejected by ipcproxy" in setter.stderr
    assert "member: SetPrettyHostname" in setter.stderr
    # the right method, a property it never read
    other = busctl(proxy.address, "get-property", HOST, HOST_PATH, HOST, "Chassis", check=False)
    assert other.returncode != 0 and "Access denied" in other.stderr
    # a name it never owned
    own = busctl(
        proxy.address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
        "RequestName", "su", "org.example.Evil", "0", check=False,
    )  # fmt: skip
    assert own.returncode != 0 and "Access denied" in own.stderr
    proxy.stop()
    records = proxy.records()
    trace = Path(learned.parent / "enforced.jsonl")
    trace.write_bytes(proxy.trace.read_bytes())
    assert all(v == "forwarded" for v in verdicts(records, "Hello"))
    gets = verdicts(records, "Get")
    assert gets.count("forwarded") == 2
    (denied_get,) = [v for v in gets if v != "forwarded"]
    assert denied_get["action"] == "denied" and denied_get["policy"] == "args" and "Chassis" in denied_get["reason"]
    (denied_set,) = verdicts(records, "SetPrettyHostname")
    assert denied_set["action"] == "denied" and denied_set["policy"] == "no-rule"
    (denied_own,) = verdicts(records, "RequestName")[-1:]
    assert denied_own["policy"] == "own" and "org.example.Evil" in denied_own["reason"]
    # the denied calls never reached hostnamed
    to_host = [r for r in messages(records) if r["direction"] == "from_bus" and r["member"] == "SetPrettyHostname"]
    assert to_host == []
    # offline, check finds the same three violations in the enforced trace
    result = subprocess.run(
        [*IPCPROXY, "check", str(learned), str(trace)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 1
    assert result.stdout.count("VIOLATION") == 3, result.stdout


def test_complain_mode_forwards_and_marks_violations(bus, proxy_factory, services, learned):
    proxy = proxy_factory("--policy", str(learned), "--mode", "complain")
    start_hostnamed(services, proxy, bus)
    workload(proxy.address)
    chassis = busctl(proxy.address, "get-property", HOST, HOST_PATH, HOST, "Chassis", check=False)
    assert chassis.returncode == 0  # forwarded: hostnamed answered
    proxy.stop()
    records = proxy.records()
    marked = [r for r in messages(records) if isinstance(r["verdict"], dict)]
    # busctl sent it and hostnamed received it: one violation on each side, nothing denied or injected
    assert [(r["direction"], r["verdict"]["action"], r["member"]) for r in marked] == [
        ("to_bus", "violation", "Get"),
        ("from_bus", "violation", "Get"),
    ]
    assert all("Chassis" in r["verdict"]["reason"] for r in marked)


def test_sighup_reload_keeps_the_old_policy_if_the_new_one_is_broken(bus, proxy_factory, services, policy_copy):
    proxy = proxy_factory("--policy", str(policy_copy), "--mode", "enforce")
    start_hostnamed(services, proxy, bus)
    good = policy_copy.read_text()
    broken = good.replace("version: 1", "version: 1\nversoin: 2")
    policy_copy.write_text(broken)
    line = broken.splitlines().index("versoin: 2") + 1
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "keeping the old rules" in proxy.stderr(), what="the failed reload to be reported")
    assert f"{policy_copy}:{line}: policy: unknown key 'versoin'" in proxy.stderr()
    workload(proxy.address)  # the old rules are still in force...
    assert busctl(proxy.address, "get-property", HOST, HOST_PATH, HOST, "Chassis", check=False).returncode != 0
    # ...until a good file comes: now Chassis may be read too (by busctl and by hostnamed from busctl)
    policy_copy.write_text(good.replace("1: {values: [Hostname]}", "1: {values: [Hostname, Chassis]}"))
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded policy" in proxy.stderr(), what="the reload")
    assert busctl(proxy.address, "get-property", HOST, HOST_PATH, HOST, "Chassis").stdout.startswith('s "')


def test_a_broken_policy_is_refused_before_anything_starts(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ncomponents:\n- component: /usr/bin/busctl\n  uid: root\n")
    for argv in (
        ["proxy", "--upstream", "unix:path=/nonexistent", "--listen", f"unix:path={tmp_path}/p.sock"],
        ["run", "--", "true"],
    ):
        r = subprocess.run(
            [*IPCPROXY, argv[0], "--policy", str(bad), *argv[1:]], capture_output=True, text=True, timeout=30
        )
        assert r.returncode == 2
        assert r.stderr.strip() == f"ipcproxy: policy {bad}:4: uid must be an integer, not a string"
        assert not (tmp_path / "p.sock").exists()


def test_run_learns_and_enforces_with_the_same_command(tmp_path: Path):
    base = [*IPCPROXY, "run", "-q", "--system-too", "--service", " ".join(SERVICE), "--wait-for", HOST]
    read = ["--", "busctl", "--system", "get-property", HOST, HOST_PATH, HOST, "Hostname"]
    trace = tmp_path / "train.jsonl"
    r = subprocess.run([*base, "-w", str(trace), *read], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    policy = tmp_path / "p.yaml"
    assert main(["learn", str(trace), "-o", str(policy)]) == 0
    enforce = [*base, "--policy", str(policy), "--force", "-w", str(tmp_path / "enforced.jsonl")]
    assert subprocess.run([*enforce, *read], capture_output=True, timeout=60).returncode == 0
    set_call = ["--", "busctl", "--system", "call", HOST, HOST_PATH, HOST, "SetPrettyHostname", "sb", "x", "false"]
    r = subprocess.run([*enforce, *set_call], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Access denied" in r.stderr
    (denied,) = [m for m in messages(read_trace(tmp_path / "enforced.jsonl")) if m["member"] == "SetPrettyHostname"]
    assert denied["verdict"]["action"] == "denied"


def test_replies_pass_only_for_calls_that_were_let_through(bus, proxy_factory, tmp_path):
    import asyncio
    import os

    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    me = os.path.realpath(sys.executable)
    policy = tmp_path / "p.yaml"
    policy.write_text(
        f"version: 1\ncomponents:\n- component: {me}\n  uid: {os.getuid()}\n  rules:\n"
        "  - send: method_call\n    to: org.freedesktop.DBus\n    member: Hello\n    interface: org.freedesktop.DBus\n"
        "  - send: method_call\n    to: org.freedesktop.DBus\n    member: GetId\n    interface: org.freedesktop.DBus\n"
    )
    proxy = proxy_factory("--policy", str(policy), "--mode", "enforce")

    async def talk() -> str:
        client = await MessageBus(bus_address=proxy.address).connect()
        reply = await client.call(
            Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus", member="GetId")
        )  # fmt: skip
        assert reply is not None and reply.message_type is MessageType.METHOD_RETURN  # a reply to an allowed call
        # a "reply" to a call nobody made, addressed to itself
        await client.send(Message(message_type=MessageType.METHOD_RETURN, reply_serial=4242,
                                  destination=client.unique_name))  # fmt: skip
        await client.call(
            Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus", member="GetId")
        )  # fmt: skip
        client.disconnect()
        return str(client.unique_name)

    unique = asyncio.run(talk())
    proxy.stop()
    records = messages(proxy.records())
    forged = [r for r in records if r["type"] == "method_return" and r["reply_serial"] == 4242]
    assert [(r["direction"], r["verdict"]["action"], r["verdict"]["policy"]) for r in forged] == [
        ("to_bus", "denied", "reply")
    ]
    answers = [
        r
        for r in records
        if r["type"] == "method_return" and r["direction"] == "from_bus" and r["destination_name"] == unique
    ]
    assert len(answers) == 3 and all(r["verdict"] == "forwarded" for r in answers)  # Hello and two GetId
