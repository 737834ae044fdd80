"""`ipcproxy trace` against strace on IPC-heavy ping-pong: ratios to the untraced run, side by side.

    .venv/bin/python bench/syscall_trace.py [--rounds 200000] [--size 64] [--reps 3]

Workload: ``bench/pingpong.c`` (built into out/build/), ROUNDS round trips of
SIZE bytes between a parent and its child over a pipe pair and over a
socketpair: a write and a read per message on each side, nothing else.
Configurations, interleaved in a rotated order on every repetition:

- untraced
- ``strace -f -e trace=read,write -o /dev/null`` (stops at every syscall)
- ``strace -f --seccomp-bpf -e trace=read,write -o /dev/null`` (stops only at those)
- ``ipcproxy trace -q -w FILE`` (stops at every IPC syscall, records every message with its payload)

The tracer runs on CPU 0 and the workload on CPU 1 (``taskset``): on two
noisy cores, unpinned runs swing by 10x. Wall time, median of the
repetitions; each ratio is against the untraced median of the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "out" / "build"


def build() -> Path:
    BUILD.mkdir(parents=True, exist_ok=True)
    binary = BUILD / "pingpong"
    source = ROOT / "bench" / "pingpong.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return binary


def configs(trace_dir: Path) -> dict[str, list[str]]:
    ipcproxy = [sys.executable, "-m", "ipcproxy", "trace", "-q", "-w", str(trace_dir / "bench.jsonl"), "--"]
    return {
        "untraced": [],
        "strace -f -e trace=read,write": ["strace", "-f", "-o", "/dev/null", "-e", "trace=read,write"],
        "strace -f --seccomp-bpf -e trace=read,write": [
            "strace",
            "-f",
            "--seccomp-bpf",
            "-o",
            "/dev/null",
            "-e",
            "trace=read,write",
        ],  # fmt: skip
        "ipcproxy trace (records everything)": ipcproxy,
    }


def run_once(tracer: list[str], workload: list[str]) -> float:
    argv = ["taskset", "-c", "1", *workload]
    if tracer:
        argv = ["taskset", "-c", "0", *tracer, *argv]
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    for tool in ("strace", "taskset", "gcc"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing (scripts/setup.sh installs it)", file=sys.stderr)
            return 2
    binary = build()
    with tempfile.TemporaryDirectory(prefix="ipcproxy-bench-") as tmp:
        table = configs(Path(tmp))
        names = list(table)
        times: dict[tuple[str, str], list[float]] = {}
        for rep in range(args.reps):
            for kind in ("pipe", "socketpair"):
                workload = [str(binary), kind, str(args.rounds), str(args.size)]
                for name in names[rep % len(names) :] + names[: rep % len(names)]:
                    times.setdefault((kind, name), []).append(run_once(table[name], workload))
                    print(f"rep {rep + 1} {kind:10} {name}: {times[(kind, name)][-1]:.2f} s", file=sys.stderr)
        size = os.path.getsize(Path(tmp) / "bench.jsonl")
    print(f"\n{args.rounds} round trips of {args.size} B, median of {args.reps}, wall time (ratio to untraced)\n")
    print("| configuration | pipe pair | socketpair |")
    print("|---|---|---|")
    for name in names:
        cells = []
        for kind in ("pipe", "socketpair"):
            median = statistics.median(times[(kind, name)])
            base = statistics.median(times[(kind, "untraced")])
            cells.append(f"{median:.2f} s ({median / base:.1f}×)")
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    print(f"\nlast ipcproxy trace: {size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
