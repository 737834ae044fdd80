"""Message queues and opaque channels in the channel table, sans-IO: the kernel's selection rules, transcripts.

Stop-loop events for mq_*, msg*, shmat, mmap, io_uring_setup and the splice
family go in as ``_tracer.c`` reports them; no process is traced here.
"""

from __future__ import annotations

import stat

import pytest

from ipcproxy.model import Endpoint
from ipcproxy.syscall import events, queues
from ipcproxy.syscall.channels import Channel, ChannelTable, Transfer
from ipcproxy.syscall.events import Event
from ipcproxy.syscall.queues import MSG_COPY, MSG_EXCEPT, MSG_NOERROR, Queued
from ipcproxy.syscall.records import data_fields, opaque_fields

MQUEUE, PIPEFS, TMPFS = 20, 15, 30
MQ = stat.S_IFREG | 0o600
FIFO = stat.S_IFIFO | 0o600
REG = stat.S_IFREG | 0o644
O_RDONLY, O_WRONLY, O_RDWR = 0, 1, 2


class Facts:
    def channel(self, pid: int, fd: int, dev: int, inode: int, mode: int) -> Channel | None:
        if stat.S_ISFIFO(mode):
            return Channel("pipe", dev, inode)
        return None

    def endpoint(self, pid: int) -> Endpoint:
        return Endpoint(pid=pid, comm=f"p{pid}", exe=f"/bin/p{pid}", uid=0)

    def queue_name(self, pid: int, fd: int) -> str | None:
        return "/seen-later"

    def sysv_key(self, kind: str, ident: int) -> int | None:
        return 0x1234 if kind == "msg" else 0x99


class Clock:
    now = 1000

    def tick(self) -> int:
        Clock.now += 10
        return Clock.now


clock = Clock()


def ev(pid: int, name: str, args: tuple[int, ...], ret: int, **kw: object) -> Event:
    entry = clock.tick()
    fields: dict[str, object] = {"ts_entry": entry, "ts": clock.tick(), **kw}
    return Event(events.SYSCALL, pid, pid, nr=0, name=name, args=(*args, 0, 0, 0, 0, 0, 0)[:6], ret=ret, **fields)  # type: ignore[arg-type]


def mq_open(pid: int, name: bytes, fd: int, inode: int, flags: int = O_RDWR, held: int = 0) -> Event:
    return ev(pid, "mq_open", (0x1000, flags), fd, addr=name, fds=(fd, -1), inodes=(inode, 0), devs=(MQUEUE, 0),
              modes=(MQ, 0), length=held)  # fmt: skip


def mq_send(pid: int, fd: int, inode: int, payload: bytes, priority: int) -> Event:
    return ev(pid, "mq_timedsend", (fd, 0x2000, len(payload), priority), 0, length=len(payload), payload=payload,
              inodes=(inode, 0), devs=(MQUEUE, 0), modes=(MQ, 0))  # fmt: skip


def mq_recv(pid: int, fd: int, inode: int, payload: bytes, priority: int | None) -> Event:
    prio = priority.to_bytes(4, "little") if priority is not None else b""
    return ev(pid, "mq_timedreceive", (fd, 0x2000, 8192, 0x3000 if prio else 0), len(payload), length=len(payload),
              payload=payload, addr=prio, inodes=(inode, 0), devs=(MQUEUE, 0), modes=(MQ, 0))  # fmt: skip


def msgsnd(pid: int, msqid: int, mtype: int, text: bytes) -> Event:
    return ev(pid, "msgsnd", (msqid, 0x2000, len(text), 0), 0, length=len(text), payload=text,
              addr=mtype.to_bytes(8, "little", signed=True))  # fmt: skip


def msgrcv(pid: int, msqid: int, msgtyp: int, mtype: int, text: bytes, flags: int = 0, room: int = 1024) -> Event:
    return ev(pid, "msgrcv", (msqid, 0x2000, room, msgtyp, flags), len(text), length=len(text), payload=text,
              addr=mtype.to_bytes(8, "little", signed=True))  # fmt: skip


