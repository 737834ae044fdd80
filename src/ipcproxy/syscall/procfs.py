"""The channel table's facts on a live system: /proc, sock_diag netlink and psutil (the I/O side).

What an inode is comes from the tracee's /proc/PID/net tables (unix, tcp,
udp) and, for a unix socket's peer, from the kernel's sock_diag; who a pid
is comes from psutil; a message queue's name or a SysV queue's key, when
the call that made it was not seen, from /proc/PID/fd and /proc/sysvipc.
Answers are cached per inode and per pid: a channel is described once, when
it first carries data after being connected.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import stat
import struct
from typing import TextIO

from ..model import Endpoint
from .channels import Channel

_UNIX_TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_UDIAG_SHOW_NAME, _UDIAG_SHOW_PEER = 1, 4
_UNIX_DIAG_NAME, _UNIX_DIAG_PEER = 0, 2


def _pipefs_dev() -> int:
    r, w = os.pipe()
    try:
        return os.fstat(r).st_dev
    finally:
        os.close(r)
        os.close(w)


def _address(text: str) -> str:
    """``0100007F:1F90`` (a /proc/net/tcp address) -> ``127.0.0.1:8080``; IPv6 as ``[::1]:8080``."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # the kernel prints each 32-bit word in host order
    words = b"".join(struct.pack("=I", struct.unpack(">I", raw[i : i + 4])[0]) for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"[{ip}]:{int(port, 16)}" if ip.version == 6 else f"{ip}:{int(port, 16)}"


def unix_diag(inode: int) -> tuple[str | None, int | None]:
    """A unix socket's name and its peer's inode, from the kernel (NETLINK_SOCK_DIAG)."""
    request = struct.pack(
        "=BBHIIIII",
        socket.AF_UNIX,
        0,
        0,
        0xFFFFFFFF,
        inode,
        _UDIAG_SHOW_NAME | _UDIAG_SHOW_PEER,
        0xFFFFFFFF,
        0xFFFFFFFF,
    )
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, 1, 1, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.sendto(header + request, (0, 0))
            data = nl.recv(65536)
    except OSError:
        return None, None
    if len(data) < 32 or struct.unpack_from("=H", data, 4)[0] == _NLMSG_ERROR:
        return None, None
    length = struct.unpack_from("=I", data)[0]
    name: str | None = None
    peer: int | None = None
    at = 16 + 16  # nlmsghdr, unix_diag_msg
    while at + 4 <= min(length, len(data)):
        rta_len, rta_type = struct.unpack_from("=HH", data, at)
        if rta_len < 4:
            break
        body = data[at + 4 : at + rta_len]
        if rta_type == _UNIX_DIAG_PEER and len(body) >= 4:
            peer = struct.unpack_from("=I", body)[0] or None
        elif rta_type == _UNIX_DIAG_NAME and body:
            text = body.rstrip(b"\0")
            name = "@" + body[1:].decode(errors="replace") if body[:1] == b"\0" else text.decode(errors="replace")
        at += (rta_len + 3) & ~3
    return name, peer


def _net_table(pid: int, name: str) -> TextIO:
    """A process's /proc/net table; ours once it is gone (records are built after the programs ran on)."""
    try:
        return open(f"/proc/{pid}/net/{name}")
    except FileNotFoundError:
        return open(f"/proc/self/net/{name}")


class SystemFacts:
    def __init__(self) -> None:
        self.pipefs = _pipefs_dev()

    # -- channels
    def channel(self, pid: int, fd: int, dev: int, inode: int, mode: int) -> Channel | None:
        if stat.S_ISFIFO(mode):
            if dev == self.pipefs:
                return Channel("pipe", dev, inode)
            path = None
            with contextlib.suppress(OSError):
                path = os.readlink(f"/proc/{pid}/fd/{fd}")
            return Channel("fifo", dev, inode, path=path)
        if not stat.S_ISSOCK(mode):
            return None
        found = self._unix(pid, inode)
        if found is not None:
            path, socktype = found
            name, peer = unix_diag(inode)
            if peer is not None and not (path or name):
                peer_found = self._unix(pid, peer)
                path = peer_found[0] if peer_found else None
            return Channel("unix", dev, inode, path=path or name, socktype=socktype, peer=peer)
        for kind in ("tcp", "udp"):
            row = self._inet(pid, kind, inode)
            if row is not None:
                local, remote = row
                channel = Channel(kind, dev, inode, local=local, remote=remote)
                channel.socktype = "stream" if kind == "tcp" else "dgram"
                if remote is not None:
                    channel.peer = self._inet_peer(pid, kind, local, remote)
                return channel
        return None

    @staticmethod
    def _unix(pid: int, inode: int) -> tuple[str | None, str] | None:
        try:
            with _net_table(pid, "unix") as table:
                next(table)
                wanted = str(inode)
                for line in table:
                    parts = line.split()
                    if len(parts) >= 7 and parts[6] == wanted:
                        return (parts[7] if len(parts) > 7 else None), _UNIX_TYPES.get(int(parts[4], 16), parts[4])
        except (OSError, StopIteration, ValueError):
            pass
        return None

    @staticmethod
    def _inet_rows(pid: int, kind: str) -> list[tuple[str, str, int]]:
        rows = []
        for name in (kind, kind + "6"):
            try:
                with _net_table(pid, name) as table:
                    next(table)
                    for line in table:
                        parts = line.split()
                        if len(parts) >= 10:
                            rows.append((_address(parts[1]), _address(parts[2]), int(parts[9])))
            except (OSError, StopIteration, ValueError):
                continue
        return rows

    def _inet(self, pid: int, kind: str, inode: int) -> tuple[str, str | None] | None:
        for local, remote, ino in self._inet_rows(pid, kind):
            if ino == inode:
                return local, (None if remote.endswith(":0") else remote)
        return None

    def _inet_peer(self, pid: int, kind: str, local: str, remote: str) -> int | None:
        for row_local, row_remote, ino in self._inet_rows(pid, kind):
            if row_local == remote and row_remote == local and ino:
                return ino
        return None

    # -- message queues and shared memory whose creating call was not seen
    @staticmethod
    def queue_name(pid: int, fd: int) -> str | None:
        try:
            return os.readlink(f"/proc/{pid}/fd/{fd}")  # an mqueue fd links to its queue's name: /jobs
        except OSError:
            return None

    @staticmethod
    def sysv_key(kind: str, ident: int) -> int | None:
        """From /proc/sysvipc/msg or shm: ``key msqid ...`` per line."""
        try:
            with open(f"/proc/sysvipc/{kind}") as table:
                next(table)
                for line in table:
                    parts = line.split()
                    if len(parts) >= 2 and parts[1] == str(ident):
                        return int(parts[0])
        except (OSError, StopIteration, ValueError):
            pass
        return None

    # -- processes
    def endpoint(self, pid: int) -> Endpoint:
        return _endpoint(pid)


def _endpoint(pid: int) -> Endpoint:
    import psutil  # here: most processes are described by the stop loop, and psutil takes long to import

    endpoint = Endpoint(pid=pid)
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            endpoint.comm = process.name()
            endpoint.uid = process.uids().real
            with contextlib.suppress(psutil.Error, OSError):
                endpoint.exe = process.exe() or None
    except (psutil.Error, OSError):
        pass
    return endpoint
