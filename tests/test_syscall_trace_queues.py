"""`ipcproxy trace` on message queues and opaque channels, with real programs nobody here wrote.

SysV queues through perl's core IPC::Msg, POSIX queues through the posix_ipc
package, shared memory through Python's multiprocessing.shared_memory and
perl's shmread/shmwrite, sendfile through Python's socket.sendfile, splice
through pv, io_uring through fio. Each runs in a process of its own under the tracer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import trace_unavailable

IPCPROXY = [sys.executable, "-m", "ipcproxy"]
TIMEOUT = 120
ROOT = Path(__file__).resolve().parent.parent


traced = pytest.mark.skipif((_REASON := trace_unavailable()) is not None, reason=_REASON or "")


def run_trace(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    trace = tmp_path / "trace.jsonl"
    proc = subprocess.run(
        [*IPCPROXY, "trace", "-q", "-w", str(trace), *args], capture_output=True, text=True, timeout=TIMEOUT
    )
    shown = subprocess.run([*IPCPROXY, "show", "--json", str(trace)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    return proc, [json.loads(line) for line in shown.stdout.splitlines()[1:]]


def data(records: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == "data" and all(r.get(k) == v for k, v in match.items())]


def opaque(records: list[dict[str, Any]], mechanism: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == "opaque" and r.get("mechanism") == mechanism]


def text(record: dict[str, Any]) -> bytes:
    return bytes.fromhex(record["payload"])


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


@traced
def test_sysv_queue_of_perl_ipc_msg(tmp_path: Path) -> None:
    script = tmp_path / "msg.pl"
    script.write_text(SYSV_PERL)
    proc, records = run_trace(["--max-payload", "16", "--", "perl", str(script)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["type one", "type two"]
    sends = data(records, transport="sysv-msg", direction="send")
    recvs = data(records, transport="sysv-msg", direction="recv")
    assert [(s["mtype"], s["size"]) for s in sends] == [(2, 8), (1, 8), (3, 120)]
    assert sends[2]["truncated"] is True and text(sends[2]) == b"three three thre"  # cut, the full size kept
    seqs = {s["seq"]: s for s in sends}
    # msgtyp 1: the type-1 message; -3: the lowest type up to 3 (2); 0: the first left (3)
    assert [(r["msgtyp"], r["mtype"]) for r in recvs] == [(1, 1), (-3, 2), (0, 3)]
    assert [seqs[r["consumed"][0]]["mtype"] for r in recvs] == [1, 2, 3]
    child, parent = sends[0]["sender"]["pid"], recvs[0]["destination"]["pid"]
    assert child != parent
    assert all(s["destination"]["pid"] == parent for s in sends)  # the one other process that knows the queue
    for r in recvs:
        assert r["sender"]["pid"] == child and r["sender"]["comm"] == "perl" and "fd" in r and r["fd"] is None
        channel = r["channel"]
        assert (
            channel["kind"] == "sysv-msg" and channel["key"] == 0 and channel["msqid"] == sends[0]["channel"]["msqid"]
        )


MQ_PYTHON = """
import os, sys, posix_ipc
name = sys.argv[1]
q = posix_ipc.MessageQueue(name)  # made by the test, holding a message sent before the trace
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


