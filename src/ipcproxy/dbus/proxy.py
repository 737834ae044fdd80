"""The D-Bus proxy: ties the listener, the connector, the connections and the sans-IO sessions together.

Each accepted client gets a ``Session`` (session.py: the message logic, no
I/O) and a ``SessionIO`` here (its two ``Conn``s); this module feeds what the
sockets bring to the session and carries out the commands it answers with.
When nothing intercepts, authenticated connections are handed to the
compiled data plane (plane.py, _plane.c), and the frames it hands back
to Python go through the same session. Recording is paced here, off the
forwarding path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..chain import Chain
from ..model import Direction, Endpoint
from ..trace.recorder import Recorder
from ..trace.writer import JsonlWriter
from . import plane as plane_entries
from . import wire
from .address import parse
from .bus import Directory, process_facts
from .conn import Conn, close_fds, peer_credentials, read_buffer
from .connector import Connector
from .listener import Listener
from .session import (
    Authenticated,
    CarryFds,
    Close,
    CloseOther,
    Command,
    ConnectBus,
    HandOver,
    Later,
    ProxyState,
    SendToBus,
    SendToClient,
    Session,
)

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


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What a client that has not authenticated yet may cost (dbus-daemon: auth_timeout, max_incomplete_connections).

    Such a client has no connection to the bus yet; it is closed after
    ``auth_timeout`` seconds, and past ``max_pending`` of them new clients are
    refused. None: no limit.
    """

    auth_timeout: float | None = 30.0
    max_pending: int | None = 256


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


