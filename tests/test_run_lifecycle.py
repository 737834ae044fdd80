"""`run` owns the command's whole process tree, ends it in order, and reports signals like a shell.

Real processes throughout: background jobs of a real shell, a daemon that double-forks and
setsid()s, a real D-Bus service under `--service` that must still answer the command's last call.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import IPCPROXY, ROOT, SYSTEM_PYTHON, read_trace, wait_for
from ipcproxy import proctree

KEEPER = [sys.executable, "-I", "-S", proctree.__file__]

# a daemon the usual way: fork, setsid(), fork again, the middle one exits at once
DAEMON = r"""
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        print(os.getpid(), flush=True)
        time.sleep(300)
    os._exit(0)
os.wait()
"""


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Pids a test expects to outlive `run` (--keep-children): killed at the end whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IPCPROXY, *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def pids_of(text: str) -> list[int]:
    return [int(word) for word in text.split()]


# --- the keeper alone ---------------------------------------------------------------------------


def test_the_keeper_exits_with_the_command_status_and_ends_its_background_children() -> None:
    r = subprocess.run([*KEEPER, "--", "sh", "-c", "sleep 300 & echo $!; exit 3"], capture_output=True, text=True)
    assert r.returncode == 3
    (child,) = pids_of(r.stdout)
    assert not alive(child)


def test_the_keeper_kills_what_ignores_sigterm_after_the_grace_period() -> None:
    r = subprocess.run(
        [*KEEPER, "--grace=0.5", "--", "sh", "-c", "trap '' TERM; sleep 300 & echo $!"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0
    (child,) = pids_of(r.stdout)
    assert not alive(child)


def test_the_keeper_reports_a_command_it_cannot_run() -> None:
    r = subprocess.run([*KEEPER, "--", "/nonexistent/program"], capture_output=True, text=True)
    assert r.returncode == 127
    assert r.stderr == "ipcproxy: cannot run /nonexistent/program: No such file or directory\n"


# --- run: nothing left behind -------------------------------------------------------------------


def test_background_children_do_not_outlive_run() -> None:
    r = run("run", "-q", "--", "sh", "-c", "sleep 300 & echo $!; sleep 300 & echo $!")
    assert r.returncode == 0, r.stderr
    children = pids_of(r.stdout)
    assert len(children) == 2
    assert not any(alive(pid) for pid in children)


def test_a_daemon_that_double_forks_and_setsids_does_not_outlive_run() -> None:
    r = run("run", "-q", "--", sys.executable, "-c", DAEMON)
    assert r.returncode == 0, r.stderr
    (daemon,) = pids_of(r.stdout)
    assert not alive(daemon)


def test_keep_children_leaves_them_running(tmp_path: Path, leftovers: list[int]) -> None:
    out = tmp_path / "pids"
    # the children must not hold run's stdout open, or capturing it would wait for them
    script = f"sleep 300 > /dev/null 2>&1 & echo $! > {out}; {sys.executable} -c '{DAEMON}' >> {out} 2>/dev/null"
    try:
        r = run("run", "-q", "--keep-children", "--", "sh", "-c", script)
    finally:
        leftovers.extend(pids_of(out.read_text()) if out.exists() else [])
    assert r.returncode == 0, r.stderr
    assert len(leftovers) == 2
    assert all(alive(pid) for pid in leftovers)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_command_and_its_children_and_gives_128_plus_its_number(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "pids"
    trace = tmp_path / "t.jsonl"
    script = f"sleep 300 & echo $! > {out}.tmp; {sys.executable} -c '{DAEMON}' >> {out}.tmp; mv {out}.tmp {out}; wait"
    proc = subprocess.Popen([*IPCPROXY, "run", "-q", "-w", str(trace), "--", "sh", "-c", script], cwd=ROOT)
    try:
        wait_for(lambda: out.exists() and len(pids_of(out.read_text())) == 2, 30, "the children's pids")
        children = pids_of(out.read_text())
        proc.send_signal(sig)
        assert proc.wait(30) == 128 + sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not any(alive(pid) for pid in children)
    events = [r for r in read_trace(trace) if r["type"] == "event"]
    assert [e["event"] for e in events][-1] == "proxy_stop"
    assert events[-1]["reason"] == f"signal {signal.Signals(sig).name}"


def test_a_command_killed_by_a_signal_still_gives_128_plus_that_signal() -> None:
    r = run("run", "-q", "--", "sh", "-c", "kill -INT $$")
    assert r.returncode == 128 + signal.SIGINT


# --- shutdown order -----------------------------------------------------------------------------

MOCK = "org.example.Last"


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="python3-dbusmock needs Debian's python3")
def test_on_sigterm_the_command_makes_its_last_call_before_the_service_leaves(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    trace = tmp_path / "t.jsonl"
    call = f"busctl --user call {MOCK} /org/example/Last org.freedesktop.DBus.Introspectable Introspect"
    # the trap runs after ipcproxy received SIGTERM: the service must still be there to answer
    script = f"trap '{call} > {tmp_path}/last.out 2>&1; echo $? > {tmp_path}/last.rc; exit 0' TERM; touch {ready}; sleep 300 & wait"
    service = f"{SYSTEM_PYTHON} -m dbusmock {MOCK} /org/example/Last org.example.Last"
    proc = subprocess.Popen(
        [*IPCPROXY, "run", "-q", "-w", str(trace), "--service", service, "--wait-for", MOCK, "--", "sh", "-c", script],
        cwd=ROOT,
    )
    try:
        wait_for(ready.exists, 30, "the command to start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "last.rc").read_text().strip() == "0", (tmp_path / "last.out").read_text()
    assert "<interface" in (tmp_path / "last.out").read_text()
    records = read_trace(trace)
    steps = [
        (r["event"], r.get("step")) for r in records if r["type"] == "event" and r["event"] in ("run", "proxy_stop")
    ]
    assert steps == [("run", "command_exit"), ("run", "services_stop"), ("run", "bus_stop"), ("proxy_stop", None)]
    last_call = [r for r in records if r.get("member") == "Introspect" and r.get("type") == "method_call"]
    replies = [
        r for r in records if r.get("type") == "method_return" and r.get("reply_serial") == last_call[-1]["serial"]
    ]
    assert last_call and replies
    command_exit = next(r for r in records if r.get("step") == "command_exit")
    services_stop = next(r for r in records if r.get("step") == "services_stop")
    assert command_exit["exit_status"] == 0  # the trap's own exit
    assert services_stop["services"][0]["command"] == service
    assert max(r["seq"] for r in replies) < services_stop["seq"]


def test_an_interactive_command_keeps_the_terminal(tmp_path: Path) -> None:
    """In a process group of its own, the command still reads the terminal it was started from."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # ipcproxy in the foreground of a fresh terminal, as from a shell
        os.chdir(ROOT)
        os.execv(IPCPROXY[0], [*IPCPROXY, "run", "-q", "--", "sh", "-c", "read line; echo got:$line"])
    output = b""
    try:
        os.write(fd, b"hello\n")  # the terminal keeps it until sh reads
        deadline = time.monotonic() + 30
        while b"got:hello" not in output and time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                try:
                    output += os.read(fd, 1024)
                except OSError:  # the terminal closed: ipcproxy has exited
                    break
    finally:
        if b"got:hello" not in output:  # stopped on its read: end it through ipcproxy, as a user would
            os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert b"got:hello" in output, output
    assert os.waitstatus_to_exitcode(status) == 0


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read() and alive(int(entry)):
                    found.append(int(entry))
    return found


def test_even_a_sigkilled_run_leaves_neither_children_nor_bus(tmp_path: Path) -> None:
    out = tmp_path / "pid"
    trace = tmp_path / "t.jsonl"
    script = f"sleep 300 & echo $! > {out}.tmp; mv {out}.tmp {out}; wait"
    proc = subprocess.Popen([*IPCPROXY, "run", "-q", "-w", str(trace), "--", "sh", "-c", script], cwd=ROOT)
    try:
        wait_for(out.exists, 30, "the child's pid")
        (child,) = pids_of(out.read_text())
        wait_for(lambda: trace.exists() and trace.read_text().strip(), 30, "the trace header")
        header = json.loads(trace.read_text().splitlines()[0])
        bus_dir = os.path.dirname(header["bus_address"].split("=", 1)[1])
        assert processes_mentioning(bus_dir)  # the bus runs
        proc.kill()  # ipcproxy cannot clean up: the keepers notice their parent is gone
        proc.wait()
        wait_for(lambda: not alive(child), 30, "the child to be ended")
        wait_for(lambda: not processes_mentioning(bus_dir), 30, "the bus to be ended")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
