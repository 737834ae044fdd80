"""The channel table's facts for a watch: what the kernel said in the event, /proc for the rest.

The kernel describes a socket (family, type, peer inode, peer pid, addresses)
in its first event, and every event names the process (pid, uid, comm). What
it cannot say cheaply, a FIFO's path and a process's executable, is read from
/proc while the process still exists; a process gone by then keeps the
kernel's comm and uid and an unknown exe.
"""

from __future__ import annotations

import contextlib
import os
import stat

from ..model import Endpoint
from ..syscall import sockaddr
from ..syscall.channels import Channel
from ..syscall.procfs import SystemFacts
from ..syscall.sockaddr import UNIX_TYPES
from .events import Raw


def exe_of(pid: int) -> str | None:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/{pid}/exe")
    return None


class WatchFacts:
    def __init__(self) -> None:
        self.current: Raw | None = None  # the event being fed to the table
        self._system = SystemFacts()

    def channel(self, pid: int, fd: int, dev: int, inode: int, mode: int) -> Channel | None:
        raw = self.current
        if stat.S_ISFIFO(mode):
            if raw is not None and raw.pipefs:
                return Channel("pipe", dev, inode)
            path = None
            with contextlib.suppress(OSError):
                path = os.readlink(f"/proc/{pid}/fd/{fd}")
                if os.stat(path).st_ino != inode:
                    path = None
            return Channel("fifo", dev, inode, path=path)
        if not stat.S_ISSOCK(mode) or raw is None:
            return None
        # a socket whose description the kernel sent earlier, to an event that was lost
        ev = raw.event
        if raw.domain == 1:
            return Channel(
                "unix",
                dev,
                inode,
                socktype=UNIX_TYPES.get(ev.socktype & 0xF, str(ev.socktype)),
                peer=ev.peer_ino or None,
                peer_pid=ev.peer_pid if ev.peer_pid > 0 else None,
            )
        if raw.domain in (2, 10):
            tcp = ev.socktype & 0xF == 1
            return Channel("tcp" if tcp else "udp", dev, inode, socktype="stream" if tcp else "dgram")
        return None

    def bound_at(self, pid: int, kind: str, address: str) -> int | None:
        """The inode of the socket bound at ``address`` in ``pid``'s network namespace (a datagram's receiver).

        The kernel describes a socket when it first carries data; a datagram sent to a socket that has not
        yet received anything is matched to it here.
        """
        if kind == "unix":
            try:
                with open(f"/proc/{pid}/net/unix") as table:
                    next(table)
                    for line in table:
                        parts = line.split()
                        if len(parts) > 7 and parts[7] == address:
                            return int(parts[6])
            except (OSError, StopIteration, ValueError):
                return None
            return None
        wildcards = sockaddr.wildcards(address)
        for local, _, inode in self._system._inet_rows(pid, kind):
            if local == address or local in wildcards:
                return inode
        return None

    def queue_name(self, pid: int, fd: int) -> str | None:
        """A POSIX queue's name, as the kernel gave it with the event (its file's name in the mqueue fs)."""
        raw = self.current
        if raw is not None and raw.event.local:
            return "/" + raw.event.local.decode(errors="replace")
        return self._system.queue_name(pid, fd)

    def sysv_key(self, kind: str, ident: int) -> int | None:
        """A SysV queue whose msgget was not seen (made before the watch): /proc/sysvipc, while it exists."""
        return self._system.sysv_key(kind, ident)

    def endpoint(self, pid: int) -> Endpoint:
        raw = self.current
        if raw is not None and raw.event.pid == pid:
            return Endpoint(pid=pid, uid=raw.uid, exe=exe_of(pid), comm=raw.comm or None)
        return self._system.endpoint(pid)  # a peer by its credentials: /proc
