"""show, stats, learn, check and diff read pcap and pcapng directly; convert refuses what holds no D-Bus packet.

The captures are real: written by `ipcproxy convert` from a real proxied
session, by `dbus-monitor --pcap` and by `busctl capture` on a real private
bus with real clients (busctl, gdbus, dbus-send), and packets of another link
type made by Wireshark's text2pcap and mixed in with its mergecap.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    ProxyProcess,
    Services,
    busctl,
    capture_holds,
    dbus_send,
    gdbus,
    messages,
    read_trace,
    stop_capture,
    wait_for,
)
from ipcproxy.cli import main
from ipcproxy.dbus.launcher import PrivateBus
from ipcproxy.trace import records
from ipcproxy.trace.pcapfile import read_packets
from ipcproxy.trace.reader import iter_trace

MOCK = "org.example.Mock"
MOCK_PATH = "/org/example/Mock"
IDENTITY = ("pid", "uid", "exe", "comm")
# ARP who-has 10.0.0.2, as `text2pcap` reads a hex dump (offsets, then bytes)
ETHERNET_HEXDUMP = (
    "0000  ff ff ff ff ff ff 00 11 22 33 44 55 08 06 00 01\n"
    "0010  08 00 06 04 00 01 00 11 22 33 44 55 0a 00 00 01\n"
    "0020  00 00 00 00 00 00 0a 00 00 02\n"
)
DENY_ALL = "format: ipcproxy-policy\nversion: 1\nunknown: deny\ncomponents: []\n"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.out, captured.err


def _clients(address: str) -> None:
    """Real clients: busctl, gdbus and dbus-send calling the bus driver and a python-dbusmock service."""
    busctl(address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "ListNames")
    gdbus(address, "call", "--dest", MOCK, "--object-path", MOCK_PATH, "--method", "org.freedesktop.DBus.Peer.Ping")
    dbus_send(address, f"--dest={MOCK}", MOCK_PATH, "org.freedesktop.DBus.Properties.GetAll", f"string:{MOCK}")
    busctl(address, "call", MOCK, "/nope", "org.example.Nope", "Nope", check=False)


def _capturing(argv: list[str], out: Path) -> subprocess.Popen[bytes]:
    with open(out, "wb") as stream:
        return subprocess.Popen(argv, stdout=stream, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four real captures of real clients: convert's pcap and pcapng, dbus-monitor's pcap, busctl's pcapng."""
    d = tmp_path_factory.mktemp("captures")
    out = {
        "convert.pcap": d / "convert.pcap",
        "convert.pcapng": d / "convert.pcapng",
        "dbus-monitor.pcap": d / "monitor.pcap",
        "busctl.pcapng": d / "busctl.pcapng",
    }
    with PrivateBus() as bus:
        services = Services()
        try:
            services.dbusmock(bus.address)
            proxy = ProxyProcess(bus.address, d)
            try:
                _clients(proxy.address)
            finally:
                proxy.stop()
            for name in ("convert.pcap", "convert.pcapng"):
                assert main(["convert", str(proxy.trace), str(out[name])]) == 0
            monitor = _capturing(["dbus-monitor", "--pcap", "--address", bus.address], out["dbus-monitor.pcap"])
            capture = _capturing(["busctl", f"--address={bus.address}", "capture"], out["busctl.pcapng"])
            try:
                captured = (out["dbus-monitor.pcap"], out["busctl.pcapng"])
                for path in captured:
                    wait_for(
                        lambda p=path: capture_holds(bus.address, p, "GetId"), timeout=20, what=f"{path.name} to start"
                    )
                _clients(bus.address)
                for path in captured:  # a probe after the clients: once it is in, so is all they did
                    caught_up = functools.partial(capture_holds, bus.address, path, "ListActivatableNames")
                    wait_for(caught_up, timeout=20, what=f"{path.name} to catch up")
            finally:
                stop_capture(monitor)
                stop_capture(capture)
        finally:
            services.stop()
    assert out["dbus-monitor.pcap"].read_bytes()[:4] == b"\xd4\xc3\xb2\xa1"  # what dbus-monitor writes
    assert out["busctl.pcapng"].read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    return out


