"""`ipcproxy watch` beyond read and write, on real programs: sendmmsg/recvmmsg, preadv2/pwritev2, many
iovecs and large payloads (Python over libc), SysV queues (perl's IPC::Msg), POSIX queues (posix_ipc),
a pid used again by a new process while the watch runs, and 32-bit programs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import IPCPROXY, read_trace, wait_for
from test_watch import _REASON, TIMEOUT, data, payload, watching

pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Any]:
    yield from watching(tmp_path)


MMSG = textwrap.dedent(
    """
    import ctypes, os, socket

    libc = ctypes.CDLL(None, use_errno=True)

    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    class msghdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(iovec)),
                    ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]

    class mmsghdr(ctypes.Structure):
        _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]

    def vector(buffers):
        arr = (iovec * len(buffers))()
        for i, b in enumerate(buffers):
            arr[i].base, arr[i].len = ctypes.cast(b, ctypes.c_void_p), len(b)
        return arr

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pieces = [ctypes.create_string_buffer(bytes([65 + i]) * 3, 3) for i in range(12)]  # 12 iovecs
    big = ctypes.create_string_buffer(bytes(range(256)) * 400, 102400)
    vectors = [vector(pieces), vector([big])]
    out = (mmsghdr * 2)()
    for i, v in enumerate(vectors):
        out[i].hdr.iov, out[i].hdr.iovlen = v, len(v)
    assert libc.sendmmsg(a.fileno(), out, 2, 0) == 2, ctypes.get_errno()
    rooms = [ctypes.create_string_buffer(200000) for _ in range(2)]
    rvectors = [vector([r]) for r in rooms]
    inn = (mmsghdr * 2)()
    for i, v in enumerate(rvectors):
        inn[i].hdr.iov, inn[i].hdr.iovlen = v, 1
    assert libc.recvmmsg(b.fileno(), inn, 2, 0, None) == 2 and (inn[0].len, inn[1].len) == (36, 102400)
    r, w = os.pipe()
    assert os.pwritev(w, [b"pw", b"ritev2"], -1) == 8  # pwritev2 at offset -1: the pipe's own position
    room = bytearray(8)
    assert os.preadv(r, [room], -1) == 8 and bytes(room) == b"pwritev2"
    try:
        os.pwrite(w, b"never", 0)  # pwrite64 on a pipe: ESPIPE, nothing moves
    except OSError as exc:
        assert exc.errno == 29
    many = [bytes([97 + i % 26]) * 1000 for i in range(40)]  # 40 iovecs, 40,000 bytes: more than a pipe holds at once
    if os.fork() == 0:
        got = b""
        while len(got) < 40000:
            got += os.read(r, 65536)
        os._exit(0 if got == b"".join(many) else 1)
    assert os.writev(w, many) == 40000
    _, status = os.wait()
    raise SystemExit(os.waitstatus_to_exitcode(status))
    """
)


def test_mmsg_v2_many_iovecs_and_large_payloads(watched: Any, tmp_path: Path) -> None:
    script = tmp_path / "mmsg.py"
    script.write_text(MMSG)
    w = watched([sys.executable, str(script)], "--max-payload", "200000")
    records = w.run()
    assert w.status == 128 + signal.SIGINT, w.stderr
    mine = [r for r in data(records) if r["pid"] == w.workload.pid or r["sender"].get("pid") == w.workload.pid]
    sends = [r for r in mine if r["syscall"] == "sendmmsg"]
    recvs = [r for r in mine if r["syscall"] == "recvmmsg"]
    first = b"".join(bytes([65 + i]) * 3 for i in range(12))
    big = bytes(range(256)) * 400
    assert [(r["size"], payload(r)) for r in sends] == [(36, first), (102400, big)]  # one record per message
    assert [(r["size"], payload(r)) for r in recvs] == [(36, first), (102400, big)]
    assert [r["consumed"] for r in recvs] == [[sends[0]["seq"]], [sends[1]["seq"]]]
    assert all(r["channel"]["kind"] == "unix" and r["channel"]["socktype"] == "seqpacket" for r in sends + recvs)
    assert not any(r.get("truncated") for r in sends + recvs)
    (pw,) = [r for r in mine if r["syscall"] == "pwritev2"]
    (pr,) = [r for r in mine if r["syscall"] == "preadv2"]
    assert payload(pw) == payload(pr) == b"pwritev2" and pr["consumed"] == [pw["seq"]]
    assert not [r for r in mine if b"never" in payload(r)]
    (writev,) = [r for r in mine if r["syscall"] == "writev"]
    assert writev["size"] == 40000 and payload(writev) == b"".join(bytes([97 + i % 26]) * 1000 for i in range(40))
    reads = [r for r in mine if r["syscall"] == "read" and r["channel"]["inode"] == writev["channel"]["inode"]]
    assert sum(r["size"] for r in reads) == 40000 and all(r["consumed"] == [writev["seq"]] for r in reads)


def test_max_payload_above_8_kib_cuts_a_large_write_and_keeps_its_size(watched: Any) -> None:
    w = watched(
        ["sh", "-c", "dd if=/dev/zero bs=100000 count=1 status=none | cat > /dev/null"], "--max-payload", "65536"
    )
    records = w.run()
    (write,) = [r for r in data(records, direction="send") if r["sender"].get("comm") == "dd"]
    assert write["size"] == 100000 and payload(write) == bytes(65536) and write["truncated"] is True
    reads = [r for r in data(records, direction="recv") if r["destination"].get("comm") == "cat"]
    assert sum(r["size"] for r in reads) == 100000 and max(len(payload(r)) for r in reads) > 8192
    assert all(len(payload(r)) == min(r["size"], 65536) and r["consumed"] == [write["seq"]] for r in reads)


SYSV_PERL = r"""
use IPC::SysV qw(IPC_PRIVATE IPC_CREAT S_IRUSR S_IWUSR);
use IPC::Msg;
my $q = IPC::Msg->new(IPC_PRIVATE, S_IRUSR | S_IWUSR | IPC_CREAT) or die "msgget: $!";
my $pid = fork();
if ($pid == 0) {
    $q->snd(2, "type two") or die;
    $q->snd(1, "type one") or die;
    $q->snd(3, "three " x 20) or die;
    exit 0;
}
waitpid($pid, 0);
my $buf;
for my $want (1, -3, 0) { $q->rcv($buf, 1024, $want) or die "msgrcv: $!"; print "$buf\n"; }
$q->remove;
"""


def test_sysv_queue_of_perl_ipc_msg(watched: Any, tmp_path: Path) -> None:
    script = tmp_path / "msg.pl"
    script.write_text(SYSV_PERL)
    w = watched(["perl", str(script)], "--max-payload", "16")
    records = w.run()
    sends = data(records, transport="sysv-msg", direction="send")
    recvs = data(records, transport="sysv-msg", direction="recv")
    assert [(s["mtype"], s["size"], payload(s)) for s in sends] == [
        (2, 8, b"type two"),
        (1, 8, b"type one"),
        (3, 120, b"three three thre"),
    ]
    assert sends[2]["truncated"] is True
    by_seq = {s["seq"]: s for s in sends}
    # msgtyp 1: the type-1 message; -3: the lowest type up to 3 (2); 0: the first left (3)
    assert [(r["msgtyp"], r["mtype"]) for r in recvs] == [(1, 1), (-3, 2), (0, 3)]
    assert [by_seq[r["consumed"][0]]["mtype"] for r in recvs] == [1, 2, 3]
    child, parent = sends[0]["sender"]["pid"], recvs[0]["destination"]["pid"]
    assert child != parent == w.workload.pid
    assert all(s["destination"]["pid"] == parent for s in sends)  # the one other process that knows the queue
    for r in recvs:
        assert r["sender"]["pid"] == child and r["sender"]["exe"] == os.path.realpath(shutil.which("perl") or "")
        assert r["fd"] is None and r["channel"] == {"kind": "sysv-msg", "key": 0, "msqid": sends[0]["channel"]["msqid"]}


MQ_PYTHON = """
import os, sys, posix_ipc
name = sys.argv[1]
q = posix_ipc.MessageQueue(name)  # made by the test, holding a message sent before the watch
pid = os.fork()
if pid == 0:
    c = posix_ipc.MessageQueue(name, write=True, read=False)
    c.send(b"low", priority=1)
    c.send(b"high", priority=7)
    c.send(b"low again", priority=1)
    os._exit(0)
