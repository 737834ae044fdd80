"""The compiled stop loop's binary events, decoded (sans-IO: bytes in, events out).

``_tracer.c`` hands over batches of fixed-size headers, each followed by the
socket address and the payload it copied; the layout below mirrors its
``Event`` struct. Nothing here touches a process: tests feed byte vectors.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SYSCALL = 1  # an IPC syscall finished (one per message of sendmmsg/recvmmsg)
ENTRY = 2  # a write-family syscall entered: its bytes may reach a reader before its exit is seen
FORK = 3  # a process or thread was created (args[0]: new tid, args[1]: its thread group)
EXEC = 4  # a process exec'd (args[0]: the thread that called execve)
EXIT = 5  # a thread ended (ret: its wait status)
DECIDE = 6  # a selected send entered (length: requested, payload: its bytes); its thread waits for decide()

FAILED_READ = 1  # flag: the payload could not be copied out of the process
WAITS = 2  # flag on a SYSCALL: a selected receive, its thread waits for decide()
COPY = 4  # flag on a SYSCALL: a send the tracer ran again (a duplicate)

HEADER = struct.Struct("=IHHiiQQq6qq2Q2Q2I2iQIHHIIiiiiQHHI")


@dataclass(slots=True)
class Event:
    kind: int
    tid: int
    pid: int
    ts: int
    nr: int = -1
    name: str = ""
    args: tuple[int, ...] = (0, 0, 0, 0, 0, 0)
    ret: int = 0
    ts_entry: int = 0
    index: int = 0
    fds: tuple[int, int] = (-1, -1)
    inodes: tuple[int, int] = (0, 0)
    devs: tuple[int, int] = (0, 0)
    modes: tuple[int, int] = (0, 0)
    length: int = 0
    nfds: int = 0
    flags: int = 0
    addr: bytes = b""
    payload: bytes = b""
    # a socket's facts, when the stop loop described it (domain 0: it did not)
    domain: int = 0
    socktype: int = 0
    peer_pid: int = -1
    peer_uid: int = -1
    peer_ino: int = 0
    local: bytes = b""  # its own address (getsockname)
    peer: bytes = b""  # its peer's (getpeername)
    verdict: Any = None  # set by the tracer: what the chain decided about this call (a record's verdict)


def encode(event: Event) -> bytes:
    """The bytes the stop loop would hand over for ``event`` (for tests and transcripts)."""
    tail = event.addr + event.local + event.peer + event.payload
    size = (HEADER.size + len(tail) + 7) & ~7
    head = HEADER.pack(
        size,
        event.kind,
        event.index,
        event.tid,
        event.pid,
        event.ts,
        event.ts_entry,
        event.nr,
        *event.args,
        event.ret,
        *event.inodes,
        *event.devs,
        *event.modes,
        *event.fds,
        event.length,
        event.nfds,
        len(event.addr),
        event.flags,
        len(event.payload),
        0,
        event.domain,
        event.socktype,
        event.peer_pid,
        event.peer_uid,
        event.peer_ino,
        len(event.local),
        len(event.peer),
        0,
    )
    return head + tail + b"\0" * (size - HEADER.size - len(tail))


def decode(batch: bytes, names: Mapping[int, str]) -> list[Event]:
    """Every event of one batch, in the order the stop loop saw them."""
    out: list[Event] = []
    unpack = HEADER.unpack_from
    hsize = HEADER.size
    offset = 0
    end = len(batch)
    while offset + hsize <= end:
        f = unpack(batch, offset)
        size = f[0]
        if size < hsize or offset + size > end:
            raise ValueError(f"event at offset {offset} has a bad size {size}")
        addr_len, payload_len, local_len, peer_len = f[25], f[27], f[34], f[35]
        at = offset + hsize
        addr = batch[at : at + addr_len] if addr_len else b""
        at += addr_len
        local = batch[at : at + local_len] if local_len else b""
        at += local_len
        peer = batch[at : at + peer_len] if peer_len else b""
        at += peer_len
        nr = f[7]
        out.append(  # positionally, in field order: a batch holds thousands
            Event(
                f[1],
                f[3],
                f[4],
                f[5],
                nr,
                names.get(nr, ""),
                f[8:14],
                f[14],
                f[6],
                f[2],
                f[21:23],
                f[15:17],
                f[17:19],
                f[19:21],
                f[23],
                f[24],
                f[26],
                addr,
                batch[at : at + payload_len] if payload_len else b"",
                f[29],
                f[30],
                f[31],
                f[32],
                f[33],
                local,
                peer,
            )
        )
        offset += size
    if offset != end:
        raise ValueError(f"batch ends inside an event at offset {offset}")
    return out
