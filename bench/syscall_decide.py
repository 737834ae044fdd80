"""What deciding every message costs `ipcproxy trace`: a chain against recording alone, side by side.

    .venv/bin/python bench/syscall_decide.py [--rounds 20000] [--size 64] [--reps 3]

Workload: ``bench/pingpong.c`` over a pipe pair (as bench/syscall_trace.py).
Configurations, interleaved in a rotated order on every repetition:

- untraced
- ``ipcproxy trace -q -w FILE`` (records every message; no call waits for a decision)
- ``ipcproxy trace -q -w FILE -s pass.py`` (an interceptor that lets every message pass: each send is
  held at its entry and each receive at its exit until Python has run the chain)
- ``ipcproxy trace -q -w FILE --policy P --mode complain`` (a real policy decides every message)

Tracer on CPU 0, workload on CPU 1; wall time, median of the repetitions,
ratios against the untraced and the recording-only medians of the same run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from syscall_trace import build, run_once

PASS = """
from ipcproxy.api import interceptor


@interceptor
def let_pass(ctx):
    return None
"""

POLICY = """format: ipcproxy-policy
version: 1
unknown: deny
components: []
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    for tool in ("taskset", "gcc"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing (scripts/setup.sh installs it)", file=sys.stderr)
            return 2
    binary = build()
    with tempfile.TemporaryDirectory(prefix="ipcproxy-bench-") as tmp:
        script, policy = Path(tmp) / "pass.py", Path(tmp) / "policy.yaml"
        script.write_text(PASS)
        policy.write_text(POLICY)
        trace = [sys.executable, "-m", "ipcproxy", "trace", "-q", "--force", "-w", str(Path(tmp) / "b.jsonl")]
        table = {
            "untraced": [],
            "ipcproxy trace (records)": [*trace, "--"],
            "ipcproxy trace -s pass.py (every message decided)": [*trace, "-s", str(script), "--"],
            "ipcproxy trace --policy P --mode complain": [*trace, "--policy", str(policy), "--mode", "complain", "--"],
        }
        names = list(table)
        workload = [str(binary), "pipe", str(args.rounds), str(args.size)]
        times: dict[str, list[float]] = {}
        for rep in range(args.reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                times.setdefault(name, []).append(run_once(table[name], workload))
                print(f"rep {rep + 1} {name}: {times[name][-1]:.2f} s", file=sys.stderr)
    base = statistics.median(times["untraced"])
    recording = statistics.median(times["ipcproxy trace (records)"])
    print(f"\n{args.rounds} round trips of {args.size} B over a pipe pair, median of {args.reps}, wall time\n")
    print("| configuration | time | vs untraced | vs recording only |")
    print("|---|---|---|---|")
    for name in names:
        median = statistics.median(times[name])
        print(f"| {name} | {median:.2f} s | {median / base:.1f}× | {median / recording:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
