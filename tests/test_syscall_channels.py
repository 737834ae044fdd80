"""The syscall transport's sans-IO parts: event decoding, the channel table, read -> write attribution.

Transcripts of stop-loop events (as ``_tracer.c`` would report them) go in;
no process is traced here. The facts a live system would give (what an inode
is, who a pid is) come from a small table.
"""

from __future__ import annotations

import dataclasses
import stat

import pytest

from ipcproxy.model import Endpoint
from ipcproxy.syscall import events, sockaddr
from ipcproxy.syscall.channels import Channel, ChannelTable, Transfer
from ipcproxy.syscall.events import Event
from ipcproxy.syscall.records import data_fields

PIPEFS, SOCKFS = 15, 9
FIFO = stat.S_IFIFO | 0o600
SOCK = stat.S_IFSOCK | 0o777
REG = stat.S_IFREG | 0o644
NAMES = {0: "read", 1: "write", 44: "sendto", 45: "recvfrom", 293: "pipe2", 53: "socketpair", 33: "dup2", 3: "close"}


class Facts:
    """What /proc would say: pipes by their filesystem, every process named p<pid>."""

    def channel(self, pid: int, fd: int, dev: int, inode: int, mode: int) -> Channel | None:
        if stat.S_ISFIFO(mode):
            return Channel("pipe" if dev == PIPEFS else "fifo", dev, inode)
        return None

    def endpoint(self, pid: int) -> Endpoint:
        return Endpoint(pid=pid, comm=f"p{pid}", exe=f"/bin/p{pid}", uid=0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000

    def tick(self) -> int:
        self.now += 10
        return self.now


@pytest.fixture
def table() -> ChannelTable:
    return ChannelTable(Facts())


clock = Clock()


def syscall(pid: int, name: str, args: tuple[int, ...], ret: int, **kw: object) -> Event:
    nr = next(n for n, text in NAMES.items() if text == name)
    entry = clock.tick()
    fields: dict[str, object] = {"ts_entry": entry, "ts": clock.tick(), **kw}
    return Event(events.SYSCALL, pid, pid, nr=nr, name=name, args=(*args, 0, 0, 0, 0, 0, 0)[:6], ret=ret, **fields)  # type: ignore[arg-type]


def data(pid: int, name: str, fd: int, n: int, inode: int, dev: int = PIPEFS, mode: int = FIFO, **kw: object) -> Event:
    return syscall(pid, name, (fd, 0x1000, n), n, length=n, inodes=(inode, 0), devs=(dev, 0), modes=(mode, 0), **kw)


def pipe2(pid: int, inode: int, read_fd: int = 3, write_fd: int = 4, flags: int = 0) -> Event:
    return syscall(
        pid, "pipe2", (0x2000, flags), 0, fds=(read_fd, write_fd), inodes=(inode, inode), devs=(PIPEFS, PIPEFS),
        modes=(FIFO, FIFO),
    )  # fmt: skip


def fork(parent: int, child: int) -> Event:
    return Event(events.FORK, parent, parent, ts=clock.tick(), args=(child, child, 0, 0, 0, 0))


def entry(pid: int, fd: int) -> Event:
    return Event(events.ENTRY, pid, pid, ts=clock.tick(), nr=1, name="write", args=(fd, 0, 0, 0, 0, 0))


def feed(table: ChannelTable, *evs: Event) -> list[Transfer]:
    out: list[Transfer] = []
    for ev in evs:
        for transfer in table.feed(ev):
            transfer.seq = len(out) + 1  # as the recorder would number them
            out.append(transfer)
    return out


def shell_pipeline(table: ChannelTable) -> None:
    """sh (10) makes a pipe, forks a writer (11) and a reader (12); each keeps one end as stdout/stdin."""
    feed(table, pipe2(10, 500), fork(10, 11))
    feed(table, syscall(11, "dup2", (4, 1), 1, fds=(1, -1), inodes=(500, 0), devs=(PIPEFS, 0), modes=(FIFO, 0)))
    feed(table, syscall(11, "close", (3,), 0), syscall(11, "close", (4,), 0), fork(10, 12))
    feed(table, syscall(12, "dup2", (3, 0), 0, fds=(0, -1), inodes=(500, 0), devs=(PIPEFS, 0), modes=(FIFO, 0)))
    feed(table, syscall(12, "close", (3,), 0), syscall(12, "close", (4,), 0))
    feed(table, syscall(10, "close", (3,), 0), syscall(10, "close", (4,), 0))


# ---------------------------------------------------------------- decoding


def test_events_survive_the_binary_layout() -> None:
    ev = Event(
        events.SYSCALL, 7, 6, ts=99, nr=44, args=(5, 0x10, 3, 0, 0x20, 16), ret=3, ts_entry=90, index=2,
        fds=(5, -1), inodes=(123, 0), devs=(9, 0), modes=(SOCK, 0), length=3, nfds=2, flags=0,
        addr=sockaddr.inet("127.0.0.1", 53), payload=b"abc", domain=2, socktype=2, peer_pid=-1, peer_uid=-1,
        peer_ino=0, local=sockaddr.inet("127.0.0.1", 4000), peer=b"",
    )  # fmt: skip
    batch = events.encode(ev) + events.encode(Event(events.EXIT, 8, 8, ts=100, ret=9))
    first, second = events.decode(batch, {44: "sendto"})
    assert first == dataclasses.replace(ev, name="sendto")
    assert (second.kind, second.tid, second.ret) == (events.EXIT, 8, 9)


def test_a_batch_cut_inside_an_event_is_an_error() -> None:
    batch = events.encode(Event(events.EXIT, 8, 8, ts=100))
    with pytest.raises(ValueError, match="bad size|ends inside"):
        events.decode(batch[:-8] + b"\xff" * 4, {})


def test_socket_addresses_as_text() -> None:
    assert sockaddr.text(sockaddr.unix("/run/x.sock")) == "/run/x.sock"
    assert sockaddr.text(sockaddr.unix("@bus")) == "@bus"
    assert sockaddr.text(sockaddr.inet("127.0.0.1", 8080)) == "127.0.0.1:8080"
    assert sockaddr.text(b"\x01\x00") is None  # an unnamed unix socket


# ---------------------------------------------------------------- pipes


def test_each_read_names_the_writes_it_consumed(table: ChannelTable) -> None:
    shell_pipeline(table)
    w1, w2 = feed(table, data(11, "write", 1, 100, 500)), feed(table, data(11, "write", 1, 50, 500))
    r1, r2 = feed(table, data(12, "read", 0, 120, 500)), feed(table, data(12, "read", 0, 30, 500))
    assert r1[0].consumed == [w1[0], w2[0]] and r2[0].consumed == [w2[0]]
    assert r1[0].sender.pid == 11 and r1[0].destination.pid == 12
    assert w1[0].destination.pid == 12  # the only process holding the read end
    assert r1[0].channel.kind == "pipe" and r1[0].channel.inode == 500


def test_bytes_no_traced_write_accounts_for_are_unknown(table: ChannelTable) -> None:
    shell_pipeline(table)
    (w,) = feed(table, data(11, "write", 1, 10, 500))
    (r,) = feed(table, data(12, "read", 0, 25, 500))  # 15 bytes were in the pipe before tracing began
    assert r.consumed == [w, None]
    assert r.sender.pid is None  # not all from one known writer
    record = data_fields(r)
    assert record["consumed"] == [w.seq, "unknown"]


def test_a_read_seen_before_its_write_waits_for_it(table: ChannelTable) -> None:
    shell_pipeline(table)
    assert feed(table, entry(11, 1)) == []
    assert feed(table, data(12, "read", 0, 8, 500)) == []  # the writer is still in write(): held
    write, read = feed(table, data(11, "write", 1, 8, 500))
    assert write.direction == "send" and read.consumed == [write]


def test_a_held_read_is_written_when_the_trace_ends(table: ChannelTable) -> None:
    shell_pipeline(table)
    feed(table, entry(11, 1), data(12, "read", 0, 8, 500))
    (read,) = table.finish()
    assert read.consumed == [None]


def test_two_writers_in_the_kernel_at_once_are_not_ordered(table: ChannelTable) -> None:
    shell_pipeline(table)
    feed(table, fork(11, 13))  # a second writer on the same pipe
    a_in, b_in = clock.tick(), clock.tick()
    wa = syscall(11, "write", (1, 0, 4), 4, length=4, inodes=(500, 0), devs=(PIPEFS, 0), modes=(FIFO, 0))
    wb = syscall(13, "write", (1, 0, 4), 4, length=4, inodes=(500, 0), devs=(PIPEFS, 0), modes=(FIFO, 0))
    wa.ts_entry, wb.ts_entry = a_in, b_in
    wb.ts = clock.tick()
    wa.ts = clock.tick()  # a finished after b had entered: who wrote first is not known
    feed(table, wb, wa)
    (read,) = feed(table, data(12, "read", 0, 8, 500))
    assert read.consumed == [None]


def test_writes_one_after_the_other_from_two_writers_are_attributed(table: ChannelTable) -> None:
    shell_pipeline(table)
    feed(table, fork(11, 13))
    (a,) = feed(table, data(11, "write", 1, 4, 500))
    (b,) = feed(table, data(13, "write", 1, 6, 500))
    (read,) = feed(table, data(12, "read", 0, 10, 500))
    assert read.consumed == [a, b] and read.sender.pid is None


def test_exec_closes_close_on_exec_fds(table: ChannelTable) -> None:
    feed(table, pipe2(10, 600, flags=0o2000000))
    assert set(table.fds[10]) == {3, 4}
    feed(table, Event(events.EXEC, 10, 10, ts=clock.tick(), args=(10, 0, 0, 0, 0, 0), addr=b"cat", payload=b"/bin/cat"))
    assert table.fds[10] == {}
    assert table.endpoint(10).exe == "/bin/cat" and table.endpoint(10).comm == "cat"


def test_a_forked_child_is_the_same_program_until_it_execs(table: ChannelTable) -> None:
    feed(table, Event(events.EXEC, 10, 10, ts=1, args=(10, 1000, 0, 0, 0, 0), addr=b"sh", payload=b"/bin/sh"))
    feed(table, fork(10, 11))
    assert (table.endpoint(11).pid, table.endpoint(11).exe, table.endpoint(11).uid) == (11, "/bin/sh", 1000)


def test_a_child_that_exec_d_before_its_fork_was_seen_keeps_its_program(table: ChannelTable) -> None:
    # the child's exec stop can be handled before the parent's fork event
    feed(table, Event(events.EXEC, 10, 10, ts=1, args=(10, 1000, 0, 0, 0, 0), addr=b"sh", payload=b"/bin/sh"))
    feed(table, pipe2(10, 500, flags=0o2000000))
    feed(table, Event(events.EXEC, 11, 11, ts=2, args=(11, 1000, 0, 0, 0, 0), addr=b"cat", payload=b"/bin/cat"))
    feed(table, fork(10, 11))
    assert (table.endpoint(11).exe, table.endpoint(11).comm) == ("/bin/cat", "cat")
    assert 3 not in table.fds.get(11, {}) and 4 not in table.fds.get(11, {})  # close-on-exec: gone with the exec


def test_files_and_terminals_are_not_messages(table: ChannelTable) -> None:
    assert feed(table, data(10, "write", 1, 5, 77, dev=3, mode=REG)) == []


# ---------------------------------------------------------------- sockets


def socket_facts(local: bytes, peer: bytes, socktype: int, domain: int, peer_ino: int = 0) -> dict[str, object]:
    return {"domain": domain, "socktype": socktype, "local": local, "peer": peer, "peer_ino": peer_ino}


def test_a_datagram_read_takes_one_write(table: ChannelTable) -> None:
    facts = socket_facts(b"\x01\x00", b"\x01\x00", 2, 1)
    feed(table, data(10, "write", 5, 1, 700, dev=SOCKFS, mode=SOCK, **{**facts, "peer_ino": 701}))
    (w2,) = feed(table, data(10, "write", 5, 3, 700, dev=SOCKFS, mode=SOCK))
    feed(table, data(11, "read", 6, 64, 701, dev=SOCKFS, mode=SOCK, **{**facts, "peer_ino": 700}))
    # the first datagram was read above; the second read gets the second whole datagram
    (r2,) = feed(table, data(11, "read", 6, 64, 701, dev=SOCKFS, mode=SOCK))
    assert r2.consumed == [w2] and r2.channel.socktype == "dgram"


def test_a_peek_does_not_consume(table: ChannelTable) -> None:
    facts = socket_facts(b"\x01\x00", b"\x01\x00", 1, 1)
    (w,) = feed(table, data(10, "write", 5, 4, 700, dev=SOCKFS, mode=SOCK, **{**facts, "peer_ino": 701}))
    peek = data(11, "recvfrom", 6, 4, 701, dev=SOCKFS, mode=SOCK, **{**facts, "peer_ino": 700})
    peek.args = (6, 0, 4, 2, 0, 0)  # MSG_PEEK
    (p,) = feed(table, peek)
    (r,) = feed(table, data(11, "read", 6, 4, 701, dev=SOCKFS, mode=SOCK))
    assert p.consumed == [w] and r.consumed == [w]


def test_tcp_writes_before_the_accept_reach_the_accepted_socket(table: ChannelTable) -> None:
    client, server = sockaddr.inet("127.0.0.1", 40000), sockaddr.inet("127.0.0.1", 8080)
    (w,) = feed(table, data(10, "write", 5, 5, 800, dev=SOCKFS, mode=SOCK, **socket_facts(client, server, 1, 2)))
    accepted = syscall(
        11, "dup2", (4, 6), 6, fds=(6, -1), inodes=(801, 0), devs=(SOCKFS, 0), modes=(SOCK, 0),
        **socket_facts(server, client, 1, 2),
    )  # fmt: skip
    feed(table, accepted)
    (r,) = feed(table, data(11, "read", 6, 5, 801, dev=SOCKFS, mode=SOCK))
    assert r.consumed == [w] and r.sender.pid == 10
    assert r.channel.to_json() == {
        "kind": "tcp", "inode": 801, "socktype": "stream", "local": "127.0.0.1:8080", "remote": "127.0.0.1:40000",
        "peer": 800,
    }  # fmt: skip


def test_a_udp_datagram_lands_in_the_socket_bound_to_its_address(table: ChannelTable) -> None:
    server = sockaddr.inet("127.0.0.1", 5353)
    feed(table, data(11, "read", 6, 1, 901, dev=SOCKFS, mode=SOCK, **socket_facts(server, b"", 2, 2)))
    send = data(
        10, "sendto", 5, 7, 900, dev=SOCKFS, mode=SOCK, **socket_facts(sockaddr.inet("127.0.0.1", 4444), b"", 2, 2)
    )
    send.addr = server
    (w,) = feed(table, send)
    (r,) = feed(table, data(11, "recvfrom", 6, 7, 901, dev=SOCKFS, mode=SOCK))
    assert r.consumed == [w] and w.destination.pid == 11 and r.channel.kind == "udp"


def test_records_carry_the_payload_as_hex_and_say_when_it_was_cut(table: ChannelTable) -> None:
    shell_pipeline(table)
    (w,) = feed(table, data(11, "write", 1, 10, 500, payload=b"hello"))
    record = data_fields(w)
    assert record["payload"] == "68656c6c6f" and record["size"] == 10 and record["truncated"] is True
    assert record["transport"] == "pipe" and record["type"] == "data" and record["channel"]["inode"] == 500
    assert record["sender"]["pid"] == 11 and "consumed" not in record


# ---------------------------------------------------------------- stats and show on data records


def test_stats_count_a_message_once_and_pairs_by_the_writes_read() -> None:
    from ipcproxy.trace.stats import Stats
    from ipcproxy.trace.view import format_record

    seq_ep = {"pid": 11, "exe": "/usr/bin/seq", "comm": "seq"}
    sort_ep = {"pid": 12, "exe": "/usr/bin/sort", "comm": "sort"}
    base = {"type": "data", "transport": "pipe", "channel": {"kind": "pipe", "inode": 5}, "syscall": "write"}
    records = [
        {**base, "seq": 1, "direction": "send", "sender": seq_ep, "destination": sort_ep, "size": 10},
        {**base, "seq": 2, "direction": "recv", "sender": seq_ep, "destination": sort_ep, "size": 4, "consumed": [1]},
        {**base, "seq": 3, "direction": "recv", "sender": seq_ep, "destination": sort_ep, "size": 6, "consumed": [1]},
        {
            **base,
            "seq": 4,
            "direction": "recv",
            "sender": {},
            "destination": sort_ep,
            "size": 3,
            "consumed": ["unknown"],
        },
    ]
    stats = Stats()
    stats.add_trace(records)
    assert stats.messages == 2  # seq's write, and the bytes of nobody traced
    comps = stats.components
    assert comps["/usr/bin/seq"].counts["data"] == 1 and comps["/usr/bin/seq"].bytes == 10
    assert comps["/usr/bin/sort"].received == 3 and comps["/usr/bin/sort"].bytes_in == 13
    pairs = stats.pairs
    assert pairs[("/usr/bin/seq", "/usr/bin/sort")].counts["data"] == 1  # one write, read in two pieces
    assert pairs[("unknown", "/usr/bin/sort")].counts["data"] == 1
    line = format_record({**records[1], "fd": 0, "payload": "310a", "truncated": True})
    assert line.startswith("#2 ") and "pipe recv seq(11) -> sort(12) write fd=0 4 B pipe:[5] consumed=#1" in line
    assert line.endswith("'1\\n' (truncated)")
