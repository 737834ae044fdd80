"""A policy learnt from `ipcproxy watch` traces, enforced by `ipcproxy trace --policy` on held-out runs.

The watch records the same data records as the tracer, with processes named by the same executable
paths, so what `learn` makes of a watch is a per-component policy the tracer enforces as is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import IPCPROXY, trace_unavailable
from test_watch import _REASON, TIMEOUT, data, watching

pytestmark = [
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
    pytest.mark.skipif((_TRACE := trace_unavailable()) is not None, reason=_TRACE or ""),
]


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Any]:
    yield from watching(tmp_path)


PIPELINE = "seq {n} | sort -rn | head -5 >/dev/null; printf '{text}\\n' | tr a-z A-Z >/dev/null"
SOCAT = (
    "socat UNIX-LISTEN:{d}/srv.sock SYSTEM:'tr a-z A-Z' & "
    "i=0; while [ ! -S {d}/srv.sock ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; "
    "printf '{text}' | socat - UNIX-CONNECT:{d}/srv.sock; wait"
)


def learn(policy: Path, trace: Path) -> str:
    proc = subprocess.run([*IPCPROXY, "learn", str(trace), "-o", str(policy)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return policy.read_text()


def traced(path: Path, policy: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *IPCPROXY,
            "trace",
            "-q",
            "-w",
            str(path),
            "--policy",
            str(policy),
            "--mode",
            "enforce",
            "--",
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def denied(path: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        r
        for r in records
        if r.get("type") == "data" and isinstance(r.get("verdict"), dict) and r["verdict"].get("action") == "denied"
    ]


def test_a_pipeline_policy_learnt_from_a_watch_is_enforced_by_trace(watched: Any, tmp_path: Path) -> None:
    w = watched(["sh", "-c", PIPELINE.format(n=3000, text="hello world")])
    assert data(w.run(), transport="pipe")
    policy = tmp_path / "p.yaml"
    text = learn(policy, w.trace)
    assert "/usr/bin/sort" in text and "/usr/bin/seq" in text
    held_out = traced(tmp_path / "run2.jsonl", policy, PIPELINE.format(n=5000, text="good day"))
    assert held_out.returncode == 0, held_out.stderr
    assert denied(tmp_path / "run2.jsonl") == []
    blocked = traced(tmp_path / "run3.jsonl", policy, "printf 'rm -rf /\\n' | tr a-z A-Z >/dev/null")
    refused = denied(tmp_path / "run3.jsonl")
    assert refused, blocked.stderr
    assert refused[0]["payload"] == b"rm -rf /\n".hex() and refused[0]["verdict"]["errno"] == "EACCES"
    assert all(r["direction"] == "send" for r in refused)


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_a_socat_policy_learnt_from_a_watch_allows_a_held_out_session(watched: Any, tmp_path: Path) -> None:
    dirs = [tmp_path / f"tmp{name}" for name in ("a9x2", "b7q1")]
    for d in dirs:
        d.mkdir()
    # the answer into a file in both runs: the same stdout for the watched and the enforced session
    session = "(" + SOCAT + ") > {d}/out"
    w = watched(["sh", "-c", session.format(d=dirs[0], text="ping\\npong\\n")])
    assert data(w.run(), transport="unix")
    policy = tmp_path / "p.yaml"
    assert "socat" in learn(policy, w.trace)
    held_out = traced(tmp_path / "run2.jsonl", policy, session.format(d=dirs[1], text="pong\\n"))
    assert held_out.returncode == 0, held_out.stderr
    assert (dirs[1] / "out").read_text() == "PONG\n"
    assert denied(tmp_path / "run2.jsonl") == []