class SessionIO:
    """The sockets of one session: the client's connection and, once opened, the bus's."""

    __slots__ = ("session", "client", "bus", "on_plane", "timers")

    def __init__(self, session: Session, client: Conn) -> None:
        self.session = session
        self.client = client
        self.bus: Conn | None = None
        self.on_plane = False
        self.timers: list[asyncio.TimerHandle] = []  # dropped when the session ends


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
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.upstream_text = upstream
        self.limits = limits or ConnectionLimits()
        self.connector = Connector(parse(upstream), impersonate)
        self.chain = chain
        self.recorder = recorder
        self.directory = directory or Directory()
        self.loop = loop or asyncio.get_event_loop()
        self.listener = Listener(self.loop, parse(listen)[0], self._accepted)
        self.links: dict[int, SessionIO] = {}
        self.pending: set[int] = set()  # sessions whose client has not completed its handshake
        self._next_id = 0
        self._read_buffer = read_buffer()
        self._write_timer: asyncio.TimerHandle | None = None
        self._encode_soon = False
        self._busy_until = 0.0
        self._light = True  # traffic is light: records are written on the loop turn that made them
        self._rate_since = 0.0  # loop time and records written when the rate was last measured
        self._rate_written = 0
        # With nothing to intercept and every record going to JSON lines, authenticated
        # connections are carried by the compiled plane (see _plane.c), if it is built.
        self.plane: Any = None
        if USE_PLANE and plane_entries.available() and not chain.interceptors and recorder.takes_lines:
            self.plane = plane_entries.new_plane(
                record=recorder.active,
                decode_args=recorder.decode_args,
            )
            recorder.attach_plane(self.plane)
            self.loop.add_reader(self.plane.fileno(), self._plane_ready)
        self.state = ProxyState(
            chain, recorder, self.directory, hand_over=self.plane is not None, auth_timeout=self.limits.auth_timeout
        )
        tune_allocator()
        for sink in recorder.sinks:
            if isinstance(sink, JsonlWriter) and BACKGROUND_WRITES:
                sink.start_background()

    @property
    def address(self) -> str:
        return str(self.listener.address)

    def listen(self) -> str:
        self.listener.listen(not_on=self.connector.upstream)
        return self.address

    def adopt_listener(self, sock: socket.socket) -> None:
        """Serve on an already bound and listening socket (interpose mode)."""
        self.listener.adopt(sock)

    # ------------------------------------------------------------ clients
    def _accepted(self, sock: socket.socket) -> None:
        creds = peer_credentials(sock)
        pid, uid, gid = creds if creds else (None, None, None)
        client = Endpoint(pid=pid, uid=uid)
        cap = self.limits.max_pending
        if cap is not None and len(self.pending) >= cap:
            sock.close()
            self.recorder.event(
                "refused", client=client.to_json(), reason=f"{cap} connections already waiting to authenticate"
            )
            self._schedule_write()
            return
        self._next_id += 1
        conn_id = self._next_id
        if pid:
            client.exe, client.comm = process_facts(pid)
        session = Session(self.state, conn_id, client, gid, unix_fd_possible=sock.family == socket.AF_UNIX)
        client_conn = Conn(
            self.loop,
            sock,
            f"client#{conn_id}",
            lambda data, fds: self._run(link, session.client_data(data, fds)),
            lambda reason: self._end(link, reason),
            self._read_buffer,
        )
        link = SessionIO(session, client_conn)
        self.links[conn_id] = link
        self.pending.add(conn_id)
        self._run(link, session.start())
        if not session.closed:
            link.client.start_reading()

    def _connect_bus(self, link: SessionIO) -> list[Command]:
        session = link.session
        try:
            sock, auth_uid = self.connector.connect(session.pid, session.uid, session.gid)
        except OSError as exc:
            return session.bus_unreachable(f"cannot reach the bus at {self.upstream_text}: {exc.strerror or exc}")
        bus = Conn(
            self.loop,
            sock,
            f"bus#{session.id}",
            lambda data, fds: self._run(link, session.bus_data(data, fds)),
            lambda reason: self._end(link, reason),
            self._read_buffer,
        )
        bus.peer = link.client
        link.client.peer = bus
        link.bus = bus
        commands = session.bus_connected(auth_uid, sock.family == socket.AF_UNIX)
        bus.start_reading()
        return commands

    def _run(self, link: SessionIO, commands: list[Command], paced: bool = True) -> None:
        """Carry out a session's commands, in order."""
        for command in commands:
            if isinstance(command, (SendToBus, SendToClient)):
                self._send(link, isinstance(command, SendToBus), command.frames, command.fds)
            elif isinstance(command, Close):
                self._end(link, command.reason)
            elif isinstance(command, ConnectBus):
                self._run(link, self._connect_bus(link), paced=False)
            elif isinstance(command, CarryFds):
                conn = link.bus if command.from_bus else link.client
                if conn is not None:
                    conn.unix_fds = True
            elif isinstance(command, HandOver):
                self._hand_over(link, command)
            elif isinstance(command, Later):
                timer = self.loop.call_later(command.delay_s, self._later, link, command)
                if command.cancel_on_close:
                    link.timers.append(timer)
            elif isinstance(command, Authenticated):
                self.pending.discard(link.session.id)
            elif isinstance(command, CloseOther):
                other = self.links.get(command.connection)
                if other is not None:
                    self._end(other, command.reason)
        if paced:
            self.after_batch(link.session.frames_read)

    def _send(self, link: SessionIO, to_bus: bool, frames: list[bytes], fds: Sequence[int]) -> None:
        if link.on_plane:
            self.plane.send(link.session.id, to_bus, frames[0], fds or None)
            return
        out = link.bus if to_bus else link.client
        if out is None:  # cannot happen: nothing goes to the bus before it is connected
            close_fds(fds)
        elif fds:
            out.write(frames[0], list(fds))
        else:
            out.write_chunks(frames)

    def _later(self, link: SessionIO, command: Later) -> None:
        self._run(link, command.then())

    def _hand_over(self, link: SessionIO, command: HandOver) -> None:
        """Give both sockets to the compiled plane, with what was read and not yet written."""
        session = link.session
        bus = link.bus
        assert bus is not None
        client_unix_fds, bus_unix_fds = link.client.unix_fds, bus.unix_fds
        client_fd, to_client = link.client.detach()
        bus_fd, to_bus = bus.detach()
        self.plane.adopt(
            session.id,
            client_fd,
            bus_fd,
            client_unix_fds,
            bus_unix_fds,
            session.client_ep,
            command.client_buffer,
            command.bus_buffer,
            to_client,
            to_bus,
        )
        link.on_plane = True
        session.on_plane(self.plane)

    def _end(self, link: SessionIO, reason: str) -> None:
        session = link.session
        if session.closed:
            return
        session.close(reason)
        if link.on_plane:
            self.plane.close(session.id)
        link.client.close(reason)
        if link.bus is not None:
            link.bus.close(reason)
        for timer in link.timers:
            timer.cancel()
        link.timers.clear()
        self.links.pop(session.id, None)
        self.pending.discard(session.id)
        self.recorder.flush()

    # what the compiled plane's thread left for Python
    def _plane_ready(self) -> None:
        plane = self.plane
        for event in plane.take_events():
            kind, conn_id = event[0], event[1]
            if kind == "stalled":  # bounded memory: forwarding waited for the trace to be written
                self.recorder.event("backpressure", waited_ms=round(event[2] / 1e6, 3), reason="trace writing behind")
                continue
            link = self.links.get(conn_id)
            if kind == "frame":
                from_client, raw, ts_ns, seq = event[2], event[3], event[4], event[5]
                try:
                    if link is not None:
                        direction = Direction.TO_BUS if from_client else Direction.FROM_BUS
                        take_fds = functools.partial(plane.take_fds, conn_id, from_client)
                        self._run(link, link.session.plane_frame(raw, direction, ts_ns, seq, take_fds), paced=False)
                    else:
                        self.recorder.event("discarded", seq, connection=conn_id, reason="connection closed")
                finally:
                    plane.resume(conn_id, from_client, seq)  # that side reads again
            elif link is None:
                continue
            elif kind == "closed":
                self._end(link, event[2])
            else:  # malformed: the fixed header names what is wrong
                try:
                    wire.frame_size(event[3])
                    reason = "malformed fixed header"
                except wire.FrameError as exc:
                    reason = str(exc)
                self._run(link, link.session.malformed("client" if event[2] else "bus", reason), paced=False)
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

    def close(self) -> None:
        self.listener.close()
        for link in list(self.links.values()):
            self._end(link, "proxy stopping")
        if self.plane is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self.plane.fileno())
            self.plane.close_all()
            self._plane_ready()  # frames it had handed over are recorded (as discarded) before the last write
        self._write_records()