def feed(table: ChannelTable, *evs: Event) -> list[Transfer]:
    out: list[Transfer] = []
    for e in evs:
        for transfer in table.feed(e):
            transfer.seq = len(out) + 100
            out.append(transfer)
    return out


def fork(parent: int, child: int) -> Event:
    return Event(events.FORK, parent, parent, ts=clock.tick(), args=(child, child, 0, 0, 0, 0))


@pytest.fixture
def table() -> ChannelTable:
    return ChannelTable(Facts())


# ---------------------------------------------------------------- the kernel's rules


def q(*pairs: tuple[int, int]) -> list[Queued]:
    return [Queued(tag, size) for tag, size in pairs]


def test_mq_takes_the_highest_priority_first_then_send_order() -> None:
    held = q((1, 3), (5, 4), (5, 6), (1, 5))
    assert queues.mq_pick(held, 5, 4) == queues.Pick(1, True)
    assert queues.mq_pick(held, None, 4) == queues.Pick(1, True)  # priority not asked for: still the rule
    assert queues.mq_pick(q((1, 3)), 1, 3).known


def test_mq_a_receive_the_queue_cannot_explain_is_unknown() -> None:
    assert queues.mq_pick(q((1, 3), (5, 4)), 1, 3) == queues.Pick(0, False)  # a priority-1 arrived first
    assert not queues.mq_pick(q((5, 4)), 5, 9).known  # size differs
    assert queues.mq_pick([], 1, 3) == queues.Pick(None, False)


@pytest.mark.parametrize(
    ("msgtyp", "flags", "index"),
    [
        (0, 0, 0),  # the first message
        (2, 0, 1),  # the first of type 2
        (2, MSG_EXCEPT, 0),  # the first not of type 2
        (-2, 0, 2),  # the lowest type not above 2 (1), first of them
        (-1, 0, 2),
        (-9, 0, 2),
        (7, 0, None),
        (1, MSG_COPY, 1),  # by position, left in the queue
        (5, MSG_COPY, None),
    ],
)
def test_sysv_selection_by_type(msgtyp: int, flags: int, index: int | None) -> None:
    held = q((3, 1), (2, 1), (1, 1), (2, 1))
    assert queues.sysv_select(held, msgtyp, flags) == index


def test_sysv_pick_checks_what_arrived() -> None:
    held = q((3, 10), (2, 20))
    assert queues.sysv_pick(held, 0, 0, 3, 10, 64) == queues.Pick(0, True)
    assert queues.sysv_pick(held, 0, 0, 2, 20, 64) == queues.Pick(1, False)  # a type-3 was missed: unknown
    assert queues.sysv_pick(held, 2, MSG_NOERROR, 2, 8, 8).known  # cut to the buffer
    assert not queues.sysv_pick(held, 2, 0, 2, 8, 8).known
    assert queues.sysv_pick(held, 1, MSG_COPY, 2, 20, 64) == queues.Pick(1, True, remove=False)


# ---------------------------------------------------------------- POSIX queues in the table


def test_mq_receives_are_attributed_by_priority(table: ChannelTable) -> None:
    feed(table, mq_open(10, b"jobs", 3, 700, O_RDONLY), fork(10, 11))
    feed(table, mq_open(11, b"jobs", 4, 700, O_WRONLY))
    low, high, low2 = feed(
        table, mq_send(11, 4, 700, b"low", 1), mq_send(11, 4, 700, b"high", 5), mq_send(11, 4, 700, b"low2", 1)
    )
    assert low.channel.to_json() == {"kind": "mq", "inode": 700, "path": "/jobs"}
    assert low.destination.pid == 10  # the one other process that can receive from it
    got = feed(
        table, mq_recv(10, 3, 700, b"high", 5), mq_recv(10, 3, 700, b"low", 1), mq_recv(10, 3, 700, b"low2", None)
    )
    assert [r.consumed for r in got] == [[high], [low], [low2]]
    assert all(r.sender.pid == 11 and r.destination.pid == 10 for r in got)
    fields = data_fields(got[0])
    assert (fields["transport"], fields["syscall"], fields["priority"], fields["fd"]) == ("mq", "mq_timedreceive", 5, 3)
    assert fields["payload"] == b"high".hex() and fields["consumed"] == [high.seq]


