"""The privilege-dropping connector: upstream connections made with the client's own identity.

A root proxy must not let a client act on the bus as root. The bus learns who
connected from SO_PEERCRED, so the connection to the bus is made by a small
helper that runs wholly as the client's user; see ``_CONNECTOR``.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

from .address import Address


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


class Connector:
    """Opens a client's upstream connection: as the client's user when this process is root."""

    def __init__(self, upstream: list[Address], impersonate: bool | None = None) -> None:
        self.upstream = upstream
        self.impersonate = (os.geteuid() == 0) if impersonate is None else impersonate

    def connect(self, pid: int | None, uid: int | None, gid: int | None) -> tuple[socket.socket, int]:
        """A connected, non-blocking socket and the uid to authenticate as on it."""
        as_user = None
        if self.impersonate and uid is not None and uid != os.geteuid() and pid:
            as_user = (uid, gid or 0, _client_groups(pid, gid or 0))
        last: OSError | None = None
        for address in self.upstream:
            try:
                sock = _connect(address, as_user)
            except OSError as exc:
                last = exc
                continue
            return sock, (uid if as_user is not None and uid is not None else os.geteuid())
        assert last is not None
        raise last
