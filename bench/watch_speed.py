"""`ipcproxy watch` against strace and bpftrace on IPC-heavy ping-pong: ratios to the untraced run, side by side.

    .venv/bin/python bench/watch_speed.py [--rounds 200000] [--size 64] [--reps 3]

Workload: the one of bench/syscall_trace.py (``bench/pingpong.c``), ROUNDS
round trips of SIZE bytes between a parent and its child over a pipe pair
and over a socketpair. Configurations, interleaved in a rotated order on
every repetition:

- untraced
- ``strace -f -e trace=read,write -s SIZE -o /dev/null``
- a bpftrace one-liner on the read/write syscall tracepoints printing pid,
  tid, comm, fd, length and the payload (SIZE bytes) of the workload's calls
- ``ipcproxy watch --comm pingpong`` and ``ipcproxy watch`` (system-wide),
  recording every message with its payload into a trace file

Watchers run on CPU 0 and the workload on CPU 1 (``taskset``): on two noisy
cores unpinned runs swing by 10x. Wall time of the workload, median of the
repetitions; each ratio is against the untraced median of the same run. For
the watchers the table also says how many of the workload's messages they
recorded and how many events they lost (a watch records every message twice:
sent and received).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from syscall_trace import build  # noqa: E402

BPFTRACE = (
    'tracepoint:syscalls:sys_enter_read,tracepoint:syscalls:sys_enter_write /comm == "pingpong"/ '
    "{ @buf[tid] = args->buf; @fd[tid] = args->fd; } "
    "tracepoint:syscalls:sys_exit_read,tracepoint:syscalls:sys_exit_write /@buf[tid]/ "
    '{ printf("%d %d %s %d %d %r\\n", pid, tid, comm, @fd[tid], args->ret, buf(@buf[tid], SIZE)); '
    "delete(@buf[tid]); delete(@fd[tid]); }"
)


def run_plain(tracer: list[str], workload: list[str]) -> float:
    argv = ["taskset", "-c", "1", *workload]
    if tracer:
        argv = ["taskset", "-c", "0", *tracer, *argv]
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def _wait_for(predicate: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.05)


def run_beside(watcher: list[str], ready: object, workload: list[str]) -> tuple[float, subprocess.Popen[bytes], int]:
    """The workload timed while ``watcher`` runs beside it (the watcher is left running), and the workload's pid."""
    proc = subprocess.Popen(["taskset", "-c", "0", *watcher], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(lambda: proc.poll() is not None or ready(), "the watcher to be ready")  # type: ignore[operator]
    if proc.poll() is not None:
        raise SystemExit(f"bench: {watcher[0]} ended: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
    start = time.monotonic()
    work = subprocess.Popen(["taskset", "-c", "1", *workload], stdout=subprocess.DEVNULL)  # taskset execs it
    if work.wait() != 0:
        raise SystemExit(f"bench: {workload[0]} failed")
    elapsed = time.monotonic() - start
    return elapsed, proc, work.pid


def watch_once(trace: Path, extra: list[str], workload: list[str]) -> tuple[float, int, int]:
    """Seconds, the workload's data records, events lost."""
    trace.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "ipcproxy", "watch", "-w", str(trace), "--max-payload", workload[-1], *extra]
    elapsed, proc, pid = run_beside(
        argv, lambda: trace.exists() and b"watch_start" in trace.read_bytes()[:4096], workload
    )
    proc.send_signal(signal.SIGINT)
    proc.wait()
    calls: dict[int, int] = {}  # pid -> data records of its calls
    family = {pid}  # the parent and the child it talks to
    lost = 0
    with open(trace) as f:
        for line in f:
            if '"comm":"pingpong"' in line and '"type":"data"' in line:
                rec = json.loads(line)
                calls[rec["pid"]] = calls.get(rec["pid"], 0) + 1
                if rec["pid"] == pid:
                    family.update(p for p in (rec["sender"].get("pid"), rec["destination"].get("pid")) if p)
            elif '"watch_stop"' in line:
                lost = json.loads(line)["lost"]
    return elapsed, sum(calls.get(p, 0) for p in family), lost


def bpftrace_once(out: Path, size: str, workload: list[str]) -> tuple[float, int, int]:
    out.unlink(missing_ok=True)
    argv = ["bpftrace", "-o", str(out), "-e", BPFTRACE.replace("SIZE", size)]
    elapsed, proc, _ = run_beside(argv, lambda: out.exists() and b"Attaching" in out.read_bytes(), workload)
    proc.send_signal(signal.SIGINT)
    proc.wait()
    text = out.read_text(errors="replace")
    lost = sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("Lost "))
    return elapsed, sum(1 for line in text.splitlines() if " pingpong " in line), lost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    for tool in ("strace", "taskset", "gcc", "bpftrace"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing (scripts/setup.sh installs it)", file=sys.stderr)
            return 2
    binary = build()
    size = str(args.size)
    names = [
        "untraced",
        f"strace -f -e trace=read,write -s {size}",
        "bpftrace one-liner (read/write tracepoints, payload)",
        "ipcproxy watch --comm pingpong",
        "ipcproxy watch (system-wide)",
    ]
    times: dict[tuple[str, str], list[float]] = {}
    seen: dict[tuple[str, str], list[tuple[int, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="ipcproxy-bench-") as tmp:
        trace = Path(tmp) / "watch.jsonl"
        for rep in range(args.reps):
            for kind in ("pipe", "socketpair"):
                workload = [str(binary), kind, str(args.rounds), size]
                for name in names[rep % len(names) :] + names[: rep % len(names)]:
                    if name == "untraced":
                        elapsed = run_plain([], workload)
                    elif name.startswith("strace"):
                        elapsed = run_plain(
                            ["strace", "-f", "-o", "/dev/null", "-s", size, "-e", "trace=read,write"], workload
                        )
                    elif name.startswith("bpftrace"):
                        elapsed, got, lost = bpftrace_once(Path(tmp) / "bpftrace.out", size, workload)
                        seen.setdefault((kind, name), []).append((got, lost))
                    else:
                        extra = ["--comm", "pingpong"] if "--comm" in name else []
                        elapsed, got, lost = watch_once(trace, extra, workload)
                        seen.setdefault((kind, name), []).append((got, lost))
                    times.setdefault((kind, name), []).append(elapsed)
                    note = (
                        f" (recorded {seen[(kind, name)][-1][0]}, lost {seen[(kind, name)][-1][1]})"
                        if (kind, name) in seen
                        else ""
                    )
                    print(f"rep {rep + 1} {kind:10} {name}: {elapsed:.2f} s{note}", file=sys.stderr)
    print(
        f"\n{args.rounds} round trips of {args.size} B ({4 * args.rounds} reads and writes), median of {args.reps}, wall time (ratio to untraced)\n"
    )
    print("| configuration | pipe pair | socketpair |")
    print("|---|---|---|")
    for name in names:
        cells = []
        for kind in ("pipe", "socketpair"):
            median = statistics.median(times[(kind, name)])
            base = statistics.median(times[(kind, "untraced")])
            cell = f"{median:.2f} s ({median / base:.2f}×)"
            if (kind, name) in seen:
                worst = min(seen[(kind, name)])
                lost = max(lost for _, lost in seen[(kind, name)])
                cell += f", {worst[0]} of {4 * args.rounds} calls recorded, {lost} lost"
            cells.append(cell)
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
