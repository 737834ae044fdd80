"""Framing of byte streams into messages (sans-IO): transfers in, records out, no processes.

Byte vectors are real: D-Bus messages marshalled by the project's wire code,
the handshake sd-bus sends. Real programs under the tracer are in
tests/test_syscall_trace_framing.py.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from ipcproxy.dbus import wire
from ipcproxy.errors import InputError
from ipcproxy.model import Endpoint, MessageType
from ipcproxy.syscall.channels import Channel, Transfer
from ipcproxy.syscall.framing import Framing, parse_mode, parse_rule

CLIENT = Endpoint(pid=10, uid=0, exe="/usr/bin/client", comm="client")
SERVER = Endpoint(pid=20, uid=0, exe="/usr/bin/server", comm="server")


class Sink:
    """The recorder's ``record`` as a list; warnings kept."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.warnings: list[str] = []

    def record(self, fields: dict[str, Any], ts: int) -> int:
        self.records.append({"seq": len(self.records) + 1, "ts": ts, **fields})
        return len(self.records)


def framing(*rules: str, max_payload: int = 4096) -> tuple[Framing, Sink]:
    sink = Sink()
    return Framing([parse_rule(r) for r in rules], max_payload, sink.record, sink.warnings.append), sink


_clock = iter(range(1000, 10**9, 10))


def transfer(
    channel: Channel,
    direction: str,
    data: bytes,
    size: int | None = None,
    consumed: list[Transfer | None] | None = None,
    pid: int = 10,
) -> Transfer:
    ts = next(_clock)
    me = CLIENT if pid == 10 else SERVER
    other = SERVER if pid == 10 else CLIENT
    return Transfer(
        direction=direction,
        syscall="write" if direction == "send" else "read",
        pid=pid,
        tid=pid,
        ts=ts,
        ts_entry=ts - 1,
        fd=3,
        channel=channel,
        size=len(data) if size is None else size,
        payload=data,
        nfds=0,
        sender=me if direction == "send" else other,
        destination=other if direction == "send" else me,
        consumed=consumed,
    )


def pipe() -> Channel:
    return Channel("pipe", 1, 100)


def unix(inode: int = 200, path: str | None = "/run/test.sock") -> Channel:
    return Channel("unix", 1, inode, path=path, socktype="stream")


def payloads(records: list[dict[str, Any]]) -> list[bytes]:
    return [bytes.fromhex(r["payload"]) for r in records]


