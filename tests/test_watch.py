"""`ipcproxy watch` on real programs: coreutils, socat, Python's multiprocessing, a private bus with busctl.

The machine is shared (other test runs go on beside this one), so every
watch here selects its workload: the workload starts held on a FIFO, the
watch follows its pid (and the children it starts), and the workload is let
go once the watch has recorded ``watch_start``.
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

from conftest import IPCPROXY, read_trace, wait_for

TIMEOUT = 120


def _watch_works() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loading eBPF programs)"
    from ipcproxy.ebpf import loader

    return loader.missing()


_REASON = _watch_works()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


class Watched:
    """A workload held until a watch of it is ready, the watch, and the trace it wrote."""

    def __init__(self, tmp_path: Path, cmd: list[str], *extra: str, select: bool = True, name: str = "w") -> None:
        self.gate = tmp_path / f"{name}.gate"
        self.trace = tmp_path / f"{name}.jsonl"
        os.mkfifo(self.gate)
        # a session of its own: the whole workload (its pipeline's children too) is ended with its group
        self.workload = subprocess.Popen(
            ["sh", "-c", 'read go < "$0"; exec "$@"', str(self.gate), *cmd], start_new_session=True
        )
        selection = ["--pid", str(self.workload.pid)] if select else []
        self.watch = subprocess.Popen(
            [*IPCPROXY, "watch", "-w", str(self.trace), *selection, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr = ""
        self.status: int | None = None

    def ready(self) -> None:
        def started() -> bool:
            if self.watch.poll() is not None:
                raise AssertionError(f"watch ended early ({self.watch.returncode}): {self.watch.stderr.read()}")  # type: ignore[union-attr]
            return self.trace.exists() and "watch_start" in self.trace.read_text()

        wait_for(started, timeout=60, what="watch_start")

    def release(self) -> None:
        with open(self.gate, "w") as gate:
            gate.write("go\n")

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.watch.poll() is None:
            self.watch.send_signal(sig)
        _, self.stderr = self.watch.communicate(timeout=TIMEOUT)
        self.status = self.watch.returncode
        return self.status

    def run(self, sig: int = signal.SIGINT) -> list[dict[str, Any]]:
        """Released, waited for, the watch stopped: the trace's records."""
        self.ready()
        self.release()
        assert self.workload.wait(timeout=TIMEOUT) == 0
        self.stop(sig)
        return read_trace(self.trace)

    def kill(self) -> None:
        try:
            os.killpg(self.workload.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for proc in (self.workload, self.watch):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Any]:
    yield from watching(tmp_path)


