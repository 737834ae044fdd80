"""`ipcproxy trace` call by call: every data syscall and channel call it decodes, on real calls.

The data calls (write/writev/pwritev2, read/readv/preadv2, sendto/recvfrom,
sendmsg/recvmsg with SCM_RIGHTS, sendmmsg/recvmmsg through the C library,
the positional calls the kernel refuses on a pipe or socket), the calls that
make and move channels (socketpair, socket/bind/connect/accept4), peers
outside the traced tree, and many processes on one pipe.
"""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import read_trace, trace_unavailable
from test_syscall_trace import IPCPROXY, TIMEOUT, by_seq, data, events, read, run_trace, wait_for_file

_REASON = trace_unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

PY = "/usr/bin/python3"  # a program of the system's, not the test's virtual environment


def payload(record: dict[str, Any]) -> bytes:
    return bytes.fromhex(record["payload"])


def by_payload(records: list[dict[str, Any]], direction: str) -> dict[bytes, dict[str, Any]]:
    return {payload(r): r for r in data(records, direction=direction)}


CALLS = textwrap.dedent(
    """
    import ctypes, errno, os, socket, sys
    libc = ctypes.CDLL(None, use_errno=True)
    out = []

    def refused(call, *args):  # the positional calls: a pipe, a FIFO and a socket have no offset
        try:
            call(*args)
        except OSError as e:
            out.append(errno.errorcode[e.errno])

    r, w = os.pipe2(0)
    os.writev(w, [b"vec-", b"tor"])
    a, b = bytearray(4), bytearray(3)
    os.readv(r, [a, b])
    os.pwritev(w, [b"at-", b"offset-minus-1"], -1)  # pwritev2 at the current position: fine on a pipe
    os.preadv(r, [bytearray(17)], -1)
    refused(os.pwrite, w, b"x", 0)
    refused(os.pread, r, 1, 0)

    fifo = sys.argv[1]
    os.mkfifo(fifo)
    fr = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fw = os.open(fifo, os.O_WRONLY)
    os.write(fw, b"fifo-bytes")
    os.read(fr, 100)
    refused(os.pread, fr, 1, 0)

    s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s1.send(b"seqpacket-send")  # send() is sendto() without an address
    s2.recv(100)
    socket.send_fds(s1, [b"with-an-fd"], [r])
    msg, fds, _, _ = socket.recv_fds(s2, 100, 4)
    os.pwritev(s1.fileno(), [b"pwritev2-on-a-socket"], -1)
    s2.recv(100)
    refused(os.pwrite, s1.fileno(), b"x", 0)
    refused(os.pread, s2.fileno(), 1, 0)

    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    class msghdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(iovec)),
                    ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]

    class mmsghdr(ctypes.Structure):
        _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]

    def vector(buffers):
        iovs = (iovec * len(buffers))(*[iovec(ctypes.cast(b, ctypes.c_void_p), len(b)) for b in buffers])
        msgs = (mmsghdr * len(buffers))()
        for i in range(len(buffers)):
            msgs[i].hdr.iov = ctypes.pointer(iovs[i])
            msgs[i].hdr.iovlen = 1
        return msgs, iovs

    d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sent = [ctypes.create_string_buffer(p, len(p)) for p in (b"mmsg-one", b"mmsg-two!", b"mmsg-three")]
    msgs, keep = vector(sent)
    assert libc.sendmmsg(d1.fileno(), msgs, 3, 0) == 3, ctypes.get_errno()
    got = [ctypes.create_string_buffer(64) for _ in range(3)]
    rmsgs, rkeep = vector(got)
    assert libc.recvmmsg(d2.fileno(), rmsgs, 3, 0, None) == 3, ctypes.get_errno()
    out.append(b",".join(got[i].raw[: rmsgs[i].len] for i in range(3)).decode())

    u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u1.bind(("127.0.0.1", 0))
    u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u2.bind(("127.0.0.1", 0))
    u1.sendto(b"udp-datagram", u2.getsockname())
    u2.recvfrom(100)
    print(" ".join(out), u1.getsockname()[1], u2.getsockname()[1])
    """
)


