"""pcap/pcapng: what we write opens in tshark; dbus-monitor and busctl captures convert into traces."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
from collections import Counter
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
    capture_holds,
    dbus_send,
    messages,
    read_trace,
    stop_capture,
    wait_for,
)
from ipcproxy.cli import main
from ipcproxy.dbus import wire
from ipcproxy.dbus.launcher import PrivateBus
from ipcproxy.model import Endpoint, MessageType
from ipcproxy.trace import reader, records
from ipcproxy.trace.dbus_values import record_to_bytes
from ipcproxy.trace.pcapfile import Packet, read_packets
from ipcproxy.trace.stats import Deliveries

MOCK = "org.example.Mock"
MOCK_PATH = "/org/example/Mock"
HOST = "org.freedesktop.hostname1"
SIG = "sayuia{sv}(si)adbxtnqoga{ss}aasv"
ECHO_ARGS = [
    *("hello", "3", "1", "2", "3", "7", "-5"),
    *("2", "a", "s", "x", "b", "u", "5"),
    *("k", "3", "2", "1.5", "2.5", "true", "-9000000000", "18000000000000000000", "-3", "65000", "/a/b", "a{sv}"),
    *("1", "k", "v", "2", "1", "a", "0", "i", "42"),
]
KEPT = ("type", "serial", "reply_serial", "path", "interface", "member", "error_name", "signature", "args")


def tshark(path: Path, home: Path, *extra: str) -> str:
    """tshark with default preferences (an empty home), full dissection."""
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    r = subprocess.run(["tshark", "-r", str(path), *extra], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def dissected(path: Path, home: Path) -> tuple[int, list[str], str]:
    """Number of frames, the D-Bus member names tshark found, and the full text."""
    text = tshark(path, home, "-V")
    frames = len(re.findall(r"^Frame \d+:", text, re.M))
    assert len(re.findall(r"^D-Bus$", text, re.M)) == frames  # every frame went through the D-Bus dissector
    assert "Malformed" not in text and "Expert Info (Error" not in text
    return frames, re.findall(r"^ +Member: (\S+)$", text, re.M), text


def distinct(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each message once (a message between two proxied clients is recorded on both connections)."""
    deliveries = Deliveries()
    return [r for r in messages(recs) if not deliveries.seen(r)[0]]


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real trace with many signatures: a python-dbusmock Echo method, a signal, hostnamed, three clients."""
    d = tmp_path_factory.mktemp("trace")
    with PrivateBus() as bus:
        proxy = ProxyProcess(bus.address, d)
        services = Services()
        try:
            services.dbusmock(proxy.address)
            services.start([HOSTNAMED], proxy.address, wait_name=HOST)
            mock = ("org.freedesktop.DBus.Mock",)
            busctl(
                proxy.address,
                "call",
                MOCK,
                MOCK_PATH,
                *mock,
                "AddMethod",
                "sssss",
                MOCK,
                "Echo",
                SIG,
                SIG,
                "ret = args",
            )
            echoed = busctl(proxy.address, "call", "--", MOCK, MOCK_PATH, MOCK, "Echo", SIG, *ECHO_ARGS).stdout
            assert echoed.startswith(SIG + ' "hello"')
            busctl(
                proxy.address,
                "call",
                MOCK,
                MOCK_PATH,
                *mock,
                "EmitSignal",
                "sssav",
                MOCK,
                "Changed",
                "s",
                "1",
                "s",
                "hi",
            )
            busctl(
                proxy.address,
                "call",
                HOST,
                "/org/freedesktop/hostname1",
                "org.freedesktop.DBus.Properties",
                "GetAll",
                "s",
                HOST,
            )
            busctl(proxy.address, "call", HOST, "/nope", "org.example.Nope", "Nope", check=False)
            dbus_send(proxy.address, f"--dest={MOCK}", MOCK_PATH, "org.freedesktop.DBus.Introspectable.Introspect")
        finally:
            services.stop()
            proxy.stop()
    return proxy.trace


def convert(src: Path, dst: Path, capsys: pytest.CaptureFixture[str]) -> str:
    status = main(["convert", str(src), str(dst)])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------- trace -> pcap(ng) -> tshark


@pytest.mark.parametrize("ext", ["pcap", "pcapng"])
def test_capture_from_trace_opens_in_tshark(trace: Path, tmp_path: Path, ext: str, capsys: Any) -> None:
    out = tmp_path / f"t.{ext}"
    err = convert(trace, out, capsys)
    want = distinct(read_trace(trace))
    assert f"wrote {len(want)} messages" in err
    head = out.read_bytes()[:4]
    assert head == (b"\x0a\x0d\x0d\x0a" if ext == "pcapng" else b"\x4d\x3c\xb2\xa1")
    frames, members, text = dissected(out, tmp_path)
    assert frames == len(want)
    assert Counter(members) == Counter(r["member"] for r in want if r["member"])
    assert {"Echo", "Changed", "GetAll", "Nope", "Introspect", "Hello"} <= set(members)
    # the body is there too: tshark decodes the Echo arguments
    assert "18000000000000000000" in text and "-9000000000" in text and "/a/b" in text
    # every message names its sender, as on the bus (a client's first ones learn it from later records)
    senders = re.findall(r"^ +Sender: (\S+)$", text, re.M)
    assert len(senders) == len(want)


def test_round_trip_keeps_header_and_arguments(trace: Path, tmp_path: Path, capsys: Any) -> None:
    for ext in ("pcap", "pcapng"):
        cap = tmp_path / f"t.{ext}"
        back = tmp_path / f"back-{ext}.jsonl"
        convert(trace, cap, capsys)
        convert(cap, back, capsys)
        want = distinct(read_trace(trace))
        got = read_trace(back)
        assert len(got) == len(want)
        for a, b in zip(want, got, strict=True):
            for key in KEPT:
                if key == "signature" and a["signature"] and b["signature"] != a["signature"]:
                    # only variants' inner types may differ; arguments compare equal below
                    assert "v" in a["signature"], (a, b)
                    continue
                assert a[key] == b[key], (key, a, b)
            assert a.get("destination_name") == b.get("destination_name")
            if a["sender"]["bus_name"]:
                assert b["sender"]["bus_name"] == a["sender"]["bus_name"]
            assert b["direction"] == "observed" and b["verdict"] == "forwarded"
        echo = next(r for r in got if r["member"] == "Echo" and r["type"] == "method_call")
        assert echo["args"][:3] == ["hello", "010203", 7] and echo["args"][9] == 18000000000000000000
        assert echo["destination"]["names"] == [MOCK]  # learnt from NameOwnerChanged in the capture
        replies = [r for r in got if r["type"] == "method_return"]
        assert replies and all(r.get("latency_ns", -1) >= 0 for r in replies)


def test_variants_are_rebuilt_from_json_with_guessed_types() -> None:
    """Common signatures, unusual values; the record's arguments survive marshalling again."""
    cases: list[tuple[str, list[Any]]] = [
        ("v", [{"a": [1, 2], "b": {"c": True}, "d": 1.5, "e": ["x", 2], "f": []}]),
        ("av", [[1, "two", 2**40, -(2**40), 2**63 + 1, False]]),
        ("a{iv}", [{"1": "x", "-2": [["y", 3]]}]),
        ("a{bs}", [{"True": "yes", "False": "no"}]),
        ("aay", [["00", "ff10"]]),
        ("h", [0]),
    ]
    for serial, (sig, args) in enumerate(cases, 1):
        message = wire.build(MessageType.SIGNAL, serial=serial, path="/p", interface="a.b", member="M")
        rec = records.message_record(
            seq=serial,
            ts_ns=1,
            time=records.iso_now(),
            message=message,
            sender=Endpoint(bus_name=":1.9"),
            destination=Endpoint(),
            verdict="forwarded",
            direction="observed",
            connection=None,
            args=args,
        )
        rec["signature"] = sig
        rec["fds"] = 1 if sig == "h" else 0
        raw, bodyless = record_to_bytes(rec)
        parsed = wire.parse_message(raw)
        assert not bodyless and parsed.sender == ":1.9" and parsed.serial == serial
        assert wire.jsonable(parsed.args) == args, sig