@pytest.fixture(scope="module")
def as_traces(captures: dict[str, Path]) -> dict[str, Path]:
    """Each capture converted into a trace by `convert`: what reading it directly must equal."""
    traces = {}
    for name, path in captures.items():
        trace = path.with_name(path.name + ".jsonl")
        assert main(["convert", str(path), str(trace)]) == 0
        traces[name] = trace
    return traces


CAPTURES = ["convert.pcap", "convert.pcapng", "dbus-monitor.pcap", "busctl.pcapng"]


@pytest.mark.parametrize("name", CAPTURES)
def test_a_capture_reads_as_the_trace_convert_makes_of_it(
    name: str, captures: dict[str, Path], as_traces: dict[str, Path]
) -> None:
    direct = list(iter_trace(str(captures[name])))
    assert direct == read_trace(as_traces[name])
    msgs = messages(direct)
    assert {"ListNames", "Ping", "GetAll", "Nope"} <= {r["member"] for r in msgs}
    # a capture knows names, not processes: no identity fields are made up
    for r in msgs:
        for side in ("sender", "destination"):
            assert not set(IDENTITY) & set(r[side]), r
    getall = next(r for r in msgs if r["member"] == "GetAll")
    assert getall["args"] == [MOCK] and getall["destination"]["names"] == [MOCK]


@pytest.mark.parametrize("name", CAPTURES)
def test_show_and_stats_read_a_capture(
    name: str, captures: dict[str, Path], as_traces: dict[str, Path], capsys: Any
) -> None:
    capture, trace = str(captures[name]), str(as_traces[name])
    status, shown, _ = run(["show", capture, "--filter", "member=GetAll,Ping"], capsys)
    assert status == 0
    header, *lines = shown.splitlines()
    assert header.startswith(f"# {capture}: trace v{records.VERSION}") and "mode=convert" in header
    assert any("member=GetAll" in line for line in lines) and any("member=Ping" in line for line in lines)
    assert run(["show", trace, "--filter", "member=GetAll,Ping"], capsys)[1].splitlines()[1:] == lines
    status, out, _ = run(["stats", "--json", capture], capsys)
    assert status == 0
    stats = json.loads(out)
    assert stats["traces"] == [capture] and stats["messages"] == len(messages(read_trace(trace)))
    assert {k: v for k, v in json.loads(run(["stats", "--json", trace], capsys)[1]).items() if k != "traces"} == {
        k: v for k, v in stats.items() if k != "traces"
    }


