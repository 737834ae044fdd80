"""The seam between the tracer and the chain: data records as Contexts, verdicts as syscall actions.

The records are a real trace (tests/fixtures/syscall-data.jsonl: ``ipcproxy
trace --max-payload 16`` of a coreutils pipe, socat over a unix stream socket
and a Python datagram socketpair), read back as any offline tool reads them.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from ipcproxy.chain import Chain
from ipcproxy.model import Action, Direction, Message, MessageType, Verdict
from ipcproxy.syscall.intercept import PASS, SyscallAction, data_context, is_data_record, syscall_action

FIXTURE = Path(__file__).parent / "fixtures" / "syscall-data.jsonl"


def records() -> list[dict[str, Any]]:
    lines = FIXTURE.read_text().splitlines()[1:]
    return [r for r in map(json.loads, lines) if is_data_record(r)]


def first(**match: Any) -> dict[str, Any]:
    for record in records():
        if all(
            record.get(k) == v if not isinstance(v, dict) else record[k].items() >= v.items() for k, v in match.items()
        ):
            return record
    raise AssertionError(f"no record {match}")


def test_a_send_is_seen_from_its_sender() -> None:
    record = first(transport="unix", direction="send", syscall="write")
    ctx = data_context(record)
    assert ctx.message.type is MessageType.DATA
    assert ctx.message.transport == "unix"
    assert ctx.message.member == "write"
    assert ctx.message.raw == b"ping\n"
    assert ctx.direction is Direction.TO_BUS
    assert ctx.client.pid == record["sender"]["pid"] == ctx.sender.pid
    assert ctx.sender.exe == "/usr/bin/socat"
    assert ctx.destination.pid == record["destination"]["pid"]
    assert ctx.channel == record["channel"]
    assert ctx.channel is not None and ctx.channel["path"].endswith("s.sock")
    assert ctx.seq == record["seq"] and ctx.ts_ns == record["ts"]
    assert ctx.data is record


def test_a_receive_is_seen_from_its_receiver() -> None:
    record = first(transport="pipe", direction="recv", destination={"comm": "tr"})
    ctx = data_context(record)
    assert ctx.direction is Direction.FROM_BUS
    assert ctx.client.exe == "/usr/bin/tr" == ctx.destination.exe
    assert ctx.sender.pid == record["sender"]["pid"]
    assert ctx.message.raw == b"hello world, thi"  # the recorded first bytes
    assert ctx.data is not None and ctx.data["size"] == 28  # the full length
    assert ctx.message.args == []  # no body to decode: a rule on arguments sees none


def test_a_receiver_unknown_to_the_trace_is_an_empty_endpoint() -> None:
    record = first(syscall="sendto")
    ctx = data_context(record)
    assert record["destination"].get("pid") is None
    assert ctx.destination.pid is None and ctx.destination.component == "?"


def test_live_fields_with_bytes_give_the_same_context() -> None:
    record = first(transport="unix", direction="send", syscall="write")
    live = dict(record, payload=bytes.fromhex(record["payload"]))
    a, b = data_context(record), data_context(live)
    assert a.message.raw == b.message.raw
    assert (a.sender, a.destination, a.channel, a.direction) == (b.sender, b.destination, b.channel, b.direction)


def test_the_chain_runs_on_recorded_data() -> None:
    seen: list[tuple[str, str | None]] = []

    class Deny:
        name = "deny-unix"
        fail_closed = True

        def intercept(self, ctx: Any) -> Verdict | None:
            seen.append((ctx.message.transport, ctx.sender.comm))
            if ctx.channel and ctx.channel["kind"] == "unix" and ctx.direction is Direction.TO_BUS:
                return Verdict(Action.DENY, reason="no unix sends")
            return None

    chain = Chain.of([Deny()])
    verdicts = [chain.run(data_context(r)).action for r in records()]
    assert verdicts.count(Action.DENY) == 2 and len(seen) == len(records())


# ---------------------------------------------------------------- verdicts as syscall actions

SEND = first(transport="pipe", direction="send", size=28)  # 28 bytes, 16 recorded
RECV = first(transport="unix", direction="recv", syscall="read")  # "ping\n"


def test_forward_and_violation_change_nothing() -> None:
    assert syscall_action(Verdict(), SEND) is not None and syscall_action(Verdict(), SEND).unchanged
    assert syscall_action(Verdict(Action.VIOLATION, reason="r"), SEND) == PASS


def test_deny_fails_with_eacces_or_the_errno_named() -> None:
    assert syscall_action(Verdict(Action.DENY), SEND) == SyscallAction(errno=errno.EACCES)
    named = Verdict(Action.DENY, notes={"errno": "EPERM"})
    assert syscall_action(named, SEND).errno == errno.EPERM
    assert syscall_action(Verdict(Action.DENY, notes={"errno": "ENOTANERRNO"}), SEND).errno == errno.EACCES


def test_an_error_fault_fails_with_its_errno() -> None:
    assert syscall_action(Verdict(Action.ERROR_REPLY, error_name="ECONNRESET"), RECV).errno == errno.ECONNRESET
    # a D-Bus error name is no errno: the call fails with EIO
    dbus = Verdict(Action.ERROR_REPLY, error_name="org.freedesktop.DBus.Error.Failed")
    assert syscall_action(dbus, RECV).errno == errno.EIO


def test_drop_delay_duplicate_disconnect() -> None:
    assert syscall_action(Verdict(Action.DROP), SEND) == SyscallAction(skip=True)
    assert syscall_action(Verdict(Action.DELAY, delay_s=0.25), SEND) == SyscallAction(delay_s=0.25)
    assert syscall_action(Verdict(Action.DUPLICATE, copies=3), SEND).copies == 3
    assert syscall_action(Verdict(Action.DUPLICATE, copies=3), RECV).copies == 1
    assert syscall_action(Verdict(Action.DISCONNECT), RECV) == SyscallAction(close=True)


def _modified(raw: bytes) -> Verdict:
    return Verdict(Action.MODIFY, replacement=Message(type=MessageType.DATA, transport="pipe", raw=raw))


def test_a_same_length_replacement_corrupts_the_bytes() -> None:
    old = bytes.fromhex(SEND["payload"])
    flipped = bytes([old[0] ^ 0x01]) + old[1:]
    assert syscall_action(_modified(flipped), SEND) == SyscallAction(payload=flipped)
    assert syscall_action(_modified(old), SEND) == PASS  # the same bytes: nothing to do


def test_a_shorter_replacement_truncates() -> None:
    old = bytes.fromhex(SEND["payload"])
    assert syscall_action(_modified(old[:5]), SEND) == SyscallAction(length=5)
    assert syscall_action(_modified(b"HELLO"), SEND) == SyscallAction(payload=b"HELLO", length=5)


def test_a_replacement_never_grows_the_message() -> None:
    action = syscall_action(_modified(b"x" * 100), SEND)
    assert action.payload == b"x" * 28 and action.length is None


@pytest.mark.parametrize("record", records(), ids=lambda r: f"{r['seq']}-{r['syscall']}")
def test_every_recorded_message_passes_unchanged(record: dict[str, Any]) -> None:
    assert syscall_action(Chain().run(data_context(record)), record).unchanged