def test_mq_messages_held_before_the_trace_are_unknown(table: ChannelTable) -> None:
    feed(table, mq_open(10, b"old", 3, 701, held=2))
    (mine,) = feed(table, mq_send(10, 3, 701, b"new", 0))
    got = feed(table, *(mq_recv(10, 3, 701, payload, 0) for payload in (b"a", b"b", b"new")))
    assert [r.consumed for r in got] == [[None], [None], [mine]]


def test_mq_a_queue_opened_empty_forgets_what_was_left(table: ChannelTable) -> None:
    feed(table, mq_open(10, b"q", 3, 702), mq_send(10, 3, 702, b"left", 0))
    feed(table, mq_open(10, b"q", 4, 702, held=0))  # an untraced reader took it meanwhile
    (sent,) = feed(table, mq_send(10, 4, 702, b"next", 0))
    assert feed(table, mq_recv(10, 4, 702, b"next", 0))[0].consumed == [sent]


def test_mq_a_queue_whose_open_was_not_seen_is_named_by_the_system(table: ChannelTable) -> None:
    (sent,) = feed(table, mq_send(12, 5, 703, b"x", 0))
    assert sent.channel.path == "/seen-later" and sent.channel.kind == "mq"


def test_mq_a_receive_is_held_while_a_send_is_in_flight(table: ChannelTable) -> None:
    feed(table, mq_open(10, b"q", 3, 704), fork(10, 11))
    entry = Event(events.ENTRY, 11, 11, ts=clock.tick(), name="mq_timedsend", args=(3, 0, 0, 0, 0, 0))
    assert feed(table, entry, mq_recv(10, 3, 704, b"late", 0)) == []  # the receive came back first
    sent, got = feed(table, mq_send(11, 3, 704, b"late", 0))
    assert got.consumed == [sent] and got.sender.pid == 11


# ---------------------------------------------------------------- SysV queues in the table


def test_sysv_receives_are_attributed_by_type(table: ChannelTable) -> None:
    feed(table, ev(10, "msgget", (0x1234, 0o1600), 65538, length=0), fork(10, 11))
    two, one, three = feed(
        table, msgsnd(11, 65538, 2, b"two"), msgsnd(11, 65538, 1, b"one"), msgsnd(11, 65538, 3, b"3")
    )
    assert two.channel.to_json() == {"kind": "sysv-msg", "key": 0x1234, "msqid": 65538}
    assert two.fd is None and two.mtype == 2
    assert two.destination.pid == 10  # the one other process that knows the queue (11 got it from 10)
    got = feed(
        table,
        msgrcv(10, 65538, 1, 1, b"one"),  # type 1
        msgrcv(10, 65538, -3, 2, b"two"),  # the lowest type up to 3
        msgrcv(10, 65538, 0, 3, b"3"),  # the first
    )
    assert [r.consumed for r in got] == [[one], [two], [three]]
    assert all(r.sender.pid == 11 and r.destination.pid == 10 for r in got)
    fields = data_fields(got[1])
    assert (fields["transport"], fields["mtype"], fields["msgtyp"], fields["fd"]) == ("sysv-msg", 2, -3, None)


def test_sysv_a_queue_found_by_id_alone_gets_its_key_from_the_system(table: ChannelTable) -> None:
    (sent,) = feed(table, msgsnd(11, 77, 1, b"x"))
    assert sent.channel.to_json() == {"kind": "sysv-msg", "key": 0x1234, "msqid": 77}
    assert sent.destination.pid is None  # nobody else known to use it


