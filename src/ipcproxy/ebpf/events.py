"""The eBPF program's ring-buffer events, decoded (sans-IO: bytes in, events out).

``watch.bpf.c`` writes a 128-byte header (its ``struct event``), then for a
socket whose addresses it has not sent before an area of three 112-byte
slots (own address, peer's address, a datagram's address), then the payload;
the reader spools each event padded to 8 bytes. They become the syscall
tracer's ``events.Event``s, so the one channel table (``syscall/channels.py``)
names both ends of a watched message as it does for a traced one.

Two kinds are the watch's own: ``PROC``, the first event of a process (its
executable's path, walked in the kernel, as NUL-ended components from the
file up), and ``MSGGET`` (a SysV queue's key and id).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ..syscall import events as sysevents
from ..syscall.events import Event

HEADER = struct.Struct("=IHHIIQqQQQQIIiIiIIIHHHHHHI16s")
AREA = 336
SLOT = 112

DATA, ENTRY, FORK, EXEC, EXIT, PROC, MSGGET = 1, 2, 3, 4, 5, 6, 7
F_PIPEFS, F_AREA, F_FAILED_READ = 1, 2, 4

CALLS = {
    1: "read",
    2: "write",
    3: "readv",
    4: "writev",
    5: "sendto",
    6: "recvfrom",
    7: "sendmsg",
    8: "recvmsg",
    9: "preadv2",
    10: "pwritev2",
    11: "sendmmsg",
    12: "recvmmsg",
    13: "mq_timedsend",
    14: "mq_timedreceive",
    15: "msgsnd",
    16: "msgrcv",
}
SYSCALLS = tuple(CALLS.values())
MSGRCV = 16

TRANSPORTS = {"pipe": 1, "fifo": 2, "unix": 4, "tcp": 8, "udp": 16, "mq": 32, "sysv-msg": 64}


def user_dev(kdev: int) -> int:
    """A kernel ``s_dev`` (major << 20 | minor) as ``stat`` reports it."""
    return os.makedev(kdev >> 20, kdev & 0xFFFFF)


def kernel_dev(dev: int) -> int:
    """``stat``'s ``st_dev`` as the kernel's ``s_dev``."""
    return (os.major(dev) << 20) | os.minor(dev)


@dataclass(slots=True)
class Raw:
    """One event as the kernel wrote it, before it becomes an ``Event``."""

    kind: int
    event: Event
    pipefs: bool
    lost: int  # events the kernel could not take on this CPU just before this one
    uid: int
    comm: str
    domain: int  # a socket's family, on every event (the Event has it only when the addresses came along)
    offset: int  # where it starts in its batch


def path(walked: bytes) -> bytes:
    """An executable's path from the components the kernel walked (leaf first, each ending in NUL)."""
    parts = walked.split(b"\0")[:-1]
    return b"/" + b"/".join(reversed(parts)) if parts else b""


def decode(batch: bytes) -> Iterator[Raw]:
    """Every event of a spooled batch, in ring-buffer order."""
    return decode_from(batch, 0)


def count_from(batch: bytes, offset: int) -> int:
    """How many events a batch holds from ``offset`` on, without decoding them."""
    n = 0
    end = len(batch)
    unpack = struct.Struct("=I").unpack_from
    while offset + HEADER.size <= end:
        offset += (unpack(batch, offset)[0] + 7) & ~7
        n += 1
    return n


def decode_from(batch: bytes, offset: int) -> Iterator[Raw]:
    """The events of a batch from ``offset`` on."""
    unpack = HEADER.unpack_from
    hsize = HEADER.size
    end = len(batch)
    while offset + hsize <= end:
        f = unpack(batch, offset)
        size = f[0]
        if size < hsize or offset + size > end:
            raise ValueError(f"event at offset {offset} has a bad size {size}")
        kind, call, tid, pid, ts, ret, arg2, arg3 = f[1:9]
        ino, peer_ino, kdev, mode, fd, uid, peer_pid, nfds, plen, lost = f[9:19]
        domain, socktype, flags, local_len, peer_len, msg_len = f[19:25]
        comm = f[26].split(b"\0", 1)[0].decode(errors="replace")
        at = offset + hsize
        local = peer = addr = b""
        if flags & F_AREA:
            local = batch[at : at + local_len]
            peer = batch[at + SLOT : at + SLOT + peer_len]
            addr = batch[at + 2 * SLOT : at + 2 * SLOT + msg_len]
            at += AREA
        payload = batch[at : at + plen]
        if kind in (DATA, ENTRY):
            args = (fd, 0, arg2, arg3, 0, 0)
            if call == MSGRCV:  # msgsz, msgtyp (a signed long), msgflg
                args = (fd, 0, arg2, arg3 - (1 << 64) if arg3 >> 63 else arg3, nfds, 0)
                nfds = 0
            ev = Event(
                sysevents.SYSCALL if kind == DATA else sysevents.ENTRY,
                tid,
                pid,
                ts,
                call,
                CALLS.get(call, ""),
                args,
                ret,
                ts,
                0,
                (fd, -1),
                (ino, 0),
                (user_dev(kdev), 0),
                (mode, 0),
                ret if ret > 0 else 0,
                nfds,
                sysevents.FAILED_READ if flags & F_FAILED_READ else 0,
                addr,
                payload,
                domain if flags & F_AREA else 0,
                socktype,
                peer_pid,
                -1,
                peer_ino,
                local,
                peer,
            )
        elif kind == FORK:
            ev = Event(sysevents.FORK, tid, pid, ts, args=(arg2, arg3, 0, 0, 0, 0))
        elif kind in (PROC, EXEC):
            ev = Event(
                sysevents.EXEC, tid, pid, ts, args=(tid, uid, 0, 0, 0, 0), payload=path(payload), addr=comm.encode()
            )
        elif kind == MSGGET:
            ev = Event(sysevents.SYSCALL, tid, pid, ts, name="msgget", args=(arg2, 0, 0, 0, 0, 0), ret=ret)
        else:
            ev = Event(sysevents.EXIT, tid, pid, ts, ret=ret)
        yield Raw(kind, ev, bool(flags & F_PIPEFS), lost, uid, comm, domain, offset)
        offset += (size + 7) & ~7
    if offset != end:
        raise ValueError(f"batch ends inside an event at offset {offset}")
