"""Connection I/O: one non-blocking stream socket, its fds and its back-pressure.

This is the only place (with the listener and the connector) that touches the
proxy's sockets. Sockets are driven directly with ``add_reader``,
``recvmsg_into`` and ``sendmsg`` because asyncio transports cannot carry
SCM_RIGHTS.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable

from . import wire

READ_SIZE = 256 * 1024
ANCILLARY = socket.CMSG_SPACE(wire.MAX_UNIX_FDS * 4)
HIGH_WATER = 16 * 1024 * 1024
LOW_WATER = 4 * 1024 * 1024
# plain ints: the socket module's MsgFlag enums cost a microsecond per ``&``
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)


def close_fds(fds: Iterable[int]) -> None:
    """Close received fds that will not be passed on."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def read_buffer() -> memoryview:
    """A buffer for reads, shared by every connection of one event loop.

    What a read brings is consumed (copied or parsed) before the next read, so
    one buffer serves all connections: a connection that waits costs no
    read buffer of its own.
    """
    return memoryview(bytearray(READ_SIZE))


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    if sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


class Conn:
    """One non-blocking stream socket: reads into a callback, writes with back-pressure."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        name: str,
        on_data: Callable[[memoryview, list[int]], None],
        on_close: Callable[[str], None],
        buffer: memoryview | None = None,
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
        self._view = buffer if buffer is not None else read_buffer()
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
                    close_fds(fds)
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
            close_fds(fds)
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
                close_fds(fds)
            return
        fds = fds or []
        if not self._out:
            try:
                sent = self._send(data, fds)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                close_fds(fds)
                self.close(f"write failed: {exc.strerror}")
                return
            if fds and sent:
                close_fds(fds)
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
                close_fds(fds)
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
            close_fds(fds)
        self.sock.close()
        self.on_close(reason)