def watching(tmp_path: Path) -> Iterator[Any]:
    """The ``watched`` fixture's body (the other watch test files make theirs of it)."""
    made: list[Watched] = []

    def make(cmd: list[str], *extra: str, **kw: Any) -> Watched:
        w = Watched(tmp_path, cmd, *extra, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.kill()


def data(records: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    out = [r for r in records if r.get("type") == "data"]
    for key, value in match.items():
        out = [r for r in out if r.get(key) == value]
    return out


def by_seq(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {r["seq"]: r for r in records}


def payload(rec: dict[str, Any]) -> bytes:
    return bytes.fromhex(rec["payload"])


def test_a_coreutils_pipeline_names_both_ends(watched: Any) -> None:
    w = watched(["sh", "-c", "seq 1000 | sort -rn | head -3 > /dev/null"])
    records = w.run()
    assert w.status == 128 + signal.SIGINT, w.stderr
    seq_writes = [r for r in data(records, direction="send") if r["sender"].get("comm") == "seq"]
    assert sum(r["size"] for r in seq_writes) == len("".join(f"{i}\n" for i in range(1, 1001)))
    sort_reads = [r for r in data(records, direction="recv") if r["destination"].get("comm") == "sort"]
    assert sort_reads and all(r["sender"].get("comm") == "seq" for r in sort_reads)
    assert sum(r["size"] for r in sort_reads) == sum(r["size"] for r in seq_writes)
    seqs = {r["seq"] for r in seq_writes}
    assert all(set(r["consumed"]) <= seqs for r in sort_reads)
    assert b"".join(payload(r) for r in sort_reads).startswith(b"1\n2\n3\n")
    head_reads = [r for r in data(records, direction="recv") if r["destination"].get("comm") == "head"]
    assert head_reads and head_reads[0]["sender"]["comm"] == "sort"
    assert payload(head_reads[0]).startswith(b"1000\n999\n998\n")
    assert head_reads[0]["sender"]["exe"] == shutil.which("sort")
    assert {r["channel"]["kind"] for r in seq_writes + sort_reads + head_reads} == {"pipe"}
    exits = [r for r in records if r.get("event") == "exit"]
    assert {"seq", "sort", "head"} <= {r["comm"] for r in exits}
    assert records[-1]["event"] == "watch_stop" and records[-1]["lost"] == 0


def test_max_payload_cuts_the_payload_not_the_size(watched: Any) -> None:
    w = watched(["sh", "-c", "seq 1000 | cat > /dev/null"], "--max-payload", "8")
    records = w.run()
    writes = [r for r in data(records, direction="send") if r["sender"].get("comm") == "seq"]
    assert writes and all(len(payload(r)) <= 8 for r in writes)
    assert writes[0]["truncated"] is True and writes[0]["size"] > 8


@pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat")
def test_socat_unix_server_and_client(watched: Any, tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    script = (
        f"socat UNIX-LISTEN:{sock} SYSTEM:'tr a-z A-Z' & "
        f"while [ ! -S {sock} ]; do sleep 0.05; done; "
        f"echo hello | socat - UNIX-CONNECT:{sock} > {tmp_path / 'out'}; wait"
    )
    w = watched(["sh", "-c", script])
    records = w.run()
    assert (tmp_path / "out").read_text() == "HELLO\n"
    unix = data(records, transport="unix")
    # socat hands what it got to tr over a socketpair of its own: the client's send is the one on the path
    sends = [r for r in unix if r["direction"] == "send" and payload(r) == b"hello\n" and r["channel"].get("path")]
    assert len(sends) == 1
    send = sends[0]
    assert send["channel"]["path"] == str(sock) and send["channel"]["socktype"] == "stream"
    # the server's end of the connection has an inode once accepted: the client may send before that
    recvs = [r for r in unix if r["direction"] == "recv" and r["channel"].get("peer") == send["channel"]["inode"]]
    assert len(recvs) == 1
    recv = recvs[0]
    assert recv["consumed"] == [send["seq"]]
    assert recv["sender"]["pid"] == send["pid"]
    assert send["channel"].get("peer") in (None, recv["channel"]["inode"])
    assert send["destination"]["pid"] == recv["pid"]  # the server, by the socket's peer credentials
    answer = [r for r in unix if r["direction"] == "recv" and payload(r) == b"HELLO\n" and r["pid"] == send["pid"]]
    assert answer and answer[0]["pid"] == send["pid"]


def test_python_multiprocessing_pool(watched: Any, tmp_path: Path) -> None:
    script = tmp_path / "pool.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing
            def square(x):
                return x * x
            if __name__ == "__main__":
                with multiprocessing.get_context("fork").Pool(2) as pool:
                    print(sum(pool.map(square, range(50))))
            """
        )
    )
    w = watched([sys.executable, str(script)])
    records = w.run()
    parent = w.workload.pid
    pipes = data(records, transport="pipe")
    to_workers = [
        r for r in pipes if r["direction"] == "recv" and r["sender"].get("pid") == parent and r["pid"] != parent
    ]
    workers = {r["pid"] for r in to_workers}
    assert len(workers) >= 1
    results = [
        r for r in pipes if r["direction"] == "recv" and r["pid"] == parent and r["sender"].get("pid") in workers
    ]
    assert results
    for r in to_workers + results:
        sent = by_seq(records)
        assert all(isinstance(s, int) and sent[s]["pid"] == r["sender"]["pid"] for s in r["consumed"])


def test_fds_passed_are_counted(watched: Any, tmp_path: Path) -> None:
    script = tmp_path / "fds.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, socket
            a, b = socket.socketpair()
            r, w = os.pipe()
            if os.fork() == 0:
                msg, fds, flags, addr = socket.recv_fds(b, 100, 4)
                os._exit(0 if msg == b"two fds" and len(fds) == 2 else 1)
            socket.send_fds(a, [b"two fds"], [r, w])
            _, status = os.wait()
            raise SystemExit(os.waitstatus_to_exitcode(status))
            """
        )
    )
    w = watched([sys.executable, str(script)])
    records = w.run()
    unix = data(records, transport="unix")
    send = [r for r in unix if r["direction"] == "send" and payload(r) == b"two fds"]
    recv = [r for r in unix if r["direction"] == "recv" and payload(r) == b"two fds"]
    assert len(send) == 1 and len(recv) == 1
    assert send[0]["fds"] == 2 and recv[0]["fds"] == 2
    assert send[0]["syscall"] == "sendmsg" and recv[0]["syscall"] == "recvmsg"
    assert recv[0]["sender"]["pid"] == send[0]["pid"] != recv[0]["pid"]
    assert send[0]["channel"]["socktype"] == "stream" and send[0]["channel"]["peer"] == recv[0]["channel"]["inode"]


def test_tcp_and_udp_on_loopback(watched: Any, tmp_path: Path) -> None:
    script = tmp_path / "net.py"
    script.write_text(
        textwrap.dedent(
            """
            import socket
            srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
            c = socket.create_connection(srv.getsockname()); s, _ = srv.accept()
            c.sendall(b"over tcp"); assert s.recv(100) == b"over tcp"
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
            v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            v.sendto(b"over udp", u.getsockname()); assert u.recvfrom(100)[0] == b"over udp"
            """
        )
    )
    w = watched([sys.executable, str(script)])
    records = w.run()
    tcp = data(records, transport="tcp")
    assert {payload(r) for r in tcp} == {b"over tcp"} and len(tcp) == 2
    send, recv = sorted(tcp, key=lambda r: r["direction"] != "send")
    assert send["channel"]["remote"] == recv["channel"]["local"].replace("0.0.0.0", "127.0.0.1")
    assert recv["consumed"] == [send["seq"]]
    udp = data(records, transport="udp")
    assert {payload(r) for r in udp} == {b"over udp"} and len(udp) == 2
    udp_recv = [r for r in udp if r["direction"] == "recv"][0]
    assert udp_recv["consumed"] == [[r for r in udp if r["direction"] == "send"][0]["seq"]]


def test_transport_and_comm_select(watched: Any) -> None:
    w = watched(["sh", "-c", "seq 100 | cat > /dev/null"], "--transport", "unix", name="unix")
    records = w.run()
    assert data(records) == []
    w2 = watched(["sh", "-c", "seq 100 | cat > /dev/null; seq 5 | tr 1 x > /dev/null"], "--comm", "tr", name="comm")
    records = w2.run()
    assert data(records) and {r["pid"] for r in data(records)} == {
        r["pid"] for r in data(records) if r["destination"].get("comm") == "tr" or r["sender"].get("comm") == "tr"
    }
    assert all(r["destination"].get("comm") == "tr" for r in data(records, direction="recv"))


def test_cgroup_selects_its_processes(watched: Any, tmp_path: Path) -> None:
    root = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
    if not os.path.exists(os.path.join(root, "cgroup.procs")):
        pytest.skip("no writable cgroup v2 hierarchy")
    group = Path(root) / f"ipcproxy-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup: {exc}")
    try:
        cmd = ["sh", "-c", f"echo $$ > {group}/cgroup.procs; seq 20 | cat > /dev/null"]
        w = watched(cmd, "--cgroup", str(group), select=False)
        records = w.run()
        pids = {r["pid"] for r in data(records)}
        assert pids and all(r["sender"].get("comm") in ("seq", None) for r in data(records, direction="send"))
        assert {r["destination"].get("comm") for r in data(records, direction="recv")} == {"cat"}
    finally:
        wait_for(lambda: not (group / "cgroup.procs").read_text().strip(), timeout=30, what="an empty cgroup")
        group.rmdir()


def test_thousands_of_processes_each_named(watched: Any) -> None:
    n = 1500
    w = watched(["sh", "-c", f"i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo $i | cat > /dev/null; done"])
    records = w.run()
    assert records[-1]["lost"] == 0
    reads = [r for r in data(records, direction="recv") if r["destination"].get("comm") == "cat"]
    assert len(reads) == n
    seqs = by_seq(records)
    got = set()
    for r in reads:
        (write,) = r["consumed"]
        assert payload(seqs[write]) == payload(r)
        assert r["sender"]["pid"] == seqs[write]["pid"] != r["pid"]
        got.add(int(payload(r)))
    assert got == set(range(1, n + 1))


def test_two_watches_at_once_see_the_same(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    workload = subprocess.Popen(["sh", "-c", 'read go < "$0"; seq 300 | cat > /dev/null', str(gate)])
    watches = []
    try:
        for name in ("a", "b"):
            trace = tmp_path / f"{name}.jsonl"
            proc = subprocess.Popen(
                [*IPCPROXY, "watch", "-w", str(trace), "--pid", str(workload.pid)], stderr=subprocess.PIPE
            )
            watches.append((proc, trace))
        for _, trace in watches:
            wait_for(lambda t=trace: t.exists() and "watch_start" in t.read_text(), timeout=60, what="watch_start")
        gate.write_text("go\n")
        assert workload.wait(timeout=TIMEOUT) == 0
        for proc, _ in watches:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=TIMEOUT) == 128 + signal.SIGTERM
        seen = []
        for _, trace in watches:
            records = read_trace(trace)
            seen.append([(r["direction"], r["pid"], r["size"], r["payload"]) for r in data(records)])
        assert seen[0] and seen[0] == seen[1]
    finally:
        for proc, _ in watches:
            if proc.poll() is None:
                proc.kill()
        if workload.poll() is None:
            workload.kill()


def _loaded_programs() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {p["id"] for p in json.loads(out.stdout or "[]")}


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="needs bpftool")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_leave_a_valid_trace_and_nothing_attached(watched: Any, sig: int) -> None:
    w = watched(["sh", "-c", "while :; do echo x; sleep 0.01; done | cat > /dev/null"])
    w.ready()
    programs = set(read_trace(w.trace)[0]["programs"])
    assert len(programs) == 5 and programs <= _loaded_programs()
    w.release()
    wait_for(lambda: '"type":"data"' in w.trace.read_text(), timeout=30, what="data records")
    assert w.stop(sig) == 128 + sig
    records = read_trace(w.trace)  # every line whole and valid
    assert records[-1]["event"] == "watch_stop" and records[-1]["reason"] == f"signal {signal.Signals(sig).name}"
    assert data(records)

    # the kernel frees a program once its last reference is gone, a moment after the watch exits
    wait_for(lambda: not programs & _loaded_programs(), timeout=30, what="the programs to be unloaded")


