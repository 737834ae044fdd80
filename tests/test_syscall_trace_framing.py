"""`ipcproxy trace --framing` on real programs: coreutils, Python over a socketpair, D-Bus clients on a real bus.

The D-Bus tests run the client under the tracer inside `ipcproxy run`, so the
proxy records the very same conversation: both traces must hold the same
messages (types, serials, paths, interfaces, members, arguments, names).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import have, read_trace, run_trace, trace_unavailable

IPCPROXY = [sys.executable, "-m", "ipcproxy"]
TIMEOUT = 120


_REASON = trace_unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def data(records: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    out = [r for r in records if r.get("type") == "data"]
    for key, value in match.items():
        out = [r for r in out if r.get(key) == value]
    return out


def payload(r: dict[str, Any]) -> bytes:
    return bytes.fromhex(r["payload"])


# ---------------------------------------------------------------- newline
def test_newline_framing_of_a_coreutils_pipeline_gives_every_line_once(tmp_path: Path) -> None:
    command = ["sh", "-c", "seq 3000 | cat > /dev/null"]
    proc, records = run_trace(["--max-payload", "65536", "--framing", "pipe=newline", "--", *command], tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = [f"{i}\n".encode() for i in range(1, 3001)]
    sent = [r for r in data(records, direction="send") if r["sender"].get("comm") == "seq"]
    got = [r for r in data(records, direction="recv") if r["destination"].get("comm") == "cat"]
    assert [payload(r) for r in sent] == expected
    assert [payload(r) for r in got] == expected
    assert all(r["framing"] == "newline" and "framing_error" not in r for r in sent + got)
    # seq writes in blocks: the lines that straddle two writes name both
    straddling = [r for r in sent if len(r["syscalls"]) > 1]
    assert straddling and all(sum(s["size"] for s in r["syscalls"]) == r["size"] for r in straddling)
    # each line read names the one line written that it is
    assert [r["consumed"] for r in got] == [[r["seq"]] for r in sent]


def test_newline_framing_with_cut_payloads_says_where_lines_are_not_known(tmp_path: Path) -> None:
    proc, records = run_trace(["--framing", "pipe=newline", "--", "sh", "-c", "seq 3000 | cat > /dev/null"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = b"".join(f"{i}\n".encode() for i in range(1, 3001))
    sent = [r for r in data(records, direction="send") if r["sender"].get("comm") == "seq"]
    assert sum(r["size"] for r in sent) == len(text)  # every byte in a record, none twice
    cut = [r for r in sent if "framing_error" in r]
    assert cut and all("not recorded (--max-payload 4096)" in r["framing_error"] for r in cut)
    at = 0
    for r in sent:  # what is recorded is what was written, where it was written
        assert text[at : at + r["size"]].startswith(payload(r))
        assert r.get("truncated", False) == (len(payload(r)) < r["size"])
        at += r["size"]


def test_newline_framing_of_socat_over_tcp_selected_by_port(tmp_path: Path) -> None:
    if not have("socat"):
        pytest.skip("needs socat")
    port = 20000 + os.getpid() % 20000
    script = (
        f"socat -u TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr - > {tmp_path / 'got'} & "
        f"printf 'alpha\\nbeta\\ngam' | socat -u - TCP:127.0.0.1:{port},retry=50,interval=0.1; wait"
    )
    proc, records = run_trace(["--framing", f"tcp:{port}=newline", "--", "sh", "-c", script], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "got").read_bytes() == b"alpha\nbeta\ngam"
    sent = data(records, transport="tcp", direction="send")
    got = data(records, transport="tcp", direction="recv")
    assert [payload(r) for r in sent] == [b"alpha\n", b"beta\n", b"gam"]
    assert [payload(r) for r in got] == [b"alpha\n", b"beta\n", b"gam"]
    assert sent[-1]["partial"] is True and got[-1]["partial"] is True  # no newline before the end
    assert all(r["framing"] == "newline" for r in sent + got)
    assert [r["consumed"] for r in got] == [[r["seq"]] for r in sent]
    assert not data(records, transport="pipe", framing="newline")  # the pipe into socat is not framed


def test_without_framing_nothing_changes(tmp_path: Path) -> None:
    proc, records = run_trace(["--", "sh", "-c", "seq 3000 | cat > /dev/null"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not any("framing" in r or "syscalls" in r for r in records)


# ---------------------------------------------------------------- length-prefixed
LENGTH_SCRIPT = textwrap.dedent(
    """
    import os, socket, struct, sys
    messages = [b"x" * n for n in (0, 1, 5, 300, 70000)] + [b"last"]
    a, b = socket.socketpair()
    if os.fork() == 0:
        a.close()
        buf = b""
        while chunk := b.recv(7):  # small reads: a message takes several
            buf += chunk
        got = []
        while buf:
            (n,) = struct.unpack(">I", buf[:4])
            got.append(buf[4 : 4 + n])
            buf = buf[4 + n :]
        os._exit(0 if got == messages else 1)
    b.close()
    frames = b"".join(struct.pack(">I", len(m)) + m for m in messages)
    a.send(frames[:2])  # half a header
    a.send(frames[2:9])
    a.sendall(frames[9:])
    a.close()
    _, status = os.wait()
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def test_length_prefixed_frames_over_a_socketpair(tmp_path: Path) -> None:
    proc, records = run_trace(
        ["--max-payload", "131072", "--framing", "unix=length:4:be", "--", sys.executable, "-c", LENGTH_SCRIPT],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    sizes = [0, 1, 5, 300, 70000, 4]
    sent = data(records, transport="unix", direction="send")
    got = data(records, transport="unix", direction="recv")
    assert [r["size"] - 4 for r in sent] == sizes
    assert [r["size"] - 4 for r in got] == sizes
    assert payload(got[-1]) == b"\x00\x00\x00\x04last" and payload(sent[3])[4:] == b"x" * 300
    assert len(sent[0]["syscalls"]) == 2  # its header was sent in two pieces
    pieces = [part["size"] for part in got[4]["syscalls"]]  # read at most 7 bytes at a time
    assert sum(pieces) == 70004 and max(pieces) <= 7 and len(pieces) >= 70004 // 7
    assert [r["consumed"] for r in got] == [[r["seq"]] for r in sent]
    assert not any("framing_error" in r or r.get("partial") for r in sent + got)


def test_a_message_left_unfinished_is_recorded_as_partial(tmp_path: Path) -> None:
    script = "import socket; a, b = socket.socketpair(); a.send(b'\\x00\\x00\\x00\\x10abc'); print(b.recv(99))"
    proc, records = run_trace(["--framing", "length:4", "--", sys.executable, "-c", script], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (sent,) = data(records, transport="unix", direction="send")
    assert sent["partial"] is True and payload(sent) == b"\x00\x00\x00\x10abc"


# ---------------------------------------------------------------- D-Bus
def _dbus_view(r: dict[str, Any]) -> tuple[Any, ...]:
    return (
        r["direction"],
        r["type"],
        r["serial"],
        r["reply_serial"],
        r["path"],
        r["interface"],
        r["member"],
        r["error_name"],
        r["signature"],
        r["args"],
        r["sender"]["bus_name"],
        r.get("destination_name"),
        r["fds"],
    )


CLIENTS = {
    "busctl": ["busctl", "--user", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
               "GetNameOwner", "s", "org.freedesktop.DBus"],
    "gdbus": ["gdbus", "call", "--session", "--dest", "org.freedesktop.DBus", "--object-path", "/org/freedesktop/DBus",
              "--method", "org.freedesktop.DBus.ListNames"],
    "dbus-send": ["dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
                  "org.freedesktop.DBus.GetId"],
}  # fmt: skip


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_dbus_framing_decodes_what_the_proxy_records(client: str, tmp_path: Path) -> None:
    if not (have(client) and have("dbus-daemon")):
        pytest.skip(f"needs {client} and dbus-daemon")
    proxy_trace, sys_trace = tmp_path / "proxy.jsonl", tmp_path / "sys.jsonl"
    inner = [*IPCPROXY, "trace", "-q", "--framing", "dbus", "--max-payload", "1048576", "-w", str(sys_trace)]
    inner += ["--", *CLIENTS[client]]
    proc = subprocess.run(
        [*IPCPROXY, "run", "-q", "-w", str(proxy_trace), "--", *inner], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr
    assert "framing ends" not in proc.stderr
    seen = read_trace(sys_trace)
    auth = [r for r in seen if r.get("event") == "dbus_auth"]
    assert auth[0]["direction"] == "to_bus" and auth[0]["line"].startswith("AUTH") and auth[0]["nul"] is True
    assert any(r["line"] == "BEGIN" for r in auth) and any(r["line"].startswith("OK ") for r in auth)
    ours = [r for r in seen if r.get("transport") == "dbus"]
    assert all(r["framing"] == "dbus" and r["channel"]["kind"] == "unix" for r in ours)
    assert not data(seen, transport="unix")  # every byte of the connection is in a handshake line or a message
    hello_reply = next(r for r in ours if r["type"] == "method_return" and r["reply_serial"] == 1)
    unique = hello_reply["args"][0]
    # the proxy's records of that client's connection
    recorded = read_trace(proxy_trace)
    conn = next(r["connection"] for r in recorded if r.get("destination", {}).get("bus_name") == unique)
    theirs = [r for r in recorded if r.get("connection") == conn and r.get("transport") == "dbus"]
    for direction in ("to_bus", "from_bus"):
        mine = [_dbus_view(r) for r in ours if r["direction"] == direction]
        proxied = [_dbus_view(r) for r in theirs if r["direction"] == direction]
        assert mine == proxied, direction
    assert {r["member"] for r in ours if r["direction"] == "to_bus"} >= {"Hello"}
    call = next(r for r in ours if r["type"] == "method_call" and r["member"] != "Hello")
    assert call["sender"]["bus_name"] == unique and call["sender"]["comm"] == client
    reply = next(r for r in ours if r.get("reply_serial") == call["serial"])
    assert reply["latency_ns"] > 0 and reply["destination"]["bus_name"] == unique


def test_dbus_framing_on_a_private_bus_by_its_socket_path(tmp_path: Path) -> None:
    if not (have("busctl") and have("dbus-daemon")):
        pytest.skip("needs busctl and dbus-daemon")
    from ipcproxy.dbus.launcher import PrivateBus

    with PrivateBus() as bus:
        where = str(bus.socket)
        proc, records = run_trace(
            ["--framing", f"{where}=dbus", "--", "busctl", f"--address={bus.address}", "call", "org.freedesktop.DBus",
             "/org/freedesktop/DBus", "org.freedesktop.DBus.Peer", "Ping"],
            tmp_path,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    calls = [r for r in records if r.get("type") == "method_call"]
    assert [c["member"] for c in calls] == ["Hello", "Ping"]
    ping = calls[1]
    assert ping["interface"] == "org.freedesktop.DBus.Peer" and ping["destination_name"] == "org.freedesktop.DBus"
    assert ping["destination"]["bus_name"] == "org.freedesktop.DBus"
    assert ping["destination"]["comm"] == "dbus-daemon"  # the driver is the process at the socket's other end
    assert ping["channel"]["path"] == where
    # a D-Bus policy learnt from the syscall-level trace, and the trace checked against it
    policy = tmp_path / "policy.yaml"
    trace = str(tmp_path / "trace.jsonl")
    learnt = subprocess.run([*IPCPROXY, "learn", trace, "-o", str(policy)], capture_output=True, text=True, timeout=60)
    assert learnt.returncode == 0, learnt.stderr
    text = policy.read_text()
    assert "component: /usr/bin/busctl" in text and "member: Ping" in text
    checked = subprocess.run([*IPCPROXY, "check", str(policy), trace], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "0 violations" in checked.stdout, checked.stdout + checked.stderr


GARBAGE = textwrap.dedent(
    """
    import os, socket
    a, b = socket.socketpair()
    if os.fork() == 0:
        a.send(b"\\xde\\xad\\xbe\\xef not a bus"); a.send(b"tail"); os._exit(0)
    os.wait()
    print(b.recv(100))
    """
)


def test_garbage_on_a_socket_with_dbus_framing_is_a_clear_record_and_warning(tmp_path: Path) -> None:
    proc, records = run_trace(["--framing", "dbus", "--", sys.executable, "-c", GARBAGE], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "framing ends" in line]
    assert len(warnings) == 2  # the sending and the receiving side
    assert all(w.startswith("ipcproxy: trace: unix:[") and "not D-Bus: byte 0xde" in w for w in warnings)
    sent = data(records, transport="unix", direction="send")
    assert [payload(r) for r in sent] == [b"\xde\xad\xbe\xef not a bus", b"tail"]
    assert all("not D-Bus: byte 0xde" in r["framing_error"] for r in sent)
    got = data(records, transport="unix", direction="recv")
    assert b"".join(payload(r) for r in got) == b"\xde\xad\xbe\xef not a bustail"


def test_show_prints_framed_records(tmp_path: Path) -> None:
    proc, _ = run_trace(["--framing", "newline", "--", "sh", "-c", "printf 'ab\\ncd\\n' | cat > /dev/null"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = subprocess.run(
        [*IPCPROXY, "show", str(tmp_path / "trace.jsonl")], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "'ab\\n'" in shown.stdout and "'cd\\n'" in shown.stdout


@pytest.mark.parametrize(
    ("option", "reason"),
    [("bogus", "unknown framing"), ("length:3", "must be 1, 2, 4 or 8"), ("tcp:x=newline", "port number")],
)
def test_a_bad_framing_option_is_one_line_and_status_2(option: str, reason: str, tmp_path: Path) -> None:
    proc, records = run_trace(["--framing", option, "--", "true"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and reason in proc.stderr and "Traceback" not in proc.stderr
    assert records == []
