"""The seam between the syscall tracer and the chain: data records in, syscall actions out (sans-IO).

A message seen at the syscall level is judged by the same chain, policies
and fault plans as a D-Bus message. Two conversions make that possible, and
both live here so that every user agrees on them:

- ``data_context`` turns the fields of a data record (the dict
  ``records.data_fields`` builds, and that a trace file holds) into a chain
  ``Context``. The live tracer calls it with the facts of a syscall it has
  stopped (a send at its entry, a receive at its exit); ``learn``, ``check``,
  ``diff`` and campaign replays call it with records read back from a trace.
  So a policy or a fault selector matches a recorded message exactly as it
  matched the live one.
- ``syscall_action`` turns the chain's ``Verdict`` into what the stop loop
  does to the stopped syscall (fail it with an errno, skip it, hold it,
  rewrite its bytes, shorten it, run it again, close its fd).

Nothing here touches a process: tests feed record dicts and verdicts.
"""

from __future__ import annotations

import errno as errnos
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..chain import Context
from ..model import Action, Direction, Endpoint, Message, MessageType, Verdict

DEFAULT_DENY_ERRNO = errnos.EACCES
DEFAULT_FAULT_ERRNO = errnos.EIO


def is_data_record(record: Mapping[str, Any]) -> bool:
    """Whether a trace record is a message seen at the syscall level."""
    return record.get("type") == "data"


def payload_bytes(fields: Mapping[str, Any]) -> bytes:
    """The recorded payload (hex in a trace, bytes when built live)."""
    payload = fields.get("payload") or b""
    if isinstance(payload, str):
        return bytes.fromhex(payload)
    return bytes(payload)


def data_context(fields: Mapping[str, Any]) -> Context:
    """The chain's view of one data message: a ``DATA`` message, its two endpoints, its channel.

    ``message.member`` is the syscall, ``message.transport`` the channel's
    kind, ``message.raw`` the payload as recorded (its first bytes when the
    message was longer than the trace's max payload; the full length is
    ``ctx.data["size"]``). A send is seen from its sender (``TO_BUS``), a
    receive from its receiver (``FROM_BUS``), as the proxy sees a client's
    messages; both endpoints are set, so ``ctx.sender`` and
    ``ctx.destination`` never consult a bus.
    """
    sender = Endpoint.from_json(fields.get("sender"))
    destination = Endpoint.from_json(fields.get("destination"))
    message = Message(
        type=MessageType.DATA,
        member=fields.get("syscall"),
        transport=str(fields.get("transport") or "?"),
        raw=payload_bytes(fields),
        unix_fds=int(fields.get("fds") or 0),
    )
    message.set_args([])
    send = fields.get("direction") == "send"
    channel = fields.get("channel")
    return Context(
        message=message,
        direction=Direction.TO_BUS if send else Direction.FROM_BUS,
        client=sender if send else destination,
        seq=int(fields.get("seq") or 0),
        ts_ns=int(fields.get("ts") or 0),
        channel=dict(channel) if isinstance(channel, Mapping) else None,
        data=fields,
        _sender=sender,
        _destination=destination,
    )


@dataclass(frozen=True, slots=True)
class SyscallAction:
    """What the stop loop does to one stopped syscall; the default lets it run unchanged.

    At most one of ``errno``, ``skip`` and ``close`` is set; ``delay_s`` holds
    the calling thread first (whatever follows); ``payload`` and ``length``
    rewrite the bytes moved; ``copies`` > 1 runs a send that many times.
    """

    errno: int = 0  # the call fails with this errno without running (a receive: after it consumed the data)
    skip: bool = False  # the call does not run: a send reports its full length; a receive waits for the next data
    close: bool = False  # the channel is closed for the process: a send fails with EPIPE, a receive reads EOF
    delay_s: float = 0.0
    payload: bytes | None = None  # the bytes moved instead (written over the start of the buffer)
    length: int | None = None  # the call moves only this many bytes (a short write or read)
    copies: int = 1

    @property
    def unchanged(self) -> bool:
        return self == SyscallAction()


PASS = SyscallAction()


def errno_number(name: str | None, default: int) -> int:
    """An errno by name ("EPERM"), or ``default`` for None or a name that is not one."""
    if not name:
        return default
    value = getattr(errnos, str(name).upper(), None)
    if isinstance(value, int) and str(name).upper() in errnos.errorcode.values():
        return value
    return default


def _rewrite(verdict: Verdict, fields: Mapping[str, Any]) -> tuple[bytes | None, int | None]:
    """The replacement payload and the new length of a modified message.

    The replacement is compared with the payload as recorded: the same
    length (or longer, up to the message's size) is a rewrite of those bytes
    (corruption); shorter is a short write or read of that many bytes.
    """
    if verdict.replacement is None:
        return None, None
    new = bytes(verdict.replacement.raw)
    old = payload_bytes(fields)
    size = int(fields.get("size") or len(old))
    if len(new) < len(old):
        return (new if new != old[: len(new)] else None), len(new)
    new = new[:size]
    return (new if new != old else None), None


def syscall_action(verdict: Verdict, fields: Mapping[str, Any]) -> SyscallAction:
    """The syscall action of a chain verdict (docs/architecture.md, "Policies and faults at the syscall level")."""
    action = verdict.action
    delay = max(0.0, float(verdict.delay_s or 0.0))
    if action is Action.DENY:
        return SyscallAction(errno=errno_number(verdict.notes.get("errno"), DEFAULT_DENY_ERRNO), delay_s=delay)
    if action is Action.ERROR_REPLY:
        return SyscallAction(errno=errno_number(verdict.error_name, DEFAULT_FAULT_ERRNO), delay_s=delay)
    if action is Action.DROP:
        return SyscallAction(skip=True, delay_s=delay)
    if action is Action.DISCONNECT:
        return SyscallAction(close=True, delay_s=delay)
    payload, length = _rewrite(verdict, fields)
    copies = max(1, int(verdict.copies)) if action is Action.DUPLICATE else 1
    if fields.get("direction") != "send":
        copies = 1  # a receive is not repeated: there is nothing to deliver twice
    return SyscallAction(delay_s=delay, payload=payload, length=length, copies=copies)
