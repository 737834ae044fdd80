"""`ipcproxy trace` on real programs nobody here wrote: coreutils, socat, Python's multiprocessing.

Each test runs the real command line in a process of its own (the tracer
waits for every child of its process, so it must not share one with pytest)
and reads the trace it wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import run_trace, trace_unavailable

IPCPROXY = [sys.executable, "-m", "ipcproxy"]
TIMEOUT = 120


_REASON = trace_unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def data(records: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    out = [r for r in records if r.get("type") == "data"]
    for key, value in match.items():
        out = [r for r in out if r.get(key) == value]
    return out


def events(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == "event" and r.get("event") == name]


def by_seq(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {r["seq"]: r for r in records if "seq" in r}


def comm(ep: dict[str, Any]) -> str | None:
    return ep.get("comm")


@pytest.fixture
def sock_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


# ---------------------------------------------------------------- pipes


def test_coreutils_pipeline_every_byte_attributed(tmp_path: Path) -> None:
    proc, records = run_trace(["--", "sh", "-c", "seq 1000 | sort -rn | head -5"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1000", "999", "998", "997", "996"]
    seqs = by_seq(records)
    written = [r for r in data(records, direction="send") if comm(r["sender"]) == "seq"]
    assert written and sum(r["size"] for r in written) == len("".join(f"{i}\n" for i in range(1, 1001)))
    reads = [r for r in data(records, direction="recv") if comm(r["destination"]) == "sort"]
    consumed = {seq for r in reads for seq in r["consumed"]}
    assert "unknown" not in consumed
    assert consumed == {r["seq"] for r in written}  # every write of seq was read by sort, and nothing else
    assert sum(r["size"] for r in reads) == sum(r["size"] for r in written)
    for r in reads:
        assert comm(r["sender"]) == "seq" and r["sender"]["exe"].endswith("/seq")
        assert r["transport"] == "pipe" and r["channel"]["kind"] == "pipe"
        assert all(seqs[s]["channel"]["inode"] == r["channel"]["inode"] for s in r["consumed"])
    assert bytes.fromhex(written[0]["payload"]).startswith(b"1\n2\n3\n")
    stop = events(records, "trace_stop")
    assert stop and stop[0]["reason"] == "done" and stop[0]["status"] == "0"


def test_max_payload_cuts_the_payload_not_the_size(tmp_path: Path) -> None:
    proc, records = run_trace(["--max-payload", "8", "--", "sh", "-c", "seq 100 | cat > /dev/null"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (write,) = [r for r in data(records, direction="send") if comm(r["sender"]) == "seq"]
    assert write["size"] == 292 and write["payload"] == b"1\n2\n3\n4\n".hex() and write["truncated"] is True


def test_an_fd_number_reused_for_a_pipe_is_recorded_and_files_are_not(tmp_path: Path) -> None:
    # fd numbers move between files and pipes (close then pipe, dup2 onto them): what an fd is
    # must follow, or a pipe on a number once used by a file would go unrecorded
    script = textwrap.dedent(
        """
        import os
        f = os.open("/etc/passwd", os.O_RDONLY)
        os.read(f, 64)
        os.close(f)
        r, w = os.pipe()  # r takes f's number
        assert r == f
        os.write(w, b"through-a-pipe")
        assert os.read(r, 100) == b"through-a-pipe"
        g = os.open("/etc/passwd", os.O_RDONLY)
        os.dup2(g, w)  # w is a file now
        os.read(w, 10)
        r2, w2 = os.pipe()
        os.dup2(w2, g)  # g, a file until now, is a pipe's write end
        os.write(g, b"after-dup2")
        assert os.read(r2, 100) == b"after-dup2"
        """
    )
    proc, records = run_trace(["--", sys.executable, "-c", script], tmp_path)
    assert proc.returncode == 0, proc.stderr
    sent = {bytes.fromhex(r["payload"]): r for r in data(records, direction="send")}
    received = {bytes.fromhex(r["payload"]): r for r in data(records, direction="recv")}
    for payload in (b"through-a-pipe", b"after-dup2"):
        assert sent[payload]["transport"] == "pipe"
        assert received[payload]["consumed"] == [sent[payload]["seq"]]
    assert all(r["transport"] == "pipe" for r in data(records))
    assert not [r for r in data(records) if b"root:" in bytes.fromhex(r["payload"])]  # file reads are not IPC


def test_show_and_stats_print_data_records(tmp_path: Path) -> None:
    proc, _ = run_trace(["--", "sh", "-c", "echo hello | cat > /dev/null"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    trace = str(tmp_path / "trace.jsonl")
    shown = subprocess.run([*IPCPROXY, "show", trace], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if "pipe recv" in line)
    assert "-> cat(" in line and "read fd=0 6 B pipe:[" in line and "consumed=#" in line
    assert "'hello\\n'" in shown.stdout
    stats = subprocess.run([*IPCPROXY, "stats", "--json", trace], capture_output=True, text=True, timeout=60)
    assert stats.returncode == 0, stats.stderr
    pairs = json.loads(stats.stdout)["pairs"]
    echo = next(p for p in pairs if p["destination"].endswith("/cat"))
    assert echo["data"] == 1 and echo["bytes"] == 6


def test_many_children_do_not_hang_the_tracer(tmp_path: Path) -> None:
    script = "for i in $(seq 150); do echo $i | cat > /dev/null & done; wait"
    proc, records = run_trace(["--", "sh", "-c", script], tmp_path)
    assert proc.returncode == 0, proc.stderr
    reads = [r for r in data(records, direction="recv") if comm(r["destination"]) == "cat"]
    assert len(reads) == 150
    assert all(r["consumed"] != ["unknown"] for r in reads)
    assert len(events(records, "exit")) >= 300  # every cat and every subshell that ran echo


# ---------------------------------------------------------------- sockets


def wait_for_socket(path: Path) -> str:
    return f"while [ ! -S {path} ]; do sleep 0.05; done"


def test_unix_socket_server_and_client_with_socat(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    script = (
        f'socat UNIX-LISTEN:{sock},fork EXEC:"tr a-z A-Z" & {wait_for_socket(sock)}; '
        f"echo hello | socat - UNIX-CONNECT:{sock}; kill $!"
    )
    proc, records = run_trace(["--", "sh", "-c", script], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "HELLO\n"
    on_path = [r for r in data(records, transport="unix") if r["channel"].get("path") == str(sock)]
    hello = [r for r in on_path if bytes.fromhex(r["payload"]) == b"hello\n"]
    upper = [r for r in on_path if bytes.fromhex(r["payload"]) == b"HELLO\n"]
    for pair in (hello, upper):
        send, recv = sorted(pair, key=lambda r: r["direction"] != "send")
        assert send["direction"] == "send" and recv["direction"] == "recv"
        assert recv["consumed"] == [send["seq"]]
        assert comm(send["sender"]) == comm(recv["sender"]) == comm(recv["destination"]) == "socat"
        assert recv["sender"]["pid"] != recv["destination"]["pid"]
        assert recv["channel"]["peer"] == send["channel"]["inode"]  # known once accepted
        assert recv["channel"]["socktype"] == "stream"
    # tr, behind the server, read hello over socat's socketpair and wrote HELLO back
    (tr_read,) = [r for r in data(records, direction="recv") if comm(r["destination"]) == "tr"]
    assert bytes.fromhex(tr_read["payload"]) == b"hello\n" and "unknown" not in tr_read["consumed"]


def test_tcp_on_loopback_with_socat(tmp_path: Path) -> None:
    port = 40000 + os.getpid() % 20000
    script = (
        f'socat TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr EXEC:"tr a-z A-Z" & '
        f"while ! grep -qi ':{port:04X} 00000000:0000 0A' /proc/net/tcp; do sleep 0.05; done; "
        f"echo hello | socat - TCP:127.0.0.1:{port}"
    )
    proc, records = run_trace(["--", "sh", "-c", script], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "HELLO\n"
    tcp = data(records, transport="tcp")
    recvs = [r for r in tcp if r["direction"] == "recv"]
    assert {bytes.fromhex(r["payload"]) for r in recvs} == {b"hello\n", b"HELLO\n"}
    seqs = by_seq(records)
    for r in recvs:
        (write,) = [seqs[s] for s in r["consumed"]]
        assert write["payload"] == r["payload"]
        assert (
            r["channel"]["local"] == write["channel"]["remote"] and r["channel"]["remote"] == write["channel"]["local"]
        )
        assert f"127.0.0.1:{port}" in (r["channel"]["local"], r["channel"]["remote"])


def test_multiprocessing_pipe_between_parent_and_child(tmp_path: Path) -> None:
    program = textwrap.dedent(
        """
        import multiprocessing as mp
        def child(conn):
            conn.send(conn.recv().upper())
        if __name__ == "__main__":
            mp.set_start_method("fork")
            a, b = mp.Pipe()
            p = mp.Process(target=child, args=(b,))
            p.start()
            a.send("ping from parent")
            print(a.recv())
            p.join()
        """
    )
    proc, records = run_trace(["--", sys.executable, "-c", program], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "PING FROM PARENT\n"
    pair = [r for r in data(records, transport="unix") if r["channel"].get("socktype") == "stream"]
    sends = [r for r in pair if r["direction"] == "send"]
    assert len(sends) == 2
    parent, child = sends[0]["sender"]["pid"], sends[1]["sender"]["pid"]
    assert parent != child
    for send in sends:
        reads = [r for r in pair if r["direction"] == "recv" and send["seq"] in r["consumed"]]
        assert sum(r["size"] for r in reads) == send["size"]  # a 4-byte length, then the pickle
        assert {r["destination"]["pid"] for r in reads} == {child if send["sender"]["pid"] == parent else parent}


# ---------------------------------------------------------------- hard cases


def test_threads_writing_one_socketpair(tmp_path: Path) -> None:
    program = textwrap.dedent(
        """
        import socket, threading
        a, b = socket.socketpair()
        def talk(n):
            for i in range(25):
                a.sendall(b"%02d:%02d;" % (n, i))
        threads = [threading.Thread(target=talk, args=(n,)) for n in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        a.close()
        got = b""
        while chunk := b.recv(65536):
            got += chunk
        print(len(got))
        """
    )
    proc, records = run_trace(["--", sys.executable, "-c", program], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "600\n"
    sends = [r for r in data(records, transport="unix", direction="send") if r["size"] == 6]
    assert len(sends) == 100 and len({r["tid"] for r in sends}) >= 2
    recvs = data(records, transport="unix", direction="recv")
    assert sum(r["size"] for r in recvs) == 600
    known = {s for r in recvs for s in r["consumed"] if s != "unknown"}
    assert known <= {r["seq"] for r in sends}


def test_a_crashing_child_is_recorded_and_the_rest_goes_on(tmp_path: Path) -> None:
    script = f"{sys.executable} -c 'import os, signal; os.kill(os.getpid(), signal.SIGSEGV)'; echo after | cat"
    proc, records = run_trace(["--", "sh", "-c", script], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "after\n"
    assert "SIGSEGV" in {e["status"] for e in events(records, "exit")}
    assert any(bytes.fromhex(r["payload"]) == b"after\n" for r in data(records, direction="recv"))


def test_exit_status_of_a_command_killed_by_a_signal(tmp_path: Path) -> None:
    proc, records = run_trace(["--", "sh", "-c", "echo x | cat; kill -9 $$"], tmp_path)
    assert proc.returncode == 128 + 9
    assert events(records, "trace_stop")[0]["status"] == "SIGKILL"


def test_a_setuid_program_runs_under_the_tracer(tmp_path: Path) -> None:
    setuid = next((p for p in ("/usr/bin/passwd", "/usr/bin/chsh", "/usr/bin/newgrp") if Path(p).exists()), None)
    if setuid is None or not os.stat(setuid).st_mode & 0o4000:
        pytest.skip("no setuid program on this machine")
    proc, records = run_trace(["--", "sh", "-c", f"{setuid} --help | head -1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert any(comm(r["destination"]) == "head" for r in data(records, direction="recv"))


def test_a_32_bit_program_is_not_killed_by_the_filter(tmp_path: Path) -> None:
    cc = shutil.which("i686-linux-gnu-gcc")
    if cc is None:
        pytest.skip("no 32-bit compiler (gcc-i686-linux-gnu)")
    source = tmp_path / "m32.c"
    source.write_text('#include <unistd.h>\nint main(void) { write(1, "32-bit\\n", 7); return 3; }\n')
    binary = tmp_path / "m32"
    subprocess.run([cc, "-static", "-o", str(binary), str(source)], check=True, timeout=120)
    if subprocess.run([str(binary)], capture_output=True).returncode != 3:
        pytest.skip("this kernel does not run 32-bit programs")
    proc, records = run_trace(["--", "sh", "-c", f"{binary} | cat"], tmp_path)
    assert proc.stdout == "32-bit\n"  # its write ran untraced: the filter lets a foreign architecture through
    assert proc.returncode == 0, proc.stderr
    assert "3" in {e["status"] for e in events(records, "exit")}


def start_traced(tmp_path: Path, script: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*IPCPROXY, "trace", "-q", "-w", str(tmp_path / "trace.jsonl"), *extra, "--", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_file(path: Path, proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_sigterm_finishes_the_trace_and_lets_the_programs_run_on(tmp_path: Path) -> None:
    started, done, go = tmp_path / "started", tmp_path / "done", tmp_path / "go"
    script = f"echo one | cat > {started}; while [ ! -e {go} ]; do sleep 0.05; done; echo two | cat > {done}"
    proc = start_traced(tmp_path, script)
    wait_for_file(started, proc)
    proc.send_signal(signal.SIGTERM)
    records = wait_for_trace_stop(tmp_path, proc)
    go.touch()
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0
    assert done.read_text() == "two\n"  # still ran, with its IPC unrecorded
    (stop,) = events(records, "trace_stop")
    assert stop["reason"] == "signal SIGTERM" and records[-1] == stop
    assert any(bytes.fromhex(r["payload"]) == b"one\n" for r in data(records))
    assert records == read(tmp_path)  # nothing was written after the stop


def test_kill_on_exit_ends_the_programs(tmp_path: Path) -> None:
    started = tmp_path / "started"
    proc = start_traced(tmp_path, f"echo one | cat > {started}; sleep 600", "--kill-on-exit")
    wait_for_file(started, proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + signal.SIGKILL
    records = read(tmp_path)
    assert events(records, "trace_stop")[0]["reason"] == "signal SIGINT"


def test_records_reach_the_file_while_the_programs_run_on(tmp_path: Path) -> None:
    proc = start_traced(tmp_path, "echo hi | cat; sleep 600", "--kill-on-exit")
    try:
        deadline = time.monotonic() + TIMEOUT
        while not any(r.get("direction") == "recv" for r in read(tmp_path)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=TIMEOUT)


def read(tmp_path: Path) -> list[dict[str, Any]]:
    """The trace's complete lines so far (none before the tracer created it)."""
    path = tmp_path / "trace.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def wait_for_trace_stop(tmp_path: Path, proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        records = read(tmp_path)
        if events(records, "trace_stop"):
            return records
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)