# ---------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("text", "header", "lengths"),
    [
        ("length:4", 4, [(b"\x00\x00\x00\x03abc", 7)]),
        ("length:2:le", 2, [(b"\x03\x00abc", 5)]),
        ("length:2:be:at=2", 4, [(b"\xff\xff\x00\x03abc", 7)]),
        ("length:4:be:total", 4, [(b"\x00\x00\x00\x07abc", 7)]),
        ("length:1:adjust=2", 1, [(b"\x03XYabc", 6)]),
        ("length:8:le", 8, [(struct.pack("<Q", 1) + b"z", 9)]),
    ],
)
def test_length_layouts(text: str, header: int, lengths: list[tuple[bytes, int]]) -> None:
    mode = parse_mode(text)
    assert mode is not None and mode.header == header
    for head, total in lengths:
        assert mode.measure(head, None) == total  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("lines", "unknown framing"),
        ("length:3", "1, 2, 4 or 8"),
        ("length:4:middle", "unknown part 'middle'"),
        ("length:4:at=x", "at= takes a whole number"),
        ("length:4:total:adjust=1", "either total or adjust"),
        ("pipes=newline", "not a stream transport"),
        ("tcp:http=newline", "give a port number"),
        ("=newline", "not a stream transport"),
    ],
)
def test_bad_framing_options_say_why(text: str, reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        parse_rule(text)


def test_rules_select_channels_first_match_wins() -> None:
    fr, _ = framing("/run/test.sock=dbus", "tcp:4000=length:2", "pipe=newline", "length:4:at=2")
    tcp = Channel("tcp", 1, 300, socktype="stream", local="127.0.0.1:51000", remote="127.0.0.1:4000")
    other_tcp = Channel("tcp", 1, 301, socktype="stream", local="127.0.0.1:51001", remote="127.0.0.1:5000")
    dgram = Channel("unix", 1, 400, path="/run/test.sock", socktype="dgram")
    assert fr.mode_of(unix()).name == "dbus"  # type: ignore[union-attr]
    assert fr.mode_of(tcp).name == "length:2"  # type: ignore[union-attr]
    assert fr.mode_of(pipe()).name == "newline"  # type: ignore[union-attr]
    assert fr.mode_of(other_tcp).name == "length:4:at=2"  # type: ignore[union-attr]
    assert fr.mode_of(dgram) is None  # datagrams are messages already
    plain, _ = framing("dbus")
    assert plain.mode_of(pipe()) is None  # D-Bus runs over sockets
    assert plain.mode_of(unix()).name == "dbus"  # type: ignore[union-attr]
    excluded, _ = framing("pipe=as-written", "newline")
    assert excluded.mode_of(pipe()) is None


# ---------------------------------------------------------------- newline
def test_lines_across_writes_name_every_syscall_and_reads_name_their_lines() -> None:
    fr, sink = framing("newline")
    ch = pipe()
    w1 = transfer(ch, "send", b"one\ntw")
    w2 = transfer(ch, "send", b"o\nthree\n")
    for w in (w1, w2):
        fr.feed(w)
    sends = list(sink.records)
    assert payloads(sends) == [b"one\n", b"two\n", b"three\n"]
    assert [r["size"] for r in sends] == [4, 4, 6]
    assert [[s["size"] for s in r["syscalls"]] for r in sends] == [[4], [2, 2], [6]]
    assert {r["framing"] for r in sends} == {"newline"}
    r1 = transfer(ch, "recv", b"one\ntwo\nth", consumed=[w1, w2], pid=20)
    r2 = transfer(ch, "recv", b"ree\n", consumed=[w2], pid=20)
    fr.feed(r1)
    fr.feed(r2)
    recvs = sink.records[3:]
    assert payloads(recvs) == [b"one\n", b"two\n", b"three\n"]
    assert [r["consumed"] for r in recvs] == [[1], [2], [3]]  # byte for byte, not every write touched
    assert recvs[2]["syscalls"][0]["size"] == 2 and recvs[2]["syscalls"][1]["size"] == 4
    assert all(r["sender"]["pid"] == 10 and r["destination"]["pid"] == 20 for r in recvs)


def test_a_line_left_open_is_recorded_as_partial_at_the_end() -> None:
    fr, sink = framing("newline")
    fr.feed(transfer(pipe(), "send", b"done\nhalf a li"))
    assert fr.finish() == 1
    assert payloads(sink.records) == [b"done\n", b"half a li"]
    assert sink.records[1]["partial"] is True and "partial" not in sink.records[0]


def test_a_cut_payload_is_a_gap_never_invented_bytes() -> None:
    fr, sink = framing("newline", max_payload=4)
    fr.feed(transfer(pipe(), "send", b"ab\ncd", size=9))  # 4 bytes of "ab\ncd\nef\n" unseen
    fr.feed(transfer(pipe(), "send", b"x\n"))
    first, second = sink.records
    assert payloads([first]) == [b"ab\n"] and "framing_error" not in first
    # "cd" + 4 unseen bytes + "x\n": the lines in the gap are not known, so one record says so
    assert second["size"] == 8 and bytes.fromhex(second["payload"]) == b"cd"
    assert second["truncated"] is True and "not recorded" in second["framing_error"]


# ---------------------------------------------------------------- length
def test_length_prefixed_messages_split_and_joined() -> None:
    fr, sink = framing("length:2:be")
    msgs = [b"\x00\x03abc", b"\x00\x00", b"\x00\x05hello"]
    stream = b"".join(msgs)
    fr.feed(transfer(unix(), "send", stream[:3]))
    fr.feed(transfer(unix(), "send", stream[3:8]))
    fr.feed(transfer(unix(), "send", stream[8:]))
    assert payloads(sink.records) == msgs
    assert [len(r["syscalls"]) for r in sink.records] == [2, 1, 2]


def test_length_framing_keeps_its_place_across_a_cut_body_but_not_a_cut_header() -> None:
    fr, sink = framing("length:1", max_payload=3)
    fr.feed(transfer(unix(), "send", b"\x06abc"[:3], size=7))  # 1 + 6 bytes, 4 unseen
    fr.feed(transfer(unix(), "send", b"\x01z"))
    assert [r["size"] for r in sink.records] == [7, 2]
    assert "not recorded" in sink.records[0]["framing_error"] and "framing_error" not in sink.records[1]
    fr2, sink2 = framing("length:4", max_payload=2)
    fr2.feed(transfer(unix(), "send", b"\x00\x00", size=8))  # the header itself is cut
    fr2.feed(transfer(unix(), "send", b"\x00\x00", size=5))
    assert sink2.warnings and "inside a header" in sink2.warnings[0]
    assert [r["size"] for r in sink2.records] == [8, 5]  # every byte still in a record
    assert all("framing_error" in r for r in sink2.records)


def test_a_length_shorter_than_its_header_ends_the_framing() -> None:
    fr, sink = framing("length:2:total")
    fr.feed(transfer(unix(), "send", b"\x00\x01rest"))
    assert len(sink.records) == 1 and "shorter than its header" in sink.records[0]["framing_error"]
    assert sink.records[0]["size"] == 6


# ---------------------------------------------------------------- dbus
def _marshal(mtype: MessageType, **kw: Any) -> bytes:
    raw = wire.build(mtype, **kw).raw
    assert raw is not None
    return raw


HELLO = _marshal(
    MessageType.METHOD_CALL,
    serial=1,
    path="/org/freedesktop/DBus",
    interface="org.freedesktop.DBus",
    member="Hello",
    destination="org.freedesktop.DBus",
)
HELLO_REPLY = _marshal(
    MessageType.METHOD_RETURN,
    serial=1,
    reply_serial=1,
    sender="org.freedesktop.DBus",
    destination=":1.7",
    signature="s",
    body=[":1.7"],
)
CALL = _marshal(
    MessageType.METHOD_CALL,
    serial=2,
    path="/org/example",
    interface="org.example.Foo",
    member="Bar",
    destination="org.example.Service",
    signature="su",
    body=["x", 5],
)
CLIENT_AUTH = b"\0AUTH EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n"
SERVER_AUTH = b"OK 0123456789abcdef0123456789abcdef\r\nAGREE_UNIX_FD\r\n"


def test_dbus_handshake_then_messages_become_the_records_the_proxy_writes() -> None:
    fr, sink = framing("dbus")
    ch = unix()
    out = CLIENT_AUTH + HELLO + CALL
    fr.feed(transfer(ch, "send", out[:30]))  # a handshake line cut between two writes
    fr.feed(transfer(ch, "send", out[30:]))
    fr.feed(transfer(ch, "recv", SERVER_AUTH + HELLO_REPLY[:20]))
    fr.feed(transfer(ch, "recv", HELLO_REPLY[20:]))
    auth = [r for r in sink.records if r["type"] == "event"]
    assert [(r["direction"], r["line"]) for r in auth] == [
        ("to_bus", "AUTH EXTERNAL 30"),
        ("to_bus", "NEGOTIATE_UNIX_FD"),
        ("to_bus", "BEGIN"),
        ("from_bus", "OK 0123456789abcdef0123456789abcdef"),
        ("from_bus", "AGREE_UNIX_FD"),
    ]
    assert auth[0]["nul"] is True and len(auth[0]["syscalls"]) == 1 and len(auth[1]["syscalls"]) == 2
    hello, call, reply = [r for r in sink.records if r["type"] != "event"]
    assert (hello["type"], hello["member"], hello["serial"], hello["direction"]) == (
        "method_call",
        "Hello",
        1,
        "to_bus",
    )
    assert hello["sender"]["bus_name"] is None and hello["sender"]["pid"] == 10  # not named before the reply
    assert hello["destination"]["bus_name"] == "org.freedesktop.DBus" and hello["destination"]["pid"] == 20
    assert (call["interface"], call["path"], call["args"], call["destination"]["names"]) == (
        "org.example.Foo",
        "/org/example",
        ["x", 5],
        ["org.example.Service"],
    )
    assert call["destination_name"] == "org.example.Service" and call["transport"] == "dbus"
    assert (reply["type"], reply["reply_serial"], reply["args"], reply["direction"]) == (
        "method_return",
        1,
        [":1.7"],
        "from_bus",
    )
    assert reply["destination"]["bus_name"] == ":1.7" and reply["latency_ns"] > 0
    assert len(reply["syscalls"]) == 2 and reply["channel"]["path"] == "/run/test.sock"
    assert not sink.warnings


def test_dbus_seen_from_the_bus_side_has_the_same_directions() -> None:
    fr, sink = framing("dbus")
    ch = unix(201)
    fr.feed(transfer(ch, "recv", CLIENT_AUTH + HELLO, pid=20))
    fr.feed(transfer(ch, "send", SERVER_AUTH + HELLO_REPLY, pid=20))
    fr.feed(transfer(ch, "recv", CALL, pid=20))
    msgs = [r for r in sink.records if r["type"] != "event"]
    assert [(r["member"] or r["type"], r["direction"]) for r in msgs] == [
        ("Hello", "to_bus"),
        ("method_return", "from_bus"),
        ("Bar", "to_bus"),
    ]
    assert msgs[2]["sender"]["bus_name"] == ":1.7" and msgs[2]["sender"]["pid"] == 10  # the client process


def test_garbage_on_a_dbus_socket_is_one_clear_record_and_a_warning() -> None:
    fr, sink = framing("dbus")
    fr.feed(transfer(unix(), "send", b"\xde\xad\xbe\xef garbage"))
    fr.feed(transfer(unix(), "send", b"more"))
    assert len(sink.warnings) == 1 and "not D-Bus: byte 0xde" in sink.warnings[0]
    assert [r["type"] for r in sink.records] == ["data", "data"]
    assert all("not D-Bus" in r["framing_error"] for r in sink.records)
    assert payloads(sink.records) == [b"\xde\xad\xbe\xef garbage", b"more"]


def test_a_bad_handshake_line_and_a_bad_header_end_the_framing() -> None:
    fr, sink = framing("dbus")
    fr.feed(transfer(unix(), "send", b"GET / HTTP/1.1\r\nHost: x\r\n"))
    assert "not a D-Bus handshake line: 'GET / HTTP/1.1'" in sink.records[0]["framing_error"]
    assert payloads(sink.records) == [b"GET / HTTP/1.1\r\n", b"Host: x\r\n"]
    fr2, sink2 = framing("dbus")
    bad = bytearray(CALL)
    bad[3] = 2  # protocol version 2
    fr2.feed(transfer(unix(), "send", CLIENT_AUTH + bytes(bad)))
    assert "unknown protocol version 2" in sink2.records[-1]["framing_error"]


def test_a_malformed_message_of_valid_length_is_recorded_and_framing_goes_on() -> None:
    fr, sink = framing("dbus")
    bad = bytearray(CALL)
    at = bytes(bad).find(b"Bar")
    bad[at : at + 3] = b"B\xffr"  # a member that is not UTF-8
    fr.feed(transfer(unix(), "send", CLIENT_AUTH + bytes(bad) + HELLO))
    data, hello = [r for r in sink.records if r["type"] != "event"]
    assert data["type"] == "data" and "malformed D-Bus message" in data["framing_error"]
    assert hello["member"] == "Hello"


def test_a_dbus_message_cut_by_max_payload_is_not_decoded_but_keeps_framing() -> None:
    fr, sink = framing("dbus", max_payload=64)
    fr.feed(transfer(unix(), "send", CLIENT_AUTH))
    fr.feed(transfer(unix(), "send", CALL[:64], size=len(CALL)))
    fr.feed(transfer(unix(), "send", HELLO[:64], size=len(HELLO)))
    cut = [r for r in sink.records if r["type"] == "data"]
    assert len(cut) == 2 and all("cannot be decoded" in r["framing_error"] for r in cut)
    assert [r["size"] for r in cut] == [len(CALL), len(HELLO)]


def test_records_as_written_still_name_the_sent_messages_they_read() -> None:
    fr, sink = framing("/run/a.sock=newline")
    sender, receiver = unix(500, "/run/a.sock"), unix(501, None)  # only the sending end is framed
    w = transfer(sender, "send", b"one\ntwo\n")
    fr.feed(w)
    fr.feed(transfer(receiver, "recv", b"one\ntwo\n", consumed=[w], pid=20))
    lines, read = sink.records[:2], sink.records[2]
    assert payloads(lines) == [b"one\n", b"two\n"]
    assert "framing" not in read and read["consumed"] == [1, 2]
    fr2, sink2 = framing("length:2:total")
    w2 = transfer(unix(502), "send", b"\x00\x01abc")  # a length shorter than its header
    fr2.feed(w2)
    fr2.feed(transfer(unix(503), "recv", b"\x00\x01abc", consumed=[w2], pid=20))
    assert [r["consumed"] for r in sink2.records if r["direction"] == "recv"] == [[1]]
    assert all("shorter than its header" in r["framing_error"] for r in sink2.records)