def test_lost_events_are_recorded_counted_and_fail_the_run(watched: Any, tmp_path: Path) -> None:
    cmd = ["sh", "-c", "dd if=/dev/zero bs=8192 count=3000 status=none | cat > /dev/null"]
    w = watched(cmd, "--buffer", "16K", "--max-payload", "8192")
    records = w.run()
    assert w.status == 1, w.stderr
    assert "events lost" in w.stderr and len(w.stderr.strip().splitlines()) == 1
    lost = [r for r in records if r.get("event") == "lost"]
    assert lost and records[-1]["event"] == "watch_stop"
    assert sum(r["count"] for r in lost) == records[-1]["lost"] > 0
    stats = subprocess.run([*IPCPROXY, "stats", str(w.trace)], capture_output=True, text=True, timeout=TIMEOUT)
    assert stats.returncode == 0 and f"{records[-1]['lost']} events lost" in stats.stdout


def test_bad_options_are_one_line(tmp_path: Path) -> None:
    for args, words in (
        (["--transport", "pipe,carrier-pigeon"], "carrier-pigeon"),
        (["--pid", "999999999"], "no such process"),
        (["--cgroup", str(tmp_path)], "not a cgroup"),
        (["--exe", str(tmp_path / "nothing")], "nothing"),
        (["--max-payload", "300000"], "262144"),
        (["--buffer", "3M"], "power of two"),
    ):
        r = subprocess.run([*IPCPROXY, "watch", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_without_privileges_it_says_what_is_missing() -> None:
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *IPCPROXY, "watch", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": "/tmp"},
    )
    if "Permission denied" in r.stderr and "ipcproxy" not in r.stderr:
        pytest.skip("the test's Python is not readable by an unprivileged user")
    assert r.returncode == 1, r.stderr
    assert "root" in r.stderr and "ipcproxy trace" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="needs bpftool")
