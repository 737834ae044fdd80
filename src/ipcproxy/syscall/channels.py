"""The channel table: which channel each process's fd is, and which writes each read consumed (sans-IO).

Events from the stop loop come in; ``Transfer`` objects (one per message
sent or received) come out, with their channel, both endpoints and, for
reads, the writes whose bytes they returned. What only the system knows
(what an inode is, who a pid is, which socket is bound to an address) is
asked of a ``Facts`` object: ``procfs.SystemFacts`` on a live system, a
table of facts in tests.

Attribution. Every channel that receives bytes has a FIFO of the writes
queued on it (a pipe or FIFO: one per inode, both ends; a socket: one per
receiving socket, filled by the writes on its peer). A read on a byte stream
takes its length from the front of the FIFO and names every write it took
bytes from; a datagram read takes one write. Bytes no traced write accounts
for (written before tracing began, by a process outside the tree, or whose
order against another writer's is not known) are ``None``: unknown, never a
guess. A read that returned before the exit of a write it may have consumed
was seen (the writer's exit stop can come later than the reader's) is held
until no write on that channel is in flight.

Message queues (POSIX ``mq_*``, SysV ``msg*``) are channels whose messages
leave in the kernel's order, not the order sent: a receive is matched to a
queued send by the rules of ``queues.py`` (priority, then order; SysV:
the requested type). Channels whose bytes move where no syscall shows them
(shared memory, io_uring, splice and friends) become ``Opaque`` uses.
"""

from __future__ import annotations

import stat
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from ..model import Endpoint
from . import events, queues, sockaddr
from .events import Event
from .queues import SYSV_DEV, Queued

O_CLOEXEC = 0o2000000  # also SOCK_CLOEXEC
FD_CLOEXEC = 1
F_DUPFD, F_SETFD, F_DUPFD_CLOEXEC = 0, 2, 1030
CLOSE_RANGE_CLOEXEC = 4
MSG_PEEK = 2
MAP_SHARED = 1
IPC_RMID = 0
SPLICE_CALLS = {"splice": (0, 2), "tee": (0, 1), "sendfile": (1, 0), "copy_file_range": (0, 2), "vmsplice": (0, -1)}
OPAQUE_CALLS = frozenset({"shmget", "shmat", "mmap", "io_uring_setup", *SPLICE_CALLS})
QUEUE_CALLS = frozenset({"mq_open", "mq_timedsend", "mq_timedreceive", "msgget", "msgsnd", "msgrcv", "msgctl"})
SYSV_IDS = {"sysv-msg": "msqid", "sysv-shm": "shmid"}
ENTRY_FD_ARG = {name: out for name, (_, out) in SPLICE_CALLS.items() if out >= 0}  # where a write-family call writes

SEND_CALLS = frozenset({"write", "pwrite64", "writev", "pwritev", "pwritev2", "sendto", "sendmsg", "sendmmsg"})
RECV_CALLS = frozenset({"read", "pread64", "readv", "preadv", "preadv2", "recvfrom", "recvmsg", "recvmmsg"})
STREAM_KINDS = frozenset({"pipe", "fifo", "tcp"})
MAX_QUEUED = 100_000  # writes remembered per channel whose reader is not traced; older ones are forgotten

Key = tuple[int, int]  # (st_dev, st_ino)
UNKNOWN_TARGET = ("?",)  # an in-flight write whose channel is not known: it may feed any reader


