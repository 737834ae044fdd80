"""The tracer's actions on real programs: each verdict kind carried out on a real syscall.

A small interceptor script (written by each test, loaded with ``-s``) returns
one verdict kind for the messages that carry a marker; what is under test is
the stop loop carrying it out: the programs (coreutils, socat, Python) see a
failed call, a skipped one, rewritten or shortened bytes, a repeated send, a
held thread or a closed channel, and the trace records every decision.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from test_syscall_trace import _REASON, IPCPROXY, TIMEOUT, comm, data, wait_for_socket

pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

SCRIPT = """
import os
from ipcproxy.api import Action, Context, Message, MessageType, Verdict, interceptor

KIND = os.environ["ACT"]
DIRECTION = os.environ.get("ACT_DIR", "send")
MARK = os.environ.get("ACT_MARK", "MARK").encode()
WHO = os.environ.get("ACT_COMM")  # only the calls of this program (the sender of a send, the reader of a receive)


@interceptor
def act(ctx: Context) -> Verdict | None:
    if (ctx.data or {}).get("direction") != DIRECTION or MARK not in ctx.message.raw:
        return None
    if WHO and (ctx.sender if DIRECTION == "send" else ctx.destination).comm != WHO:
        return None
    raw = ctx.message.raw
    if KIND == "deny":
        return Verdict(Action.DENY, reason="no marks")
    if KIND == "eperm":
        return Verdict(Action.DENY, reason="no marks", notes={"errno": "EPERM"})
    if KIND == "complain":
        return Verdict(Action.VIOLATION, reason="no marks")
    if KIND == "error":
        return Verdict(Action.ERROR_REPLY, error_name=os.environ.get("ACT_ERRNO", "EIO"))
    if KIND == "drop":
        return Verdict(Action.DROP, reason="lost")
    if KIND == "corrupt":
        return Verdict(Action.MODIFY, replacement=Message(MessageType.DATA, raw=raw.replace(b"MARK", b"MXRK")))
    if KIND == "truncate":
        return Verdict(Action.MODIFY, replacement=Message(MessageType.DATA, raw=raw[: int(os.environ["ACT_LEN"])]))
    if KIND == "duplicate":
        return Verdict(Action.DUPLICATE, copies=3)
    if KIND == "delay":
        return Verdict(Action.DELAY, delay_s=float(os.environ.get("ACT_DELAY", "0.2")))
    if KIND == "close":
        return Verdict(Action.DISCONNECT)
    raise ValueError(KIND)
"""


def decide(
    tmp_path: Path, kind: str, cmd: list[str], **env: str
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    script = tmp_path / "act.py"
    script.write_text(SCRIPT)
    trace = tmp_path / "trace.jsonl"
    proc = subprocess.run(
        [*IPCPROXY, "trace", "-q", "--force", "-s", str(script), "-w", str(trace), "--", *cmd],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "ACT": kind, **env},
    )
    records = [json.loads(line) for line in trace.read_text().splitlines()] if trace.exists() else []
    return proc, records


def marked(records: list[dict[str, Any]], who: str | None = None, **match: Any) -> list[dict[str, Any]]:
    """The records with the marker; with ``who``, only those of that program's calls."""
    out = [r for r in data(records, **match) if b"MARK" in bytes.fromhex(r["payload"])]
    if who is not None:
        out = [r for r in out if comm(r["sender" if r["direction"] == "send" else "destination"]) == who]
    return out