@traced
def test_posix_queue_of_the_posix_ipc_package(tmp_path: Path) -> None:
    posix_ipc = pytest.importorskip("posix_ipc")
    name = f"/ipcproxy-test-{os.getpid()}"
    queue = posix_ipc.MessageQueue(name, posix_ipc.O_CREX)
    try:
        queue.send(b"from before", priority=9)
        script = tmp_path / "mq.py"
        script.write_text(MQ_PYTHON)
        proc, records = run_trace(["--", sys.executable, str(script), name], tmp_path)
    finally:
        queue.close()
        queue.unlink()
    assert proc.returncode == 0, proc.stderr
    sends = data(records, transport="mq", direction="send")
    recvs = data(records, transport="mq", direction="recv")
    by_seq = {s["seq"]: s for s in sends}
    assert [(text(s), s["priority"]) for s in sends] == [(b"low", 1), (b"high", 7), (b"low again", 1)]
    assert [(text(r), r["priority"]) for r in recvs] == [
        (b"from before", 9),
        (b"high", 7),
        (b"low", 1),
        (b"low again", 1),
    ]
    assert recvs[0]["consumed"] == ["unknown"]  # the queue held it when the trace first saw it
    assert [text(by_seq[r["consumed"][0]]) for r in recvs[1:]] == [b"high", b"low", b"low again"]
    for r in recvs[1:]:
        assert r["sender"]["pid"] == sends[0]["sender"]["pid"] != r["destination"]["pid"]
    assert all(r["channel"]["kind"] == "mq" and r["channel"]["path"] == name for r in sends + recvs)
    assert all(s["destination"]["pid"] == recvs[0]["destination"]["pid"] for s in sends)  # the only reader


SHM_PYTHON = """
import os
from multiprocessing import shared_memory
shm = shared_memory.SharedMemory(create=True, size=8192)
pid = os.fork()
if pid == 0:
    other = shared_memory.SharedMemory(name=shm.name)
    other.buf[:5] = b"hello"
    other.close()
    os._exit(0)
os.waitpid(pid, 0)
print(bytes(shm.buf[:5]).decode(), shm.name)
shm.close()
shm.unlink()
"""


