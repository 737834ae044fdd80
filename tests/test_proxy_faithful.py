"""The proxy is faithful: exact bytes, fds with their own message, every message once and in order.

Real buses (dbus-daemon and dbus-broker), the proxy as a real process, and
clients that are plain sockets speaking the wire protocol by hand, so the
tests control every byte (endianness, header field order, serials, fds).
"""

import array
import asyncio
import contextlib
import os
import select
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import messages, wait_for
from ipcproxy.dbus.auth import ClientAuth
from ipcproxy.dbus.wire import (
    DESTINATION,
    ERROR_NAME,
    INTERFACE,
    MEMBER,
    PATH,
    REPLY_SERIAL,
    SIGNATURE,
    UNIX_FDS,
    FrameParser,
    Message,
)
from ipcproxy.model import MessageType
from test_wire import frame

DRIVER = "org.freedesktop.DBus"
ANCILLARY = socket.CMSG_SPACE(253 * 4)

Field = tuple[int, str, Any]


def socket_path(address: str) -> str:
    assert address.startswith("unix:path=")
    return address[len("unix:path=") :].split(",")[0]


class RawClient:
    """A D-Bus client on a plain socket: our bytes out, every byte in recorded."""

    def __init__(self, address: str, endian: str = "l", fds: bool = True, timeout: float = 20.0) -> None:
        self.endian = endian
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(socket_path(address))
        auth = ClientAuth(os.geteuid(), unix_fd=fds)
        self.sock.sendall(auth.start())
        while not auth.done:
            data = self.sock.recv(4096)
            if not data:
                raise AssertionError("connection closed during authentication")
            auth.feed(data)
        self.unix_fd = auth.unix_fd
        self.guid = auth.guid
        self.parser = FrameParser()
        self.tx = bytearray()  # every byte sent after authentication
        self.rx = bytearray(auth.leftover)  # every byte received after authentication
        self.parser.feed(auth.leftover)
        self.inbox: deque[Message] = deque()
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self.name: str | None = None
        self._serial = 0
        self.eof = False
        self._collect()

    def next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def send(self, raw: bytes, fds: list[int] | None = None, parse: bool = True) -> None:
        """Send bytes as they are (and fds with their first byte); ``parse=False`` for garbage."""
        if parse:
            parser = FrameParser()
            parser.feed(raw, list(fds or []))
            self.sent.extend(parser.frames())
        if fds:
            n = self.sock.sendmsg([raw], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            self.sock.sendall(raw[n:])
        else:
            self.sock.sendall(raw)
        self.tx += raw

    def _collect(self) -> None:
        for m in self.parser.frames():
            self.inbox.append(m)
            self.received.append(m)

    def _read(self) -> None:
        data, ancdata, _flags, _ = self.sock.recvmsg(1 << 20, ANCILLARY)
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
                fds.extend(arr)
        if not data:
            self.eof = True
            raise EOFError("connection closed")
        self.rx += data
        self.parser.feed(data, fds)
        self._collect()

    def recv(self, pred: Callable[[Message], bool] = lambda m: True, what: str = "message") -> Message:
        while True:
            for m in self.inbox:
                if pred(m):
                    self.inbox.remove(m)
                    return m
            try:
                self._read()
            except TimeoutError:
                raise AssertionError(f"timed out waiting for {what}") from None

    def reply_to(self, serial: int) -> Message:
        return self.recv(lambda m: m.reply_serial == serial, f"reply to {serial}")

    def call(self, fields: list[Field], sig: str = "", body: list[Any] | None = None, flags: int = 0) -> int:
        serial = self.next_serial()
        if sig:
            fields = [*fields, (SIGNATURE, "g", sig)]
        self.send(frame(self.endian, 1, serial, fields, sig, body, flags))
        return serial

    def driver(self, member: str, sig: str = "", body: list[Any] | None = None) -> Message:
        fields: list[Field] = [
            (PATH, "o", "/org/freedesktop/DBus"),
            (MEMBER, "s", member),
            (INTERFACE, "s", DRIVER),
            (DESTINATION, "s", DRIVER),
        ]
        reply = self.reply_to(self.call(fields, sig, body))
        assert reply.type is MessageType.METHOD_RETURN, (member, reply.error_name, reply.args)
        return reply

    def hello(self) -> str:
        self.name = self.driver("Hello").args[0]
        return self.name

    def request_name(self, name: str) -> None:
        assert self.driver("RequestName", "su", [name, 4]).args == [1]

    def wait_closed(self) -> bool:
        """True once the other end closed the connection."""
        try:
            while True:
                self._read()
        except (EOFError, ConnectionResetError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


class TapConn:
    def __init__(self, toward_proxy: socket.socket) -> None:
        self.c2s = bytearray()
        self.s2c = bytearray()
        self.closed = threading.Event()
        self.toward_proxy = toward_proxy

    def inject(self, data: bytes) -> None:
        """Send the proxy bytes as if the bus had sent them (only while the bus is quiet)."""
        self.toward_proxy.sendall(data)

    @property
    def messages_out(self) -> bytes:
        """What the proxy sent after its SASL handshake."""
        i = self.c2s.find(b"BEGIN\r\n")
        return bytes(self.c2s[i + 7 :]) if i >= 0 else b""

    @property
    def messages_in(self) -> bytes:
        """What the bus sent after its SASL answers (OK, then AGREE_UNIX_FD)."""
        i = self.s2c.find(b"AGREE_UNIX_FD\r\n")
        return bytes(self.s2c[i + 15 :]) if i >= 0 else b""


class Tap:
    """A dumb byte relay in front of the real bus that records both directions of every connection.

    It parses nothing, so what it saw the proxy send is exactly what the proxy sent.
    """

    def __init__(self, target: str, path: str) -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.address = f"unix:path={path}"
        self.conns: list[TapConn] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            conn = TapConn(client)
            self.conns.append(conn)
            t = threading.Thread(target=self._relay, args=(client, upstream, conn), daemon=True)
            self._threads.append(t)
            t.start()

    def _relay(self, client: socket.socket, upstream: socket.socket, conn: TapConn) -> None:
        route = {client: (upstream, conn.c2s), upstream: (client, conn.s2c)}
        live = {client, upstream}
        try:
            while live and not self._stop.is_set():
                ready, _, _ = select.select(list(live), [], [], 0.2)
                for s in ready:
                    other, record = route[s]
                    data = s.recv(1 << 20)
                    if not data:
                        live.discard(s)
                        with contextlib.suppress(OSError):
                            other.shutdown(socket.SHUT_WR)
                        continue
                    record += data
                    other.sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()
            conn.closed.set()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for t in self._threads:
            t.join(5)


@pytest.fixture
def tap(any_bus: Any, tmp_path: Path) -> Iterator[Tap]:
    t = Tap(any_bus.socket, str(tmp_path / "tap.sock"))
    yield t
    t.close()


def connection_of(records: list[dict[str, Any]], unique_name: str) -> int:
    """The proxy's connection id for the client that got ``unique_name`` from Hello."""
    for r in records:
        if r.get("type") == "method_return" and r["direction"] == "from_bus" and r["args"] == [unique_name]:
            return int(r["connection"])
    raise AssertionError(f"no Hello reply for {unique_name} in the trace")


# ---------------------------------------------------------------- (a) byte-exact forwarding


def odd_calls(endian_a: str, dest: str) -> list[tuple[str, list[Field], str, list[Any], int]]:
    """Calls in both endiannesses with header fields in unusual orders (and an unknown field)."""
    other = "B" if endian_a == "l" else "l"
    return [
        (
            endian_a,
            [
                (SIGNATURE, "g", "su"),
                (MEMBER, "s", "First"),
                (DESTINATION, "s", dest),
                (INTERFACE, "s", "org.example.Exact"),
                (PATH, "o", "/x"),
            ],
            "su",
            ["é", 7],
            0,
        ),
        (
            other,
            [(DESTINATION, "s", dest), (PATH, "o", "/x/y"), (SIGNATURE, "g", "a{sv}ay"), (MEMBER, "s", "NoInterface")],
            "a{sv}ay",
            [{"a": ("i", -1), "b": ("as", ["x", "y"])}, bytes(range(200))],
            0,
        ),
        (
            other,
            [(MEMBER, "s", "Unknown"), (0x42, "u", 7), (PATH, "o", "/"), (DESTINATION, "s", dest)],
            "",
            [],
            0,
        ),
        (
            endian_a,
            [(PATH, "o", "/q"), (DESTINATION, "s", dest), (MEMBER, "s", "NoReply")],
            "",
            [],
            1,  # NO_REPLY_EXPECTED
        ),
    ]


def test_bytes_are_forwarded_exactly_in_both_directions(any_bus: Any, tap: Tap, proxy_factory: Any) -> None:
    proxy = proxy_factory(tap.address)
    service = RawClient(proxy.address, endian="B")
    service.hello()
    service.request_name("org.example.Exact")
    client = RawClient(proxy.address, endian="l")
    client.hello()
    serials = [0x7FFFFFFE, 5, 0xFFFFFFF0, 12345]
    for serial, (endian, fields, sig, body, flags) in zip(serials, odd_calls("l", "org.example.Exact"), strict=True):
        client.send(frame(endian, 1, serial, fields, sig, body, flags))
    # a unicast signal, big endian, fields in reverse order
    client.send(
        frame(
            "B",
            4,
            77,
            [
                (DESTINATION, "s", "org.example.Exact"),
                (MEMBER, "s", "Poke"),
                (INTERFACE, "s", "org.example.Exact"),
                (PATH, "o", "/s"),
            ],
        )
    )
    got = [service.recv(lambda m: m.type is MessageType.METHOD_CALL and m.member != "Poke") for _ in serials]
    assert [m.serial for m in got] == serials  # serials untouched
    assert [m.member for m in got] == ["First", "NoInterface", "Unknown", "NoReply"]
    assert got[1].args[1] == bytes(range(200)) and got[1].endian == "B"
    assert service.recv(lambda m: m.member == "Poke").serial == 77
    # the service answers in the other endianness, fields in odd orders, one error
    assert client.name is not None
    service.send(
        frame(
            "l",
            2,
            900,
            [(SIGNATURE, "g", "s"), (DESTINATION, "s", client.name), (REPLY_SERIAL, "u", serials[0])],
            "s",
            ["one"],
        )
    )
    service.send(frame("B", 2, 901, [(REPLY_SERIAL, "u", serials[1]), (DESTINATION, "s", client.name)]))
    service.send(
        frame(
            "l",
            3,
            902,
            [
                (DESTINATION, "s", client.name),
                (SIGNATURE, "g", "s"),
                (REPLY_SERIAL, "u", serials[2]),
                (ERROR_NAME, "s", "org.example.Error.Odd"),
            ],
            "s",
            ["no"],
        )
    )
    service.send(
        frame(
            "B",
            4,
            903,
            [
                (MEMBER, "s", "Back"),
                (PATH, "o", "/b"),
                (DESTINATION, "s", client.name),
                (INTERFACE, "s", "org.example.Exact"),
            ],
        )
    )
    r0, r1, r2 = (client.reply_to(s) for s in serials[:3])
    assert (r0.serial, r0.args, r0.endian) == (900, ["one"], "l")
    assert (r1.serial, r1.endian) == (901, "B")
    assert (r2.type, r2.serial, r2.error_name) == (MessageType.ERROR, 902, "org.example.Error.Odd")
    assert client.recv(lambda m: m.member == "Back").serial == 903
    # quiesce: a last round trip each, then hang up, then compare with what the tap saw
    client.driver("GetId")
    service.driver("GetId")
    client.close()
    service.close()
    wait_for(lambda: sum(c.closed.is_set() for c in tap.conns) >= 2, what="both upstream connections closed")
    proxy.stop()
    for raw_client in (client, service):
        matches = [c for c in tap.conns if c.closed.is_set() and c.messages_out == bytes(raw_client.tx)]
        assert len(matches) == 1, "the proxy did not send the bus exactly the client's bytes"
        bus_sent = matches[0].messages_in
        assert bus_sent.startswith(bytes(raw_client.rx)), "the client did not get exactly the bus's bytes"
        # dbus-broker says goodbye (NameLost of the unique name) after the client hung up: never delivered
        rest = FrameParser()
        rest.feed(bus_sent[len(raw_client.rx) :])
        assert all(m.sender == DRIVER and m.member == "NameLost" for m in rest.frames())
        assert rest.buffered == 0
    recs = messages(proxy.records())
    assert {r["serial"] for r in recs if r["direction"] == "to_bus" and r["type"] == "method_call"} >= set(serials)
    assert all(r["verdict"] == "forwarded" for r in recs)


# ---------------------------------------------------------------- (b) fds travel with their own message


def _pipe_with(text: bytes) -> int:
    r, w = os.pipe()
    os.write(w, text)
    os.close(w)
    return r


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_unix_fds_travel_with_their_own_message(any_bus: Any, proxy_factory: Any) -> None:
    proxy = proxy_factory(any_bus.address)
    service = RawClient(proxy.address)
    assert service.unix_fd
    service.hello()
    service.request_name("org.example.Fds")
    # baseline once the service is connected (the proxy's fd count must come back to it)
    client = RawClient(proxy.address, endian="B")
    assert client.unix_fd
    client.hello()
    baseline_after_two = _fd_count(proxy.proc.pid)
    dest: list[Field] = [(PATH, "o", "/f"), (INTERFACE, "s", "org.example.Fds"), (DESTINATION, "s", "org.example.Fds")]
    plain1 = frame("B", 1, 10, [*dest, (MEMBER, "s", "Plain")])
    one = frame("B", 1, 11, [*dest, (MEMBER, "s", "One"), (SIGNATURE, "g", "h"), (UNIX_FDS, "u", 1)], "h", [0])
    plain2 = frame("l", 1, 12, [*dest, (MEMBER, "s", "Plain")])
    two = frame("l", 1, 13, [(UNIX_FDS, "u", 2), *dest, (MEMBER, "s", "Two"), (SIGNATURE, "g", "hh")], "hh", [1, 0])
    pipes = [_pipe_with(b"one"), _pipe_with(b"two-a"), _pipe_with(b"two-b")]
    # all four messages and all three fds in ONE sendmsg: the proxy must hand each fd to its own message
    client.send(plain1 + one + plain2 + two, pipes)
    for fd in pipes:
        os.close(fd)
    got = [service.recv(lambda m: m.type is MessageType.METHOD_CALL) for _ in range(4)]
    assert [(m.serial, m.member, len(m.fds)) for m in got] == [
        (10, "Plain", 0),
        (11, "One", 1),
        (12, "Plain", 0),
        (13, "Two", 2),
    ]
    assert os.read(got[1].fds[0], 100) == b"one"
    # body indices point into the message's own fd list: "hh" = [1, 0]
    assert [os.read(got[3].fds[i], 100) for i in got[3].args] == [b"two-b", b"two-a"]
    # and back: a reply carrying an fd
    back = _pipe_with(b"back")
    service.send(
        frame(
            "l",
            2,
            50,
            [(REPLY_SERIAL, "u", 10), (DESTINATION, "s", got[0].sender), (SIGNATURE, "g", "h"), (UNIX_FDS, "u", 1)],
            "h",
            [0],
        ),
        [back],
    )
    os.close(back)
    reply = client.reply_to(10)
    assert len(reply.fds) == 1 and os.read(reply.fds[0], 100) == b"back"
    for m in [*got, reply]:
        for fd in m.fds:
            os.close(fd)
    client.close()
    service.close()
    # the proxy keeps no fd it passed on
    wait_for(
        lambda: _fd_count(proxy.proc.pid) <= baseline_after_two - 4, what="the proxy to close both sessions' sockets"
    )
    proxy.stop()
    recs = messages(proxy.records())
    fds_by_member = {(r["member"], r["direction"]): r["fds"] for r in recs if r["member"] in ("Plain", "One", "Two")}
    assert fds_by_member == {
        ("Plain", "to_bus"): 0,
        ("Plain", "from_bus"): 0,
        ("One", "to_bus"): 1,
        ("One", "from_bus"): 1,
        ("Two", "to_bus"): 2,
        ("Two", "from_bus"): 2,
    }
    replies = [r for r in recs if r["type"] == "method_return" and r["reply_serial"] == 10 and r["serial"] == 50]
    assert sorted((r["direction"], r["fds"]) for r in replies) == [("from_bus", 1), ("to_bus", 1)]


# ---------------------------------------------------------------- (c) 200 concurrent clients


def test_200_concurrent_clients_get_their_own_answers(any_bus: Any, proxy_factory: Any) -> None:
    from dbus_fast import Message as FastMessage
    from dbus_fast import MessageType as FastType
    from dbus_fast.aio import MessageBus

    proxy = proxy_factory(any_bus.address)
    n_clients, n_calls = 200, 3

    async def main() -> list[int]:
        service = await MessageBus(bus_address=any_bus.address).connect()

        def echo(msg: FastMessage) -> FastMessage | None:
            if msg.message_type is FastType.METHOD_CALL and msg.member == "Echo":
                return FastMessage.new_method_return(msg, "s", [f"{msg.body[0]}!"])
            return None

        service.add_message_handler(echo)
        await service.request_name("org.example.Echo")

        async def one(i: int) -> list[str]:
            bus = await MessageBus(bus_address=proxy.address).connect()
            answers = []
            for k in range(n_calls):
                reply = await bus.call(
                    FastMessage(
                        destination="org.example.Echo",
                        path="/",
                        interface="org.example.Echo",
                        member="Echo",
                        signature="s",
                        body=[f"{i}/{k}"],
                    )
                )
                assert reply is not None and reply.message_type is FastType.METHOD_RETURN, reply
                answers.append(reply.body[0])
            return [bus, answers]  # type: ignore[list-item]

        results = await asyncio.gather(*(one(i) for i in range(n_clients)))
        # every client connected at the same time; check and hang up
        for i, (_bus, answers) in enumerate(results):
            assert answers == [f"{i}/{k}!" for k in range(n_calls)]
        for bus, _ in results:
            bus.disconnect()
        await asyncio.gather(*(bus.wait_for_disconnect() for bus, _ in results), return_exceptions=True)
        service.disconnect()
        return [len(results)]

    assert asyncio.run(main()) == [n_clients]
    wait_for(lambda: sum(r.get("event") == "disconnect" for r in proxy.records()) >= n_clients, what="200 disconnects")
    assert proxy.stop() == 143  # SIGTERM
    records = proxy.records()
    events = [r for r in records if r["type"] == "event"]
    assert len({e["connection"] for e in events if e["event"] == "connect"}) == n_clients
    assert len({e["connection"] for e in events if e["event"] == "disconnect"}) == n_clients
    recs = messages(records)
    calls = [r for r in recs if r["member"] == "Echo" and r["type"] == "method_call"]
    assert all(r["direction"] == "to_bus" for r in calls)
    assert sorted(r["args"][0] for r in calls) == sorted(f"{i}/{k}" for i in range(n_clients) for k in range(n_calls))
    keys = [(r["connection"], r["serial"]) for r in calls]
    assert len(set(keys)) == len(keys)
    replies = [r for r in recs if r["type"] == "method_return" and r["direction"] == "from_bus"]
    reply_keys = [(r["connection"], r["reply_serial"]) for r in replies]
    assert len(set(reply_keys)) == len(reply_keys), "a reply was recorded twice"
    by_key = {(r["connection"], r["reply_serial"]): r for r in replies}
    for call in calls:
        answer = by_key[(call["connection"], call["serial"])]
        assert answer["args"] == [call["args"][0] + "!"]
        assert answer["seq"] > call["seq"]
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(set(seqs))


# ---------------------------------------------------------------- (f) SIGINT and SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_with_the_trace_complete(bus: Any, proxy_factory: Any, sig: signal.Signals) -> None:
    proxy = proxy_factory(bus.address)
    client = RawClient(proxy.address, timeout=10)
    client.hello()
    answered: list[int] = []
    stop_sent = threading.Event()

    def pound() -> None:
        try:
            while True:
                serial = client.call(
                    [(PATH, "o", "/org/freedesktop/DBus"), (MEMBER, "s", "GetId"), (DESTINATION, "s", DRIVER)]
                )
                client.reply_to(serial)
                answered.append(serial)
                if len(answered) == 100:
                    os.kill(proxy.proc.pid, sig)
                    stop_sent.set()
        except (EOFError, OSError, AssertionError):
            return

    worker = threading.Thread(target=pound)
    worker.start()
    worker.join(30)
    assert stop_sent.is_set() and not worker.is_alive()
    assert proxy.proc.wait(10) == 128 + sig  # as a shell reports a job ended by that signal
    client.close()
    records = proxy.records()
    assert records[-1]["type"] == "event" and records[-1]["event"] == "proxy_stop"
    assert signal.Signals(sig).name in records[-1]["reason"]
    conn = connection_of(records, client.name or "")
    recs = [r for r in messages(records) if r["connection"] == conn]
    calls = {r["serial"]: r for r in recs if r["member"] == "GetId" and r["direction"] == "to_bus"}
    replies = {r["reply_serial"]: r for r in recs if r["type"] == "method_return" and r["direction"] == "from_bus"}
    for serial in answered:
        assert serial in calls and serial in replies, f"call {serial} was answered but is missing from the trace"
        assert calls[serial]["seq"] < replies[serial]["seq"]
    assert any(r["event"] == "disconnect" and r["connection"] == conn for r in records if r["type"] == "event")


# ---------------------------------------------------------------- (g) every message once, in order


def _summary(m: Message) -> tuple[Any, ...]:
    return (m.type.wire_name, m.serial, m.reply_serial, m.member)


def _rec_summary(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["type"], r["serial"], r["reply_serial"], r["member"])


def test_every_message_once_in_order_with_driver_messages_and_signals(any_bus: Any, proxy_factory: Any) -> None:
    proxy = proxy_factory(any_bus.address)
    client = RawClient(proxy.address)
    client.hello()
    assert client.name is not None
    client.driver("AddMatch", "s", ["type='signal',interface='org.example.Order'"])
    client.driver("AddMatch", "s", ["type='signal',member='NameOwnerChanged',arg0='org.example.Order'"])
    service = RawClient(any_bus.address, endian="B")  # directly on the bus: not behind the proxy
    service.hello()
    service.request_name("org.example.Order")
    noc = client.recv(lambda m: m.member == "NameOwnerChanged", "NameOwnerChanged")
    assert noc.args[0] == "org.example.Order" and noc.sender == DRIVER
    client.request_name("org.example.Client")
    acquired = client.recv(lambda m: m.member == "NameAcquired" and m.args == ["org.example.Client"], "NameAcquired")
    assert acquired.destination == client.name
    call = client.call([(PATH, "o", "/o"), (MEMBER, "s", "Ping"), (DESTINATION, "s", "org.example.Order")], "s", ["hi"])
    incoming = service.recv(lambda m: m.member == "Ping")
    service.send(
        frame(
            "B",
            2,
            500,
            [(REPLY_SERIAL, "u", incoming.serial), (DESTINATION, "s", client.name), (SIGNATURE, "g", "s")],
            "s",
            ["ho"],
        )
    )
    service.send(
        frame("B", 4, 501, [(PATH, "o", "/o"), (INTERFACE, "s", "org.example.Order"), (MEMBER, "s", "Broadcast")])
    )
    service.send(
        frame(
            "B",
            4,
            502,
            [
                (PATH, "o", "/o"),
                (INTERFACE, "s", "org.example.Order"),
                (MEMBER, "s", "Unicast"),
                (DESTINATION, "s", client.name),
            ],
        )
    )
    assert client.reply_to(call).args == ["ho"]
    client.recv(lambda m: m.member == "Broadcast", "broadcast signal")
    client.recv(lambda m: m.member == "Unicast", "unicast signal")
    # records are resolved to components when written: let them be written while the name is owned
    wait_for(lambda: any(r.get("member") == "Unicast" for r in proxy.records()), what="the unicast signal's record")
    service.close()  # the client watches the name: it is told the owner went away
    gone = client.recv(lambda m: m.member == "NameOwnerChanged" and m.args[2] == "", "NameOwnerChanged (lost)")
    assert gone.args[:2] == ["org.example.Order", service.name]
    client.driver("GetId")  # everything the bus sent before this reply has arrived
    client.close()
    wait_for(lambda: any(r.get("event") == "disconnect" for r in proxy.records()), what="the disconnect")
    proxy.stop()
    records = proxy.records()
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    conn = connection_of(records, client.name)
    mine = [r for r in records if r.get("connection") == conn]
    assert mine[0]["event"] == "connect" and mine[-1]["event"] == "disconnect"
    assert sum(1 for r in mine if r["type"] == "event") == 2
    recorded_out = [_rec_summary(r) for r in mine if r.get("direction") == "to_bus"]
    recorded_in = [_rec_summary(r) for r in mine if r.get("direction") == "from_bus"]
    assert recorded_out == [_summary(m) for m in client.sent]
    assert recorded_in == [_summary(m) for m in client.received]
    kinds = {(r["member"], r["sender"]["bus_name"]) for r in mine if r["type"] == "signal"}
    assert ("NameAcquired", DRIVER) in kinds and ("NameOwnerChanged", DRIVER) in kinds
    assert {"Broadcast", "Unicast"} <= {r["member"] for r in mine if r["type"] == "signal"}
    unicast = next(r for r in mine if r.get("member") == "Unicast")
    # a peer that is not behind the proxy is still resolved to its component
    assert unicast["sender"]["bus_name"] == service.name
    assert "org.example.Order" in unicast["sender"]["names"]
    by_serial = {r["serial"]: r["seq"] for r in mine if r.get("direction") == "to_bus"}
    for r in mine:
        if r.get("direction") == "from_bus" and r["type"] in ("method_return", "error"):
            assert by_serial[r["reply_serial"]] < r["seq"], "a reply was recorded before its call"


# ---------------------------------------------------------------- authentication as real clients do it


def test_pipelined_and_step_by_step_authentication(any_bus: Any, proxy_factory: Any) -> None:
    proxy = proxy_factory(any_bus.address)
    hello = frame(
        "l",
        1,
        1,
        [
            (PATH, "o", "/org/freedesktop/DBus"),
            (MEMBER, "s", "Hello"),
            (INTERFACE, "s", DRIVER),
            (DESTINATION, "s", DRIVER),
        ],
    )
    uid = str(os.geteuid()).encode().hex().encode()
    # sd-bus: everything, and the first message, in one write (what xdg-dbus-proxy 0.1.4 cannot take)
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sd.settimeout(10)
    sd.connect(socket_path(proxy.address))
    sd.sendall(b"\0AUTH EXTERNAL " + uid + b"\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n" + hello)
    # libdbus: one line at a time, waiting for each answer
    lib = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lib.settimeout(10)
    lib.connect(socket_path(proxy.address))
    lib.sendall(b"\0")
    lib.sendall(b"AUTH EXTERNAL\r\n")
    assert lib.recv(100) == b"DATA\r\n"
    lib.sendall(b"DATA " + uid + b"\r\n")
    assert lib.recv(100).startswith(b"OK ")
    lib.sendall(b"NEGOTIATE_UNIX_FD\r\n")
    assert lib.recv(100) == b"AGREE_UNIX_FD\r\n"
    lib.sendall(b"BEGIN\r\n")
    lib.sendall(hello)
    guids = set()
    for sock, auth_lines in ((sd, 2), (lib, 0)):
        data = b""
        parser = FrameParser()
        while True:
            chunk = sock.recv(65536)
            assert chunk, "the proxy closed the connection"
            data += chunk
            if auth_lines:
                if data.count(b"\r\n") < auth_lines:
                    continue
                head, _, data = data.partition(b"AGREE_UNIX_FD\r\n")
                assert head.startswith(b"OK ")
                guids.add(head[3:].strip())
                auth_lines = 0
            parser.feed(data)
            data = b""
            got = [m for m in parser.frames() if m.reply_serial == 1]
            if got:
                assert got[0].type is MessageType.METHOD_RETURN and got[0].args[0].startswith(":")
                break
        sock.close()
    # both are told the real bus's GUID
    direct = RawClient(any_bus.address)
    assert guids == {(direct.guid or "").encode()}
    direct.close()


# ---------------------------------------------------------------- bad input from the bus side


@pytest.mark.parametrize(
    "garbage",
    [b"x" * 16, b"l\x02\x00\x01" + (200 << 20).to_bytes(4, "little") + b"\x01\0\0\0\x08\0\0\0"],
    ids=["bad-endianness", "announces-200-MiB"],
)
def test_malformed_frame_from_the_bus_closes_only_that_session(tap: Tap, proxy_factory: Any, garbage: bytes) -> None:
    proxy = proxy_factory(tap.address)
    victim = RawClient(proxy.address)
    victim.hello()
    victim.driver("GetId")
    other = RawClient(proxy.address)
    other.hello()
    (conn,) = [c for c in tap.conns if c.messages_out == bytes(victim.tx)]
    conn.inject(garbage)
    assert victim.wait_closed()
    assert other.driver("GetId").args
    assert proxy.proc.poll() is None
    other.close()
    assert proxy.stop() == 143  # SIGTERM
    records = proxy.records()
    conn_id = connection_of(records, victim.name or "")
    bad = [r for r in records if r.get("event") == "malformed" and r["connection"] == conn_id]
    assert len(bad) == 1 and bad[0]["side"] == "bus"
    (gone,) = [r for r in records if r.get("event") == "disconnect" and r["connection"] == conn_id]
    assert "malformed message from the bus" in gone["reason"]


# ---------------------------------------------------------------- (h) the bus vanishes


def test_bus_vanishing_stops_the_proxy_with_one_line(any_bus: Any, proxy_factory: Any) -> None:
    proxy = proxy_factory(any_bus.address)
    client = RawClient(proxy.address, timeout=10)
    client.hello()
    client.driver("GetId")
    any_bus.stop()
    assert proxy.proc.wait(15) == 1
    assert client.wait_closed()
    err = [line for line in proxy.stderr().splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("ipcproxy: ") and "went away" in err[0], err
    records = proxy.records()
    assert records[-1]["event"] == "proxy_stop"
    conn = connection_of(records, client.name or "")
    assert [r["member"] for r in messages(records) if r["connection"] == conn and r["direction"] == "to_bus"] == [
        "Hello",
        "GetId",
    ]
    time.sleep(0)  # nothing else to wait for: the process is gone


# A client as another user: connects, says Hello, prints its unique name, then waits for stdin to close.
AS_USER_CLIENT = r"""
import os, re, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
uid = str(os.getuid()).encode().hex().encode()
s.sendall(b"\0AUTH EXTERNAL " + uid + b"\r\nBEGIN\r\n" + bytes.fromhex(sys.argv[2]))
data = b""
while not re.search(rb"(:1\.[0-9]+)\0", data):
    chunk = s.recv(4096)
    if not chunk:
        sys.exit("closed before Hello was answered")
    data += chunk
print(re.search(rb"(:1\.[0-9]+)\0", data).group(1).decode(), flush=True)
sys.stdin.read()
"""


def _driver_json(address: str, member: str, name: str) -> Any:
    import json
    import subprocess

    out = subprocess.run(
        [
            "busctl",
            f"--address={address}",
            "--json=short",
            "call",
            DRIVER,
            "/org/freedesktop/DBus",
            DRIVER,
            member,
            "s",
            name,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    return json.loads(out)["data"][0]


@pytest.mark.skipif(os.geteuid() != 0, reason="a root proxy and clients of other users need root")
def test_no_proxied_client_is_reported_with_another_uid(any_bus: Any) -> None:
    """Clients of two different non-root users at once, behind a root proxy: the bus reports each one's own uid.

    Asked through the proxy (where the pid is rewritten to the client's) and
    directly on the bus (where the pid is the per-uid helper's, a process of
    the client's user).
    """
    import shutil
    import subprocess
    import tempfile

    from conftest import ProxyProcess
    from ipcproxy.dbus import wire

    os.chmod(any_bus.socket, 0o777)  # reachable by every user, as a real bus's socket is
    workdir = Path(tempfile.mkdtemp(prefix="ipcproxy-uids-"))
    os.chmod(workdir, 0o755)
    proxy = ProxyProcess(any_bus.address, workdir)
    hello = wire.build(
        MessageType.METHOD_CALL,
        serial=1,
        path="/org/freedesktop/DBus",
        interface=DRIVER,
        member="Hello",
        destination=DRIVER,
    ).raw.hex()
    import pwd

    # two real users (dbus-daemon refuses uids without an account): nobody, and www-data or daemon
    users = [pwd.getpwnam("nobody").pw_uid]
    users += [u.pw_uid for u in pwd.getpwall() if u.pw_name in ("www-data", "daemon")][:1]
    assert len(users) == 2
    clients: dict[int, tuple[subprocess.Popen[str], str]] = {}
    try:
        for uid in users:
            proc = subprocess.Popen(
                [
                    "setpriv",
                    f"--reuid={uid}",
                    f"--regid={uid}",
                    "--clear-groups",
                    "/usr/bin/python3",
                    "-I",
                    "-S",
                    "-c",
                    AS_USER_CLIENT,
                    str(proxy.socket),
                    hello,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            clients[uid] = (proc, proc.stdout.readline().strip())
        for uid, (proc, name) in clients.items():
            assert name.startswith(":"), name
            for address, pid_seen in ((proxy.address, "client"), (any_bus.address, "helper")):
                assert _driver_json(address, "GetConnectionUnixUser", name) == uid
                creds = {k: v["data"] for k, v in _driver_json(address, "GetConnectionCredentials", name).items()}
                assert creds["UnixUserID"] == uid
                pid = creds["ProcessID"]
                if pid_seen == "client":
                    assert pid == proc.pid
                else:
                    assert pid != proxy.proc.pid
                with open(f"/proc/{pid}/status") as f:
                    uids = next(line.split()[1:] for line in f if line.startswith("Uid:"))
                assert uids == [str(uid)] * 4  # whichever process the bus names runs wholly as the client
    finally:
        for proc, _name in clients.values():
            if proc.stdin:
                proc.stdin.close()
            proc.wait(10)
        proxy.stop()
    try:
        pids = {proc.pid: uid for uid, (proc, _name) in clients.items()}
        recorded = {r["sender"]["pid"]: r["sender"]["uid"] for r in messages(proxy.records()) if r["member"] == "Hello"}
        assert {pid: recorded.get(pid) for pid in pids} == pids  # the trace names each client with its own uid
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