def test_trace_without_arguments_keeps_headers(trace: Path, tmp_path: Path, capsys: Any) -> None:
    with open(trace, "rb") as stream:
        stripped = [json.dumps(reader.read_header(stream, str(trace)))]
    for rec in read_trace(trace):  # full records: a trace may hold them as they are
        if rec.get("signature"):
            rec["args"] = []  # as written with --no-args
        stripped.append(json.dumps(rec))
    bare = tmp_path / "bare.jsonl"
    bare.write_text("\n".join(stripped) + "\n")
    err = convert(bare, tmp_path / "bare.pcap", capsys)
    assert "without a body" in err
    frames, members, _ = dissected(tmp_path / "bare.pcap", tmp_path)
    assert frames == len(distinct(read_trace(trace))) and "Echo" in members


# ---------------------------------------------------------------- real captures -> trace


def _capture_until_seen(address: str, capture: Path, probe_member: str = "GetId") -> None:
    """Make probe calls until the capturing tool is seen to record them."""
    wait_for(lambda: capture_holds(address, capture, probe_member), timeout=20, what=f"{capture.name} to capture")


def _client_calls(address: str) -> None:
    busctl(address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "ListNames")
    dbus_send(
        address,
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.GetNameOwner",
        "string:org.freedesktop.DBus",
    )
    dbus_send(address, f"--dest={MOCK}", MOCK_PATH, "org.freedesktop.DBus.Properties.GetAll", f"string:{MOCK}")