@traced
def test_multiprocessing_shared_memory_shows_as_opaque(tmp_path: Path) -> None:
    script = tmp_path / "shm.py"
    script.write_text(SHM_PYTHON)
    proc, records = run_trace(["--", sys.executable, str(script)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    said, name = proc.stdout.split()
    assert said == "hello"
    uses = [u for u in opaque(records, "shared-memory") if u["channel"]["path"] == f"/dev/shm/{name.lstrip('/')}"]
    assert len(uses) == 2  # the creator, then the child that attached by name
    creator, child = uses
    assert creator["syscall"] == "mmap" and creator["size"] == 8192 and creator["channel"]["kind"] == "shm"
    assert [p["pid"] for p in child["processes"]] == [creator["pid"], child["pid"]]
    assert child["note"] == "payload not visible at this level"
    shown = subprocess.run([*IPCPROXY, "show", str(tmp_path / "trace.jsonl")], capture_output=True, text=True)
    assert "opaque shared-memory mmap" in shown.stdout and "(payload not visible at this level)" in shown.stdout


SHM_PERL = r"""
use IPC::SysV qw(IPC_PRIVATE IPC_CREAT IPC_RMID S_IRUSR S_IWUSR);
my $id = shmget(IPC_PRIVATE, 4096, S_IRUSR | S_IWUSR | IPC_CREAT) // die "shmget: $!";
shmwrite($id, "shared", 0, 6) or die "shmwrite: $!";
my $buf;
shmread($id, $buf, 0, 6) or die "shmread: $!";
print "$buf $id\n";
shmctl($id, IPC_RMID, 0);
"""


@traced
def test_sysv_shared_memory_of_perl_shows_as_opaque(tmp_path: Path) -> None:
    script = tmp_path / "shm.pl"
    script.write_text(SHM_PERL)
    proc, records = run_trace(["--", "perl", str(script)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    said, shmid = proc.stdout.split()
    assert said == "shared"
    (use,) = opaque(records, "shared-memory")  # shmread and shmwrite each attach: reported once
    assert use["syscall"] == "shmat" and use["size"] == 4096
    assert use["channel"] == {"kind": "sysv-shm", "key": 0, "shmid": int(shmid)}


SENDFILE_PYTHON = """
import socket, sys
a, b = socket.socketpair()
a.sendall(b"head")
with open(sys.argv[1], "rb") as f:
    sent = a.sendfile(f)
got = b.recv(4)
rest = b.recv(65536)
print(sent, len(got), len(rest))
"""


@traced
def test_socket_sendfile_shows_as_opaque_and_its_bytes_as_unknown(tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"x" * 3000)
    script = tmp_path / "sendfile.py"
    script.write_text(SENDFILE_PYTHON)
    proc, records = run_trace(["--", sys.executable, str(script), str(payload)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3000", "4", "3000"]
    (use,) = opaque(records, "splice")
    assert use["syscall"] == "sendfile" and use["size"] == 3000
    assert use["from"] is None and use["to"]["kind"] == "unix" and use["channel"] == use["to"]
    head, rest = data(records, transport="unix", direction="recv")
    (sent,) = data(records, transport="unix", direction="send")
    assert head["consumed"] == [sent["seq"]] and rest["consumed"] == ["unknown"]


@traced
def test_pv_splicing_between_two_pipes_shows_as_opaque(tmp_path: Path) -> None:
    if shutil.which("pv") is None:
        pytest.skip("pv is not installed (scripts/setup.sh installs it)")
    proc, records = run_trace(["--", "sh", "-c", "seq 10000 | pv -q | wc -c"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    total = int(proc.stdout)
    uses = opaque(records, "splice")
    assert uses and all(u["syscall"] == "splice" and u["process"]["comm"] == "pv" for u in uses)
    assert sum(u["size"] for u in uses) == total
    written = [r for r in data(records, direction="send") if r["sender"].get("comm") == "seq"]
    read = [r for r in data(records, direction="recv") if r["destination"].get("comm") == "wc"]
    assert sum(r["size"] for r in written) == sum(r["size"] for r in read) == total
    for u in uses:  # from seq's pipe into wc's
        assert u["from"]["kind"] == u["to"]["kind"] == "pipe"
        assert u["from"]["inode"] == written[0]["channel"]["inode"] and u["to"]["inode"] == read[0]["channel"]["inode"]
        assert [p.get("comm") for p in u["processes"]] == ["pv", "wc"]  # the caller, and the reader of its output
    assert {c for r in read for c in r["consumed"]} == {"unknown"}  # no traced write put those bytes there


@traced
def test_io_uring_of_fio_shows_as_opaque(tmp_path: Path) -> None:
    if shutil.which("fio") is None:
        pytest.skip("fio is not installed (scripts/setup.sh installs it)")
    disabled = Path("/proc/sys/kernel/io_uring_disabled")
    if disabled.exists() and disabled.read_text().strip() == "2":
        pytest.skip("io_uring is disabled on this kernel (kernel.io_uring_disabled = 2)")
    job = ["fio", "--name=ring", "--ioengine=io_uring", "--rw=read", "--size=64k", f"--filename={tmp_path / 'f'}"]
    proc, records = run_trace(["--", *job, "--output-format=terse"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rings = opaque(records, "io_uring")
    assert rings and all(r["syscall"] == "io_uring_setup" and r["process"]["comm"] == "fio" for r in rings)
    assert all(r["channel"]["kind"] == "io_uring" and r["channel"]["inode"] > 0 for r in rings)


def test_the_aarch64_syscall_table_compiles(tmp_path: Path) -> None:
    """aarch64 lacks some x86_64 syscalls (pipe, dup2, accept): the table must still build there."""
    cc = shutil.which("aarch64-linux-gnu-gcc")
    if cc is None:
        pytest.skip("no aarch64 cross compiler (scripts/setup.sh installs gcc-aarch64-linux-gnu)")
    import sysconfig

    include = Path(sysconfig.get_paths()["include"])
    # Python's pyconfig.h picks a per-architecture header; the host's serves a syntax check
    host = next(include.parent.parent.glob(f"*/{include.name}/pyconfig.h"), include / "pyconfig.h")
    cross = tmp_path / "aarch64-linux-gnu" / include.name
    cross.mkdir(parents=True)
    (cross / "pyconfig.h").write_text(textwrap.dedent(f'#include "{host}"\n'))
    source = ROOT / "src" / "ipcproxy" / "syscall" / "_tracer.c"
    proc = subprocess.run(
        [cc, "-fsyntax-only", "-Wall", "-Werror", f"-I{tmp_path}", f"-I{include}", str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
