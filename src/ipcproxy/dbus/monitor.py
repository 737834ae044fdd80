"""`ipcproxy monitor`: passive capture through BecomeMonitor, into the same trace format.

A monitor only reads, and a bus under load pushes hundreds of MB/s at it
(`dbus-monitor` falls minutes behind with 64 KiB messages), so this module
drives a plain non-blocking socket itself: our sans-IO SASL, two synchronous
calls (Hello, BecomeMonitor) while the connection can still talk, then large
reads into FrameParser and as little work per message as possible; records
are written in batches. A monitor connection cannot send, so endpoints come
from the runtime's Resolver on a second, ordinary connection.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
import struct
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..model import BUS_DRIVER_NAME, Message, MessageType
from ..trace.recorder import Recorder
from ..transport import Wiring
from . import wire
from .address import parse
from .auth import AuthError, ClientAuth
from .bus import DRIVER_INTERFACE, DRIVER_PATH, Directory

READ_SIZE = 4 * 1024 * 1024  # one recv can take everything the kernel holds for us
READS_PER_WAKEUP = 16  # then yield to the loop, so the resolver and signals get a turn
FLUSH_BYTES = 4 * 1024 * 1024  # write the trace at least this often under load...
FLUSH_INTERVAL = 0.05  # ...and within this many seconds when traffic is light
SETTLE_QUIET = 0.1  # on SIGINT/SIGTERM, read on until the bus has sent nothing for this long...
SETTLE_LIMIT = 5.0  # ...or this many seconds have passed
MAX_PENDING_CALLS = 1 << 16  # calls remembered for reply latency; the oldest are forgotten
ANCILLARY = socket.CMSG_SPACE(wire.MAX_UNIX_FDS * 4)
MONITORING_INTERFACE = "org.freedesktop.DBus.Monitoring"
_U32 = {ord("l"): struct.Struct("<I").unpack_from, ord("B"): struct.Struct(">I").unpack_from}
# errors meaning "this bus will not make you a monitor": fall back to eavesdropping
REFUSALS = frozenset(
    {
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.UnknownMethod",
        "org.freedesktop.DBus.Error.UnknownInterface",
        "org.freedesktop.DBus.Error.NotSupported",
    }
)
ALL_TYPES = ("type='signal'", "type='method_call'", "type='method_return'", "type='error'")


class SetupError(Exception):
    """The monitor connection could not be set up (bus unreachable or refusing)."""


@dataclass
class Link:
    """A connected, authenticated bus connection driven synchronously until it turns passive."""

    sock: socket.socket
    unix_fds: bool
    parser: wire.FrameParser = field(default_factory=wire.FrameParser)
    unique_name: str = ""
    serial: int = 0
    early: list[Message] = field(default_factory=list)  # traffic that arrived while we waited for a reply

    def call(self, interface: str, member: str, signature: str = "", body: list[object] | None = None) -> Message:
        """Call the bus driver and wait for its reply (the socket is blocking, with a timeout)."""
        self.serial += 1
        call = wire.build(
            MessageType.METHOD_CALL,
            serial=self.serial,
            destination=BUS_DRIVER_NAME,
            path=DRIVER_PATH,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body or []),
        )
        self.sock.sendall(call.raw)
        while True:
            for message in self.parser.frames():
                if message.reply_serial == self.serial and message.type in (
                    MessageType.METHOD_RETURN,
                    MessageType.ERROR,
                ):
                    return message
                self.early.append(message)
            self._receive()

    def _receive(self) -> None:
        data, fds = receive(self.sock, bytearray(65536), self.unix_fds)
        if not data:
            raise SetupError("the bus closed the connection")
        self.parser.feed(data, fds)


def receive(sock: socket.socket, buf: bytearray | memoryview, unix_fds: bool) -> tuple[memoryview, list[int]]:
    """One read; with fd passing on, also collect the fds that came with it."""
    view = memoryview(buf)
    if not unix_fds:
        return view[: sock.recv_into(view)], []
    n, ancdata, flags, _ = sock.recvmsg_into([view], ANCILLARY, socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    if flags & socket.MSG_CTRUNC:
        close_fds(fds)
        raise SetupError("too many file descriptors in one read (control data truncated)")
    return view[:n], fds


def close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def connect(address_text: str, timeout: float = 10.0) -> Link:
    """Connect, authenticate (EXTERNAL, fd passing) and say Hello."""
    last: Exception | None = None
    for address in parse(address_text):
        sock = socket.socket(address.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(address.sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        try:
            return _handshake(sock, address.family == socket.AF_UNIX)
        except (OSError, AuthError, SetupError, wire.FrameError) as exc:
            sock.close()
            last = exc
    detail = getattr(last, "strerror", None) or str(last)
    raise SetupError(f"cannot connect to the bus at {address_text}: {detail}")


def _handshake(sock: socket.socket, unix: bool) -> Link:
    auth = ClientAuth(os.geteuid(), unix_fd=unix)
    sock.sendall(auth.start())
    while not auth.done:
        chunk = sock.recv(4096)
        if not chunk:
            raise SetupError("the bus closed the connection during authentication")
        auth.feed(chunk)
    link = Link(sock, auth.unix_fd)
    link.parser.feed(auth.leftover)
    reply = link.call(DRIVER_INTERFACE, "Hello")
    if reply.type is not MessageType.METHOD_RETURN:
        raise SetupError(f"Hello failed: {reply.error_name}")
    link.unique_name = str(reply.args[0])
    link.early.clear()  # NameAcquired and the like, addressed to us
    return link


def become_monitor(link: Link, rules: list[str]) -> str | None:
    """Turn the connection into a monitor; fall back to eavesdropping match rules if refused.

    Returns None for a real monitor, or the reason BecomeMonitor was refused.
    """
    reply = link.call(MONITORING_INTERFACE, "BecomeMonitor", "asu", [list(rules), 0])
    if reply.type is MessageType.METHOD_RETURN:
        return None
    refusal = f"{reply.error_name}: {_error_text(reply)}"
    if reply.error_name not in REFUSALS:
        raise InputError(f"monitor: the bus rejected the match rules ({refusal})")
    for rule in rules or list(ALL_TYPES):
        text = rule if "eavesdrop=" in rule else f"eavesdrop=true,{rule}" if rule else "eavesdrop=true"
        answer = link.call(DRIVER_INTERFACE, "AddMatch", "s", [text])
        if answer.type is not MessageType.METHOD_RETURN:
            raise SetupError(
                f"the bus refused BecomeMonitor ({refusal}) and eavesdropping ({answer.error_name}: {_error_text(answer)})"
            )
    return refusal


def _error_text(message: Message) -> str:
    try:
        return " ".join(str(message.args[0]).split()) if message.args else ""  # one line, as errors must be
    except wire.FrameError:
        return ""


class Monitor:
    """Reads the monitor connection in large chunks and records every message, in order."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        link: Link,
        recorder: Recorder,
        directory: Directory,
        ignore: set[str],
        done: asyncio.Event | None = None,
    ) -> None:
        self.loop = loop
        self.link = link
        self.sock = link.sock
        self.recorder = recorder
        self.directory = directory
        self.ignore = ignore  # our own connections: their traffic is not the user's
        self.done = done if done is not None else asyncio.Event()
        self.failure: str | None = None
        self.messages = 0
        self._buf = bytearray(READ_SIZE)
        self._calls: dict[tuple[str | None, int], int] = {}  # (caller, serial) -> when the call passed
        self.heads = wire.HeaderCache()
        self._unflushed = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._reading = False
        self._last_read = 0.0  # loop time of the last read that brought data

    def start(self) -> None:
        self.sock.setblocking(False)
        for message in self.link.early:
            self._record(message, time.monotonic_ns())
        self.link.early.clear()
        self._pump()
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self._reading = True

    def _readable(self) -> None:
        for _ in range(READS_PER_WAKEUP):
            try:
                data, fds = receive(self.sock, self._buf, self.link.unix_fds)
            except (BlockingIOError, InterruptedError):
                break
            except (OSError, SetupError) as exc:
                self._finish(f"reading from the bus failed: {getattr(exc, 'strerror', None) or exc}")
                return
            if not data:
                self._finish("the bus went away")
                return
            self.link.parser.feed(data, fds)
            self._unflushed += len(data)
            self._last_read = self.loop.time()
            if not self._pump():
                return
            if self._unflushed >= FLUSH_BYTES:
                self.flush()
        if self._unflushed and self._flush_timer is None:
            self._flush_timer = self.loop.call_later(FLUSH_INTERVAL, self.flush)

    def _pump(self) -> bool:
        """Record every complete frame; frames with a header seen before skip building a Message."""
        parser = self.link.parser
        heads = self.heads
        ignore = self.ignore
        calls = self._calls
        frame = self.recorder.frame
        monotonic_ns = time.monotonic_ns
        try:
            for raw in parser.raw_frames():
                now = monotonic_ns()
                head = heads.lookup(raw)
                if head is None or head.driver:
                    message = parser.message(raw)
                    heads.learn(message)
                    self._record(message, now)
                    continue
                if head.sender in ignore or head.destination in ignore:
                    continue
                mtype = head.type
                latency = None
                if mtype is MessageType.METHOD_CALL:
                    if not head.no_reply:
                        if len(calls) >= MAX_PENDING_CALLS:
                            del calls[next(iter(calls))]
                        calls[(head.sender, _U32[raw[0]](raw, 8)[0])] = now
                elif mtype is not MessageType.SIGNAL:
                    sent = calls.pop((head.destination, _U32[raw[0]](raw, head.reply_at)[0]), None)
                    if sent is not None:
                        latency = now - sent
                self.messages += 1
                frame(raw, head, "observed", None, None, latency, now)
        except wire.FrameError as exc:
            self._finish(f"malformed message from the bus: {exc}")
            return False
        return True

    def _record(self, message: Message, now: int) -> None:
        if message.fds:
            close_fds(message.fds)
            message.fds = []
        sender = message.sender
        destination = message.destination
        if sender in self.ignore or destination in self.ignore:
            return
        mtype = message.type
        latency = None
        if mtype is MessageType.METHOD_CALL:
            if not message.flags & 1:
                calls = self._calls
                if len(calls) >= MAX_PENDING_CALLS:
                    del calls[next(iter(calls))]
                calls[(sender, message.serial)] = now
        elif mtype is MessageType.METHOD_RETURN or mtype is MessageType.ERROR:
            sent = self._calls.pop((destination, message.reply_serial or 0), None)
            if sent is not None:
                latency = now - sent
        elif message.member == "NameOwnerChanged" and sender == BUS_DRIVER_NAME:
            self.directory.observe(message)  # in stream order, so names are right at each message
        self.messages += 1
        self.recorder.message(message, "observed", "forwarded", None, None, latency, now)

    def flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._unflushed = 0
        self.recorder.flush()

    async def settle(self) -> None:
        """Before stopping, take in what the bus has already queued for us: read until it goes quiet.

        The bus captured every message up to now, but may still hold some for
        us when we are behind; they stream in without a pause until its queue
        is empty. Bounded by SETTLE_LIMIT; a second signal stops at once.
        """
        loop = self.loop
        deadline = loop.time() + SETTLE_LIMIT
        while not self.done.is_set():
            quiet = loop.time() - self._last_read
            if quiet >= SETTLE_QUIET or loop.time() >= deadline:
                break
            await asyncio.sleep(SETTLE_QUIET - quiet)
        self.drain()
        self.done.set()

    def drain(self) -> None:
        """Take what the kernel already holds for us, without waiting for more (on a clean stop)."""
        if not self._reading:
            return
        self._stop_reading()
        while True:
            try:
                data, fds = receive(self.sock, self._buf, self.link.unix_fds)
            except (OSError, SetupError):
                break
            if not data:
                break
            self.link.parser.feed(data, fds)
            if not self._pump():
                break

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self.sock.fileno())

    def _finish(self, failure: str | None) -> None:
        self._stop_reading()
        if failure and self.failure is None:
            self.failure = failure
        self.done.set()

    def close(self) -> None:
        self._stop_reading()
        self.flush()
        close_fds(self.link.parser.take_fds())
        self.sock.close()