def test_sysv_a_send_names_no_destination_when_several_could_receive(table: ChannelTable) -> None:
    feed(table, ev(10, "msgget", (1, 0), 5, length=0), fork(10, 11), fork(10, 12))
    (sent,) = feed(table, msgsnd(11, 5, 1, b"x"))
    assert sent.destination.pid is None
    feed(table, Event(events.EXIT, 12, 12, ts=clock.tick()))
    (sent,) = feed(table, msgsnd(11, 5, 1, b"y"))
    assert sent.destination.pid == 10


def test_sysv_older_messages_and_removed_queues(table: ChannelTable) -> None:
    feed(table, ev(10, "msgget", (5, 0), 9, length=1))  # it held one message already
    (mine,) = feed(table, msgsnd(10, 9, 1, b"mine"))
    first, second = feed(table, msgrcv(10, 9, 0, 1, b"old"), msgrcv(10, 9, 0, 1, b"mine"))
    assert first.consumed == [None] and second.consumed == [mine]
    feed(table, msgsnd(10, 9, 1, b"gone"), ev(10, "msgctl", (9, 0), 0))  # IPC_RMID
    feed(table, ev(10, "msgget", (5, 0o1000), 9, length=0))  # a new queue with the same id
    (fresh,) = feed(table, msgsnd(10, 9, 1, b"fresh"))
    assert feed(table, msgrcv(10, 9, 0, 1, b"fresh"))[0].consumed == [fresh]


def test_sysv_key_is_signed_as_key_t(table: ChannelTable) -> None:
    feed(table, ev(10, "msgget", (0xFFFFFFFF, 0), 4, length=0))
    (sent,) = feed(table, msgsnd(10, 4, 1, b"x"))
    assert sent.channel.ipc_key == -1


# ---------------------------------------------------------------- opaque channels


def test_shared_memory_is_reported_once_per_process_with_its_mappers(table: ChannelTable) -> None:
    path = b"/dev/shm/psm_1"
    mmap = {"addr": path, "fds": (5, -1), "inodes": (40, 0), "devs": (TMPFS, 0), "modes": (REG, 0)}
    feed(table, ev(10, "mmap", (0, 4096, 3, 1, 5), 0x7F0000, **mmap))
    feed(table, ev(10, "mmap", (0, 4096, 3, 1, 5), 0x7F1000, **mmap))  # again: no second report
    feed(table, ev(11, "mmap", (0, 4096, 3, 1, 5), 0x7F2000, **mmap))
    first, second = table.opaque
    assert (first.mechanism, first.syscall, first.size, first.channel) == (
        "shared-memory",
        "mmap",
        4096,
        Channel("shm", TMPFS, 40, path="/dev/shm/psm_1"),
    )
    assert [p.pid for p in second.processes] == [10, 11]
    fields = opaque_fields(second)
    assert fields["type"] == "event" and fields["event"] == "opaque"
    assert fields["channel"] == {"kind": "shm", "inode": 40, "path": "/dev/shm/psm_1"}
    assert fields["note"] == "payload not visible at this level" and fields["process"]["pid"] == 11


def test_private_and_ordinary_file_mappings_are_not_reported(table: ChannelTable) -> None:
    lib = {"addr": b"/usr/lib/libc.so.6", "fds": (5, -1), "inodes": (41, 0), "devs": (8, 0), "modes": (REG, 0)}
    feed(table, ev(10, "mmap", (0, 4096, 1, 2, 5), 0x7F0000, **lib))  # MAP_PRIVATE
    feed(table, ev(10, "mmap", (0, 4096, 3, 1, 5), 0x7F0000, **lib))  # shared, but a plain file
    assert table.opaque == []
    memfd = {"addr": b"/memfd:wayland (deleted)", "fds": (6, -1), "inodes": (42, 0), "devs": (1, 0), "modes": (REG, 0)}
    feed(table, ev(10, "mmap", (0, 8192, 3, 1, 6), 0x7F0000, **memfd))
    assert table.opaque[0].channel == Channel("memfd", 1, 42, path="/memfd:wayland (deleted)")