def _check_converted(recs: list[dict[str, Any]]) -> None:
    def find(kind: str, member: str) -> dict[str, Any]:
        return next(r for r in recs if r["type"] == kind and r.get("member") == member)

    listnames = find("method_call", "ListNames")
    assert listnames["destination_name"] == "org.freedesktop.DBus" and listnames["sender"]["bus_name"].startswith(":")
    reply = next(
        r
        for r in recs
        if r["type"] == "method_return"
        and r["reply_serial"] == listnames["serial"]
        and r["destination"]["bus_name"] == listnames["sender"]["bus_name"]
    )
    assert reply["sender"]["bus_name"] == "org.freedesktop.DBus" and MOCK in reply["args"][0]
    assert reply["latency_ns"] >= 0 and reply["signature"] == "as"
    owner = find("method_call", "GetNameOwner")
    assert owner["args"] == ["org.freedesktop.DBus"] and owner["interface"] == "org.freedesktop.DBus"
    getall = find("method_call", "GetAll")
    assert getall["args"] == [MOCK] and getall["destination"]["names"] == [MOCK]
    assert find("signal", "NameOwnerChanged")["destination"] == {"bus_name": None, "names": []}
    assert all(r["direction"] == "observed" and r["verdict"] == "forwarded" for r in recs if r["type"] != "event")
    times = [r["ts"] for r in recs]
    assert times == sorted(times) and times[0] > 1_000_000_000 * 1_000_000_000  # wall clock, ns


@pytest.mark.parametrize("tool", ["dbus-monitor", "busctl"])
def test_real_capture_converts_into_a_trace(
    tool: str, bus: Any, services: Services, tmp_path: Path, capsys: Any
) -> None:
    services.dbusmock(bus.address)
    capture = tmp_path / ("mon.pcap" if tool == "dbus-monitor" else "cap.pcapng")
    argv = (
        ["dbus-monitor", "--pcap", "--address", bus.address]
        if tool == "dbus-monitor"
        else ["busctl", f"--address={bus.address}", "capture"]
    )
    with open(capture, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
    try:
        _capture_until_seen(bus.address, capture)
        _client_calls(bus.address)
        # a probe after the clients: once it is in the capture, so is everything they did
        _capture_until_seen(bus.address, capture, "ListActivatableNames")
    finally:
        stop_capture(proc)
    assert capture.read_bytes()[:4] == (b"\xd4\xc3\xb2\xa1" if tool == "dbus-monitor" else b"\x0a\x0d\x0d\x0a")
    trace_path = tmp_path / "from-capture.jsonl"
    convert(capture, trace_path, capsys)
    recs = read_trace(trace_path)
    _check_converted(recs)
    # and back: the same packets, the same members, as tshark sees them
    again = tmp_path / "again.pcapng"
    convert(trace_path, again, capsys)
    frames, members, _ = dissected(again, tmp_path)
    original_frames, original_members, _ = dissected(capture, tmp_path)
    assert frames == original_frames and Counter(members) == Counter(original_members)
    # show and stats work on it
    assert main(["stats", str(trace_path)]) == 0
    assert main(["show", str(trace_path), "--filter", "member=ListNames"]) == 0
    assert "member=ListNames" in capsys.readouterr().out


# ---------------------------------------------------------------- container variants


def _be_pcap_us(packets: list[Packet]) -> bytes:
    out = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535 * 4096, 231)
    for p in packets:
        sec, ns = divmod(p.ts_ns, 1_000_000_000)
        out += struct.pack(">IIII", sec, ns // 1000, len(p.data), len(p.data)) + p.data
    return out


def _be_pcapng_us_with_spb(packets: list[Packet]) -> bytes:
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) & 3)
        return struct.pack(">II", btype, len(body) + 12) + body + struct.pack(">I", len(body) + 12)

    out = block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack(">HHI", 231, 0, 0) + struct.pack(">HH", 9, 1) + bytes([6, 0, 0, 0]) + b"\0" * 4)
    out += block(99, b"unknown block, skipped")
    for i, p in enumerate(packets):
        if i == 1:  # a simple packet block: no timestamp of its own
            out += block(3, struct.pack(">I", len(p.data)) + p.data)
            continue
        us = p.ts_ns // 1000
        out += block(6, struct.pack(">IIIII", 0, us >> 32, us & 0xFFFFFFFF, len(p.data), len(p.data)) + p.data)
    return out