def test_a_killed_watch_leaves_nothing_attached(watched: Any) -> None:
    w = watched(["sh", "-c", "seq 10 | cat > /dev/null"])
    w.ready()
    programs = set(read_trace(w.trace)[0]["programs"])
    assert programs <= _loaded_programs()
    w.stop(signal.SIGKILL)
    wait_for(lambda: not programs & _loaded_programs(), timeout=30, what="the programs to be unloaded")


@pytest.mark.skipif(shutil.which("busctl") is None, reason="needs busctl")
def test_busctl_clients_of_a_private_dbus_daemon(watched: Any, bus: Any) -> None:
    """Nobody put a proxy in front of this bus: the watch sees its clients' messages on the bus socket."""
    address = bus.address
    path = address.split("path=", 1)[1].split(",", 1)[0]
    script = (
        f"busctl --address={address} call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ListNames; "
        * 3
    )
    w = watched(["sh", "-c", script])
    records = w.run()
    on_bus = [r for r in data(records, transport="unix") if r["channel"].get("path") == path]
    calls = [r for r in on_bus if r["direction"] == "send" and b"ListNames" in payload(r)]
    assert len(calls) == 3 and len({r["pid"] for r in calls}) == 3
    daemons = {r["destination"].get("pid") for r in calls}
    assert len(daemons) == 1 and None not in daemons and daemons.isdisjoint(r["pid"] for r in calls)
    (daemon,) = daemons
    assert {r["destination"].get("comm") for r in calls} == {"dbus-daemon"}
    replies = [r for r in on_bus if r["direction"] == "recv" and r["sender"].get("pid") == daemon]
    assert {r["pid"] for r in replies} == {r["pid"] for r in calls}
    assert all(r["channel"]["peer_pid"] == daemon for r in on_bus)


