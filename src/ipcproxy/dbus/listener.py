"""The listener: the socket clients connect to, and the socket file it owns.

It binds (or adopts, for interpose) the listening socket, accepts clients and
hands each accepted socket on. A socket file already at the path is replaced
only when it is stale (nobody accepts connections on it); the bus's own
socket is never taken. On close, the file is removed only if it is still the
one this listener created (same device and inode).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterable

from .address import Address, AddressError

log = logging.getLogger("ipcproxy.proxy")

BACKLOG = 512
ACCEPTS_PER_TURN = 64


class Listener:
    """Accepts clients on one address and calls ``on_client`` with each connected socket."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, address: Address, on_client: Callable[[socket.socket], None]
    ) -> None:
        self.loop = loop
        self.address = address
        self.on_client = on_client
        self.sock: socket.socket | None = None
        self._created: tuple[int, int] | None = None  # (device, inode) of the socket file we made

    def listen(self, not_on: Iterable[Address] = ()) -> Address:
        """Bind and listen; the address clients use (a TCP port chosen by the kernel filled in).

        ``not_on`` are addresses that must not be taken over (the upstream bus's).
        """
        addr = self.address
        for other in not_on:
            if same_socket(addr, other):
                raise AddressError(f"cannot listen on {addr}: it is the upstream bus's own socket")
        path = addr.path if addr.transport == "unix" else None
        if path:
            _clear_stale(addr, path)
        sock = socket.socket(addr.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        if addr.transport != "unix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr.sockaddr)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise AddressError(f"cannot listen on {addr}: address in use") from None
            raise AddressError(f"cannot listen on {addr}: {exc.strerror}") from None
        if path:
            created = os.lstat(path)
            self._created = (created.st_dev, created.st_ino)
            os.chmod(path, 0o777)  # access is the bus's decision, as with the real socket
        sock.listen(BACKLOG)
        if addr.transport == "tcp" and not addr.port:
            host, port = sock.getsockname()[:2]
            self.address = Address("tcp", host=host, port=port)
        self._serve(sock)
        return self.address

    def adopt(self, sock: socket.socket) -> None:
        """Serve on an already bound and listening socket (interpose mode); its file is not ours."""
        self._created = None
        self._serve(sock)

    def _serve(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        assert self.sock is not None
        for _ in range(ACCEPTS_PER_TURN):
            try:
                client, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc.strerror)
                return
            client.setblocking(False)
            self.on_client(client)

    def close(self) -> None:
        if self.sock is None:
            return
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.sock = None
        path = self.address.path if self.address.transport == "unix" else None
        if path and self._created is not None:
            _unlink_if(path, self._created)
            self._created = None


def accepting(path: str) -> bool:
    """Whether something accepts connections on the unix socket at ``path`` (when unsure: yes)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:  # a full backlog (EAGAIN), no permission, ...: someone may be there
        return True
    finally:
        probe.close()
    return True


def same_socket(a: Address, b: Address) -> bool:
    """Whether two addresses name the same unix socket (same path, file or abstract name)."""
    if a.transport != "unix" or b.transport != "unix":
        return False
    if a.abstract is not None or b.abstract is not None:
        return a.abstract is not None and a.abstract == b.abstract
    if not a.path or not b.path:
        return False
    if os.path.realpath(a.path) == os.path.realpath(b.path):
        return True
    try:
        return os.path.samefile(a.path, b.path)
    except OSError:
        return False


def _clear_stale(addr: Address, path: str) -> None:
    """Remove a stale socket file at ``path``; refuse anything else that is there."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise AddressError(f"{path} exists and is not a socket")
    if accepting(path):
        raise AddressError(f"cannot listen on {addr}: address in use (a server accepts connections on {path})")
    _unlink_if(path, (found.st_dev, found.st_ino))


def _unlink_if(path: str, identity: tuple[int, int]) -> None:
    """Unlink ``path`` only if it is still the file with this (device, inode)."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) == identity:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
