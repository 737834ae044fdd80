"""Policies over pipes, FIFOs and sockets: the language, the decisions, and learn -> check on real traces.

The traces are made here by running `ipcproxy trace` on real programs (coreutils, socat, Python's
multiprocessing); a policy learnt from one run must allow a held-out run of the same program, and
flag a planted misuse (a new peer, another socket, other bytes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import trace_unavailable
from ipcproxy.model import Action
from ipcproxy.policy.datachannel import address_glob, path_glob
from ipcproxy.policy.decide import decide
from ipcproxy.policy.enforcer import Enforcer
from ipcproxy.policy.loader import PolicyError, parse_policy
from ipcproxy.syscall.intercept import data_context, syscall_action

IPCPROXY = [sys.executable, "-m", "ipcproxy"]
TIMEOUT = 120
PYTHON = "/usr/bin/python3"


def endpoint(exe: str, pid: int, uid: int = 0) -> dict[str, Any]:
    return {"bus_name": None, "names": [], "pid": pid, "uid": uid, "exe": exe, "comm": os.path.basename(exe)}


def record(direction: str, sender: dict[str, Any], destination: dict[str, Any], **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seq": 5,
        "transport": "unix",
        "type": "data",
        "direction": direction,
        "syscall": "write" if direction == "send" else "read",
        "sender": sender,
        "destination": destination,
        "channel": {"kind": "unix", "inode": 123, "path": "/run/app/ctl.sock", "socktype": "stream"},
        "pid": (sender if direction == "send" else destination)["pid"],
        "fd": 5,
        "size": 5,
        "payload": b"PING\n".hex(),
        "fds": 0,
        "verdict": "forwarded",
    }
    out.update(kw)
    return out


CLIENT = endpoint("/usr/bin/socat", 100)
SERVER = endpoint("/usr/sbin/appd", 200)
OTHER = endpoint("/usr/bin/nc.openbsd", 300)

POLICY = """\
version: 1
components:
- component: /usr/bin/socat
  uid: 0
  rules:
  - send: data
    to: /usr/sbin/appd
    transport: unix
    channel: {path: /run/app/ctl.sock, socktype: stream}
    size: [1, 64]
    payload: {prefix: "PING", regex: '[A-Z\\n]*'}
  - receive: data
    from: /usr/sbin/appd
    transport: unix
    channel: {path: /run/app/ctl.sock}
- component: /usr/sbin/appd
  errno: EPERM
  rules:
  - receive: data
    from: /usr/bin/socat
    transport: unix