@dataclass(slots=True)
class Channel:
    """A pipe, FIFO or socket, as the trace names it."""

    kind: str  # pipe, fifo, unix, tcp, udp, mq, sysv-msg (inode: the msqid)
    dev: int
    inode: int
    path: str | None = None  # a FIFO's path, a unix socket's name (its own or its peer's)
    socktype: str | None = None  # stream, dgram, seqpacket
    local: str | None = None  # tcp/udp: "127.0.0.1:4000"
    remote: str | None = None
    peer: int | None = None  # inode of the connected peer socket, when known
    peer_pid: int | None = None  # a unix socket's peer process (its credentials), traced or not
    ipc_key: int | None = None  # a SysV queue's key (0: IPC_PRIVATE)

    @property
    def key(self) -> Key:
        return (self.dev, self.inode)

    @property
    def stream(self) -> bool:
        return self.kind in STREAM_KINDS or self.socktype == "stream"

    def to_json(self) -> dict[str, object]:
        if self.kind in SYSV_IDS:  # no inode: the kernel's id and the key it was made with
            return {"kind": self.kind, "key": self.ipc_key, SYSV_IDS[self.kind]: self.inode}
        out: dict[str, object] = {"kind": self.kind, "inode": self.inode}
        for name in ("path", "socktype", "local", "remote", "peer", "peer_pid"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


class Facts(Protocol):
    """What the table needs to know about the system."""

    def channel(self, pid: int, fd: int, dev: int, inode: int, mode: int) -> Channel | None:
        """The channel an open fd is (None: not IPC, e.g. a regular file or a terminal)."""
        ...

    def endpoint(self, pid: int) -> Endpoint:
        """Who a process is (pid, exe, comm, uid), for one the stop loop has not described (the first)."""
        ...

    def queue_name(self, pid: int, fd: int) -> str | None:
        """A POSIX message queue's name (``/jobs``) for an fd whose ``mq_open`` was not seen."""
        ...

    def sysv_key(self, kind: str, ident: int) -> int | None:
        """The key of a SysV queue (``kind`` "msg") or segment ("shm") whose ``msgget``/``shmget`` was not seen."""
        ...


@dataclass(slots=True)
class Transfer:
    """One message: a send or a receive on a channel."""

    direction: str  # send, recv
    syscall: str
    pid: int
    tid: int
    ts: int  # at the syscall's exit
    ts_entry: int
    fd: int | None  # None: a SysV queue (no fd)
    channel: Channel
    size: int  # the full length moved
    payload: bytes  # its first bytes (up to the tracer's max payload)
    nfds: int
    sender: Endpoint
    destination: Endpoint
    consumed: list[Transfer | None] | None = None  # recv: the writes it took bytes from (None: unknown)
    seq: int = 0  # the trace record's number, set when it is recorded
    priority: int | None = None  # mq: the message's priority (a receive's, when the program asked for it)
    mtype: int | None = None  # sysv-msg: the message's type
    msgtyp: int | None = None  # sysv-msg receive: the type asked for
    msgflg: int = 0  # sysv-msg receive: its flags (MSG_EXCEPT, MSG_COPY, MSG_NOERROR), and its buffer's size
    msgsz: int = 0
    verdict: object = None  # the chain's verdict (its JSON) when one was asked for; None: forwarded
    address: str | None = None  # an unconnected datagram's: where a send went, where a receive came from

    @property
    def truncated(self) -> bool:
        return len(self.payload) < self.size


@dataclass(slots=True)
class _Fd:
    key: Key
    read: bool
    write: bool
    cloexec: bool = False


@dataclass(slots=True)
class _Queued:
    transfer: Transfer
    left: int
    ambiguous: bool = False


@dataclass
class _Queue:
    stream: bool
    entries: deque[_Queued] = field(default_factory=deque)
    waiting: deque[tuple[Transfer, bool]] = field(default_factory=deque)  # held reads (with their peek flag)
    queued: int = 0  # bytes in entries
    last_read: Transfer | None = None
    messages: bool = False  # a message queue: receives take the message queues.py picks
    backlog: int = 0  # messages it held that no traced send accounts for (ahead of the traced ones)


@dataclass(slots=True)
class Opaque:
    """IPC this level cannot see the bytes of: a shared mapping, an io_uring, bytes spliced between fds."""

    mechanism: str  # shared-memory, io_uring, splice
    syscall: str
    pid: int
    tid: int
    ts: int
    process: Endpoint
    channel: Channel | None  # the IPC object (a spliced-to or -from pipe or socket)
    size: int | None  # bytes moved, or the mapping's or segment's length
    processes: list[Endpoint]  # traced processes known to share it (shared memory: its mappers so far)
    source: Channel | None = None  # splice family: where the bytes came from, where they went
    target: Channel | None = None


class ChannelTable:
    def __init__(self, facts: Facts) -> None:
        self.facts = facts
        self.fds: dict[int, dict[int, _Fd]] = {}  # pid -> fd -> entry
        self.channels: dict[Key, Channel] = {}
        self.queues: dict[Key, _Queue] = {}
        self.inflight: dict[int, Key | tuple[str]] = {}  # tid -> where its write goes
        self.endpoints: dict[int, Endpoint] = {}  # pid -> who it is (from exec and fork events)
        self.execd: set[int] = set()  # pids that exec'd while traced
        self.not_ipc: set[Key] = set()  # inodes seen that are not channels (files, terminals)
        self.generation = 0  # changes whenever an fd table does
        self._holders_cache: dict[tuple[Key, bool, int], list[int]] = {}
        self._holders_generation = -1
        self.bound_at: dict[tuple[str, str], Key] = {}  # (kind, local address) -> the socket bound there
        self.connections: dict[tuple[str, str], Key] = {}  # tcp (local, remote) -> socket
        self.opaque: list[Opaque] = []  # uses of opaque channels, taken by the caller after each feed
        self.mappers: dict[Key, dict[int, Endpoint]] = {}  # a shared-memory object -> who mapped it
        self.segments: dict[int, tuple[int, int]] = {}  # SysV shmid -> (key, size), from shmget
        self.sysv_users: dict[int, set[int]] = {}  # msqid -> processes that got it (msgget, fork) or used it

    # ---------------------------------------------------------------- events in, transfers out
    def feed(self, ev: Event) -> list[Transfer]:
        kind = ev.kind
        if kind == events.SYSCALL:
            if ev.domain:
                self._learn_socket(ev)
            name = ev.name
            if name in SEND_CALLS:
                return self._send(ev)
            if name in RECV_CALLS:
                return self._recv(ev)
            if name in QUEUE_CALLS:
                return self._queue_call(ev)
            if name in OPAQUE_CALLS:
                self._opaque_call(ev)
                return []
            self._channel_call(ev)
            return []
        if kind == events.ENTRY:
            if ev.name == "msgsnd":
                target: Key | tuple[str] | None = (SYSV_DEV, ev.args[0])
            else:
                target = self._target_of(ev.pid, ev.args[ENTRY_FD_ARG.get(ev.name, 0)])
            if target is not None:
                self.inflight[ev.tid] = target
            return []
        self.generation += 1  # a process came, went or exec'd: fd tables changed
        if kind == events.FORK:
            child, group = ev.args[0], ev.args[1]
            if group == child and group != ev.pid:  # a new process: a copy of the fd table, the same program
                # The child's own stops can be seen before its parent's fork event: a child that has
                # exec'd already keeps the program it runs now, and not its close-on-exec fds.
                execd = child in self.execd
                if not execd:
                    parent = self.endpoint(ev.pid)
                    self.endpoints[child] = Endpoint(pid=child, uid=parent.uid, exe=parent.exe, comm=parent.comm)
                mine = self.fds.setdefault(child, {})
                for fd, entry in self.fds.get(ev.pid, {}).items():
                    if execd and entry.cloexec:
                        continue
                    mine.setdefault(fd, _Fd(entry.key, entry.read, entry.write, entry.cloexec))
                for users in self.sysv_users.values():  # it knows the SysV queues its parent knew
                    if ev.pid in users:
                        users.add(child)
            return []
        if kind == events.EXEC:
            self.execd.add(ev.pid)
            table = self.fds.get(ev.pid, {})
            for fd in [fd for fd, entry in table.items() if entry.cloexec]:
                del table[fd]
            self.endpoints[ev.pid] = Endpoint(
                pid=ev.pid,
                uid=ev.args[1] if ev.args[1] >= 0 else None,
                exe=ev.payload.decode(errors="replace") or None,
                comm=ev.addr.decode(errors="replace") or None,
            )
            self.inflight.pop(ev.args[0], None)
            return []
        if kind == events.EXIT:
            released = self._end_write(ev.tid)
            if ev.tid == ev.pid:
                self.fds.pop(ev.pid, None)
                self.endpoints.pop(ev.pid, None)
                for users in self.sysv_users.values():
                    users.discard(ev.pid)
                self.execd.discard(ev.pid)
            return released
        return []

    def endpoint(self, pid: int) -> Endpoint:
        found = self.endpoints.get(pid)
        if found is None:
            found = self.endpoints[pid] = self.facts.endpoint(pid)
        return found

    def finish(self) -> list[Transfer]:
        """The reads still held, with what is known of them: the trace ends."""
        self.inflight.clear()
        out: list[Transfer] = []
        for key in list(self.queues):
            out += self._release(key)
        return out

    # ---------------------------------------------------------------- fds
    def _fd(self, pid: int, fd: int) -> _Fd | None:
        return self.fds.get(pid, {}).get(fd)

    def _set_fd(self, pid: int, fd: int, key: Key, read: bool, write: bool, cloexec: bool) -> None:
        if fd >= 0 and key[1]:
            self.fds.setdefault(pid, {})[fd] = _Fd(key, read, write, cloexec)
            self.generation += 1

    def _copy_fd(self, pid: int, old: int, new: int, cloexec: bool, ev: Event) -> None:
        entry = self._fd(pid, old)
        key = (ev.devs[0], ev.inodes[0])
        if entry is not None and entry.key == key:
            self._set_fd(pid, new, key, entry.read, entry.write, cloexec)
        else:
            self._set_fd(pid, new, key, True, True, cloexec)

    def _channel_call(self, ev: Event) -> None:
        self.generation += 1
        name, a, pid = ev.name, ev.args, ev.pid
        if name == "close":
            self.fds.get(pid, {}).pop(a[0], None)
            return
        if name == "close_range":
            table = self.fds.get(pid, {})
            for fd in [fd for fd in table if a[0] <= fd <= (a[1] & 0xFFFFFFFF)]:
                if a[2] & CLOSE_RANGE_CLOEXEC:
                    table[fd].cloexec = True
                else:
                    del table[fd]
            return
        if ev.ret < 0:
            return
        if name in ("pipe", "pipe2"):
            cloexec = name == "pipe2" and bool(a[1] & O_CLOEXEC)
            self._set_fd(pid, ev.fds[0], (ev.devs[0], ev.inodes[0]), True, False, cloexec)
            self._set_fd(pid, ev.fds[1], (ev.devs[1], ev.inodes[1]), False, True, cloexec)
        elif name == "socketpair":
            cloexec = bool(a[1] & O_CLOEXEC)
            keys = [(ev.devs[i], ev.inodes[i]) for i in (0, 1)]
            for i in (0, 1):
                self._set_fd(pid, ev.fds[i], keys[i], True, True, cloexec)
                self.channels.pop(keys[i], None)
            for i in (0, 1):  # each end's peer is the other: no need to ask the system
                channel: Channel | None
                if a[0] == 1:  # AF_UNIX: the call says it all (the system may have forgotten it by now)
                    socktype = sockaddr.UNIX_TYPES.get(a[1] & 0xF, str(a[1] & 0xF))
                    channel = self.channels[keys[i]] = Channel("unix", keys[i][0], keys[i][1], socktype=socktype)
                else:
                    channel = self._describe(pid, ev.fds[i], keys[i], ev.modes[i])
                if channel is not None:
                    channel.peer = keys[1 - i][1]
        elif name in ("socket", "accept", "accept4"):
            cloexec = (name == "socket" and bool(a[1] & O_CLOEXEC)) or (name == "accept4" and bool(a[3] & O_CLOEXEC))
            key = (ev.devs[0], ev.inodes[0])
            self._set_fd(pid, ev.ret, key, True, True, cloexec)
            if not ev.domain:
                self.channels.pop(key, None)  # described when it carries data, once connected
        elif name in ("bind", "connect") and not ev.domain:
            self.channels.pop((ev.devs[0], ev.inodes[0]), None)
        elif name in ("dup", "dup2"):
            self._copy_fd(pid, a[0], ev.ret, False, ev)
        elif name == "dup3":
            self._copy_fd(pid, a[0], ev.ret, bool(a[2] & O_CLOEXEC), ev)
        elif name == "fcntl":
            if a[1] in (F_DUPFD, F_DUPFD_CLOEXEC):
                self._copy_fd(pid, a[0], ev.ret, a[1] == F_DUPFD_CLOEXEC, ev)
            elif a[1] == F_SETFD and (entry := self._fd(pid, a[0])) is not None:
                entry.cloexec = bool(a[2] & FD_CLOEXEC)

    # ---------------------------------------------------------------- channels and queues
    def _learn_socket(self, ev: Event) -> None:
        """A socket as the stop loop described it while its process was stopped."""
        key = (ev.devs[0], ev.inodes[0])
        if not key[1]:
            return
        local, remote = sockaddr.text(ev.local), sockaddr.text(ev.peer)
        if ev.domain == 1:  # AF_UNIX
            known = self.channels.get(key)
            channel = Channel(
                "unix",
                key[0],
                key[1],
                path=local or remote or (known.path if known else None),
                socktype=sockaddr.UNIX_TYPES.get(ev.socktype & 0xF, str(ev.socktype)),
                peer=ev.peer_ino or (known.peer if known else None),
                peer_pid=ev.peer_pid if ev.peer_pid > 0 else None,
            )
        elif ev.domain in (2, 10) and local is not None:  # AF_INET, AF_INET6
            kind = "tcp" if ev.socktype & 0xF == 1 else "udp"
            channel = Channel(kind, key[0], key[1], socktype="stream" if kind == "tcp" else "dgram")
            channel.local, channel.remote = local, remote
            if kind == "tcp" and remote is not None:
                self.connections[(local, remote)] = key
                peer = self.connections.get((remote, local))
                if peer is not None and (other := self.channels.get(peer)) is not None:
                    channel.peer, other.peer = peer[1], key[1]
        else:
            return
        if channel.peer is not None:
            self._pair(channel)
        if channel.kind != "tcp" and local is not None and channel.socktype != "stream":
            self.bound_at[(channel.kind, local)] = key
        self.channels[key] = channel
        self.not_ipc.discard(key)

    def _describe(self, pid: int, fd: int, key: Key, mode: int) -> Channel | None:
        channel = self.channels.get(key)
        if channel is None:
            if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
                return None
            channel = self.facts.channel(pid, fd, key[0], key[1], mode)
            if channel is None:
                return None
            self.channels[key] = channel
        return channel

    def _pair(self, channel: Channel) -> None:
        """``channel``'s peer is known now: the peer's writes queued while its receiver was unknown are ours."""
        assert channel.peer is not None
        peer_key = (channel.dev, channel.peer)
        other = self.channels.get(peer_key)
        if other is not None and other.peer is None:
            other.peer = channel.inode
        waiting = self.queues.pop((channel.dev, -channel.peer), None)
        if waiting is not None:
            queue = self._queue(channel.key, waiting.stream)
            queue.entries.extendleft(reversed(waiting.entries))
            queue.queued += waiting.queued
            for tid, target in self.inflight.items():
                if target == (channel.dev, -channel.peer):
                    self.inflight[tid] = channel.key

    def _receiver(self, channel: Channel, address: bytes) -> Key | None:
        """Where bytes sent on ``channel`` are queued: the pipe itself, or the receiving socket."""
        if channel.kind in ("pipe", "fifo", "mq", "sysv-msg"):
            return channel.key
        if channel.peer is not None:
            return (channel.dev, channel.peer)
        if channel.kind == "tcp" or (channel.kind == "unix" and channel.socktype != "dgram"):
            return (channel.dev, -channel.inode)  # connected, peer not known yet: kept until it is
        to = sockaddr.text(address) if address else channel.remote
        if to is not None and not channel.stream:
            found = self.bound_at.get((channel.kind, to))
            if found is None and channel.kind == "udp":
                for wildcard in sockaddr.wildcards(to):
                    found = found or self.bound_at.get(("udp", wildcard))
            return found
        return None

    def _target_of(self, pid: int, fd: int) -> Key | tuple[str] | None:
        """Where a write on ``fd`` may land; None: nowhere a traced read can see (a file, a terminal)."""
        entry = self._fd(pid, fd)
        if entry is None:
            return UNKNOWN_TARGET
        if entry.key in self.not_ipc:
            return None
        channel = self.channels.get(entry.key)
        if channel is None:
            return UNKNOWN_TARGET
        return self._receiver(channel, b"") or UNKNOWN_TARGET

    def _queue(self, key: Key, stream: bool) -> _Queue:
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = _Queue(stream)
        return queue

    def _holders(self, key: Key, reading: bool, besides: int) -> list[int]:
        """Processes with an fd on ``key`` (its read end, for ``reading``), other than ``besides``.

        Remembered until an fd table changes: a message stream asks the same question again and again.
        """
        if self._holders_generation != self.generation:
            self._holders_cache.clear()
            self._holders_generation = self.generation
        found = self._holders_cache.get((key, reading, besides))
        if found is None:
            found = self._holders_cache[(key, reading, besides)] = [
                pid
                for pid, table in self.fds.items()
                if pid != besides and any(e.key == key and (e.read or not reading) for e in table.values())
            ]
        return found

    def _one_endpoint(self, pids: list[int]) -> Endpoint:
        return self.endpoint(pids[0]) if len(pids) == 1 else Endpoint()

    def _transfer(self, ev: Event, direction: str) -> tuple[Transfer, Key] | None:
        if ev.ret < 0 or ev.length == 0:
            return None  # failed, end of file, or nothing moved
        fd = ev.args[0]
        key = (ev.devs[0], ev.inodes[0])
        if not key[1]:
            return None  # the fd was gone at the exit stop (another thread closed it)
        channel = self._describe(ev.pid, fd, key, ev.modes[0])
        if channel is None:
            if len(self.not_ipc) > 65536:
                self.not_ipc.clear()
            self.not_ipc.add(key)
            self._set_fd(ev.pid, fd, key, True, True, False)
            return None
        entry = self._fd(ev.pid, fd)
        if entry is None or entry.key != key:
            self._set_fd(ev.pid, fd, key, direction == "recv", direction == "send", False)
        elif (direction == "recv" and not entry.read) or (direction == "send" and not entry.write):
            entry.read |= direction == "recv"
            entry.write |= direction == "send"
            self.generation += 1
        transfer = self._made(ev, direction, fd, channel, ev.nfds)
        if ev.addr and not channel.stream:  # sendto/sendmsg's destination, recvfrom/recvmsg's source
            transfer.address = sockaddr.text(ev.addr)
        return transfer, key

    def _made(self, ev: Event, direction: str, fd: int | None, channel: Channel, nfds: int) -> Transfer:
        """The message a call moved, this process at its own end; the caller names the other end."""
        me = self.endpoint(ev.pid)
        return Transfer(
            direction=direction,
            syscall=ev.name,
            pid=ev.pid,
            tid=ev.tid,
            ts=ev.ts,
            ts_entry=ev.ts_entry,
            fd=fd,
            channel=channel,
            size=ev.length,
            payload=ev.payload,
            nfds=nfds,
            sender=me if direction == "send" else Endpoint(),
            destination=me if direction == "recv" else Endpoint(),
            verdict=ev.verdict,
        )

    def preview(self, ev: Event) -> Transfer | None:
        """The message a stopped call moves, before it is queued: what a decision about it can know.

        A send (stopped at its entry, ``length`` the bytes it asks to send)
        names its receiver as its record will. A receive (stopped at its
        exit) names as sender the one other process holding the channel, or
        its peer's credentials: which writes it consumed is settled later,
        in its record. None: not a channel, or nothing moves.
        """
        if ev.domain:
            self._learn_socket(ev)
            ev.domain = 0  # learnt: feeding the event later need not learn it again
        send = ev.name in SEND_CALLS
        made = self._transfer(ev, "send" if send else "recv")
        if made is None:
            return None
        transfer, key = made
        channel = transfer.channel
        if send:
            transfer.destination = self._destination(channel, key, self._receiver(channel, ev.addr), ev.pid)
        else:
            if channel.kind in ("pipe", "fifo"):
                holders = self._holders(key, False, ev.pid)
            elif channel.peer is not None:
                holders = self._holders((channel.dev, channel.peer), False, ev.pid)
            else:
                holders = []
            if not holders and channel.peer_pid is not None and channel.peer_pid != ev.pid:
                holders = [channel.peer_pid]
            transfer.sender = self._one_endpoint(holders)
        return transfer

    def _destination(self, channel: Channel, key: Key, target: Key | None, pid: int) -> Endpoint:
        """Who receives what ``pid`` sends on ``channel``: the one process that can, else unknown."""
        if channel.kind in ("pipe", "fifo"):
            return self._one_endpoint(self._holders(key, True, pid))
        holders = self._holders(target, False, pid) if target is not None else []
        if not holders and channel.peer_pid is not None and channel.peer_pid != pid:
            holders = [channel.peer_pid]  # a peer outside the traced tree, by its credentials
        return self._one_endpoint(holders)

    def _send(self, ev: Event) -> list[Transfer]:
        made = self._transfer(ev, "send")
        if made is None:
            return self._end_write(ev.tid)
        transfer, key = made
        channel = transfer.channel
        target = self._receiver(channel, ev.addr)
        transfer.destination = self._destination(channel, key, target, ev.pid)
        if target is not None:
            queue = self._queue(target, channel.stream)
            queued = _Queued(transfer, transfer.size, ambiguous=self._racing_writer(target, ev.tid))
            if queue.entries:
                last = queue.entries[-1]
                if last.transfer.pid != transfer.pid and last.transfer.ts > transfer.ts_entry:
                    last.ambiguous = queued.ambiguous = True  # both in the kernel at once: order unknown
            queue.entries.append(queued)
            queue.queued += transfer.size
            if len(queue.entries) > MAX_QUEUED:
                queue.queued -= queue.entries.popleft().left
        return [transfer, *self._end_write(ev.tid)]

    def _recv(self, ev: Event) -> list[Transfer]:
        made = self._transfer(ev, "recv")
        if made is None:
            return []
        transfer, key = made
        queue = self._queue(key, transfer.channel.stream)
        peek = (ev.name == "recvfrom" and bool(ev.args[3] & MSG_PEEK)) or (
            ev.name == "recvmsg" and bool(ev.args[2] & MSG_PEEK)
        )
        queue.waiting.append((transfer, peek))
        return self._release(key)

    def _end_write(self, tid: int) -> list[Transfer]:
        target = self.inflight.pop(tid, None)
        if target is None:
            return []
        if target == UNKNOWN_TARGET:
            out: list[Transfer] = []
            for key in list(self.queues):
                out += self._release(key)
            return out
        return self._release(target)  # type: ignore[arg-type]

    def _racing_writer(self, key: Key, tid: int) -> bool:
        """Another thread entered a write to ``key`` before this one's exit was seen, and has not left it.

        It may have put its bytes in first, or not: neither write's place in the queue is known. (The
        other write, once it exits, finds this one last in the queue and is marked by the same rule.)
        """
        return any(target == key and other != tid for other, target in self.inflight.items())

    def _writing_to(self, key: Key) -> bool:
        return any(target in (key, UNKNOWN_TARGET) for target in self.inflight.values())

    def _release(self, key: Key) -> list[Transfer]:
        """The held reads of ``key`` that can be attributed now, in order."""
        queue = self.queues.get(key)
        if queue is None or not queue.waiting:
            return []
        out = []
        while queue.waiting:
            transfer, peek = queue.waiting[0]
            if queue.messages:
                covered = queue.backlog > 0 or self._pick(queue, transfer).known
            else:
                covered = queue.queued >= transfer.size if queue.stream else bool(queue.entries)
            if not covered and self._writing_to(key):
                break
            queue.waiting.popleft()
            if queue.messages:
                self._take_message(queue, transfer)
            else:
                self._consume(queue, transfer, peek)
            out.append(transfer)
        return out

    def _consume(self, queue: _Queue, transfer: Transfer, peek: bool) -> None:
        consumed: list[Transfer | None] = []
        last = queue.last_read
        # another process reading the same channel at the same moment: which bytes each got is not known
        racing = last is not None and last.pid != transfer.pid and last.ts > transfer.ts_entry
        if not peek:
            queue.last_read = transfer
        matches = True
        if queue.stream:
            want = transfer.size
            for item in list(queue.entries):
                if want <= 0:
                    break
                take = min(want, item.left)
                matches = matches and _same_bytes(
                    transfer.payload, transfer.size - want, item.transfer.payload, item.transfer.size - item.left, take
                )
                want -= take
                _add(consumed, None if (item.ambiguous or racing) else item.transfer)
                if not peek:
                    item.left -= take
                    queue.queued -= take
                    if item.left == 0:
                        queue.entries.popleft()
            if want > 0:
                _add(consumed, None)
        elif queue.entries:
            item = queue.entries[0]
            matches = _same_bytes(transfer.payload, 0, item.transfer.payload, 0, transfer.size)
            _add(consumed, None if (item.ambiguous or racing) else item.transfer)
            if not peek:
                queue.entries.popleft()
                queue.queued -= item.left
        else:
            consumed.append(None)
        if not matches:  # the bytes read are not those the queue says came first: the order is not known
            consumed = [None]
        transfer.consumed = consumed
        for write in consumed:  # a write recorded together with this read: its reader is known now
            if write is not None and write.seq == 0 and write.destination.pid is None:
                write.destination = transfer.destination
        writers = {t.pid: t.sender for t in consumed if t is not None}
        if len(writers) == 1 and None not in consumed:
            transfer.sender = next(iter(writers.values()))
        channel = transfer.channel
        if not writers and channel.peer_pid is not None and channel.peer_pid != transfer.pid:
            # a peer outside the traced tree: no traced process holds the other end (when its inode is not
            # known, as for a server that had not accepted yet when the client connected: the peer's
            # credentials name no traced process)
            if channel.peer is not None:
                outside = not self._holders((channel.dev, channel.peer), False, transfer.pid)
            else:
                outside = channel.peer_pid not in self.fds
            if outside:
                transfer.sender = self.endpoint(channel.peer_pid)

    # ---------------------------------------------------------------- message queues
    def _queue_call(self, ev: Event) -> list[Transfer]:
        name = ev.name
        if name in ("mq_timedsend", "msgsnd"):
            return self._queue_send(ev)
        if name in ("mq_timedreceive", "msgrcv"):
            return self._queue_recv(ev)
        if ev.ret < 0:
            return []
        if name == "mq_open":  # its descriptor is always close-on-exec
            key = (ev.devs[0], ev.inodes[0])
            access = ev.args[1] & 3
            self._set_fd(ev.pid, ev.ret, key, access != 1, access != 0, True)
            path = (
                "/" + ev.addr.decode(errors="replace").lstrip("/") if ev.addr else self.facts.queue_name(ev.pid, ev.ret)
            )
            self.channels[key] = Channel("mq", key[0], key[1], path=path)
            self.not_ipc.discard(key)
            self._reconcile(key, ev.length)
        elif name == "msgget":
            key = (SYSV_DEV, ev.ret)
            self.channels[key] = Channel("sysv-msg", SYSV_DEV, ev.ret, ipc_key=_key_t(ev.args[0]))
            self.sysv_users.setdefault(ev.ret, set()).add(ev.pid)
            self._reconcile(key, ev.length)
        elif name == "msgctl" and ev.args[1] & 0xFF == IPC_RMID:
            self.channels.pop((SYSV_DEV, ev.args[0]), None)
            self.queues.pop((SYSV_DEV, ev.args[0]), None)
            self.sysv_users.pop(ev.args[0], None)
        return []

    def _reconcile(self, key: Key, held: int) -> None:
        """A queue was opened holding ``held`` messages: those no traced send accounts for are its backlog."""
        if self._writing_to(key):
            return  # a send in flight may or may not be in that count
        queue = self._queue(key, False)
        queue.messages = True
        if held == 0:  # empty: whatever traced sends left in it was taken by someone not traced
            queue.entries.clear()
            queue.queued = queue.backlog = 0
        elif held >= len(queue.entries):
            queue.backlog = held - len(queue.entries)
        else:  # fewer than traced: something outside the tree took some, which is not known
            queue.backlog = 0
            for item in queue.entries:
                item.ambiguous = True

    def _queue_channel(self, ev: Event) -> tuple[Channel, Key] | None:
        if ev.name in ("msgsnd", "msgrcv"):
            key = (SYSV_DEV, ev.args[0])
            self.sysv_users.setdefault(ev.args[0], set()).add(ev.pid)
            channel = self.channels.get(key)
            if channel is None:
                channel = self.channels[key] = Channel(
                    "sysv-msg", SYSV_DEV, ev.args[0], ipc_key=self.facts.sysv_key("msg", ev.args[0])
                )
            return channel, key
        key = (ev.devs[0], ev.inodes[0])
        if not key[1]:
            return None  # the fd was gone at the exit stop
        channel = self.channels.get(key)
        if channel is None or channel.kind != "mq":
            channel = self.channels[key] = Channel("mq", key[0], key[1], path=self.facts.queue_name(ev.pid, ev.args[0]))
            self.not_ipc.discard(key)
        entry = self._fd(ev.pid, ev.args[0])
        if entry is None or entry.key != key:
            self._set_fd(ev.pid, ev.args[0], key, True, True, True)
        return channel, key

    def _queue_transfer(self, ev: Event, direction: str) -> tuple[Transfer, Key] | None:
        found = self._queue_channel(ev)
        if found is None:
            return None
        channel, key = found
        transfer = self._made(ev, direction, None if channel.kind == "sysv-msg" else ev.args[0], channel, 0)
        if channel.kind == "sysv-msg":
            transfer.mtype = int.from_bytes(ev.addr, "little", signed=True) if len(ev.addr) == 8 else None
            if direction == "recv":
                transfer.msgtyp, transfer.msgflg, transfer.msgsz = ev.args[3], ev.args[4], ev.args[2]
        elif direction == "send":
            transfer.priority = ev.args[3] & 0xFFFFFFFF
        elif len(ev.addr) == 4:
            transfer.priority = int.from_bytes(ev.addr, "little")
        return transfer, key

    def _queue_send(self, ev: Event) -> list[Transfer]:
        made = self._queue_transfer(ev, "send") if ev.ret >= 0 else None
        if made is None:
            return self._end_write(ev.tid)
        transfer, key = made
        if transfer.channel.kind == "mq":
            transfer.destination = self._one_endpoint(self._holders(key, True, ev.pid))
        else:  # the one other process that knows the queue, if there is one
            others = [pid for pid in self.sysv_users.get(ev.args[0], ()) if pid != ev.pid]
            transfer.destination = self._one_endpoint(others)
        queue = self._queue(key, False)
        queue.messages = True
        queued = _Queued(transfer, transfer.size, ambiguous=self._racing_writer(key, ev.tid))
        tag = _tag(transfer)
        for last in reversed(queue.entries):  # two senders in the kernel at once: their order is not known
            if last.transfer.ts <= transfer.ts_entry:
                break
            if last.transfer.pid != transfer.pid and _tag(last.transfer) == tag:
                last.ambiguous = queued.ambiguous = True
        queue.entries.append(queued)
        queue.queued += transfer.size
        if len(queue.entries) > MAX_QUEUED:
            queue.queued -= queue.entries.popleft().left
        return [transfer, *self._end_write(ev.tid)]

    def _queue_recv(self, ev: Event) -> list[Transfer]:
        made = self._queue_transfer(ev, "recv") if ev.ret >= 0 else None
        if made is None:
            return []
        transfer, key = made
        queue = self._queue(key, False)
        queue.messages = True
        queue.waiting.append((transfer, False))
        return self._release(key)

    def _pick(self, queue: _Queue, transfer: Transfer) -> queues.Pick:
        queued = [Queued(_tag(item.transfer), item.transfer.size) for item in queue.entries]
        if transfer.channel.kind == "mq":
            return queues.mq_pick(queued, transfer.priority, transfer.size)
        return queues.sysv_pick(
            queued, transfer.msgtyp or 0, transfer.msgflg, transfer.mtype, transfer.size, transfer.msgsz
        )

    def _take_message(self, queue: _Queue, transfer: Transfer) -> None:
        if queue.backlog > 0:  # an older message, from before the trace or from outside the tree
            queue.backlog -= 1
            transfer.consumed = [None]
            return
        pick = self._pick(queue, transfer)
        item = queue.entries[pick.index] if pick.index is not None else None
        if item is not None and pick.remove:
            del queue.entries[pick.index]  # type: ignore[arg-type]
            queue.queued -= item.left
        if item is not None and pick.known and not item.ambiguous:
            transfer.consumed = [item.transfer]
            transfer.sender = item.transfer.sender
        else:
            transfer.consumed = [None]

    # ---------------------------------------------------------------- opaque channels
    def _opaque_call(self, ev: Event) -> None:
        name, a = ev.name, ev.args
        if ev.ret < 0:
            return
        me = self.endpoint(ev.pid)
        if name == "shmget":
            self.segments[ev.ret] = (_key_t(a[0]), a[1])
            return
        if name == "shmat":
            key_size = self.segments.get(a[0])
            if key_size is None:
                key_size = (self.facts.sysv_key("shm", a[0]) or 0, 0)
            channel = Channel("sysv-shm", SYSV_DEV, a[0], ipc_key=key_size[0])
            self._shared(ev, me, channel, key_size[1] or None)
        elif name == "mmap":
            path = ev.addr.decode(errors="replace")
            if not a[3] & MAP_SHARED or not (path.startswith("/dev/shm/") or path.startswith("/memfd:")):
                return  # a shared mapping of an ordinary file is file I/O here
            kind = "memfd" if path.startswith("/memfd:") else "shm"
            self._shared(ev, me, Channel(kind, ev.devs[0], ev.inodes[0], path=path), a[1])
        elif name == "io_uring_setup":
            ring = Channel("io_uring", ev.devs[0], ev.inodes[0])
            self.opaque.append(Opaque("io_uring", name, ev.pid, ev.tid, ev.ts, me, ring, None, [me]))
        else:
            self._moved(ev, me)

    def _shared(self, ev: Event, me: Endpoint, channel: Channel, size: int | None) -> None:
        """A process mapped shared memory: reported once per process and object, with its mappers so far."""
        mappers = self.mappers.setdefault(channel.key, {})
        if ev.pid in mappers:
            return
        mappers[ev.pid] = me
        self.opaque.append(
            Opaque("shared-memory", ev.name, ev.pid, ev.tid, ev.ts, me, channel, size, list(mappers.values()))
        )

    def _moved(self, ev: Event, me: Endpoint) -> None:
        """splice, tee, vmsplice, sendfile, copy_file_range: bytes moved in the kernel to or from a channel."""
        if ev.length <= 0:
            return
        ends: list[Channel | None] = []
        for i in (0, 1):
            key = (ev.devs[i], ev.inodes[i])
            ends.append(self._describe(ev.pid, ev.fds[i], key, ev.modes[i]) if ev.fds[i] >= 0 and key[1] else None)
        source, target = ends
        if ev.name == "vmsplice" and source is not None:  # one pipe: into it from its write end
            entry = self._fd(ev.pid, ev.fds[0])
            if entry is not None and entry.write and not entry.read:
                source, target = None, source
        if source is None and target is None:
            return  # file to file
        others: list[Endpoint] = [me]
        if target is not None and (receiver := self._receiver(target, b"")) is not None:
            queue = self._queue(receiver, target.stream)  # the bytes are there, from no traced write
            placeholder = Transfer(
                "send",
                ev.name,
                ev.pid,
                ev.tid,
                ev.ts,
                ev.ts_entry,
                ev.fds[1],
                target,
                ev.length,
                b"",
                0,
                me,
                Endpoint(),
            )
            queue.entries.append(_Queued(placeholder, ev.length, ambiguous=True))
            queue.queued += ev.length
            others += [self.endpoint(pid) for pid in self._holders(receiver, True, ev.pid)]
        if source is not None and ev.name != "tee":
            self._drop_bytes(source.key, ev.length)
        self.opaque.append(
            Opaque("splice", ev.name, ev.pid, ev.tid, ev.ts, me, target or source, ev.length, others, source, target)
        )

    def _drop_bytes(self, key: Key, size: int) -> None:
        """``size`` bytes left ``key``'s queue unseen (spliced out): the next reads start after them."""
        queue = self.queues.get(key)
        if queue is None:
            return
        while size > 0 and queue.entries:
            item = queue.entries[0]
            take = min(size, item.left) if queue.stream else item.left
            item.left -= take
            queue.queued -= take
            size -= take
            if item.left == 0:
                queue.entries.popleft()
            if not queue.stream:
                break


def _same_bytes(read: bytes, at: int, written: bytes, start: int, size: int) -> bool:
    """Whether ``size`` bytes read from offset ``at`` can be the written bytes from ``start``: equal
    wherever both were recorded (a cut payload leaves the rest unknown, which does not contradict)."""
    n = min(size, len(read) - at, len(written) - start)
    return n <= 0 or memoryview(read)[at : at + n] == memoryview(written)[start : start + n]


def _add(consumed: list[Transfer | None], item: Transfer | None) -> None:
    if not consumed or consumed[-1] is not item:
        consumed.append(item)


def _tag(transfer: Transfer) -> int:
    """What a queue orders a message by: its priority (mq) or its type (SysV)."""
    return (transfer.priority if transfer.channel.kind == "mq" else transfer.mtype) or 0


def _key_t(value: int) -> int:
    """A SysV key as the C type key_t (a signed 32-bit int) holds it."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value