@pytest.mark.parametrize("name", CAPTURES)
def test_learn_check_and_diff_read_a_capture(
    name: str, captures: dict[str, Path], as_traces: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    capture, trace = str(captures[name]), str(as_traces[name])
    policies = {}
    for source in (capture, trace):
        out = tmp_path / f"{Path(source).name}.yaml"
        status, printed, _ = run(["learn", source, "-o", str(out)], capsys)
        assert status == 0 and "learnt a least-privilege policy" in printed
        policies[source] = [line for line in out.read_text().splitlines() if not line.startswith("# ")]
    assert policies[capture] == policies[trace] and "    member: GetAll" in policies[capture]
    learnt = str(tmp_path / f"{Path(capture).name}.yaml")
    status, printed, _ = run(["check", learnt, capture], capsys)
    assert status == 0 and " 0 violations" in printed
    deny = tmp_path / "deny.yaml"
    deny.write_text(DENY_ALL)
    status, printed, _ = run(["check", str(deny), capture], capsys)
    assert status == 1 and f"VIOLATION {capture}#" in printed
    assert printed.replace(capture, "X") == run(["check", str(deny), trace], capsys)[1].replace(trace, "X")
    status, printed, _ = run(["diff", capture, trace], capsys)
    assert status == 0 and "no divergence" in printed


def test_follow_is_refused_on_a_capture(captures: dict[str, Path], capsys: Any) -> None:
    status, out, err = run(["show", "--follow", str(captures["dbus-monitor.pcap"])], capsys)
    assert status == 2 and not out
    assert len(err.strip().splitlines()) == 1 and "--follow reads ipcproxy traces only" in err


# ---------------------------------------------------------------- captures of another link type


@pytest.fixture(scope="module")
def ethernet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An Ethernet capture (link type 1) in both containers, written by text2pcap."""
    d = tmp_path_factory.mktemp("ethernet")
    dump = d / "arp.txt"
    dump.write_text(ETHERNET_HEXDUMP)
    out = {"pcap": d / "arp.pcap", "pcapng": d / "arp.pcapng"}
    subprocess.run(["text2pcap", "-q", "-F", "pcap", str(dump), str(out["pcap"])], check=True, timeout=30)
    subprocess.run(["text2pcap", "-q", "-F", "pcapng", str(dump), str(out["pcapng"])], check=True, timeout=30)
    assert out["pcap"].read_bytes()[20:24] == b"\x01\x00\x00\x00"  # LINKTYPE_ETHERNET in the pcap header
    return out


@pytest.mark.parametrize("container", ["pcap", "pcapng"])
@pytest.mark.parametrize("suffix", ["jsonl", "pcap", "pcapng"])
def test_converting_no_dbus_packet_fails_and_writes_nothing(
    container: str, suffix: str, ethernet: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / f"out.{suffix}"
    status, _, err = run(["convert", str(ethernet[container]), str(out)], capsys)
    assert status == 2
    assert err.strip() == (
        f"ipcproxy: {ethernet[container]}: not a D-Bus capture: 1 packet of link type 1, none of DLT_DBUS (231)"
    )
    assert list(tmp_path.iterdir()) == []  # neither OUT nor its temporary file


@pytest.mark.parametrize("container", ["pcap", "pcapng"])
def test_reading_no_dbus_packet_fails(container: str, ethernet: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    path = str(ethernet[container])
    deny = tmp_path / "deny.yaml"
    deny.write_text(DENY_ALL)
    for argv in (
        ["show", path],
        ["stats", path],
        ["learn", path, "-o", str(tmp_path / "p.yaml")],
        ["check", str(deny), path],
        ["diff", path, path],
    ):
        status, out, err = run(argv, capsys)
        assert status == 2 and not out, argv
        assert len(err.strip().splitlines()) == 1 and err.startswith(f"ipcproxy: {path}: not a D-Bus capture"), argv


def test_skipped_packets_of_another_link_type_are_counted(
    captures: dict[str, Path], ethernet: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    """mergecap puts both captures in one pcapng with two interfaces, D-Bus and Ethernet."""
    mixed = tmp_path / "mixed.pcapng"
    subprocess.run(
        ["mergecap", "-w", str(mixed), str(captures["busctl.pcapng"]), str(ethernet["pcapng"])], check=True, timeout=30
    )
    dbus = list(read_packets(str(captures["busctl.pcapng"])))
    warning = f"ipcproxy: warning: {mixed}: 1 packet of link type 1 skipped (not DLT_DBUS, 231)"
    for suffix in ("jsonl", "pcap"):
        out = tmp_path / f"out.{suffix}"
        status, _, err = run(["convert", str(mixed), str(out)], capsys)
        assert status == 0
        assert err.splitlines()[0] == warning and len(err.splitlines()) == 2, err
    assert [p.data for p in read_packets(str(tmp_path / "out.pcap"))] == [p.data for p in dbus]
    assert len(read_trace(tmp_path / "out.jsonl")) == len(dbus)
    status, _, err = run(["stats", str(mixed)], capsys)
    assert status == 0 and err.strip() == warning


def test_a_trace_none_of_whose_messages_marshal_fails_and_writes_nothing(
    captures: dict[str, Path], as_traces: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    lines = as_traces["busctl.pcapng"].read_text().splitlines()
    broken = [lines[0]]
    for line in lines[1:]:
        rec = json.loads(line)
        rec["signature"], rec["args"] = "u", ["not a number"]  # every message's body now contradicts its signature
        broken.append(json.dumps(rec))
    trace = tmp_path / "broken.jsonl"
    trace.write_text("\n".join(broken) + "\n")
    out = tmp_path / "out.pcap"
    status, _, err = run(["convert", str(trace), str(out)], capsys)
    assert status == 2
    assert err.strip().splitlines()[-1] == (
        f"ipcproxy: {trace}: none of its {len(lines) - 1} messages could be marshalled again; nothing written"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jsonl"]