@pytest.mark.skipif(shutil.which("busctl") is None, reason="needs busctl")
def test_dbus_framing_decodes_what_the_proxy_records(tmp_path: Path) -> None:
    """The same busctl call, seen by the proxy in front of the bus and by a watch of the bus socket."""
    gate, proxy_trace, seen_trace = tmp_path / "gate", tmp_path / "proxy.jsonl", tmp_path / "watch.jsonl"
    os.mkfifo(gate)
    call = "busctl --user call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus GetNameOwner s org.freedesktop.DBus"
    run = subprocess.Popen(
        [*IPCPROXY, "run", "-q", "-w", str(proxy_trace), "--", "sh", "-c", f'read go < "$0"; exec {call}', str(gate)],
        start_new_session=True,
    )
    watch = subprocess.Popen(
        [
            *IPCPROXY,
            "watch",
            "-w",
            str(seen_trace),
            "--pid",
            str(run.pid),
            "--comm",
            "busctl",
            "--framing",
            "unix=dbus",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: seen_trace.exists() and "watch_start" in seen_trace.read_text(), timeout=60, what="watch_start"
        )
        gate.write_text("go\n")
        assert run.wait(timeout=TIMEOUT) == 0
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=TIMEOUT)
        assert "framing ends" not in err
    finally:
        for proc in (run, watch):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seen = read_trace(seen_trace)
    ours = [r for r in seen if r.get("transport") == "dbus"]
    assert ours and all(r["framing"] == "dbus" for r in ours)
    hello_reply = next(r for r in ours if r["type"] == "method_return" and r["reply_serial"] == 1)
    unique = hello_reply["args"][0]
    recorded = read_trace(proxy_trace)
    conn = next(r["connection"] for r in recorded if r.get("destination", {}).get("bus_name") == unique)
    theirs = [r for r in recorded if r.get("connection") == conn and r.get("transport") == "dbus"]

    def view(r: dict[str, Any]) -> tuple[Any, ...]:
        return (
            r["type"],
            r.get("serial"),
            r.get("reply_serial"),
            r.get("path"),
            r.get("interface"),
            r.get("member"),
            r.get("args"),
        )

    for direction in ("to_bus", "from_bus"):
        assert [view(r) for r in ours if r["direction"] == direction] == [
            view(r) for r in theirs if r["direction"] == direction
        ], direction
    assert {r["member"] for r in ours if r["direction"] == "to_bus"} >= {"Hello", "GetNameOwner"}
    # the decoded messages are D-Bus messages like the proxy's: `learn` makes a policy of them
    policy = tmp_path / "policy.yaml"
    learnt = subprocess.run(
        [*IPCPROXY, "learn", str(seen_trace), "-o", str(policy)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert learnt.returncode == 0, learnt.stderr
    text = policy.read_text()
    assert "busctl" in text and "GetNameOwner" in text, text
    checked = subprocess.run(
        [*IPCPROXY, "check", str(policy), str(seen_trace)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_asked_twice_to_stop_while_draining_it_stops_and_counts_the_rest(watched: Any) -> None:
    # a million one-byte writes: far more events than the records written in the second after the first signal
    w = watched(["sh", "-c", "dd if=/dev/zero bs=1 count=1000000 status=none | cat > /dev/null"])
    w.ready()
    w.release()
    assert w.workload.wait(timeout=TIMEOUT) == 0
    w.watch.send_signal(signal.SIGINT)
    time.sleep(1)
    w.watch.send_signal(signal.SIGINT)
    assert w.stop() == 1
    assert "events lost" in w.stderr and len(w.stderr.strip().splitlines()) == 1
    records = read_trace(w.trace)
    abandoned = [r for r in records if r.get("event") == "lost" and r.get("where") == "reader"]
    assert abandoned and abandoned[0]["count"] > 0
    assert records[-1]["event"] == "watch_stop" and records[-1]["lost"] >= abandoned[0]["count"]


def test_exe_selects_by_the_executable_file(watched: Any) -> None:
    sort = os.path.realpath(shutil.which("sort") or "/usr/bin/sort")
    w = watched(["sh", "-c", "seq 100 | sort -n | cat > /dev/null"], "--exe", sort)
    records = w.run()
    assert data(records) and {r["pid"] for r in data(records)} == {
        r["pid"]
        for r in data(records)
        if (r["sender"] if r["direction"] == "send" else r["destination"]).get("exe") == sort
    }
    assert {r["direction"] for r in data(records)} == {"send", "recv"}