# ---------------------------------------------------------------- -p: attaching to a running process

TICKER = textwrap.dedent(
    """
    import os, sys, time
    out, stop = sys.argv[1], sys.argv[2]
    r, w = os.pipe()
    if os.fork() == 0:  # the reader: appends what it reads to a file
        os.close(w)
        with open(out, "ab", buffering=0) as f:
            while chunk := os.read(r, 4096):
                f.write(chunk)
        os._exit(0)
    os.close(r)
    n = 0
    while not os.path.exists(stop):
        os.write(w, b"tick %d\\n" % n)
        n += 1
        time.sleep(0.02)
    os.close(w)
    os.wait()
    """
)


def test_attach_to_a_running_process_and_let_it_go(tmp_path: Path) -> None:
    out, stop = tmp_path / "ticks", tmp_path / "stop"
    program = subprocess.Popen([sys.executable, "-c", TICKER, str(out), str(stop)])
    try:
        wait_for_file(out, program)
        tracer = subprocess.Popen(
            [*IPCPROXY, "trace", "-q", "-w", str(tmp_path / "trace.jsonl"), "-p", str(program.pid)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + TIMEOUT
        while len(data(read(tmp_path), direction="send")) < 3:
            assert tracer.poll() is None, tracer.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        tracer.send_signal(signal.SIGTERM)
        _, err = tracer.communicate(timeout=TIMEOUT)
        assert tracer.returncode == 0, err
        records = read(tmp_path)
        assert events(records, "trace_start")[0]["attached"] == program.pid
        assert events(records, "trace_stop")[0]["reason"] == "signal SIGTERM"
        sends = data(records, direction="send")
        assert all(r["sender"]["pid"] == program.pid and r["transport"] == "pipe" for r in sends)
        assert all(bytes.fromhex(r["payload"]).startswith(b"tick ") for r in sends)
        # let go, it runs on: its writes still work (no filter was left behind) and reach its reader
        seen = out.read_bytes().count(b"\n")
        while out.read_bytes().count(b"\n") < seen + 3:
            assert program.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        stop.touch()
        program.wait(timeout=TIMEOUT)
    assert program.returncode == 0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the command to run"),
        (["--", "no-such-command-here"], "no-such-command-here: command not found"),
        (["-w", "x.pcap", "--", "true"], "JSON Lines only"),
        (["--max-payload", "lots", "--", "true"], "not a number of bytes"),
        (["-p", "999999999"], "no such process"),
        (["-p", "1", "--", "true"], "not both"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    proc = subprocess.run([*IPCPROXY, "trace", *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
