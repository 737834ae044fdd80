"""Limits and bad input on real buses: the offender is closed with a logged reason, nobody else notices.

Clients are plain sockets (see test_proxy_faithful.RawClient) so they can
send exactly the bad bytes each case needs.
"""

import hashlib
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from conftest import messages
from ipcproxy.dbus.wire import DESTINATION, MAX_MESSAGE_SIZE, MEMBER, PATH, SIGNATURE, UNIX_FDS
from ipcproxy.model import MessageType
from test_proxy_faithful import DRIVER, RawClient, connection_of, socket_path
from test_wire import MALFORMED, call_fields, frame


def _get_id(endian: str, serial: int) -> bytes:
    return frame(
        endian, 1, serial, [(PATH, "o", "/org/freedesktop/DBus"), (MEMBER, "s", "GetId"), (DESTINATION, "s", DRIVER)]
    )


def _head_only(endian: str, body_len: int, fields_len: int) -> bytes:
    e = "<" if endian == "l" else ">"
    return endian.encode() + b"\x01\x00\x01" + struct.pack(e + "III", body_len, 1, fields_len)


# What an established (Hello'd) client sends; the proxy must close it, saying why.
BAD_FRAMES: dict[str, Callable[[RawClient], tuple[bytes, list[int]]]] = {
    "bad endianness": lambda c: (MALFORMED["bad endianness"], []),
    "bad type": lambda c: (MALFORMED["type 5"], []),
    "bad version": lambda c: (MALFORMED["version 2"], []),
    # only 16 bytes are sent: the proxy must not wait for the 200 MiB it announces
    "announced 200 MiB": lambda c: (_head_only("l", 200 << 20, 0x40), []),
    "announced one byte over 128 MiB": lambda c: (_head_only("B", MAX_MESSAGE_SIZE - 16 - 0x40 + 1, 0x40), []),
    "header string overruns": lambda c: (MALFORMED["header string overruns header BE"], []),
    "body longer than signature": lambda c: (MALFORMED["body longer than signature"], []),
    "method call without member": lambda c: (MALFORMED["method call without member"], []),
    "fd announced, none sent": lambda c: (
        frame("l", 1, 9, [*call_fields(), (SIGNATURE, "g", "h"), (UNIX_FDS, "u", 1)], "h", [0]),
        [],
    ),
    "good call then garbage in one write": lambda c: (_get_id("l", 50) + b"\xff" * 16, []),
    # these two once crashed the whole proxy (a segfault in dbus-fast's decoder)
    "variant with an empty signature": lambda c: (MALFORMED["empty variant signature in a{sv}"], []),
    "byte array length wrapping 32 bits": lambda c: (MALFORMED["byte array length wraps 32 bits"], []),
}


def test_malformed_frames_close_only_their_sender(any_bus: Any, proxy_factory: Any) -> None:
    proxy = proxy_factory(any_bus.address)
    bystander = RawClient(proxy.address, endian="B")
    bystander.hello()
    offenders: dict[str, str] = {}
    for kind, make in BAD_FRAMES.items():
        bad = RawClient(proxy.address, timeout=10)
        offenders[kind] = bad.hello()
        data, fds = make(bad)
        bad.send(data, fds, parse=False)
        assert bad.wait_closed(), f"{kind}: the proxy did not close the offending client"
        bad.close()
        # the other client, connected all along, still gets answers
        assert bystander.driver("GetId").args
        assert proxy.proc.poll() is None, f"{kind}: the proxy died"
    # and a new client still works
    late = RawClient(proxy.address)
    late.hello()
    late.driver("ListNames")
    assert proxy.stop() == 143  # SIGTERM
    records = proxy.records()
    events = [r for r in records if r["type"] == "event"]
    for kind, name in offenders.items():
        conn = connection_of(records, name)
        malformed = [e for e in events if e["event"] == "malformed" and e["connection"] == conn]
        assert len(malformed) == 1 and malformed[0]["side"] == "client" and malformed[0]["reason"], kind
        (gone,) = [e for e in events if e["event"] == "disconnect" and e["connection"] == conn]
        assert "malformed" in gone["reason"], (kind, gone)
    calls = messages(records)
    good_then_bad = connection_of(records, offenders["good call then garbage in one write"])
    assert [r["serial"] for r in calls if r["connection"] == good_then_bad and r["member"] == "GetId"] == [50]
    by = connection_of(records, bystander.name or "")
    assert not [
        e for e in events if e["event"] == "disconnect" and e["connection"] == by and "malformed" in e["reason"]
    ]