def verdict(record: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(record["verdict"], dict), record
    return record["verdict"]


# the writer is coreutils printf, the reader cat; the shell reports how each ended
PIPE = ["sh", "-c", "/usr/bin/printf 'MARK hello\\n' | /usr/bin/cat; echo \"exit ${?}\""]
PIPE_STATUS = ["sh", "-c", "/usr/bin/printf 'MARK hello\\n' | { /usr/bin/cat; echo \"cat ${?}\"; }"]


# ---------------------------------------------------------------- sends, decided at their entry


def test_deny_fails_the_write_with_eacces_and_records_the_rule(tmp_path: Path) -> None:
    proc, records = decide(
        tmp_path, "deny", ["sh", "-c", "/usr/bin/printf 'MARK hello\\n' | /usr/bin/cat"], ACT_COMM="printf"
    )
    assert proc.stdout == ""  # nothing reached cat
    assert "Permission denied" in proc.stderr  # printf's own report of EACCES
    (write,) = marked(records, "printf", direction="send")
    assert comm(write["sender"]) == "printf" and write["syscall"] == "write" and write["size"] == 11
    assert verdict(write) == {"action": "denied", "reason": "no marks", "by": "act", "errno": "EACCES"}
    assert not marked(records, "cat", direction="recv")


def test_deny_with_a_named_errno(tmp_path: Path) -> None:
    proc, records = decide(
        tmp_path, "eperm", ["sh", "-c", "/usr/bin/printf 'MARK hello\\n' | /usr/bin/cat"], ACT_COMM="printf"
    )
    assert "Operation not permitted" in proc.stderr and proc.stdout == ""
    (write,) = marked(records, "printf", direction="send")
    assert verdict(write)["errno"] == "EPERM"


def test_complain_mode_lets_the_write_run_and_records_the_violation(tmp_path: Path) -> None:
    proc, records = decide(tmp_path, "complain", PIPE, ACT_COMM="printf")
    assert proc.stdout == "MARK hello\nexit 0\n"
    (write,) = marked(records, "printf", direction="send")
    assert verdict(write)["action"] == "violation"
    (read,) = marked(records, "cat", direction="recv")
    assert read["consumed"] == [write["seq"]] and read["verdict"] == "forwarded"


def test_an_errno_fault(tmp_path: Path) -> None:
    proc, records = decide(tmp_path, "error", PIPE, ACT_ERRNO="ENOSPC", ACT_COMM="printf")
    assert "No space left on device" in proc.stderr and proc.stdout == "exit 0\n"
    (write,) = marked(records, "printf", direction="send")
    assert verdict(write)["errno"] == "ENOSPC" and verdict(write)["action"] == "error_reply"


def test_drop_reports_success_and_delivers_nothing(tmp_path: Path) -> None:
    proc, records = decide(tmp_path, "drop", PIPE, ACT_COMM="printf")
    assert proc.stdout == "exit 0\n" and proc.stderr == ""  # printf believes it wrote
    (write,) = marked(records, "printf", direction="send")
    assert verdict(write)["action"] == "dropped" and write["size"] == 11
    assert not marked(records, "cat", direction="recv")


def test_corrupt_rewrites_the_bytes_sent_and_gives_the_program_its_buffer_back(tmp_path: Path) -> None:
    # Python writes the same buffer twice: the second write must carry the program's own bytes
    program = "import os; b = b'MARK hello\\n'; os.write(1, b); os.write(1, b'2nd ' + b[:4] + b'\\n')"
    cmd = ["sh", "-c", f'{sys.executable} -c "{program}" | /usr/bin/cat']
    proc, records = decide(tmp_path, "corrupt", cmd, ACT_MARK="MARK hello")
    assert proc.stdout == "MXRK hello\n2nd MARK\n"
    (write,) = [r for r in data(records, direction="send", syscall="write", fd=1) if comm(r["sender"]) != "cat"][:1]
    assert bytes.fromhex(write["payload"]) == b"MXRK hello\n"
    assert verdict(write)["action"] == "modified"
    (read,) = [r for r in data(records, direction="recv") if r["consumed"] == [write["seq"]]]
    assert bytes.fromhex(read["payload"]) == b"MXRK hello\n"


def test_truncate_is_a_short_write_the_program_completes(tmp_path: Path) -> None:
    proc, records = decide(tmp_path, "truncate", PIPE, ACT_LEN="4", ACT_COMM="printf")
    assert proc.stdout == "MARK hello\nexit 0\n"  # printf writes the rest itself
    writes = [r for r in data(records, direction="send") if comm(r["sender"]) == "printf"]
    assert [bytes.fromhex(r["payload"]) for r in writes] == [b"MARK", b" hello\n"]
    assert verdict(writes[0])["action"] == "modified" and writes[1]["verdict"] == "forwarded"


def test_truncate_a_writev(tmp_path: Path) -> None:
    program = "import os; print(os.writev(1, [b'MARK ', b'hel', b'lo\\n']), file=__import__('sys').stderr)"
    cmd = ["sh", "-c", f'{sys.executable} -c "{program}" | /usr/bin/cat']
    proc, records = decide(tmp_path, "truncate", cmd, ACT_LEN="7")
    assert proc.stdout == "MARK he" and proc.stderr.strip() == "7"
    (write,) = marked(records, direction="send", syscall="writev")
    assert write["syscall"] == "writev" and write["size"] == 7


def test_duplicate_sends_the_message_three_times(tmp_path: Path) -> None:
    proc, records = decide(tmp_path, "duplicate", PIPE, ACT_COMM="printf")
    assert proc.stdout == "MARK hello\n" * 3 + "exit 0\n"
    writes = marked(records, "printf", direction="send")
    assert len(writes) == 3
    assert verdict(writes[0])["action"] == "duplicated" and verdict(writes[0])["copies"] == 3
    assert [verdict(w)["action"] for w in writes[1:]] == ["injected", "injected"]
    reads = [r for r in data(records, direction="recv") if comm(r["destination"]) == "cat"]
    assert sum(r["size"] for r in reads) == 33
    assert sorted(s for r in reads for s in r["consumed"]) == sorted(w["seq"] for w in writes)


def test_close_on_a_pipe_closes_the_writers_end(tmp_path: Path) -> None:
    proc, records = decide(tmp_path, "close", PIPE_STATUS, ACT_COMM="printf")
    assert "Broken pipe" in proc.stderr  # printf's write failed with EPIPE
    assert proc.stdout == "cat 0\n"  # cat read EOF: no writer was left
    (write,) = marked(records, "printf", direction="send")
    assert verdict(write)["action"] == "disconnected"


# ---------------------------------------------------------------- receives, decided at their exit


def test_deny_a_read(tmp_path: Path) -> None:
    proc, records = decide(tmp_path, "deny", PIPE_STATUS, ACT_DIR="recv", ACT_COMM="cat")
    assert "Permission denied" in proc.stderr and proc.stdout == "cat 1\n"
    (read,) = marked(records, "cat", direction="recv")
    assert comm(read["destination"]) == "cat" and verdict(read)["errno"] == "EACCES"
    (write,) = marked(records, "printf", direction="send")
    assert read["consumed"] == [write["seq"]] and write["verdict"] == "forwarded"


def test_drop_a_read_consumes_the_data_and_reads_on(tmp_path: Path) -> None:
    proc, records = decide(tmp_path, "drop", PIPE_STATUS, ACT_DIR="recv", ACT_COMM="cat")
    assert proc.stdout == "cat 0\n"  # cat read on, to EOF
    (read,) = marked(records, "cat", direction="recv")
    assert verdict(read)["action"] == "dropped"


def test_corrupt_and_truncate_a_read(tmp_path: Path) -> None:
    proc, records = decide(tmp_path, "corrupt", PIPE_STATUS, ACT_DIR="recv", ACT_COMM="cat")
    assert proc.stdout == "MXRK hello\ncat 0\n"
    (read,) = marked(records, "cat", direction="recv")
    assert verdict(read)["action"] == "modified"
    proc, records = decide(tmp_path, "truncate", PIPE_STATUS, ACT_DIR="recv", ACT_LEN="6", ACT_COMM="cat")
    assert proc.stdout == "MARK hcat 0\n"


def test_close_a_read_gives_eof(tmp_path: Path) -> None:
    proc, records = decide(tmp_path, "close", PIPE_STATUS, ACT_DIR="recv", ACT_COMM="cat")
    assert proc.stdout.endswith("cat 1\n") and "MARK" not in proc.stdout
    assert "Bad file descriptor" in proc.stderr  # cat's own close(0) found its stdin closed
    (read,) = marked(records, "cat", direction="recv")
    assert verdict(read)["action"] == "disconnected"


# ---------------------------------------------------------------- sockets


def test_socat_client_denied_on_a_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    script = (
        f'socat UNIX-LISTEN:{sock} EXEC:"tr a-z A-Z" & {wait_for_socket(sock)}; '
        f'echo MARK | socat - UNIX-CONNECT:{sock}; echo "client ${{?}}"; wait'
    )
    proc, records = decide(tmp_path, "deny", ["sh", "-c", script], ACT_COMM="socat")
    assert "Permission denied" in proc.stderr and "MARK" not in proc.stdout
    (denied,) = marked(records, "socat", direction="send")
    assert denied["transport"] == "unix" and denied["channel"]["path"] == str(sock)
    assert verdict(denied)["errno"] == "EACCES"
    assert not [r for r in data(records, direction="recv") if comm(r["destination"]) == "tr"]  # tr got nothing


def test_close_shuts_a_socket_down(tmp_path: Path) -> None:
    program = textwrap.dedent(
        """
        import socket, sys
        a, b = socket.socketpair()
        try:
            a.send(b"MARK")
        except OSError as exc:
            print("send", exc.errno)
        print("recv", b.recv(10))  # the peer's shutdown: EOF
        try:
            a.send(b"again")
        except OSError as exc:
            print("again", exc.errno)
        """
    )
    proc, records = decide(tmp_path, "close", [sys.executable, "-c", program])
    assert proc.stdout.splitlines() == ["send 32", "recv b''", "again 32"]  # EPIPE, EOF, EPIPE
    (send,) = marked(records, direction="send")
    assert send["transport"] == "unix" and verdict(send)["action"] == "disconnected"


def test_corrupt_a_datagram_and_a_sendmsg(tmp_path: Path) -> None:
    program = textwrap.dedent(
        """
        import socket
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.sendto(b"MARK one", b.getsockname() or None) if False else a.send(b"MARK one")
        a.sendmsg([b"MARK", b" two"])
        print(b.recv(64), b.recv(64))
        """
    )
    proc, records = decide(tmp_path, "corrupt", [sys.executable, "-c", program])
    assert proc.stdout.strip() == "b'MXRK one' b'MXRK two'"
    sent = [r for r in data(records, direction="send") if r["transport"] == "unix"]
    assert [r["syscall"] for r in sent] == ["sendto", "sendmsg"]
    assert all(verdict(r)["action"] == "modified" for r in sent)


# ---------------------------------------------------------------- a held thread


def test_a_delay_holds_only_the_calling_thread(tmp_path: Path) -> None:
    # thread A's write is held; thread B, started once A is about to write, does five round
    # trips through a child process meanwhile; the main thread sees B finish before A's bytes
    program = textwrap.dedent(
        """
        import os, threading
        r1, w1 = os.pipe()
        about_to_write = threading.Event()
        def a():
            about_to_write.set()
            os.write(w1, b"MARK from A")
        def b():
            about_to_write.wait()
            to_child, from_child = os.pipe(), os.pipe()
            if os.fork() == 0:
                for _ in range(5):
                    os.write(from_child[1], os.read(to_child[0], 10).upper())
                os._exit(0)
            for i in range(5):
                os.write(to_child[1], b"ping")
                assert os.read(from_child[0], 10) == b"PING"
            print("B done", flush=True)
        ta, tb = threading.Thread(target=a), threading.Thread(target=b)
        ta.start(); tb.start()
        print(os.read(r1, 64).decode(), flush=True)
        ta.join(); tb.join()
        """
    )
    proc, records = decide(tmp_path, "delay", [sys.executable, "-c", program], ACT_DELAY="3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["B done", "MARK from A"]
    (write,) = [r for r in marked(records, direction="send") if r["fd"] != 1]  # not the print of what came
    assert verdict(write) == {"action": "delayed", "by": "act", "delay_ms": 3000.0}
    pings = [r for r in data(records, direction="send") if bytes.fromhex(r["payload"]) == b"ping"]
    assert len(pings) == 5 and all(p["seq"] < write["seq"] for p in pings)


# ---------------------------------------------------------------- a real policy and a real fault plan


def trace_with(
    tmp_path: Path, *options: str, cmd: list[str]
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    trace = tmp_path / "trace.jsonl"
    proc = subprocess.run(
        [*IPCPROXY, "trace", "-q", "--force", *options, "-w", str(trace), "--", *cmd],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    records = [json.loads(line) for line in trace.read_text().splitlines()] if trace.exists() else []
    return proc, records


# printf may send nothing; every other program has no profile and is allowed
PRINTF_MAY_NOT_SEND = (
    "format: ipcproxy-policy\nversion: 1\nunknown: allow\ncomponents:\n- component: /usr/bin/printf\n  rules: []\n"
)


def test_a_policy_denies_the_write_printf_has_no_rule_for(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(PRINTF_MAY_NOT_SEND)
    proc, records = trace_with(tmp_path, "--policy", str(policy), cmd=PIPE_STATUS)
    assert proc.stdout == "cat 0\n"  # nothing reached cat
    # printf's own error message, on its stderr (a pipe too), was denied as well
    writes = [r for r in data(records, direction="send") if comm(r["sender"]) == "printf"]
    assert bytes.fromhex(writes[0]["payload"]) == b"MARK hello\n" and len(writes) >= 2
    for write in writes:
        v = verdict(write)
        assert v["action"] == "denied" and v["by"] == "policy" and v["errno"] == "EACCES"
        assert "/usr/bin/printf" in v["reason"] and "send: data" in v["needed"]
    assert b"Permission denied" in b"".join(bytes.fromhex(w["payload"]) for w in writes)


def test_the_same_policy_in_complain_mode_only_records(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(PRINTF_MAY_NOT_SEND)
    proc, records = trace_with(tmp_path, "--policy", str(policy), "--mode", "complain", cmd=PIPE_STATUS)
    assert proc.stdout == "MARK hello\ncat 0\n" and proc.stderr == ""
    (write,) = [r for r in data(records, direction="send") if comm(r["sender"]) == "printf"]
    (read,) = [r for r in data(records, direction="recv") if comm(r["destination"]) == "cat"]
    assert verdict(write)["action"] == "violation" and verdict(write)["by"] == "policy"
    assert read["verdict"] == "forwarded"  # cat has no profile: allowed
    assert read["consumed"] == [write["seq"]]


def test_a_fault_plan_drops_the_first_write_of_printf(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "version: 1\nfaults:\n  - name: lose-first\n    match: {sender: /usr/bin/printf}\n"
        "    when: {nth: 1}\n    action: {drop: {}}\n"
    )
    cmd = ["sh", "-c", "/usr/bin/printf 'one\\n' | /usr/bin/cat; /usr/bin/printf 'two\\n' | /usr/bin/cat"]
    proc, records = trace_with(tmp_path, "--faults", str(plan), "--seed", "1", cmd=cmd)
    assert proc.stdout == "two\n" and proc.returncode == 0
    one, two = [r for r in data(records, direction="send") if comm(r["sender"]) == "printf"]
    assert verdict(one)["fault"] == "lose-first" and verdict(one)["action"] == "dropped"
    assert two["verdict"] == "forwarded"


@pytest.mark.parametrize(
    ("action", "stdout", "stderr_has", "recorded"),
    [
        ("{errno: {name: ENOSPC}}", "cat 0\n", "No space left on device", "error_reply"),
        ("{truncate: {to: 4}}", "MARK hello\ncat 0\n", "", "modified"),  # printf writes the rest itself
        ("{close: {}}", "cat 0\n", "Broken pipe", "disconnected"),
        ("{duplicate: {copies: 2}}", "MARK hello\nMARK hello\ncat 0\n", "", "duplicated"),
    ],
)
def test_a_data_fault_plan_on_printfs_write(
    tmp_path: Path, action: str, stdout: str, stderr_has: str, recorded: str
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "version: 1\nfaults:\n  - name: f\n"
        f"    match: {{transport: pipe, direction: send, process: /usr/bin/printf}}\n    when: {{nth: 1}}\n"
        f"    action: {action}\n"
    )
    proc, records = trace_with(tmp_path, "--faults", str(plan), cmd=PIPE_STATUS)
    assert proc.stdout == stdout and stderr_has in proc.stderr
    first = [r for r in data(records, direction="send") if comm(r["sender"]) == "printf"][0]
    assert verdict(first)["action"] == recorded and verdict(first)["fault"] == "f"


# ---------------------------------------------------------------- no chain, bad input


def test_without_a_chain_no_call_is_decided(tmp_path: Path) -> None:
    trace = tmp_path / "plain.jsonl"
    proc = subprocess.run(
        [*IPCPROXY, "trace", "-q", "-w", str(trace), "--", *PIPE], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.stdout == "MARK hello\nexit 0\n"
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert {r["verdict"] for r in data(records)} == {"forwarded"}


@pytest.mark.parametrize("option", ["--policy", "--faults"])
def test_a_broken_policy_or_plan_stops_before_anything_runs(tmp_path: Path, option: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\n  - : [\n")
    ran = tmp_path / "ran"
    proc = subprocess.run(
        [*IPCPROXY, "trace", "-q", option, str(bad), "--", "touch", str(ran)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("ipcproxy: ") and f"{bad}:" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not ran.exists()