class MonitorTransport:
    """The monitor as a runtime transport: passive, so the chain is never asked; stopping drains first.

    A monitor connection cannot send, so the runtime's resolver (an ordinary
    second connection) names the peers; its own traffic and ours are left
    out of the trace.
    """

    name = "monitor"
    resolver_poll = 0.02  # peers come and go quickly on a busy bus: ask for credentials soon
    direct_writer = True  # a bus under load pushes hundreds of MB/s: the trace is written by a thread
    header_from_connection = True  # how it became a monitor is in the header

    def __init__(self, address: str, rules: list[str]) -> None:
        self.bus_address: str | None = address
        self.rules = list(rules)
        self.done = asyncio.Event()
        self.monitor: Monitor | None = None
        self.link: Link | None = None
        self.capture = ""  # "BecomeMonitor", or "eavesdrop" when the bus refused

    @property
    def failure(self) -> str | None:
        return self.monitor.failure if self.monitor is not None else None

    async def prepare(self) -> dict[str, Any]:
        """Connect and become a monitor (or eavesdrop): the trace header says which."""
        address = str(self.bus_address)
        try:
            link = connect(address)
        except SetupError as exc:
            raise InputError(str(exc)) from None
        self.link = link
        try:
            refusal = become_monitor(link, self.rules)
        except (SetupError, OSError, wire.FrameError) as exc:
            detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise InputError(f"cannot monitor the bus at {address}: {detail}") from None
        self.capture = "BecomeMonitor" if refusal is None else "eavesdrop"
        if refusal is not None:
            print(
                f"ipcproxy: BecomeMonitor refused ({refusal}); eavesdropping with AddMatch instead"
                " (only what the bus's policy lets this user eavesdrop is seen)",
                file=sys.stderr,
            )
        return {"capture": self.capture, "match": self.rules}

    async def open(self, wiring: Wiring) -> dict[str, Any]:
        link = self.link
        assert link is not None
        address = str(self.bus_address)
        capture = self.capture
        ignore = {link.unique_name}
        if wiring.resolver_name:
            ignore.add(wiring.resolver_name)
        loop = asyncio.get_running_loop()
        self.monitor = Monitor(loop, link, wiring.recorder, wiring.directory, ignore, done=self.done)
        return {
            "bus": address,
            "capture": capture,
            "match": self.rules,
            "unique_name": link.unique_name,
            "resolver": wiring.resolver_name,
        }

    def begin(self) -> None:
        assert self.monitor is not None
        self.monitor.start()

    def request_stop(self, urgent: bool) -> None:
        monitor = self.monitor
        if monitor is None:
            self.done.set()
        elif urgent:  # a second signal: stop now
            monitor.drain()
            self.done.set()
        else:
            asyncio.ensure_future(monitor.settle())

    def bus_lost(self, reason: str) -> None:
        """Our own connection tells, once it has read everything the bus sent before going."""

    def close(self) -> dict[str, Any]:
        if self.monitor is not None:
            self.monitor.close()
            return {"messages": self.monitor.messages}
        if self.link is not None:
            self.link.sock.close()
        return {}
