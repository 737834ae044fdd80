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
"""

from __future__ import annotations

import stat
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from ..model import Endpoint
from . import events, sockaddr
from .events import Event

O_CLOEXEC = 0o2000000  # also SOCK_CLOEXEC
FD_CLOEXEC = 1
F_DUPFD, F_SETFD, F_DUPFD_CLOEXEC = 0, 2, 1030
CLOSE_RANGE_CLOEXEC = 4
MSG_PEEK = 2

SEND_CALLS = frozenset({"write", "pwrite64", "writev", "pwritev", "pwritev2", "sendto", "sendmsg", "sendmmsg"})
RECV_CALLS = frozenset({"read", "pread64", "readv", "preadv", "preadv2", "recvfrom", "recvmsg", "recvmmsg"})
STREAM_KINDS = frozenset({"pipe", "fifo", "tcp"})
MAX_QUEUED = 100_000  # writes remembered per channel whose reader is not traced; older ones are forgotten

Key = tuple[int, int]  # (st_dev, st_ino)
UNKNOWN_TARGET = ("?",)  # an in-flight write whose channel is not known: it may feed any reader


@dataclass(slots=True)
class Channel:
    """A pipe, FIFO or socket, as the trace names it."""

    kind: str  # pipe, fifo, unix, tcp, udp
    dev: int
    inode: int
    path: str | None = None  # a FIFO's path, a unix socket's name (its own or its peer's)
    socktype: str | None = None  # stream, dgram, seqpacket
    local: str | None = None  # tcp/udp: "127.0.0.1:4000"
    remote: str | None = None
    peer: int | None = None  # inode of the connected peer socket, when known
    peer_pid: int | None = None  # a unix socket's peer process (its credentials), traced or not

    @property
    def key(self) -> Key:
        return (self.dev, self.inode)

    @property
    def stream(self) -> bool:
        return self.kind in STREAM_KINDS or self.socktype == "stream"

    def to_json(self) -> dict[str, object]:
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


@dataclass(slots=True)
class Transfer:
    """One message: a send or a receive on a channel."""

    direction: str  # send, recv
    syscall: str
    pid: int
    tid: int
    ts: int  # at the syscall's exit
    ts_entry: int
    fd: int
    channel: Channel
    size: int  # the full length moved
    payload: bytes  # its first bytes (up to the tracer's max payload)
    nfds: int
    sender: Endpoint
    destination: Endpoint
    consumed: list[Transfer | None] | None = None  # recv: the writes it took bytes from (None: unknown)
    seq: int = 0  # the trace record's number, set when it is recorded

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


class ChannelTable:
    def __init__(self, facts: Facts) -> None:
        self.facts = facts
        self.fds: dict[int, dict[int, _Fd]] = {}  # pid -> fd -> entry
        self.channels: dict[Key, Channel] = {}
        self.queues: dict[Key, _Queue] = {}
        self.inflight: dict[int, Key | tuple[str]] = {}  # tid -> where its write goes
        self.endpoints: dict[int, Endpoint] = {}  # pid -> who it is (from exec and fork events)
        self.not_ipc: set[Key] = set()  # inodes seen that are not channels (files, terminals)
        self.generation = 0  # changes whenever an fd table does
        self._holders_cache: dict[tuple[Key, bool, int], list[int]] = {}
        self._holders_generation = -1
        self.bound_at: dict[tuple[str, str], Key] = {}  # (kind, local address) -> the socket bound there
        self.connections: dict[tuple[str, str], Key] = {}  # tcp (local, remote) -> socket

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
            self._channel_call(ev)
            return []
        if kind == events.ENTRY:
            target = self._target_of(ev.pid, ev.args[0])
            if target is not None:
                self.inflight[ev.tid] = target
            return []
        self.generation += 1  # a process came, went or exec'd: fd tables changed
        if kind == events.FORK:
            child, group = ev.args[0], ev.args[1]
            if group == child and group != ev.pid:  # a new process: a copy of the fd table, the same program
                parent = self.endpoint(ev.pid)
                self.endpoints[child] = Endpoint(pid=child, uid=parent.uid, exe=parent.exe, comm=parent.comm)
                mine = self.fds.setdefault(child, {})
                for fd, entry in self.fds.get(ev.pid, {}).items():
                    mine.setdefault(fd, _Fd(entry.key, entry.read, entry.write, entry.cloexec))
            return []
        if kind == events.EXEC:
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
        if channel.kind in ("pipe", "fifo"):
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
        me = self.endpoint(ev.pid)
        transfer = Transfer(
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
            nfds=ev.nfds,
            sender=me if direction == "send" else Endpoint(),
            destination=me if direction == "recv" else Endpoint(),
        )
        return transfer, key

    def _send(self, ev: Event) -> list[Transfer]:
        made = self._transfer(ev, "send")
        if made is None:
            return self._end_write(ev.tid)
        transfer, key = made
        channel = transfer.channel
        target = self._receiver(channel, ev.addr)
        if channel.kind in ("pipe", "fifo"):
            transfer.destination = self._one_endpoint(self._holders(key, True, ev.pid))
        else:
            holders = self._holders(target, False, ev.pid) if target is not None else []
            if not holders and channel.peer_pid is not None and channel.peer_pid != ev.pid:
                holders = [channel.peer_pid]  # a peer outside the traced tree, by its credentials
            transfer.destination = self._one_endpoint(holders)
        if target is not None:
            queue = self._queue(target, channel.stream)
            queued = _Queued(transfer, transfer.size)
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
            covered = queue.queued >= transfer.size if queue.stream else bool(queue.entries)
            if not covered and self._writing_to(key):
                break
            queue.waiting.popleft()
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
        if queue.stream:
            want = transfer.size
            for item in list(queue.entries):
                if want <= 0:
                    break
                take = min(want, item.left)
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
            _add(consumed, None if (item.ambiguous or racing) else item.transfer)
            if not peek:
                queue.entries.popleft()
                queue.queued -= item.left
        else:
            consumed.append(None)
        transfer.consumed = consumed
        for write in consumed:  # a write recorded together with this read: its reader is known now
            if write is not None and write.seq == 0 and write.destination.pid is None:
                write.destination = transfer.destination
        writers = {t.pid: t.sender for t in consumed if t is not None}
        if len(writers) == 1 and None not in consumed:
            transfer.sender = next(iter(writers.values()))
        channel = transfer.channel
        if (
            not writers
            and channel.peer_pid is not None
            and channel.peer is not None
            and not self._holders((channel.dev, channel.peer), False, transfer.pid)
        ):
            transfer.sender = self.endpoint(channel.peer_pid)  # outside the traced tree


def _add(consumed: list[Transfer | None], item: Transfer | None) -> None:
    if not consumed or consumed[-1] is not item:
        consumed.append(item)
