"""Real traces for the report's tests: `ipcproxy run` with a python-dbusmock service and real clients."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from conftest import IPCPROXY, ROOT, SYSTEM_PYTHON

MOCK = f"{SYSTEM_PYTHON} -m dbusmock org.example.Mock /org/example/Mock org.example.Mock"
PLAN = """version: 1
seed: 1
faults:
  - name: fail-getall
    match: {type: method_call, member: GetAll}
    action: {error: {name: org.freedesktop.DBus.Error.Failed, message: injected}}
"""
WORKLOAD = (
    "busctl --user call org.example.Mock /org/example/Mock org.freedesktop.DBus.Introspectable Introspect >/dev/null;"
    " busctl --user call org.example.Mock /org/example/Mock org.example.Mock Nope;"
    " gdbus call --session -d org.example.Mock -o /org/example/Mock"
    " -m org.freedesktop.DBus.Properties.Get org.example.Mock Missing;"
    " gdbus call --session -d org.example.Mock -o /org/example/Mock"
    " -m org.freedesktop.DBus.Properties.GetAll org.example.Mock; true"
)


def ipcproxy(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*IPCPROXY, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def make_trace(folder: Path, name: str = "trace.jsonl") -> Path:
    """A trace of busctl and gdbus calling a mock service, one call failed by an injected fault."""
    plan = folder / "plan.yaml"
    plan.write_text(PLAN)
    trace = folder / name
    ipcproxy(
        "run",
        "-q",
        "-w",
        str(trace),
        "--faults",
        str(plan),
        "--service",
        MOCK,
        "--wait-for",
        "org.example.Mock",
        "--",
        "sh",
        "-c",
        WORKLOAD,
    )
    return trace


def trace_stats(trace: Path) -> dict[str, Any]:
    """What `ipcproxy stats --json` counts: the report's arrows and lifelines must agree with it."""
    return dict(json.loads(ipcproxy("stats", "--json", str(trace)).stdout))


def stats_names(stats: dict[str, Any]) -> set[str]:
    """Every component of the trace, the broadcast '*' included when a signal went to everyone."""
    names = {c["component"] for c in stats["components"]}
    for pair in stats["pairs"]:
        names.update((pair["sender"], pair["destination"]))
    return names
