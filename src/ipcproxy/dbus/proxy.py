"""The D-Bus proxy's I/O: listener, one session pair per client, fd passing.

Everything protocol-shaped (framing, SASL, bus facts, interceptors) is
delegated to sans-IO modules; this module only moves bytes and fds between
sockets and turns verdicts into writes. Sockets are driven directly with
``add_reader``/``recvmsg_into``/``sendmsg`` because asyncio transports cannot
carry SCM_RIGHTS.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..chain import Chain, Context
from ..model import BUS_DRIVER_NAME, Action, Direction, Endpoint, Message, MessageType, Verdict
from ..trace.recorder import Recorder
from ..trace.writer import JsonlWriter
from . import plane as plane_entries
from . import wire
from .address import Address, AddressError, parse
from .auth import AuthError, ClientAuth, ServerAuth
from .bus import CREDENTIAL_METHODS, Directory

log = logging.getLogger("ipcproxy.proxy")

READ_SIZE = 256 * 1024
ANCILLARY = socket.CMSG_SPACE(wire.MAX_UNIX_FDS * 4)
HIGH_WATER = 16 * 1024 * 1024
LOW_WATER = 4 * 1024 * 1024
INJECTED_SERIAL_BASE = 0xF0000000
DENIED = "org.freedesktop.DBus.Error.AccessDenied"
# plain ints: the socket module's MsgFlag enums cost a microsecond per ``&``
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)


# Records are encoded and written in bulk (the encoder then runs with warm caches, and
# each write is large): once this many wait, or their frames hold this many bytes, ...
ENCODE_RECORDS = 256
ENCODE_BYTES = 1 << 20
FLUSH_DELAY = 0.01  # ... or this many seconds after the first of them, while traffic is heavy
LIGHT_RATE = 2000  # below this many records a second, each loop turn's records are written at once
RATE_WINDOW = 0.01  # seconds over which that rate is measured
ENCODE_WHEN_BUSY = True  # when reads bring several frames, encode once per loop turn instead (see after_batch)
BUSY_SPELL = 0.005  # ... and for this many seconds after such a read
WRITE_BYTES = 256 * 1024  # ... and write once this much is encoded
BACKGROUND_WRITES = True  # the trace's writes (the kernel's page-cache copy) run in a thread beside forwarding
USE_PLANE = True  # carry connections in the compiled plane when nothing intercepts (IPCPROXY_PLANE=0: never)


def tune_allocator() -> None:
    """Let glibc keep large blocks (frames, hex-encoded arguments) in the heap.

    By default every block of 128 KiB or more is a fresh mmap, and freed memory
    at the heap's top is returned at once: with 64 KiB messages that is dozens
    of page faults per call. Blocks up to 32 MiB now come from the heap, and up
    to 128 MiB of free heap is kept for reuse.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD


