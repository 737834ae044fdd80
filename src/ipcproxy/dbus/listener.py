"""The listener: the socket clients connect to, and the socket file it owns.

It binds (or adopts, for interpose) the listening socket, accepts clients and
hands each accepted socket on; on close it removes the socket file it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable

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
        self._owns_path = False  # only a socket file we created is ours to unlink

    def listen(self) -> Address:
        """Bind and listen; the address clients use (a TCP port chosen by the kernel filled in)."""
        addr = self.address
        sock = socket.socket(addr.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        if addr.transport == "unix" and addr.path:
            with contextlib.suppress(FileNotFoundError):
                if os.path.exists(addr.path) and not _is_socket(addr.path):
                    sock.close()
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
        sock.listen(BACKLOG)
        self._owns_path = True
        if addr.transport == "tcp" and not addr.port:
            host, port = sock.getsockname()[:2]
            self.address = Address("tcp", host=host, port=port)
        self._serve(sock)
        return self.address

    def adopt(self, sock: socket.socket) -> None:
        """Serve on an already bound and listening socket (interpose mode); its file is not ours."""
        self._owns_path = False
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
        addr = self.address
        if addr.transport == "unix" and addr.path and self._owns_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr.path)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return True