def _raw_socket(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(socket_path(address))
    return s


def _closed(s: socket.socket) -> bool:
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_bad_authentication_closes_only_that_client(bus: Any, proxy_factory: Any) -> None:
    proxy = proxy_factory(bus.address)
    bystander = RawClient(proxy.address)
    bystander.hello()
    cases = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\0AUTH EXTERNAL " + b"3" * 20000 + b"\r\n",
        b"\0" + b"NONSENSE\r\n" * 100,
        b"\0AUTH EXTERNAL \xff\xff\r\n",
    ]
    for data in cases:
        s = _raw_socket(proxy.address)
        s.sendall(data)
        assert _closed(s)
        s.close()
        assert bystander.driver("GetId").args
    # a client that lies about its uid is rejected, not closed, and may not begin
    s = _raw_socket(proxy.address)
    other_uid = str(os.geteuid() + 4242).encode().hex().encode()
    s.sendall(b"\0AUTH EXTERNAL " + other_uid + b"\r\n")
    assert s.recv(100) == b"REJECTED EXTERNAL\r\n"
    s.close()
    assert proxy.stop() == 143  # SIGTERM
    events = [r for r in proxy.records() if r["type"] == "event"]
    failed = [e for e in events if e["event"] == "disconnect" and "authentication failed" in e["reason"]]
    assert len(failed) == len(cases)


def test_message_the_bus_rejects_closes_only_that_client(any_bus: Any, proxy_factory: Any) -> None:
    proxy = proxy_factory(any_bus.address)
    bystander = RawClient(proxy.address)
    bystander.hello()
    bad = RawClient(proxy.address)
    bad.hello()
    # well-formed framing, invalid content: left to the bus, which disconnects the sender
    bad.send(frame("l", 1, 7, call_fields(member="1nvalid", destination=DRIVER)), parse=False)
    assert bad.wait_closed()
    assert bystander.driver("GetId").args
    assert proxy.proc.poll() is None
    assert proxy.stop() == 143  # SIGTERM


def test_100_mib_message_passes_both_ways(any_bus: Any, proxy_factory: Any) -> None:
    proxy = proxy_factory(any_bus.address)
    receiver = RawClient(proxy.address, timeout=60)
    receiver.hello()
    sender = RawClient(proxy.address, endian="B", timeout=60)
    sender.hello()
    # arrays are limited to 64 MiB, so two of 50 MiB
    chunk_a = os.urandom(1 << 20) * 50
    chunk_b = bytes(reversed(chunk_a[: 1 << 20])) * 50
    big = frame(
        "B",
        1,
        31,
        [
            (PATH, "o", "/big"),
            (MEMBER, "s", "Big"),
            (DESTINATION, "s", receiver.name),
            (SIGNATURE, "g", "ayay"),
        ],
        "ayay",
        [chunk_a, chunk_b],
        flags=1,
    )
    assert 100 << 20 < len(big) < MAX_MESSAGE_SIZE
    sender.send(big, parse=False)
    got = receiver.recv(lambda m: m.member == "Big", "the 100 MiB message")
    assert got.serial == 31 and got.type is MessageType.METHOD_CALL
    assert hashlib.sha256(got.args[0]).digest() == hashlib.sha256(chunk_a).digest()
    assert hashlib.sha256(got.args[1]).digest() == hashlib.sha256(chunk_b).digest()
    # both still connected and working
    assert sender.driver("GetId").args and receiver.driver("GetId").args
    sender.close()
    receiver.close()
    assert proxy.stop() == 143  # SIGTERM
    sizes = {(r["direction"], r["size"]) for r in messages(proxy.records()) if r["member"] == "Big"}
    assert {d for d, _ in sizes} == {"to_bus", "from_bus"}
    assert all(size >= len(big) for _, size in sizes)
