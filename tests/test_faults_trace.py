"""Faults carried out on real programs' syscalls: ``ipcproxy trace --faults`` and trace campaigns.

Each test runs the real command line in a process of its own (the tracer
waits for every child of its process) and checks what the programs saw:
the writer's error and exit status, the bytes that arrived, the trace's
verdicts. Coreutils, socat and Python's multiprocessing are the programs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from test_syscall_trace import _REASON, IPCPROXY, TIMEOUT, data, events

pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

PY = sys.executable


def faulted(
    tmp_path: Path, faults: list[dict[str, Any]], cmd: str, seed: int = 1
) -> tuple[subprocess.CompletedProcess[bytes], list[dict[str, Any]]]:
    """``ipcproxy trace --faults`` of ``sh -c CMD`` in tmp_path; its result and its trace."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"version": 1, "seed": seed, "faults": faults}))
    trace = tmp_path / "trace.jsonl"
    proc = subprocess.run(
        [*IPCPROXY, "trace", "-q", "--force", "-w", str(trace), "--faults", str(plan), "--", "sh", "-c", cmd],
        capture_output=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
    )
    records = [json.loads(line) for line in trace.read_text().splitlines()] if trace.exists() else []
    return proc, records


def with_fault(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in data(records) if isinstance(r.get("verdict"), dict) and r["verdict"].get("fault") == name]


def exit_of(records: list[dict[str, Any]], comm: str) -> str:
    found = [e["status"] for e in events(records, "exit") if e.get("comm") == comm]
    assert found, f"no exit event of {comm}"
    return str(found[0])


def test_errno_makes_the_writer_fail_with_eio(tmp_path: Path) -> None:
    fault = {"name": "eio", "match": {"direction": "send", "process": "seq", "fd": 1}, "action": {"errno": {}}}
    proc, records = faulted(tmp_path, [fault], "seq 1000 | sort -n | head -3")
    assert b"seq: write error: Input/output error" in proc.stderr
    assert exit_of(records, "seq") == "1"
    assert proc.stdout == b""  # sort got nothing to sort
    [rec] = with_fault(records, "eio")
    assert rec["verdict"]["action"] == "error_reply" and rec["verdict"]["error_name"] == "EIO"


def test_errno_by_name_reaches_a_python_writer(tmp_path: Path) -> None:
    writer = f"{PY} -c \"import os\ntry:\n os.write(1, b'x')\nexcept OSError as e:\n print(e.strerror, file=__import__('sys').stderr); raise SystemExit(3)\""
    fault = {
        "name": "reset",
        "match": {"direction": "send", "process": PY, "fd": 1},
        "action": {"errno": {"name": "ECONNRESET"}},
    }
    proc, records = faulted(tmp_path, [fault], f"{writer} | cat")
    assert b"Connection reset by peer" in proc.stderr
    assert [e["status"] for e in events(records, "exit") if e.get("exe") == str(Path(PY).resolve())] == ["3"]