def test_every_data_call_is_decoded(tmp_path: Path) -> None:
    proc, records = run_trace(["--", PY, "-c", CALLS, str(tmp_path / "fifo")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    *refusals, mmsg, port1, port2 = proc.stdout.split()
    assert refusals == ["ESPIPE"] * 5  # what the kernel allows: no offset on a pipe, FIFO or socket
    assert mmsg == "mmsg-one,mmsg-two!,mmsg-three"
    sent, received = by_payload(records, "send"), by_payload(records, "recv")
    expected = {
        b"vec-tor": ("writev", "readv", "pipe"),
        b"at-offset-minus-1": ("pwritev2", "preadv2", "pipe"),
        b"fifo-bytes": ("write", "read", "fifo"),
        b"seqpacket-send": ("sendto", "recvfrom", "unix"),
        b"with-an-fd": ("sendmsg", "recvmsg", "unix"),
        b"pwritev2-on-a-socket": ("pwritev2", "recvfrom", "unix"),
        b"mmsg-one": ("sendmmsg", "recvmmsg", "unix"),
        b"mmsg-two!": ("sendmmsg", "recvmmsg", "unix"),
        b"mmsg-three": ("sendmmsg", "recvmmsg", "unix"),
        b"udp-datagram": ("sendto", "recvfrom", "udp"),
    }
    for message, (send_call, recv_call, transport) in expected.items():
        send, recv = sent[message], received[message]
        assert (send["syscall"], recv["syscall"]) == (send_call, recv_call), message
        assert send["transport"] == recv["transport"] == transport, message
        assert recv["consumed"] == [send["seq"]], message
        assert send["size"] == recv["size"] == len(message)
    assert not [r for r in data(records) if r["syscall"] in ("pread64", "pwrite64")]  # they failed: no message
    assert sent[b"with-an-fd"]["fds"] == received[b"with-an-fd"]["fds"] == 1
    assert {sent[m]["channel"]["socktype"] for m in (b"seqpacket-send", b"with-an-fd")} == {"seqpacket"}
    assert sent[b"mmsg-one"]["channel"]["socktype"] == "dgram"
    assert sent[b"fifo-bytes"]["channel"]["path"] == str(tmp_path / "fifo")
    # an unconnected datagram names the other end's address: where it went, where it came from
    udp_send, udp_recv = sent[b"udp-datagram"], received[b"udp-datagram"]
    assert udp_send["address"] == f"127.0.0.1:{port2}" and udp_recv["address"] == f"127.0.0.1:{port1}"
    assert udp_recv["channel"]["local"] == f"127.0.0.1:{port2}"
    assert "address" not in sent[b"vec-tor"] and "address" not in sent[b"mmsg-one"]


SOCKETS = textwrap.dedent(
    """
    import os, socket, sys
    path = sys.argv[1]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # socket, bind, listen
    server.bind(path)
    server.listen(1)
    if os.fork() == 0:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        client.sendall(b"request from the client")
        assert client.recv(100) == b"reply from the server"
        os._exit(0)
    conn, _ = server.accept()  # accept4
    assert conn.recv(100) == b"request from the client"
    conn.sendall(b"reply from the server")
    os.wait()
    # a datagram to a bound path, from an unbound socket
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(path + ".d")
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"to-a-path", path + ".d")
    dgram.recvfrom(100)
    """
)


def test_socket_bind_connect_accept_name_both_ends(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    proc, records = run_trace(["--", PY, "-c", SOCKETS, path], tmp_path)
    assert proc.returncode == 0, proc.stderr
    sent, received = by_payload(records, "send"), by_payload(records, "recv")
    request, reply = b"request from the client", b"reply from the server"
    client, server = sent[request]["pid"], sent[reply]["pid"]
    assert client != server
    for message, writer, reader in ((request, client, server), (reply, server, client)):
        send, recv = sent[message], received[message]
        assert recv["consumed"] == [send["seq"]]
        assert recv["sender"]["pid"] == writer and recv["destination"]["pid"] == reader
        assert send["channel"]["path"] == recv["channel"]["path"] == path
        assert recv["channel"]["peer"] == send["channel"]["inode"]
    datagram = sent[b"to-a-path"]
    assert datagram["address"] == path + ".d" and datagram["transport"] == "unix"
    assert received[b"to-a-path"]["consumed"] == [datagram["seq"]]


# ---------------------------------------------------------------- peers outside the traced tree


def start_outside(argv: list[str], sock: Path) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + TIMEOUT
    while not sock.exists():
        assert server.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return server


def test_a_server_outside_the_tree_is_named(tmp_path: Path) -> None:
    sock = tmp_path / "outside.sock"
    server = start_outside(["socat", f"UNIX-LISTEN:{sock},fork", "EXEC:tr a-z A-Z"], sock)
    try:
        proc, records = run_trace(["--", "sh", "-c", f"echo hello | socat - UNIX-CONNECT:{sock}"], tmp_path)
    finally:
        server.terminate()
        server.wait(TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "HELLO\n"
    sent, received = by_payload(records, "send"), by_payload(records, "recv")
    request, reply = sent[b"hello\n"], received[b"HELLO\n"]
    assert request["channel"]["path"] == str(sock) and request["transport"] == "unix"
    # the listening socat, by the socket's peer credentials; none of its bytes came from a traced write
    for peer in (request["destination"], reply["sender"]):
        assert peer["pid"] == server.pid and peer["exe"] == "/usr/bin/socat"
    assert reply["consumed"] == ["unknown"]


def test_a_client_outside_the_tree_is_named_by_the_traced_server(tmp_path: Path) -> None:
    sock = tmp_path / "traced.sock"
    trace = tmp_path / "trace.jsonl"
    tracer = subprocess.Popen(
        [*IPCPROXY, "trace", "-q", "-w", str(trace), "--", "socat", f"UNIX-LISTEN:{sock}", "EXEC:tr a-z A-Z"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_file(sock, tracer)
        client = subprocess.run(  # stays connected a while, so its /proc entry is there to name it
            f"(printf 'hello\\n'; sleep 1) | socat - UNIX-CONNECT:{sock}",
            shell=True,
            capture_output=True,
            timeout=TIMEOUT,
        )
        assert client.stdout == b"HELLO\n", client.stderr
    finally:
        _, err = tracer.communicate(timeout=TIMEOUT)
    assert tracer.returncode == 0, err
    records = read_trace(trace)
    on_socket = [r for r in data(records, transport="unix") if r["channel"].get("path") == str(sock)]
    (request,) = [r for r in on_socket if payload(r) == b"hello\n"]
    (reply,) = [r for r in on_socket if payload(r) == b"HELLO\n"]
    assert request["direction"] == "recv" and reply["direction"] == "send"
    for peer in (request["sender"], reply["destination"]):  # the client, outside, by its credentials
        assert peer["exe"] == "/usr/bin/socat" and peer["pid"] != request["pid"]
        assert peer["pid"] == request["channel"]["peer_pid"]
    assert request["consumed"] == ["unknown"]


# ---------------------------------------------------------------- many processes on one pipe

STORM = textwrap.dedent(
    """
    import os
    go_r, go_w = os.pipe()
    r, w = os.pipe()
    kids = []
    for i in range(1000):
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            os.read(go_r, 1)  # every child alive at once, waiting
            os.write(w, b"%05d\\n" % i)
            os._exit(0)
        kids.append(pid)
    os.close(w)
    os.close(go_r)
    os.close(go_w)  # end of file: they all write at once
    got = b""
    while chunk := os.read(r, 65536):
        got += chunk
    for pid in kids:
        os.waitpid(pid, 0)
    print(len(set(got.split())))
    """
)


def assert_reads_match_the_writes_they_name(records: list[dict[str, Any]]) -> int:
    """Every read whose writes are named holds those writes' bytes, in order: attribution never guesses.
    Returns how many reads were attributed."""
    seqs = by_seq(records)
    known = 0
    for read_ in data(records, direction="recv"):
        if "unknown" in read_["consumed"]:
            continue
        known += 1
        written = b"".join(payload(seqs[s]) for s in read_["consumed"])
        assert payload(read_) in written, (read_["seq"], read_["consumed"])
    return known


def test_a_thousand_writers_at_once_on_one_pipe_are_never_misattributed(tmp_path: Path) -> None:
    proc, records = run_trace(["--", PY, "-c", STORM], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "1000\n"
    writes = [r for r in data(records, direction="send") if r["size"] == 6]
    assert len({payload(r) for r in writes}) == 1000
    reads = data(records, direction="recv")
    assert sum(r["size"] for r in reads) == 6000
    assert_reads_match_the_writes_they_name(records)
    assert len(events(records, "exit")) == 1001


def test_several_writers_and_readers_share_a_pipeline(tmp_path: Path) -> None:
    script = (
        "(seq 1 20000 & seq 100001 120000 & seq 200001 220000 & wait) | "
        "(cat <&3 > /dev/null & cat <&3 > /dev/null & head -c 50000 <&3 > /dev/null; wait) 3<&0"
    )  # fd 3: a shell gives its background jobs /dev/null as stdin
    proc, records = run_trace(["--max-payload", "65536", "--", "sh", "-c", script], tmp_path)
    assert proc.returncode == 0, proc.stderr
    writes = [r for r in data(records, direction="send") if r["sender"]["comm"] == "seq"]
    numbers = [*range(1, 20001), *range(100001, 120001), *range(200001, 220001)]
    assert sum(r["size"] for r in writes) == sum(len(f"{i}\n") for i in numbers)
    assert sum(
        r["size"] for r in data(records, direction="recv") if r["channel"]["inode"] == writes[0]["channel"]["inode"]
    ) == sum(r["size"] for r in writes)
    assert assert_reads_match_the_writes_they_name(records) > 0


def test_thousands_of_children_one_after_another(tmp_path: Path) -> None:
    program = textwrap.dedent(
        """
        import os
        r, w = os.pipe()
        running = []
        for i in range(2000):
            pid = os.fork()
            if pid == 0:
                os.write(w, b"%05d\\n" % i)
                os._exit(i % 7)
            running.append(pid)
            if len(running) >= 50:
                os.waitpid(running.pop(0), 0)
        for pid in running:
            os.waitpid(pid, 0)
        os.close(w)
        got = b""
        while chunk := os.read(r, 65536):
            got += chunk
        print(len(got.split()))
        """
    )
    proc, records = run_trace(["--", PY, "-c", program], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "2000\n"
    assert len([r for r in data(records, direction="send") if r["size"] == 6]) == 2000  # not the print
    statuses = [e["status"] for e in events(records, "exit")]
    assert len(statuses) == 2001 and statuses.count("6") == 2000 // 7


# ---------------------------------------------------------------- stopped in the middle


def test_sigterm_in_the_middle_of_heavy_traffic_leaves_a_valid_trace(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    tracer = subprocess.Popen(
        [*IPCPROXY, "trace", "-q", "-w", str(trace), "--kill-on-exit", "--", "sh", "-c", "yes | cat > /dev/null"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + TIMEOUT
    while len(data(read(tmp_path), direction="recv")) < 200:
        assert tracer.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    tracer.send_signal(signal.SIGTERM)
    _, err = tracer.communicate(timeout=TIMEOUT)
    assert tracer.returncode == 128 + signal.SIGKILL, err
    text = trace.read_text()
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]  # every line whole
    records = read_trace(trace)  # and a trace every tool reads, header first
    assert len(records) == len(lines) - 1
    assert records[-1]["event"] == "trace_stop" and records[-1]["reason"] == "signal SIGTERM"
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    recorded = set(seqs)
    for read_ in data(records, direction="recv"):  # every write a read names is in the trace
        assert all(s == "unknown" or s in recorded for s in read_["consumed"])
    assert_reads_match_the_writes_they_name(records)