os.waitpid(pid, 0)
for _ in range(4):
    print(q.receive())
"""


def test_posix_queue_of_the_posix_ipc_package(watched: Any, tmp_path: Path) -> None:
    posix_ipc = pytest.importorskip("posix_ipc")
    name = f"/ipcproxy-watch-{os.getpid()}"
    queue = posix_ipc.MessageQueue(name, posix_ipc.O_CREX)
    try:
        queue.send(b"from before", priority=9)
        script = tmp_path / "mq.py"
        script.write_text(MQ_PYTHON)
        w = watched([sys.executable, str(script), name])
        records = w.run()
    finally:
        queue.close()
        queue.unlink()
    sends = data(records, transport="mq", direction="send")
    recvs = data(records, transport="mq", direction="recv")
    by_seq = {s["seq"]: s for s in sends}
    assert [(payload(s), s["priority"]) for s in sends] == [(b"low", 1), (b"high", 7), (b"low again", 1)]
    assert [(payload(r), r["priority"]) for r in recvs] == [
        (b"from before", 9),
        (b"high", 7),
        (b"low", 1),
        (b"low again", 1),
    ]
    assert recvs[0]["consumed"] == ["unknown"]  # in the queue before the watch began
    assert [payload(by_seq[r["consumed"][0]]) for r in recvs[1:]] == [b"high", b"low", b"low again"]
    for r in recvs[1:]:
        assert r["sender"]["pid"] == sends[0]["sender"]["pid"] != r["destination"]["pid"] == w.workload.pid
    assert all(r["channel"]["kind"] == "mq" and r["channel"]["path"] == name for r in sends + recvs)
    assert len({r["channel"]["inode"] for r in sends + recvs}) == 1


def test_transport_selects_queues(watched: Any, tmp_path: Path) -> None:
    script = tmp_path / "msg.pl"
    script.write_text(SYSV_PERL)
    w = watched(["perl", str(script)], "--transport", "pipe")
    records = w.run()
    assert not data(records, transport="sysv-msg")


def _fork_at(pid: int, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes] | None:
    """``cmd`` started as process ``pid`` (the kernel's next pid set just before), or None after many tries."""
    for _ in range(200):
        with open("/proc/sys/kernel/ns_last_pid", "w") as last:
            last.write(str(pid - 1))
        proc = subprocess.Popen(cmd, **kw)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


def test_a_pid_used_again_names_the_new_process(tmp_path: Path) -> None:
    """The first process writes, ends, and a new one gets its pid, while the watch is stopped (a reader
    slower than the kernel): the records of each name its own program, from the kernel, not from /proc."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    old = subprocess.Popen(
        ["perl", "-e", 'open(my $g, "<", $ARGV[0]) or die; <$g>; syswrite(STDOUT, "from the old one\\n")', str(gate)],
        stdout=subprocess.PIPE,
    )
    trace = tmp_path / "w.jsonl"
    watch = subprocess.Popen(
        [*IPCPROXY, "watch", "-w", str(trace), "--comm", "perl", "--comm", "python3", "--transport", "pipe"],
        stderr=subprocess.PIPE,
        text=True,
    )
    new = None
    try:
        wait_for(lambda: trace.exists() and "watch_start" in trace.read_text(), timeout=60, what="watch_start")
        os.kill(watch.pid, signal.SIGSTOP)  # events wait in the kernel's ring buffer meanwhile
        with open(gate, "w") as g:
            g.write("go\n")
        assert old.stdout is not None and old.stdout.read() == b"from the old one\n"
        assert old.wait(timeout=TIMEOUT) == 0
        new = _fork_at(
            old.pid,
            ["/usr/bin/python3", "-c", "import os, sys; os.write(1, b'from the new one\\n'); sys.stdin.read()"],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )
        if new is None:
            pytest.skip(f"pid {old.pid} was taken by another process each time")
        assert new.stdout is not None and new.stdout.read(17) == b"from the new one\n"
        os.kill(watch.pid, signal.SIGCONT)  # the new process still runs: /proc/PID is its
        wait_for(lambda: b"from the new one".hex() in trace.read_text(), timeout=60, what="the new one's write")
    finally:
        os.kill(watch.pid, signal.SIGCONT)
        if new is not None:
            new.communicate(timeout=TIMEOUT)
        watch.send_signal(signal.SIGINT)
        watch.communicate(timeout=TIMEOUT)
    records = read_trace(trace)
    writes = [r for r in data(records, direction="send") if r["pid"] == old.pid]
    assert [(payload(r), r["sender"]["comm"], r["sender"]["exe"]) for r in writes] == [
        (b"from the old one\n", "perl", os.path.realpath("/usr/bin/perl")),
        (b"from the new one\n", "python3", os.path.realpath("/usr/bin/python3")),
    ]
    exits = [(r["comm"], r["exe"]) for r in records if r.get("event") == "exit" and r["pid"] == old.pid]
    assert exits[0] == ("perl", os.path.realpath("/usr/bin/perl"))


def test_a_32_bit_program_is_left_out_and_its_64_bit_reader_is_recorded(watched: Any, tmp_path: Path) -> None:
    cc = shutil.which("i686-linux-gnu-gcc")
    if cc is None:
        pytest.skip("no 32-bit compiler (gcc-i686-linux-gnu)")
    source = tmp_path / "m32.c"
    # getpid (20 on i386) and brk (45) are writev and recvfrom on x86_64: never to be taken for them
    source.write_text(
        "#include <unistd.h>\n#include <stdlib.h>\n"
        "int main(void) { for (int i = 0; i < 100; i++) { getpid(); free(malloc(1 << 20)); }\n"
        'write(1, "32-bit\\n", 7); return 0; }\n'
    )
    binary = tmp_path / "m32"
    subprocess.run([cc, "-static", "-o", str(binary), str(source)], check=True, timeout=120)
    if subprocess.run([str(binary)], capture_output=True).returncode != 0:
        pytest.skip("this kernel does not run 32-bit programs")
    w = watched(["sh", "-c", f"{binary} | cat > /dev/null"])
    records = w.run()
    assert not [r for r in data(records) if r["sender"].get("comm") == "m32" and r["direction"] == "send"]
    reads = [r for r in data(records, direction="recv") if r["destination"].get("comm") == "cat"]
    assert [(payload(r), r["consumed"]) for r in reads] == [(b"32-bit\n", ["unknown"])]