def test_truncating_a_read_delivers_fewer_bytes(tmp_path: Path) -> None:
    fault = {"name": "half", "match": {"direction": "recv", "process": "wc"}, "action": {"truncate": {"fraction": 0.5}}}
    proc, records = faulted(tmp_path, [fault], "seq 1000 | wc -c")
    assert proc.stdout.strip() == str(3893 // 2).encode()  # seq writes 3893 bytes in one write
    [rec] = with_fault(records, "half")
    assert rec["verdict"]["done"] == f"short read: {3893 // 2} of 3893 bytes"


def test_truncating_a_write_is_a_short_write(tmp_path: Path) -> None:
    writer = f"{PY} -c \"import os, sys; n = os.write(1, b'x' * 100); print(n, file=sys.stderr)\""
    fault = {
        "name": "short",
        "match": {"direction": "send", "process": PY, "fd": 1},
        "action": {"truncate": {"to": 30}},
    }
    proc, _ = faulted(tmp_path, [fault], f"{writer} | wc -c")
    assert proc.stderr.split() == [b"30"]  # the writer is told 30 bytes went
    assert proc.stdout.strip() == b"30"


def test_corrupt_flips_bits_in_the_bytes_that_arrive(tmp_path: Path) -> None:
    writer = f"{PY} -c \"import os; os.write(1, b'A' * 64)\""
    fault = {"name": "flip", "match": {"direction": "send", "process": PY, "fd": 1}, "action": {"corrupt": {"bits": 3}}}
    proc, records = faulted(tmp_path, [fault], f"{writer} | cat > out.bin")
    got = (tmp_path / "out.bin").read_bytes()
    assert len(got) == 64 and got != b"A" * 64
    assert sum(bin(a ^ ord("A")).count("1") for a in got) in (1, 3)  # two flips of one bit cancel
    [rec] = with_fault(records, "flip")
    assert rec["verdict"]["action"] == "modified"


def test_duplicate_makes_the_reader_get_the_data_twice(tmp_path: Path) -> None:
    writer = f"{PY} -c \"import os; os.write(1, b'hello\\n')\""
    fault = {"name": "twice", "match": {"direction": "send", "process": PY, "fd": 1}, "action": {"duplicate": {}}}
    proc, records = faulted(tmp_path, [fault], f"{writer} | cat > out.txt")
    assert (tmp_path / "out.txt").read_bytes() == b"hello\nhello\n"


def test_drop_reports_success_and_delivers_nothing(tmp_path: Path) -> None:
    writer = f"{PY} -c \"import os, sys; print(os.write(1, b'one\\n'), os.write(1, b'two\\n'), file=sys.stderr)\""
    fault = {
        "name": "lost",
        "match": {"direction": "send", "process": PY, "fd": 1},
        "when": {"nth": 1},
        "action": {"drop": {}},
    }
    proc, records = faulted(tmp_path, [fault], f"{writer} | cat > out.txt")
    assert proc.stderr.split() == [b"4", b"4"]  # both writes reported as done
    assert (tmp_path / "out.txt").read_bytes() == b"two\n"
    [rec] = with_fault(records, "lost")
    assert rec["verdict"]["action"] == "dropped"


def test_delay_holds_the_call_and_delivers_the_data(tmp_path: Path) -> None:
    fault = {
        "name": "slow",
        "match": {"direction": "send", "process": "seq", "fd": 1},
        "action": {"delay": {"ms": 200}},
    }
    proc, records = faulted(tmp_path, [fault], "seq 5 | cat > out.txt")
    assert (tmp_path / "out.txt").read_bytes() == b"1\n2\n3\n4\n5\n"
    [rec] = with_fault(records, "slow")
    assert rec["verdict"]["action"] == "delayed" and rec["verdict"]["delay_ms"] == 200


def test_close_on_a_send_gives_the_writer_epipe(tmp_path: Path) -> None:
    writer = f"{PY} -c \"import os\ntry:\n os.write(1, b'x')\nexcept BrokenPipeError:\n raise SystemExit(7)\""
    fault = {"name": "cut", "match": {"direction": "send", "process": PY, "fd": 1}, "action": {"close": {}}}
    proc, records = faulted(tmp_path, [fault], f"{writer} | cat > out.txt")
    assert [e["status"] for e in events(records, "exit") if e.get("exe") == str(Path(PY).resolve())] == ["7"]
    assert (tmp_path / "out.txt").read_bytes() == b""


def test_close_on_a_receive_reads_end_of_file(tmp_path: Path) -> None:
    fault = {"name": "eof", "match": {"direction": "recv", "process": "head"}, "action": {"close": {}}}
    proc, records = faulted(tmp_path, [fault], "seq 10 | head -3")
    assert proc.stdout == b""  # nothing read: end of file at once
    # the fd is gone: head's own close of its input then fails
    assert b"head: -: Bad file descriptor" in proc.stderr
    assert exit_of(records, "head") == "1"


@pytest.mark.skipif(not shutil.which("socat"), reason="needs socat")
def test_duplicate_on_a_unix_socket_between_socat_processes(tmp_path: Path) -> None:
    cmd = (
        "socat -u UNIX-LISTEN:s.sock OPEN:got.txt,creat & "
        "while [ ! -S s.sock ]; do sleep 0.05; done; "
        "printf 'ping\\n' | socat -u - UNIX-CONNECT:s.sock; wait"
    )
    fault = {
        "name": "echo",
        "match": {"transport": "unix", "direction": "send", "channel": {"path": "*s.sock"}},
        "action": {"duplicate": {}},
    }
    proc, records = faulted(tmp_path, [fault], cmd)
    assert (tmp_path / "got.txt").read_bytes() == b"ping\nping\n"
    assert with_fault(records, "echo")


# ---------------------------------------------------------------- campaigns


def campaign(tmp_path: Path, text: str, *extra: str) -> list[dict[str, Any]]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    proc = subprocess.run(
        [*IPCPROXY, "campaign", str(path), "-o", str(out), "-q", *extra],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


PIPELINE = """\
version: 1
seed: 4
trace: "seq 1000 | sort -n | head -3"
golden_runs: 2
timeout_s: 3
env: {LC_ALL: C}
faults:
  - name: seq-eio
    match: {direction: send, process: /usr/bin/seq}
    action: {errno: {}}
  - name: seq-twice
    match: {direction: send, process: /usr/bin/seq}
    action: {duplicate: {}}
  - name: sort-half
    match: {direction: recv, process: /usr/bin/sort}
    action: {truncate: {fraction: 0.5}}
  - name: head-slow
    match: {direction: recv, process: /usr/bin/head}
    action: {delay: {ms: 6000}}
  - name: never
    match: {direction: send, process: /usr/bin/nothing-like-it}
    action: {drop: {}}
"""


def test_a_campaign_on_a_pipeline_classifies_outcomes(tmp_path: Path) -> None:
    results = {r["fault"]["name"]: r for r in campaign(tmp_path, PIPELINE, "-j", "2")}
    assert results["seq-eio"]["outcome"] == "handled"
    assert "/usr/bin/seq 1" in results["seq-eio"]["detail"]
    # every number twice: head prints 1 1 2 and leaves; sort, writing twice as much, ends by SIGPIPE
    assert results["seq-twice"]["outcome"] == "behaviour-shift"
    assert results["seq-twice"]["propagation"][0] == "/usr/bin/sort"
    # sort sorted half the numbers: the same first three, but its own output differs
    assert results["sort-half"]["outcome"] == "behaviour-shift"
    assert results["sort-half"]["propagation"][0] == "/usr/bin/sort"
    assert results["head-slow"]["outcome"] == "hang"
    assert results["never"]["outcome"] == "not-activated"
    first = results["seq-twice"]["first_divergence"]
    diff = subprocess.run(
        [
            *IPCPROXY,
            "diff",
            str(tmp_path / "out" / "golden-1.jsonl"),
            str(tmp_path / "out" / results["seq-twice"]["trace"]),
        ],
        capture_output=True,
        text=True,
    )
    assert diff.returncode == 1 and first is not None
    assert "first divergence: /usr/bin/seq at A #2 / B #2" in diff.stdout  # its write, now [duplicated]
    assert "+ pipe write fd 1: /usr/bin/head -> * 6 B '1\\n1\\n2\\n'" in diff.stdout


POOL = """\
version: 1
seed: 2
trace: "$PYTHON -c 'from multiprocessing import Pool; print(sum(Pool(2).map(abs, range(-50, 50))))'"
golden_runs: 2
timeout_s: 10
enumerate:
  match: {transport: pipe, direction: send}
  actions: [{errno: {}}, {corrupt: {bits: 4}}]
  sample: 3
"""


def test_a_campaign_on_a_multiprocessing_pool_runs_every_enumerated_fault(tmp_path: Path) -> None:
    results = campaign(tmp_path, POOL)
    assert len(results) == 6
    assert all(r["outcome"] != "error" for r in results), [r["detail"] for r in results]
    assert any(r["outcome"] not in ("no-effect", "not-activated") for r in results)


def test_a_bad_plan_is_refused_before_anything_runs(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\nfaults:\n  - match: {transport: pipe}\n    action: {errno: {name: EWHAT}}\n")
    marker = tmp_path / "ran"
    proc = subprocess.run(
        [*IPCPROXY, "trace", "-q", "-w", str(tmp_path / "t.jsonl"), "--faults", str(plan), "--", "touch", str(marker)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"ipcproxy: {plan}:4: errno 'EWHAT' is not an errno name (EIO, EPIPE, ECONNRESET, EAGAIN, ...)"
    ]
    assert not marker.exists() and not (tmp_path / "t.jsonl").exists()
