"""`ipcproxy trace` against strace: ratios to the untraced run, side by side in one invocation.

    .venv/bin/python bench/syscall_trace.py [--rounds 200000] [--unix-rounds 10000] [--reps 1] [--only CASE,...]

Workloads (``bench/pingpong.c`` is built into out/build/):

- ``pipe``: ROUNDS round trips of 64 B between a parent and its child over a pipe pair
- ``socketpair``: the same over a socketpair
- ``unix 64 KiB``: UNIX_ROUNDS round trips of 64 KiB over a Unix stream socket (bind, connect, accept)
- ``mixed: pool``: a Python multiprocessing pool of 2 computing 2,000 small tasks (CPU, some IPC)
- ``mixed: find, xargs cat, wc``: ``find /usr/share/doc -type f -print0 | xargs -0 cat | wc -c`` (files
  read, a pipeline carrying them)

Configurations, interleaved in a rotated order on every repetition:

- untraced
- ``strace -f -e trace=IPC -o /dev/null`` (IPC: the syscalls ``ipcproxy trace`` stops at, but mmap)
- ``strace -f --seccomp-bpf -e trace=IPC -o /dev/null`` (stops only at those)
- ``ipcproxy trace -q -w FILE`` (records every message with up to 4096 B of payload, and attribution)

The tracer runs on CPU 0 and the workload on CPU 1 (``taskset``): on two
noisy cores, unpinned runs swing by 10x. Wall time, median of the
repetitions; each ratio is against the untraced median of the same run, and
the last row is ipcproxy's time over strace's (the faster of the two).
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

POOL = """
import multiprocessing as mp
def work(n):
    s = 0
    for i in range(n):
        s += i * i
    return s
if __name__ == "__main__":
    with mp.Pool(2) as pool:
        print(sum(pool.map(work, [20000] * 2000, chunksize=4)))
"""


def build() -> Path:
    BUILD.mkdir(parents=True, exist_ok=True)
    binary = BUILD / "pingpong"
    source = ROOT / "bench" / "pingpong.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return binary


def workloads(binary: Path, rounds: int, unix_rounds: int) -> dict[str, list[str]]:
    return {
        "pipe": [str(binary), "pipe", str(rounds), "64"],
        "socketpair": [str(binary), "socketpair", str(rounds), "64"],
        "unix 64 KiB": [str(binary), "unix", str(unix_rounds), "65536"],
        "mixed: pool": [sys.executable, "-c", POOL],
        "mixed: find, xargs cat, wc": ["sh", "-c", "find /usr/share/doc -type f -print0 | xargs -0 cat | wc -c"],
    }


def ipc_syscalls() -> str:
    """The syscalls the stop loop stops at, as strace names them (mmap stops only when shared: left out)."""
    from ipcproxy.syscall import _tracer  # type: ignore[attr-defined]

    return ",".join(sorted(name for name in _tracer.SYSCALLS if name != "mmap"))


def configs(trace: Path) -> dict[str, list[str]]:
    ipc = f"trace={ipc_syscalls()}"
    ipcproxy = [sys.executable, "-m", "ipcproxy", "trace", "-q", "--force", "-w", str(trace), "--"]
    return {
        "untraced": [],
        "strace -f -e trace=IPC": ["strace", "-f", "-o", "/dev/null", "-e", ipc],
        "strace -f --seccomp-bpf -e trace=IPC": ["strace", "-f", "--seccomp-bpf", "-o", "/dev/null", "-e", ipc],
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
    parser.add_argument("--rounds", type=int, default=200_000, help="round trips of 64 B (pipe, socketpair)")
    parser.add_argument("--unix-rounds", type=int, default=10_000, help="round trips of 64 KiB (unix)")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument(
        "--only", help="comma-separated workloads to run, each named by its beginning, e.g. pipe,mixed (default: all)"
    )
    args = parser.parse_args()
    for tool in ("strace", "taskset", "gcc"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing (scripts/setup.sh installs it)", file=sys.stderr)
            return 2
    cases = workloads(build(), args.rounds, args.unix_rounds)
    if args.only:
        # each item names the workloads it begins (a name may hold a comma: "mixed: find" picks that one)
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [item for item in wanted if not any(name.startswith(item) for name in cases)]
        if unknown:
            print(f"bench: unknown workload {unknown[0]!r} (known: {', '.join(cases)})", file=sys.stderr)
            return 2
        cases = {name: workload for name, workload in cases.items() if any(name.startswith(i) for i in wanted)}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="ipcproxy-bench-") as tmp:
        trace = Path(tmp) / "bench.jsonl"
        table = configs(trace)
        names = list(table)
        times: dict[tuple[str, str], list[float]] = {}
        for rep in range(args.reps):
            for case, workload in cases.items():
                for name in names[rep % len(names) :] + names[: rep % len(names)]:
                    times.setdefault((case, name), []).append(run_once(table[name], workload))
                    print(f"rep {rep + 1} {case:20} {name}: {times[(case, name)][-1]:.2f} s", file=sys.stderr)
                    if table[name] and table[name][0] == sys.executable:
                        sizes[case] = os.path.getsize(trace)
                        trace.unlink()
    load = os.getloadavg()[0]
    print(
        f"\n{args.rounds} round trips of 64 B, {args.unix_rounds} of 64 KiB; median of {args.reps}; "
        f"wall time (ratio to untraced); load average at the end {load:.1f}\n"
    )
    print("| configuration | " + " | ".join(cases) + " |")
    print("|---|" + "---|" * len(cases))
    medians = {key: statistics.median(value) for key, value in times.items()}
    for name in names:
        cells = [
            f"{medians[(case, name)]:.2f} s ({medians[(case, name)] / medians[(case, 'untraced')]:.2f}×)"
            for case in cases
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    ours = names[-1]
    cells = []
    for case in cases:
        strace = min(medians[(case, name)] for name in names if name.startswith("strace"))
        cells.append(f"{medians[(case, ours)] / strace:.2f}×")
    print("| ipcproxy trace / strace | " + " | ".join(cells) + " |")
    print("\ntrace sizes: " + ", ".join(f"{case} {size / 1e6:.0f} MB" for case, size in sizes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