def _as_message(call: Message | bytes) -> Message:
    """A pending call as a Message (calls that took the fast path are kept as their bytes)."""
    return call if isinstance(call, Message) else wire.parse_message(call)


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Conn:
    """One non-blocking stream socket: reads into a callback, writes with back-pressure."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        name: str,
        on_data: Callable[[memoryview, list[int]], None],
        on_close: Callable[[str], None],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.name = name
        self.on_data = on_data
        self.on_close = on_close
        self.unix_fds = False
        self.closed = False
        self.reading = False
        self.peer: Conn | None = None  # whose reading pauses when we cannot write fast enough
        self._out: deque[tuple[bytes | bytearray | memoryview, list[int]]] = deque()
        self._out_bytes = 0
        self._writing = False
        self._buf = bytearray(READ_SIZE)
        self._view = memoryview(self._buf)
        self._peer_paused = False

    # reading
    def start_reading(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self.loop.add_reader(self.fd, self._readable)

    def pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)

    def _readable(self) -> None:
        fds: list[int] = []
        try:
            if self.unix_fds:
                n, ancdata, flags, _ = self.sock.recvmsg_into([self._view], ANCILLARY, _MSG_CMSG_CLOEXEC)
                for level, kind, data in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        arr = array.array("i")
                        arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
                        fds.extend(arr)
                if flags & _MSG_CTRUNC:
                    _close_fds(fds)
                    self.close("too many file descriptors in one message (control data truncated)")
                    return
            else:
                n = self.sock.recv_into(self._view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(f"read failed: {exc.strerror}")
            return
        if n == 0:
            _close_fds(fds)
            self.close("closed by peer")
            return
        self.on_data(self._view[:n], fds)

    # writing
    @property
    def backlog(self) -> int:
        return self._out_bytes

    def write(self, data: bytes | bytearray | memoryview, fds: list[int] | None = None) -> None:
        if self.closed:
            if fds:
                _close_fds(fds)
            return
        fds = fds or []
        if not self._out:
            try:
                sent = self._send(data, fds)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                _close_fds(fds)
                self.close(f"write failed: {exc.strerror}")
                return
            if fds and sent:
                _close_fds(fds)
                fds = []
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._out.append((data, fds))
        self._out_bytes += len(data)
        if not self._writing:
            self._writing = True
            self.loop.add_writer(self.fd, self._writable)
        if self._out_bytes > HIGH_WATER and self.peer is not None and self.peer.reading:
            self.peer.pause_reading()
            self._peer_paused = True

    def write_chunks(self, chunks: list[bytes]) -> None:
        """Write consecutive frames with one send(msg), without joining them first."""
        single = len(chunks) == 1
        if self._out or self.closed or len(chunks) > 512:
            self.write(chunks[0] if single else b"".join(chunks))
            return
        try:
            sent = self.sock.send(chunks[0]) if single else self.sock.sendmsg(chunks)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.close(f"write failed: {exc.strerror}")
            return
        if sent < (len(chunks[0]) if single else sum(map(len, chunks))):
            self.write((chunks[0] if single else b"".join(chunks))[sent:])

    def _send(self, data: bytes | bytearray | memoryview, fds: list[int]) -> int:
        if fds:
            return self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        return self.sock.send(data)

    def _writable(self) -> None:
        while self._out:
            data, fds = self._out[0]
            try:
                sent = self._send(data, fds)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.close(f"write failed: {exc.strerror}")
                return
            if fds:
                _close_fds(fds)
                fds = []
            self._out_bytes -= sent
            if sent == len(data):
                self._out.popleft()
            else:
                self._out[0] = (memoryview(data)[sent:], [])
                break
        if not self._out:
            self._writing = False
            self.loop.remove_writer(self.fd)
        if self._peer_paused and self._out_bytes < LOW_WATER and self.peer is not None:
            self._peer_paused = False
            self.peer.start_reading()

    def detach(self) -> tuple[int, bytes]:
        """Stop driving the socket and hand it over (to the compiled plane): its fd and unsent bytes."""
        self.pause_reading()
        if self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False
        unsent = b"".join(bytes(data) for data, _fds in self._out)
        self._out.clear()
        self._out_bytes = 0
        self.closed = True
        return self.sock.detach(), unsent

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False
        if self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False
        # best effort: let pending replies (an error we injected) reach the peer
        while self._out:
            data, fds = self._out.popleft()
            with contextlib.suppress(OSError):
                self._send(data, fds)
            _close_fds(fds)
        self.sock.close()
        self.on_close(reason)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    if sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _connect(address: Address, as_user: tuple[int, int, list[int]] | None) -> socket.socket:
    if as_user is not None and address.family == socket.AF_UNIX:
        sock = _connect_as(address, *as_user)
    else:
        sock = socket.socket(address.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(address.sockaddr)
        except OSError:
            sock.close()
            raise
    sock.setblocking(False)
    return sock


# The bus learns who connected from SO_PEERCRED: the uid, gids *and pid* of the process
# that called connect(). Connecting from this (root) process with a borrowed euid gives
# the right uid but our pid, and a service that looks that pid up finds root. So a small
# helper running wholly as the client's user (real, effective and saved ids, its groups,
# no capabilities) connects for us and hands the socket back: no pid the bus reports is
# ever more privileged than the client. One helper per identity, kept while we run.
_CONNECTOR = """
import array, os, socket, sys
chan = socket.socket(fileno=int(sys.argv[1]))
while True:
    where = chan.recv(4096)
    if not where:
        break
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(where)
    except OSError as exc:
        chan.send(b"%d" % exc.errno)
    else:
        chan.sendmsg([b"0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))])
    sock.close()
"""
_connectors: dict[tuple[int, int, tuple[int, ...]], tuple[subprocess.Popen[bytes], socket.socket]] = {}


def _connect_as(address: Address, uid: int, gid: int, groups: list[int]) -> socket.socket:
    """Connect with the client's credentials (through its user's helper), so the bus sees who is really calling."""
    key = (uid, gid, tuple(groups))
    where = address.sockaddr
    if isinstance(where, tuple):
        raise OSError(errno.EAFNOSUPPORT, "only unix sockets carry the client's credentials")
    request = os.fsencode(where) if isinstance(where, str) else where
    for _attempt in (1, 2):
        if key not in _connectors:
            _connectors[key] = _start_connector(uid, gid, groups)
        proc, chan = _connectors[key]
        try:
            chan.send(request)
            answer, ancdata, _flags, _addr = chan.recvmsg(16, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
        except OSError:
            answer, ancdata = b"", []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(data) >= 4:
                return socket.socket(fileno=int.from_bytes(data[:4], sys.byteorder))
        if answer:
            code = int(answer)
            raise OSError(code, os.strerror(code))
        chan.close()  # the helper is gone: start a fresh one, once
        proc.kill()
        proc.wait()
        del _connectors[key]
    raise OSError(errno.EIO, f"no connector for uid {uid}")


def _start_connector(uid: int, gid: int, groups: list[int]) -> tuple[subprocess.Popen[bytes], socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        for python in dict.fromkeys((sys.executable, "/usr/bin/python3")):
            try:
                proc = subprocess.Popen(
                    [python, "-I", "-S", "-c", _CONNECTOR, str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    user=uid,
                    group=gid,
                    extra_groups=groups,
                    cwd="/",
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
                break
            except PermissionError as exc:  # this user may not run our interpreter
                error = exc
        else:
            ours.close()
            raise error
    finally:
        theirs.close()
    ours.settimeout(10)
    return proc, ours


def _client_groups(pid: int, gid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return [int(g) for g in line.split()[1:]]  # exactly the client's: possibly none
    except OSError:
        pass
    return [gid]


class Session:
    """One client connection and its own upstream connection."""

    def __init__(self, proxy: Proxy, conn_id: int, client_sock: socket.socket) -> None:
        self.proxy = proxy
        self.id = conn_id
        self.loop = proxy.loop
        creds = peer_credentials(client_sock)
        self.pid: int | None = creds[0] if creds else None
        self.uid: int | None = creds[1] if creds else None
        self.gid: int | None = creds[2] if creds else None
        self.client_ep = Endpoint(pid=self.pid, uid=self.uid)
        if self.pid:
            from .bus import process_facts

            self.client_ep.exe, self.client_ep.comm = process_facts(self.pid)
        self.client = Conn(self.loop, client_sock, f"client#{conn_id}", self._client_data, self._closed)
        self.upstream: Conn | None = None
        self.server_auth = ServerAuth(self.uid, unix_fd_possible=client_sock.family == socket.AF_UNIX)
        self.client_auth: ClientAuth | None = None
        self.client_parser = wire.FrameParser()
        self.bus_parser = wire.FrameParser()
        self.unique_name: str | None = None
        self.hello_serial: int | None = None
        # calls awaiting replies: (when, the call, or its bytes when it took the fast path)
        self.pending_out: dict[int, tuple[int, Message | bytes]] = {}  # our client's calls
        self.pending_in: dict[tuple[str | None, int], tuple[int, Message | bytes]] = {}  # calls to our client
        self.held: dict[Direction, list[list[Any]]] = {Direction.TO_BUS: [], Direction.FROM_BUS: []}
        self.closed = False
        self.close_reason = ""
        self._injected = INJECTED_SERIAL_BASE
        self.plane: Any = None  # the compiled plane, once it carries this connection

    # setup
    def start(self) -> None:
        proxy = self.proxy
        as_user = None
        if proxy.impersonate and self.uid is not None and self.uid != os.geteuid() and self.pid:
            as_user = (self.uid, self.gid or 0, _client_groups(self.pid, self.gid or 0))
        try:
            sock = proxy.connect_upstream(as_user)
        except OSError as exc:
            self._fail(f"cannot reach the bus at {proxy.upstream_text}: {exc.strerror or exc}")
            return
        self.upstream = Conn(self.loop, sock, f"bus#{self.id}", self._bus_data, self._closed)
        self.upstream.peer = self.client
        self.client.peer = self.upstream
        uid = self.uid if as_user is not None and self.uid is not None else os.geteuid()
        self.client_auth = ClientAuth(uid, unix_fd=sock.family == socket.AF_UNIX)
        self.upstream.write(self.client_auth.start())
        self.upstream.start_reading()
        self.client.start_reading()
        proxy.recorder.event("connect", connection=self.id, client=self.client_ep.to_json())

    def _fail(self, reason: str) -> None:
        log.warning("connection %d: %s", self.id, reason)
        self.client.close(reason)

    # data from the client
    def _client_data(self, data: memoryview, fds: list[int]) -> None:
        if not self.server_auth.done:
            if fds:
                _close_fds(fds)
                self.client.close("file descriptors sent during authentication")
                return
            try:
                self.server_auth.feed(bytes(data))
            except AuthError as exc:
                self.client.write(self.server_auth.output())
                self.client.close(f"authentication failed: {exc}")
                return
            self.client.write(self.server_auth.output())
            if not self.server_auth.done:
                return
            self.client.unix_fds = self.server_auth.unix_fd
            data = memoryview(self.server_auth.leftover)
            if not data:
                return
        self.client_parser.feed(data, fds)
        self._pump(self.client_parser, Direction.TO_BUS)

    def _bus_data(self, data: memoryview, fds: list[int]) -> None:
        auth = self.client_auth
        if auth is not None and not auth.done:
            try:
                auth.feed(bytes(data))
            except AuthError as exc:
                self.client.close(f"the bus refused us: {exc}")
                return
            if not auth.done:
                return
            assert self.upstream is not None and auth.guid is not None
            self.upstream.unix_fds = auth.unix_fd
            try:
                # lines the client pipelined are only read now, and may be garbage
                self.server_auth.upstream_ready(auth.guid, auth.unix_fd)
            except AuthError as exc:
                self.client.write(self.server_auth.output())
                self.client.close(f"authentication failed: {exc}")
                return
            self.client.write(self.server_auth.output())
            if self.server_auth.done:
                # the client pipelined BEGIN and its first messages
                self.client.unix_fds = self.server_auth.unix_fd
                leftover = self.server_auth.leftover
                if leftover:
                    self.client_parser.feed(leftover)
                    self._pump(self.client_parser, Direction.TO_BUS)
            data = memoryview(auth.leftover)
            if not data:
                return
        self.bus_parser.feed(data, fds)
        self._pump(self.bus_parser, Direction.FROM_BUS)

    # messages
    def _pump(self, parser: wire.FrameParser, direction: Direction) -> None:
        if self.proxy.plane is not None and self._adopt():
            return
        out = self.upstream if direction is Direction.TO_BUS else self.client
        assert out is not None
        batch: list[bytes] = []  # frames forwarded unchanged, in order, not yet written
        # Fast path: with no interceptors, a frame whose header was seen before is forwarded
        # without building a Message; its book-keeping and record follow the write (``_account``).
        fast: list[tuple[bytes, wire.Header, int, int]] = []
        proxy = self.proxy
        heads = proxy.headers if not proxy.chain.interceptors else None
        try:
            for raw, head, serial, reply_serial in parser.scan(heads):
                if head is not None and not head.driver and not self.closed:
                    batch.append(raw)
                    fast.append((raw, head, serial, reply_serial))
                    continue
                if fast:  # records stay in the order the frames came
                    self._account(fast, direction)
                    fast = []
                if self.closed:
                    _close_fds(parser.message(raw).fds)
                    continue
                message = parser.message(raw)
                if heads is not None:
                    heads.learn(message)
                verdict = self._handle(message, direction)
                if verdict is None:  # plain forward, the common case
                    if message.fds:
                        if batch:
                            out.write_chunks(batch)
                            batch = []
                        out.write(message.raw, message.fds)
                    else:
                        batch.append(message.raw)
                    if self.held[direction]:
                        out.write_chunks(batch)
                        batch = []
                        self._count_held(direction, out, bytearray())
                else:
                    if batch:
                        out.write_chunks(batch)
                        batch = []
                    self._execute(message, direction, verdict)
        except wire.FrameError as exc:
            if batch:
                out.write_chunks(batch)
                batch = []
            if fast:
                self._account(fast, direction)
                fast = []
            _close_fds(parser.take_fds())
            self.malformed("client" if direction is Direction.TO_BUS else "bus", str(exc))
        frames = len(batch)
        if batch:
            out.write_chunks(batch)
        if fast:
            self._account(fast, direction)
        proxy.after_batch(frames)

    def _account(self, frames: list[tuple[bytes, wire.Header, int, int]], direction: Direction) -> None:
        """Pending calls, latencies and records for frames that took the fast path."""
        now = time.monotonic_ns()
        record = self.proxy.recorder.frame
        direction_name = direction.value
        conn = self.id
        client = self.client_ep
        if direction is Direction.TO_BUS:
            calls, answered = self.pending_out, self.pending_in
            for raw, head, serial, reply_serial in frames:
                latency = None
                mtype = head.type
                if mtype is MessageType.METHOD_CALL:
                    if not head.no_reply:
                        calls[serial] = (now, raw)
                elif mtype is not MessageType.SIGNAL:
                    pending = answered.pop((head.destination, reply_serial), None)
                    if pending is not None:
                        latency = now - pending[0]
                record(raw, head, direction_name, conn, client, latency, now)
        else:
            calls_in, answered_out = self.pending_in, self.pending_out
            for raw, head, serial, reply_serial in frames:
                latency = None
                mtype = head.type
                if mtype is MessageType.METHOD_CALL:
                    if not head.no_reply:
                        calls_in[(head.sender, serial)] = (now, raw)
                elif mtype is not MessageType.SIGNAL:
                    pending = answered_out.pop(reply_serial, None)
                    if pending is not None:
                        latency = now - pending[0]
                record(raw, head, direction_name, conn, client, latency, now)

    # the compiled plane
    def _adopt(self) -> bool:
        """Hand both sockets to the compiled plane once both handshakes are over."""
        upstream = self.upstream
        if upstream is None or self.client_auth is None or not self.client_auth.done or not self.server_auth.done:
            return False
        if self.client_parser.take_fds() or self.bus_parser.take_fds():
            return False  # cannot happen: fds are refused during authentication
        plane = self.proxy.plane
        self.plane = plane
        client_unix_fds, bus_unix_fds = self.client.unix_fds, upstream.unix_fds
        client_fd, to_client = self.client.detach()
        bus_fd, to_bus = upstream.detach()
        plane.adopt(
            self.id,
            client_fd,
            bus_fd,
            client_unix_fds,
            bus_unix_fds,
            self.client_ep,
            self.client_parser.take_buffer(),
            self.bus_parser.take_buffer(),
            to_client,
            to_bus,
        )
        return True

    def slow_frame(self, raw: bytes, direction: Direction, ts_ns: int, seq: int) -> None:
        """A frame the plane does not forward alone: parse it strictly, record it, teach the plane its header."""
        plane = self.plane
        to_bus = direction is Direction.TO_BUS
        try:
            message = wire.parse_message(raw)
            if message.unix_fds:
                fds = plane.take_fds(self.id, to_bus, message.unix_fds)
                message.fds = fds
                if len(fds) < message.unix_fds:
                    raise wire.FrameError(f"message announces {message.unix_fds} fds, {len(fds)} arrived")
        except wire.FrameError as exc:
            self.malformed("client" if to_bus else "bus", str(exc), seq)
            return
        if self.closed:
            _close_fds(message.fds)
            self.proxy.recorder.event("discarded", seq, connection=self.id, reason="connection closed")
            return
        entry = plane_entries.entry_for(message)
        if entry is not None:
            plane.learn(*entry)
        verdict = self._handle(message, direction, ts_ns, seq)
        if verdict is not None and verdict.replacement is not None:
            message = verdict.replacement  # a credentials reply rewritten (no interceptors run here)
        plane.send(self.id, to_bus, message.raw, message.fds or None)

    def malformed(self, side: str, reason: str, seq: int = 0) -> None:
        self.proxy.recorder.event("malformed", seq, connection=self.id, side=side, reason=reason)
        self.close(f"malformed message from the {side}: {reason}")

    def _handle(self, message: Message, direction: Direction, now: int = 0, seq: int = 0) -> Verdict | None:
        """Book-keeping and the chain; returns None for an unchanged forward."""
        proxy = self.proxy
        now = now or time.monotonic_ns()
        latency = None
        mtype = message.type
        call: Message | None = None
        rewritten = False
        if direction is Direction.TO_BUS:
            if mtype is MessageType.METHOD_CALL:
                if message.member == "Hello" and message.destination == BUS_DRIVER_NAME:
                    self.hello_serial = message.serial
            elif mtype is MessageType.METHOD_RETURN or mtype is MessageType.ERROR:
                pending = self.pending_in.pop((message.destination, message.reply_serial or 0), None)
                if pending is not None:
                    latency = now - pending[0]
                    call = _as_message(pending[1])
                elif self.plane is not None:
                    since = self.plane.take_call(self.id, False, message.destination, message.reply_serial or 0)
                    latency = None if since is None else now - since
        else:
            if mtype is MessageType.METHOD_RETURN or mtype is MessageType.ERROR:
                pending = self.pending_out.pop(message.reply_serial or 0, None)
                if self.plane is not None:  # the plane timed the call (pending_out keeps only bus-driver calls)
                    since = self.plane.take_call(self.id, True, None, message.reply_serial or 0)
                    latency = None if since is None else now - since
                elif pending is not None:
                    latency = now - pending[0]
                if pending is not None:
                    call = _as_message(pending[1])
                    if message.reply_serial == self.hello_serial and mtype is MessageType.METHOD_RETURN:
                        self._hello_answered(message)
                    elif call.member in CREDENTIAL_METHODS and message.sender == BUS_DRIVER_NAME:
                        replacement = proxy.rewrite_credentials(call, message)
                        if replacement is not None:
                            _close_fds(message.fds)
                            message = replacement
                            rewritten = True
            elif (
                mtype is MessageType.SIGNAL
                and message.member == "NameOwnerChanged"
                and message.sender == BUS_DRIVER_NAME
            ):
                proxy.recorder.encode()  # records still waiting name the parties as they were
                proxy.directory.observe(message)
        verdict: Verdict | None = None
        ctx: Context | None = None
        if proxy.chain:
            ctx = Context(
                message=message,
                direction=direction,
                client=self.client_ep,
                connection_id=self.id,
                ts_ns=now,
                resolve=proxy.directory.endpoint,
                call_message=call,
                reply_to_allowed_call=(call is not None)
                if mtype in (MessageType.METHOD_RETURN, MessageType.ERROR)
                else None,
            )
            verdict = proxy.chain.run(ctx)
            if verdict.action is Action.FORWARD and not verdict.notes:
                verdict = None
            if ctx.message is not message:
                message = ctx.message
        passes = verdict is None or verdict.passes
        if passes and mtype is MessageType.METHOD_CALL and not message.no_reply_expected and self.plane is not None:
            # the plane times every call; the call itself is kept only where its reply is looked at
            to_bus = direction is Direction.TO_BUS
            self.plane.note_call(self.id, to_bus, None if to_bus else message.sender, message.serial, now)
            if to_bus and message.destination == BUS_DRIVER_NAME:
                self.pending_out[message.serial] = (now, message)
        elif passes and mtype is MessageType.METHOD_CALL and not message.no_reply_expected:
            if direction is Direction.TO_BUS:
                self.pending_out[message.serial] = (now, message)
            else:
                self.pending_in[(message.sender, message.serial)] = (now, message)
        proxy.recorder.message(
            message,
            direction.value,
            verdict if verdict is not None else ("modified" if rewritten else "forwarded"),
            self.id,
            self.client_ep,
            latency,
            now,
            seq=seq,
        )
        if verdict is None and rewritten:
            return Verdict(Action.MODIFY, replacement=message, reason="real client's credentials")
        return verdict

    def _hello_answered(self, reply: Message) -> None:
        try:
            unique = reply.args[0]
        except Exception:  # noqa: BLE001
            return
        self.proxy.recorder.encode()  # records still waiting name the parties as they were
        self.unique_name = unique
        self.client_ep.bus_name = unique
        self.proxy.directory.register(unique, self.client_ep)
        self.proxy.sessions_by_name[unique] = self

    def _count_held(self, direction: Direction, out: Conn, batch: bytearray) -> None:
        held = self.held[direction]
        if not held:
            return
        for entry in held:
            entry[1] -= 1
        while held and held[0][1] <= 0:
            message = held.pop(0)[0]
            if batch:
                out.write(batch)
                batch.clear()
            out.write(message.raw, message.fds)

    def next_injected_serial(self) -> int:
        self._injected += 1
        if self._injected > 0xFFFFFFF0:
            self._injected = INJECTED_SERIAL_BASE
        return self._injected

    def _execute(self, message: Message, direction: Direction, verdict: Verdict) -> None:
        out = self.upstream if direction is Direction.TO_BUS else self.client
        back = self.client if direction is Direction.TO_BUS else self.upstream
        assert out is not None and back is not None
        action = verdict.action
        if verdict.replacement is not None:
            message = verdict.replacement  # modified, and then also delayed, duplicated or held back
        if action in (Action.FORWARD, Action.VIOLATION, Action.MODIFY):
            target = verdict.replacement if action is Action.MODIFY and verdict.replacement else message
            out.write(target.raw, target.fds)
            self._count_held(direction, out, bytearray())
        elif action is Action.DELAY:
            self.loop.call_later(verdict.delay_s, self._late_write, out, message)
        elif action is Action.DUPLICATE:
            out.write(message.raw, message.fds)
            for _ in range(max(0, verdict.copies - 1)):
                out.write(message.raw)
        elif action is Action.REORDER:
            entry: list[Any] = [message, max(1, verdict.hold_for)]
            self.held[direction].append(entry)
            if verdict.delay_s > 0:  # release it anyway if too few later messages come
                self.loop.call_later(verdict.delay_s, self._release_held, direction, out, entry)
        elif action is Action.DROP:
            _close_fds(message.fds)
        elif action in (Action.DENY, Action.ERROR_REPLY):
            _close_fds(message.fds)
            self._answer_with_error(message, direction, verdict, out, back)
        elif action is Action.DISCONNECT:
            _close_fds(message.fds)
            self.proxy.disconnect_for(self, message, direction, verdict.disconnect_side)

    def _late_write(self, out: Conn, message: Message) -> None:
        out.write(message.raw, message.fds)

    def _release_held(self, direction: Direction, out: Conn, entry: list[Any]) -> None:
        held = self.held[direction]
        for i, candidate in enumerate(held):
            if candidate is entry:
                del held[i]
                out.write(entry[0].raw, entry[0].fds)
                return

    def _answer_with_error(
        self, message: Message, direction: Direction, verdict: Verdict, out: Conn, back: Conn
    ) -> None:
        name = verdict.error_name or DENIED
        text = verdict.error_message or (
            f"Rejected by ipcproxy: {verdict.reason}" if verdict.reason else "Rejected by ipcproxy"
        )
        if message.type is MessageType.METHOD_CALL:
            if message.no_reply_expected:
                return
            if direction is Direction.TO_BUS:
                caller = self.unique_name
                responder = BUS_DRIVER_NAME
                if verdict.action is Action.ERROR_REPLY and message.destination:
                    responder = self.proxy.directory.owner_of(message.destination) or message.destination
            else:
                caller = message.sender
                responder = None  # the bus stamps our client's name on it
            error = wire.error_reply(
                message, serial=self.next_injected_serial(), error_name=name, text=text, sender=responder
            )
            if caller is not None and error.destination != caller:
                error = wire.build(
                    MessageType.ERROR,
                    serial=error.serial,
                    error_name=name,
                    reply_serial=message.serial,
                    destination=caller,
                    sender=responder,
                    signature="s",
                    body=[text],
                )
            if direction is Direction.FROM_BUS:
                self.pending_in.pop((message.sender, message.serial), None)
            back.write(error.raw)
            back_dir = Direction.FROM_BUS if direction is Direction.TO_BUS else Direction.TO_BUS
            self.proxy.recorder.message(
                error,
                back_dir.value,
                {"action": "injected", "reason": verdict.reason, "by": verdict.by},
                self.id,
                self.client_ep,
            )
        elif message.type in (MessageType.METHOD_RETURN, MessageType.ERROR) and verdict.action is Action.ERROR_REPLY:
            error = wire.build(
                MessageType.ERROR,
                serial=message.serial,
                error_name=name,
                reply_serial=message.reply_serial,
                destination=message.destination,
                sender=message.sender,
                signature="s",
                body=[text],
            )
            out.write(error.raw)
            self.proxy.recorder.message(
                error,
                direction.value,
                {"action": "injected", "reason": verdict.reason, "by": verdict.by},
                self.id,
                self.client_ep,
            )
        # a denied signal is simply not delivered

    # teardown
    def _closed(self, reason: str) -> None:
        self.close(reason)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self.plane is not None:
            self.plane.close(self.id)
        self.client.close(reason)
        if self.upstream is not None:
            self.upstream.close(reason)
        _close_fds(self.client_parser.take_fds() + self.bus_parser.take_fds())
        for held in self.held.values():
            for entry in held:
                _close_fds(entry[0].fds)
        self.proxy.session_closed(self, reason)


class Proxy:
    """Listens for clients and gives each one its own upstream connection."""

    def __init__(
        self,
        upstream: str,
        listen: str,
        chain: Chain,
        recorder: Recorder,
        directory: Directory | None = None,
        impersonate: bool | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.upstream_text = upstream
        self.upstream_addresses = parse(upstream)
        self.listen_address = parse(listen)[0]
        self.chain = chain
        self.recorder = recorder
        self.directory = directory or Directory()
        self.impersonate = (os.geteuid() == 0) if impersonate is None else impersonate
        self.loop = loop or asyncio.get_event_loop()
        self.sessions: dict[int, Session] = {}
        self.sessions_by_name: dict[str, Session] = {}
        self._next_id = 0
        self._listener: socket.socket | None = None
        self._owns_path = False  # only a socket file we created is ours to unlink
        self._write_timer: asyncio.TimerHandle | None = None
        self._encode_soon = False
        self._busy_until = 0.0
        self._light = True  # traffic is light: records are written on the loop turn that made them
        self._rate_since = 0.0  # loop time and records written when the rate was last measured
        self._rate_written = 0
        self.headers = wire.HeaderCache()  # the fast path's header facts, shared by all sessions
        # With nothing to intercept and every record going to JSON lines, authenticated
        # connections are carried by the compiled plane (see _plane.c), if it is built.
        self.plane: Any = None
        if USE_PLANE and plane_entries.available() and not chain.interceptors and recorder.takes_lines:
            self.plane = plane_entries.new_plane(
                epoch_ns=recorder.epoch_ns,
                record=recorder.active,
                decode_args=recorder.decode_args,
            )
            recorder.attach_plane(self.plane)
            self.loop.add_reader(self.plane.fileno(), self._plane_ready)
        tune_allocator()
        for sink in recorder.sinks:
            if isinstance(sink, JsonlWriter) and BACKGROUND_WRITES:
                sink.start_background()

    @property
    def address(self) -> str:
        return str(self.listen_address)

    def listen(self) -> str:
        addr = self.listen_address
        sock = socket.socket(addr.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        if addr.transport == "unix" and addr.path:
            with contextlib.suppress(FileNotFoundError):
                if os.path.exists(addr.path) and not _is_socket(addr.path):
                    raise AddressError(f"{addr.path} exists and is not a socket")
                os.unlink(addr.path)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr.sockaddr)
        except OSError as exc:
            sock.close()
            raise AddressError(f"cannot listen on {addr}: {exc.strerror}") from None
        if addr.transport == "unix" and addr.path:
            os.chmod(addr.path, 0o777)  # access is the bus's decision, as with the real socket
        sock.listen(512)
        sock.setblocking(False)
        self._listener = sock
        self._owns_path = True
        if addr.transport == "tcp" and not addr.port:
            host, port = sock.getsockname()[:2]
            self.listen_address = Address("tcp", host=host, port=port)
        self.loop.add_reader(sock.fileno(), self._accept)
        return self.address

    def adopt_listener(self, sock: socket.socket) -> None:
        """Serve on an already bound and listening socket (interpose mode)."""
        sock.setblocking(False)
        self._listener = sock
        self._owns_path = False
        self.loop.add_reader(sock.fileno(), self._accept)

    def connect_upstream(self, as_user: tuple[int, int, list[int]] | None) -> socket.socket:
        last: OSError | None = None
        for address in self.upstream_addresses:
            try:
                return _connect(address, as_user)
            except OSError as exc:
                last = exc
        assert last is not None
        raise last

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(64):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc.strerror)
                return
            sock.setblocking(False)
            self._next_id += 1
            session = Session(self, self._next_id, sock)
            self.sessions[session.id] = session
            session.start()
            self.after_batch()

    # what the compiled plane's thread left for Python
    def _plane_ready(self) -> None:
        plane = self.plane
        for event in plane.take_events():
            kind, conn_id = event[0], event[1]
            if kind == "stalled":  # bounded memory: forwarding waited for the trace to be written
                self.recorder.event("backpressure", waited_ms=round(event[2] / 1e6, 3), reason="trace writing behind")
                continue
            session = self.sessions.get(conn_id)
            if kind == "frame":
                from_client, raw, ts_ns, seq = event[2], event[3], event[4], event[5]
                try:
                    if session is not None:
                        session.slow_frame(raw, Direction.TO_BUS if from_client else Direction.FROM_BUS, ts_ns, seq)
                    else:
                        self.recorder.event("discarded", seq, connection=conn_id, reason="connection closed")
                finally:
                    plane.resume(conn_id, from_client, seq)  # that side reads again
            elif session is None:
                continue
            elif kind == "closed":
                session.close(event[2])
            else:  # malformed: the fixed header names what is wrong
                try:
                    wire.frame_size(event[3])
                    reason = "malformed fixed header"
                except wire.FrameError as exc:
                    reason = str(exc)
                session.malformed("client" if event[2] else "bus", reason)
        recorder = self.recorder
        if recorder.pending_bytes >= ENCODE_BYTES:
            self._write_records()
        else:
            self._schedule_write()

    def after_batch(self, frames: int = 1) -> None:
        """Record what was just forwarded, off the forwarding itself.

        Messages one at a time (a caller waiting for each answer): records wait
        and are encoded and written in bulk, which costs the least CPU. Reads
        that bring several frames (the pipeline is full), and any read shortly
        after one: records are encoded once per turn of the event loop, so that
        recording interleaves with forwarding instead of stalling it; they are
        written once enough is encoded.
        """
        recorder = self.recorder
        if frames > 1:
            self._busy_until = self.loop.time() + BUSY_SPELL
        if ENCODE_WHEN_BUSY and (frames > 1 or self._busy_until > self.loop.time()):
            if not self._encode_soon:
                self._encode_soon = True
                self.loop.call_soon(self._encode_records)
        elif recorder.backlog >= ENCODE_RECORDS or recorder.pending_bytes >= ENCODE_BYTES:
            self._write_records()
            return
        self._schedule_write()

    def _encode_records(self) -> None:
        self._encode_soon = False
        recorder = self.recorder
        recorder.encode(WRITE_BYTES)
        if recorder.unwritten >= WRITE_BYTES:
            self._write_records()

    def _schedule_write(self) -> None:
        """Have waiting records written; how long they may wait is what a SIGKILL could lose.

        Light traffic (most of a real bus's life) gets its records written on
        the next turn of the event loop. Heavy traffic waits up to FLUSH_DELAY,
        so that each write carries many records: writing on every turn cost
        17% of the throughput at concurrency 64 (bench/ab.py, FLUSH_DELAY=0).
        """
        if self._write_timer is None and self.recorder.backlog:
            delay = 0.0 if self._light else FLUSH_DELAY
            self._write_timer = self.loop.call_later(delay, self._write_records)

    def _write_records(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        recorder = self.recorder
        recorder.flush()
        now = self.loop.time()
        if now - self._rate_since >= RATE_WINDOW:
            rate = (recorder.written - self._rate_written) / (now - self._rate_since)
            self._light = rate < LIGHT_RATE
            self._rate_since, self._rate_written = now, recorder.written

    def session_closed(self, session: Session, reason: str) -> None:
        self.sessions.pop(session.id, None)
        if session.unique_name:
            self.sessions_by_name.pop(session.unique_name, None)
        self.recorder.event("disconnect", connection=session.id, client=session.client_ep.to_json(), reason=reason)
        self.recorder.flush()

    def disconnect_for(self, session: Session, message: Message, direction: Direction, side: str) -> None:
        """Close the connection of the message's sender or receiver (fault injection)."""
        client_is_sender = direction is Direction.TO_BUS
        if (side == "sender") == client_is_sender:
            session.close(f"disconnected by fault ({side})")
            return
        other_name = message.destination if client_is_sender else message.sender
        owner = self.directory.owner_of(other_name) if other_name else None
        target = self.sessions_by_name.get(owner) if owner else None
        if target is not None:
            target.close(f"disconnected by fault ({side})")
        else:
            # the peer is not behind this proxy: the closest we can do is cut this message's path
            session.close(f"disconnected by fault ({side}; peer not behind the proxy)")

    def rewrite_credentials(self, call: Message, reply: Message) -> Message | None:
        """Answer the bus driver's credential look-ups with the real client's pid, not ours."""
        try:
            (name,) = call.args
        except Exception:  # noqa: BLE001
            return None
        owner = self.directory.owner_of(name) if isinstance(name, str) else None
        target = self.sessions_by_name.get(owner) if owner else None
        if target is None or target.pid is None:
            return None
        try:
            if call.member == "GetConnectionUnixProcessID" and reply.signature == "u":
                if reply.args[0] == target.pid:
                    return None
                fast = wire.to_fast(reply, [target.pid])
            elif call.member == "GetConnectionCredentials" and reply.signature == "a{sv}":
                fast = wire.to_fast(reply)
                creds = fast.body[0]
                pid_variant = creds.get("ProcessID")
                if pid_variant is None or pid_variant.value == target.pid:
                    return None
                from dbus_fast import Variant

                creds["ProcessID"] = Variant("u", target.pid)
                creds.pop("ProcessFD", None)
                fast.unix_fds = []
            else:
                return None
            new = wire.parse_message(wire.marshal(fast))
        except Exception as exc:  # noqa: BLE001 - never break a reply over this
            log.warning("could not rewrite credentials reply: %s", exc)
            return None
        return new

    def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            addr = self.listen_address
            if addr.transport == "unix" and addr.path and self._owns_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(addr.path)
        for session in list(self.sessions.values()):
            session.close("proxy stopping")
        if self.plane is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self.plane.fileno())
            self.plane.close_all()
            self._plane_ready()  # frames it had handed over are recorded (as discarded) before the last write
        self._write_records()


def _is_socket(path: str) -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return True
