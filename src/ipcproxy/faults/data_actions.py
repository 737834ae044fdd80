"""A fault's action as the Verdict for one data message seen at the syscall level (sans-IO).

The tracer carries the verdict out on the stopped syscall (docs/architecture.md,
"Policies and faults at the syscall level"): an errno, skipping the call,
holding it, rewriting or shortening the bytes it moves, running a send again,
closing the fd. The payload a fault sees and rewrites is the one recorded for
the call (its first ``--max-payload`` bytes); every verdict says in its notes
what was done, and a changed message keeps what its sender meant to send
(``original_args``: size and payload), so a campaign compares what the sender
did, not what the fault made of it.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from ..chain import Context
from ..model import Action, Verdict
from .actions import ActionSkipped
from .plan import ActionSpec, Close, Corrupt, Delay, Drop, Duplicate, Errno, Truncate


def _send(ctx: Context) -> bool:
    return (ctx.data or {}).get("direction") == "send"


def _size(ctx: Context) -> int:
    return int((ctx.data or {}).get("size", len(ctx.message.raw)))


def original_args(ctx: Context) -> list[Any]:
    """The message as a campaign compares it: its full size and its recorded payload (hex)."""
    return [_size(ctx), ctx.message.raw.hex()]


def apply(action: ActionSpec, ctx: Context, rng: random.Random) -> Verdict:
    """The verdict for the data message in ``ctx``; raises ActionSkipped when the action cannot apply."""
    send = _send(ctx)
    if isinstance(action, Errno):
        when = "" if send else " (after it took the data)"
        return Verdict(Action.ERROR_REPLY, error_name=action.name, notes={"done": f"failed with {action.name}{when}"})
    if isinstance(action, Drop):
        done = "skipped: reported success, delivered nothing" if send else "the received bytes were thrown away"
        return Verdict(Action.DROP, notes={"done": done})
    if isinstance(action, Delay):
        jitter = rng.uniform(-action.jitter_ms, action.jitter_ms) if action.jitter_ms else 0.0
        ms = max(0.0, action.ms + jitter)
        return Verdict(Action.DELAY, delay_s=ms / 1000, notes={"done": f"held for {ms:.3f} ms"})
    if isinstance(action, Corrupt):
        return _corrupt(action, ctx, rng)
    if isinstance(action, Truncate):
        return _truncate(action, ctx)
    if isinstance(action, Duplicate):
        if not send:
            raise ActionSkipped("a receive cannot be duplicated (select the send)")
        return Verdict(Action.DUPLICATE, copies=action.copies, notes={"done": f"sent {action.copies} times"})
    if isinstance(action, Close):
        done = "closed the fd: the send fails with EPIPE" if send else "closed the fd: the receive reads end of file"
        return Verdict(Action.DISCONNECT, disconnect_side="sender" if send else "receiver", notes={"done": done})
    raise ActionSkipped(f"action {action.kind} is about D-Bus messages, not data messages")


def _replacement(ctx: Context, raw: bytes) -> Any:
    return dataclasses.replace(ctx.message, raw=raw, fds=list(ctx.message.fds), _args=[])


def _corrupt(action: Corrupt, ctx: Context, rng: random.Random) -> Verdict:
    raw = bytearray(ctx.message.raw)
    if not raw:
        raise ActionSkipped("no payload to corrupt")
    flipped = []
    for _ in range(action.bits):
        pos = rng.randrange(len(raw))
        bit = rng.randrange(8)
        raw[pos] ^= 1 << bit
        flipped.append(f"byte {pos} bit {bit}")
    return Verdict(
        Action.MODIFY,
        replacement=_replacement(ctx, bytes(raw)),
        notes={"done": "flipped " + ", ".join(flipped), "original_args": original_args(ctx)},
    )


def _truncate(action: Truncate, ctx: Context) -> Verdict:
    size = _size(ctx)
    raw = ctx.message.raw
    keep = action.kept(size)
    if keep >= size:
        raise ActionSkipped(f"the message has {size} bytes: nothing to cut")
    if keep >= len(raw):
        # the tracer rewrites what it read of the call; bytes past the recorded payload are not known here
        raise ActionSkipped(
            f"cannot cut at byte {keep}: only {len(raw)} of {size} bytes were read (raise --max-payload)"
        )
    what = "short write" if _send(ctx) else "short read"
    return Verdict(
        Action.MODIFY,
        replacement=_replacement(ctx, raw[:keep]),
        notes={"done": f"{what}: {keep} of {size} bytes", "original_args": original_args(ctx)},
    )