def test_pcap_byte_orders_and_resolutions(trace: Path, tmp_path: Path, capsys: Any) -> None:
    ours = tmp_path / "t.pcap"
    convert(trace, ours, capsys)
    packets = list(read_packets(str(ours)))
    variants = {"be-us.pcap": _be_pcap_us(packets), "be-us.pcapng": _be_pcapng_us_with_spb(packets)}
    for name, data in variants.items():
        path = tmp_path / name
        path.write_bytes(data)
        got = list(read_packets(str(path)))
        assert [p.data for p in got] == [p.data for p in packets], name
        assert [p.ts_ns // 1000 for i, p in enumerate(got) if i != 1] == [
            p.ts_ns // 1000 for i, p in enumerate(packets) if i != 1
        ]
        if name.endswith(".pcapng"):
            assert got[1].ts_ns == got[0].ts_ns  # the simple packet takes the time of the one before
        frames, _, _ = dissected(path, tmp_path)
        assert frames == len(packets)  # tshark agrees that these files are well-formed


def test_truncated_capture_converts_what_is_whole(trace: Path, tmp_path: Path, capsys: Any) -> None:
    for ext in ("pcap", "pcapng"):
        whole = tmp_path / f"t.{ext}"
        convert(trace, whole, capsys)
        cut = tmp_path / f"cut.{ext}"
        cut.write_bytes(whole.read_bytes()[:-10])
        out = tmp_path / f"cut-{ext}.jsonl"
        err = convert(cut, out, capsys)
        assert "truncated" in err
        assert len(read_trace(out)) == len(list(read_packets(str(whole)))) - 1


def test_malformed_packet_becomes_an_event(trace: Path, tmp_path: Path, capsys: Any) -> None:
    good = tmp_path / "t.pcap"
    convert(trace, good, capsys)
    packets = list(read_packets(str(good)))
    data = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 1 << 27, 231))
    for i, p in enumerate(packets[:3]):
        body = p.data if i != 1 else b"l\x01\x00\x01" + b"\xff" * 12  # a corrupt header
        data += struct.pack("<IIII", 1, 0, len(body), len(body)) + body
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(data))
    out = tmp_path / "bad.jsonl"
    convert(bad, out, capsys)
    recs = read_trace(out)
    assert len(recs) == 3
    assert recs[1]["type"] == "event" and recs[1]["event"] == "malformed" and recs[1]["packet"] == 2
    assert recs[0]["type"] != "event" and recs[2]["type"] != "event"


# ---------------------------------------------------------------- -w FILE.pcap / .pcapng


@pytest.mark.parametrize("ext", ["pcap", "pcapng"])
def test_run_writes_capture_directly(ext: str, tmp_path: Path) -> None:
    out = tmp_path / f"live.{ext}"
    r = subprocess.run(
        [
            *IPCPROXY,
            "run",
            "-q",
            "-w",
            str(out),
            "--",
            "busctl",
            "--user",
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "ListNames",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == (b"\x0a\x0d\x0d\x0a" if ext == "pcapng" else b"\x4d\x3c\xb2\xa1")
    frames, members, text = dissected(out, tmp_path)
    assert members.count("ListNames") == 1 and members.count("Hello") == 1
    assert frames == len(list(read_packets(str(out))))
    # the call left busctl without a sender; the capture shows it as the bus delivered it
    call = next(wire.parse_message(p.data) for p in read_packets(str(out)) if b"ListNames" in p.data)
    assert call.sender is not None and call.sender.startswith(":")


# ---------------------------------------------------------------- bad input


def _one_line_exit_2(argv: list[str], capsys: Any) -> str:
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_convert_bad_input(trace: Path, tmp_path: Path, capsys: Any) -> None:
    assert "no such file" in _one_line_exit_2(
        ["convert", str(tmp_path / "nope.pcap"), str(tmp_path / "x.jsonl")], capsys
    )
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "neither" in _one_line_exit_2(["convert", str(text), str(tmp_path / "x.pcap")], capsys)
    assert "already a trace" in _one_line_exit_2(["convert", str(trace), str(tmp_path / "x.jsonl")], capsys)
    future = tmp_path / "future.jsonl"
    future.write_text(json.dumps({"format": "ipcproxy-trace", "version": 99}) + "\n")
    assert "version 99" in _one_line_exit_2(["convert", str(future), str(tmp_path / "x.pcap")], capsys)
    corrupt = tmp_path / "corrupt.pcap"
    corrupt.write_bytes(
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 0, 231) + struct.pack("<IIII", 0, 0, 1 << 30, 1 << 30)
    )
    assert "corrupt" in _one_line_exit_2(["convert", str(corrupt), str(tmp_path / "x.jsonl")], capsys)
    assert not (tmp_path / "x.jsonl").exists()  # nothing half-written is left behind
    assert "cannot write" in _one_line_exit_2(["convert", str(trace), str(tmp_path / "no" / "dir.pcap")], capsys)
    _one_line_exit_2(["convert", str(tmp_path), str(tmp_path / "x.pcap")], capsys)