"""


def test_a_component_may_send_to_one_peer_on_one_channel_and_nothing_else() -> None:
    policy = parse_policy(POLICY, "p.yaml")
    ok = decide(policy, data_context(record("send", CLIENT, SERVER)))
    assert ok.allowed, ok.reason
    other_peer = decide(policy, data_context(record("send", CLIENT, OTHER)))
    assert not other_peer.allowed and other_peer.kind == "no-rule"
    assert "nc.openbsd" in other_peer.reason and other_peer.errno == "EACCES"
    other_path = record("send", CLIENT, SERVER, channel={"kind": "unix", "inode": 9, "path": "/run/x.sock"})
    assert decide(policy, data_context(other_path)).kind == "no-rule"
    tcp = record("send", CLIENT, SERVER, transport="tcp", channel={"kind": "tcp", "inode": 9, "remote": "1.2.3.4:80"})
    assert decide(policy, data_context(tcp)).kind == "no-rule"
    # the same peer and channel, other bytes: the nearest rule names what broke
    payload = decide(policy, data_context(record("send", CLIENT, SERVER, payload=b"PONG\n".hex())))
    assert not payload.allowed and payload.kind == "payload" and "line 6" in payload.reason
    big = decide(policy, data_context(record("send", CLIENT, SERVER, size=100)))
    assert not big.allowed and big.kind == "size"
    lower = decide(policy, data_context(record("send", CLIENT, SERVER, payload=b"PINGx".hex())))
    assert lower.kind == "payload"
    # receiving: the server's own errno
    assert decide(policy, data_context(record("recv", CLIENT, SERVER))).allowed
    denied = decide(policy, data_context(record("recv", OTHER, SERVER)))
    assert not denied.allowed and denied.errno == "EPERM"


def test_an_unknown_peer_matches_only_unknown_or_any() -> None:
    policy = parse_policy(POLICY, "p.yaml")
    nobody = {"bus_name": None, "names": []}
    assert decide(policy, data_context(record("recv", nobody, SERVER))).kind == "no-rule"
    allowed = POLICY.replace("from: /usr/bin/socat", "from: unknown")
    assert decide(parse_policy(allowed), data_context(record("recv", nobody, SERVER))).allowed
    assert not decide(parse_policy(allowed), data_context(record("recv", CLIENT, SERVER))).allowed


def test_enforce_denies_with_the_errno_and_complain_only_marks() -> None:
    policy = parse_policy(POLICY, "p.yaml")
    misuse = record("send", CLIENT, OTHER)
    verdict = Enforcer(policy, "enforce").intercept(data_context(misuse))
    assert verdict is not None and verdict.action is Action.DENY
    assert syscall_action(verdict, misuse).errno == 13  # EACCES
    recv = record("recv", OTHER, SERVER)
    verdict = Enforcer(policy, "enforce").intercept(data_context(recv))
    assert verdict is not None and syscall_action(verdict, recv).errno == 1  # EPERM, the server's errno
    verdict = Enforcer(policy, "complain").intercept(data_context(misuse))
    assert verdict is not None and verdict.action is Action.VIOLATION
    assert syscall_action(verdict, misuse).unchanged
    assert Enforcer(policy, "enforce").intercept(data_context(record("send", CLIENT, SERVER))) is None


def test_what_cannot_be_judged_is_denied() -> None:
    """A prefix longer than the bytes seen of a longer message: fail closed."""
    policy = parse_policy(POLICY, "p.yaml")
    cut = record("send", CLIENT, SERVER, payload=b"PI".hex(), size=5, truncated=True)
    verdict = Enforcer(policy, "enforce").intercept(data_context(cut))
    assert verdict is not None and verdict.action is Action.DENY
    assert verdict.notes["policy"] == "undecidable" and verdict.notes["errno"] == "EACCES"


@pytest.mark.parametrize(
    ("patch", "line", "reason"),
    [
        ("    transport: unix\n    channel: {path", 8, "'member' does not apply to a data rule"),
        ("    transport: pipes\n", 8, "transport 'pipes' is not one of"),
        ("    size: [64, 1]\n", 10, "low is above high"),
        ("    payload: {prefix: \"PING\", regex: '[A-Z'}\n", 11, "not a regular expression"),
        ("  errno: EWHATEVER\n", 17, "not an errno name"),
        ("    channel: {path: /run/app/ctl.sock, port: 80}\n", 9, "unknown key 'port'"),
    ],
)
def test_broken_data_rules_are_refused_with_file_and_line(patch: str, line: int, reason: str) -> None:
    lines = POLICY.splitlines(keepends=True)
    if patch.startswith("    transport: unix"):
        lines.insert(7, "    member: Get\n")
    else:
        key = patch.split(":")[0]
        index = next(i for i, text in enumerate(lines) if text.startswith(key + ":"))
        lines[index] = patch
    with pytest.raises(PolicyError) as info:
        parse_policy("".join(lines), "p.yaml")
    assert str(info.value).startswith(f"p.yaml:{line}: "), str(info.value)
    assert reason in str(info.value)


def test_dbus_keys_and_data_keys_do_not_mix() -> None:
    text = "version: 1\ncomponents:\n- component: a.b\n  rules:\n  - send: method_call\n    transport: pipe\n"
    with pytest.raises(PolicyError, match=r"p.yaml:6: 'transport' does not apply to a method_call rule"):
        parse_policy(text, "p.yaml")


def test_names_that_change_between_runs_are_generalised() -> None:
    assert path_glob("/tmp/tmpk3j_q9x2/s.sock") == "/tmp/*/s.sock"
    assert (
        path_glob("/tmp/pytest-of-root/pytest-12/test_x0/srv1.sock") == "/tmp/pytest-of-root/pytest-*/test_x*/srv*.sock"
    )
    assert path_glob("/run/dbus/system_bus_socket") == "/run/dbus/system_bus_socket"
    assert path_glob("/run/user/1000/bus") == "/run/user/1000/bus"
    assert address_glob("127.0.0.1:41234") == "127.0.0.1:*"
    assert address_glob("127.0.0.1:8080") == "127.0.0.1:8080"
    assert address_glob("[::1]:53") == "[::1]:53"


# ---- real traces -----------------------------------------------------------------------------------


_REASON = trace_unavailable()
real = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def trace(path: Path, command: str, *extra: str) -> Path:
    proc = subprocess.run(
        [*IPCPROXY, "trace", "-q", "-w", str(path), *extra, "--", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    return path


def ipcproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IPCPROXY, *args], capture_output=True, text=True, timeout=TIMEOUT)


def learn(policy: Path, *traces: Path) -> str:
    proc = ipcproxy("learn", *map(str, traces), "-o", str(policy))
    assert proc.returncode == 0, proc.stderr
    return policy.read_text()


def check(policy: Path, *traces: Path) -> tuple[int, list[dict[str, Any]]]:
    proc = ipcproxy("check", str(policy), *map(str, traces), "--json")
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


PIPELINE = "seq {n} | sort -rn | head -5 >/dev/null; printf '{text}\\n' | tr a-z A-Z >/dev/null"


@real
def test_pipeline_learnt_from_one_run_allows_another_and_flags_a_new_reader(tmp_path: Path) -> None:
    run1 = trace(tmp_path / "run1.jsonl", PIPELINE.format(n=3000, text="hello world"))
    run2 = trace(tmp_path / "run2.jsonl", PIPELINE.format(n=5000, text="good morning"))
    policy = tmp_path / "p.yaml"
    text = learn(policy, run1)
    assert "send: data" in text and "receive: data" in text and "transport: pipe" in text
    assert "inode" not in text  # pipes are named by fd and peers, never by inode
    status, findings = check(policy, run2)
    assert (status, findings) == (0, [])
    # misuse: sort's output goes to a program that never read it, and tr is fed other bytes
    run3 = trace(
        tmp_path / "run3.jsonl", "seq 3000 | sort -rn | tee /dev/null >/dev/null; printf 'rm -rf /\\n' | tr a-z A-Z"
    )
    status, findings = check(policy, run3)
    assert status == 1
    kinds = {(f["component"].split(" ")[0], f["kind"]) for f in findings}
    assert ("/usr/bin/tee", "no-profile") in kinds
    assert ("/usr/bin/tr", "payload") in kinds, findings
    assert all(f["trace"].endswith("run3.jsonl") for f in findings)


SOCAT = (
    "socat UNIX-LISTEN:{d}/srv.sock SYSTEM:'tr a-z A-Z' & "
    "i=0; while [ ! -S {d}/srv.sock ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; "
    "printf '{text}' | socat - UNIX-CONNECT:{d}/srv.sock; wait"
)


@real
@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_socat_server_and_client_learnt_then_checked(tmp_path: Path) -> None:
    dirs = [tmp_path / f"tmp{name}" for name in ("a9x2", "b7q1", "c3z0")]
    for d in dirs:
        d.mkdir()
    run1 = trace(tmp_path / "run1.jsonl", SOCAT.format(d=dirs[0], text="ping\\npong\\n"))
    run2 = trace(tmp_path / "run2.jsonl", SOCAT.format(d=dirs[1], text="pong\\nping\\nping\\n"))
    policy = tmp_path / "p.yaml"
    text = learn(policy, run1)
    assert "transport: unix" in text and "srv.sock" in text and "a9x2" not in text
    assert check(policy, run2) == (0, [])
    # misuse: the client talks to another server, and sends other bytes
    other = SOCAT.format(d=dirs[2], text="ping\\n").replace("srv.sock", "admin.sock")
    run3 = trace(tmp_path / "run3.jsonl", other + "; " + SOCAT.format(d=dirs[2], text="PING; cat /etc/shadow\\n"))
    status, findings = check(policy, run3)
    assert status == 1
    reasons = " ".join(f["reason"] + " " + f["message"] for f in findings)
    assert "admin.sock" in reasons
    assert any(f["kind"] == "payload" and f["component"].startswith("/usr/bin/socat") for f in findings), findings


POOL = textwrap.dedent(
    """
    import multiprocessing as mp, socket, sys
    def square(x):
        return x * x
    if __name__ == "__main__":
        mp.set_start_method("fork")
        with mp.Pool(3) as pool:
            print(sum(pool.map(square, range(int(sys.argv[1])), chunksize=10)))
        if len(sys.argv) > 2:
            a, b = socket.socketpair()
            a.sendall(b"exfiltrate")
            print("sent", b.recv(100))
    """
)


@real
@pytest.mark.skipif(not os.path.exists(PYTHON), reason=f"{PYTHON} is not installed")
def test_multiprocessing_pool_learnt_then_checked(tmp_path: Path) -> None:
    script = tmp_path / "pool.py"
    script.write_text(POOL)
    run1 = trace(tmp_path / "run1.jsonl", f"{PYTHON} {script} 200")
    run2 = trace(tmp_path / "run2.jsonl", f"{PYTHON} {script} 300")
    policy = tmp_path / "p.yaml"
    learn(policy, run1)
    assert check(policy, run2) == (0, [])
    run3 = trace(tmp_path / "run3.jsonl", f"{PYTHON} {script} 200 misuse")
    status, findings = check(policy, run3)
    assert status == 1
    unix = [f for f in findings if " unix " in f["message"]]
    assert unix and all(f["kind"] == "no-rule" for f in unix), findings


@real
def test_learn_and_check_a_mixed_set_of_traces(tmp_path: Path) -> None:
    """A D-Bus trace and a syscall trace learnt together: one policy with both kinds of rules."""
    dbus_trace = Path(__file__).parent / "fixtures" / "trace-v1.jsonl"
    run1 = trace(tmp_path / "run1.jsonl", PIPELINE.format(n=100, text="hi"))
    policy = tmp_path / "p.yaml"
    text = learn(policy, dbus_trace, run1)
    assert "send: data" in text and "method_call" in text
    assert check(policy, dbus_trace, run1) == (0, [])
    diff = ipcproxy("diff-policy", str(policy), str(policy))
    assert diff.returncode == 0, diff.stdout


# ---- live: the learnt policy enforced by `ipcproxy trace --policy` ----------------------------------


def denials(path: Path, action: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        r
        for r in records
        if r.get("type") == "data" and isinstance(r.get("verdict"), dict) and r["verdict"].get("action") == action
    ]


def traced(path: Path, policy: Path, mode: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IPCPROXY, "trace", "-q", "-w", str(path), "--policy", str(policy), "--mode", mode, "--", *command],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@real
def test_enforced_pipeline_policy_blocks_other_bytes_with_eacces_and_nothing_else(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    learn(policy, trace(tmp_path / "run1.jsonl", PIPELINE.format(n=3000, text="hello world")))
    held_out = traced(tmp_path / "run2.jsonl", policy, "enforce", "sh", "-c", PIPELINE.format(n=5000, text="good day"))
    assert held_out.returncode == 0, held_out.stderr
    assert denials(tmp_path / "run2.jsonl", "denied") == []
    misuse = "printf 'rm -rf /\\n' | tr a-z A-Z >/dev/null"
    blocked = traced(tmp_path / "run3.jsonl", policy, "enforce", "sh", "-c", misuse)
    denied = denials(tmp_path / "run3.jsonl", "denied")
    assert denied, blocked.stderr
    # the bytes printf tried to send are refused (and its complaint on stderr, a pipe it never wrote to)
    assert denied[0]["payload"] == b"rm -rf /\n".hex() and denied[0]["verdict"]["policy"] == "payload"
    assert all(r["direction"] == "send" and r["verdict"]["errno"] == "EACCES" for r in denied)
    records = [json.loads(line) for line in (tmp_path / "run3.jsonl").read_text().splitlines()]
    assert not [r for r in records if r.get("direction") == "recv" and r.get("size")]  # tr read nothing
    # complain mode: the same misuse runs, and is only recorded
    complained = traced(tmp_path / "run4.jsonl", policy, "complain", "sh", "-c", misuse)
    assert complained.returncode == 0, complained.stderr
    assert denials(tmp_path / "run4.jsonl", "denied") == []
    assert denials(tmp_path / "run4.jsonl", "violation")


@real
@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_enforced_socat_policy_allows_a_held_out_session(tmp_path: Path) -> None:
    dirs = [tmp_path / f"tmp{name}" for name in ("a9x2", "b7q1")]
    for d in dirs:
        d.mkdir()
    policy = tmp_path / "p.yaml"
    learn(policy, trace(tmp_path / "run1.jsonl", SOCAT.format(d=dirs[0], text="ping\\npong\\n")))
    held_out = traced(tmp_path / "run2.jsonl", policy, "enforce", "sh", "-c", SOCAT.format(d=dirs[1], text="pong\\n"))
    assert held_out.returncode == 0, held_out.stderr
    assert held_out.stdout == "PONG\n"
    assert denials(tmp_path / "run2.jsonl", "denied") == []