def test_sysv_shared_memory_and_io_uring(table: ChannelTable) -> None:
    feed(table, ev(10, "shmget", (0x55, 65536, 0o1600), 3), ev(10, "shmat", (3, 0, 0), 0x7F0000))
    feed(table, ev(11, "shmat", (8, 0, 0), 0x7F0000))  # its shmget was not seen
    feed(table, ev(10, "io_uring_setup", (8, 0x1000), 7, fds=(7, -1), inodes=(90, 0), devs=(13, 0)))
    shm, other, ring = table.opaque
    assert opaque_fields(shm)["channel"] == {"kind": "sysv-shm", "key": 0x55, "shmid": 3}
    assert shm.size == 65536 and other.channel is not None and other.channel.ipc_key == 0x99 and other.size is None
    assert (ring.mechanism, ring.channel) == ("io_uring", Channel("io_uring", 13, 90))


def test_spliced_bytes_are_unknown_to_the_reader_and_keep_the_stream_in_step(table: ChannelTable) -> None:
    pipe = {"fds": (3, 4), "inodes": (500, 500), "devs": (PIPEFS, PIPEFS), "modes": (FIFO, FIFO)}
    feed(table, ev(10, "pipe2", (0x2000, 0), 0, **pipe), fork(10, 11))

    def rw(pid: int, name: str, fd: int, n: int) -> Event:
        return ev(pid, name, (fd, 0x1000, n), n, length=n, inodes=(500, 0), devs=(PIPEFS, 0), modes=(FIFO, 0))

    (first,) = feed(table, rw(10, "write", 4, 10))
    moved = {"fds": (9, 4), "inodes": (77, 500), "devs": (8, PIPEFS), "modes": (REG, FIFO), "length": 100}
    feed(table, ev(10, "sendfile", (4, 9, 0, 100), 100, **moved))
    (last,) = feed(table, rw(10, "write", 4, 10))
    a, b = feed(table, rw(11, "read", 3, 60), rw(11, "read", 3, 60))
    assert a.consumed == [first, None] and b.consumed == [None, last]
    (use,) = table.opaque
    assert (use.mechanism, use.syscall, use.size, use.source, use.target) == (
        "splice",
        "sendfile",
        100,
        None,
        Channel("pipe", PIPEFS, 500),
    )
    assert [p.pid for p in use.processes] == [10, 11]  # the writer, and who holds the read end


def test_bytes_spliced_out_of_a_pipe_are_skipped(table: ChannelTable) -> None:
    pipe = {"fds": (3, 4), "inodes": (501, 501), "devs": (PIPEFS, PIPEFS), "modes": (FIFO, FIFO)}
    feed(table, ev(10, "pipe2", (0x2000, 0), 0, **pipe))
    write = {"inodes": (501, 0), "devs": (PIPEFS, 0), "modes": (FIFO, 0)}
    first, second = feed(
        table,
        ev(10, "write", (4, 0, 5), 5, length=5, **write),
        ev(10, "write", (4, 0, 5), 5, length=5, **write),
    )
    out = {"fds": (3, 1), "inodes": (501, 88), "devs": (PIPEFS, 8), "modes": (FIFO, REG), "length": 5}
    feed(table, ev(10, "splice", (3, 0, 1, 0, 5), 5, **out))  # the first write went to a file unseen
    (read,) = feed(table, ev(10, "read", (3, 0, 5), 5, length=5, **write))
    assert read.consumed == [second]
    assert table.opaque[0].source == Channel("pipe", PIPEFS, 501) and table.opaque[0].target is None


def test_file_to_file_copies_are_not_reported(table: ChannelTable) -> None:
    files = {"fds": (3, 4), "inodes": (60, 61), "devs": (8, 8), "modes": (REG, REG), "length": 4096}
    feed(table, ev(10, "copy_file_range", (3, 0, 4, 0, 4096), 4096, **files))
    assert table.opaque == []
