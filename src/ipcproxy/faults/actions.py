"""Turning a fault's action into a Verdict for one message (sans-IO).

Every verdict carries notes saying exactly what was done (bits flipped, the
value written, the delay drawn), so a run can be explained from its trace.
Modified messages keep every header field; "invalid" changes (raw bit flips,
truncation) deliberately produce bodies that no longer match their signature.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from typing import Any

from ..dbus import wire
from ..model import Action, Message, MessageType, Verdict
from . import mutate
from .plan import (
    ActionSpec,
    Corrupt,
    Delay,
    Disconnect,
    Drop,
    Duplicate,
    Error,
    Reorder,
    SetArg,
    Truncate,
)

_U32 = {ord("l"): struct.Struct("<I"), ord("B"): struct.Struct(">I")}


class ActionSkipped(Exception):
    """The action cannot apply to this message (say, no body to corrupt); it is left alone."""


def needs_delivery_side(action: ActionSpec) -> bool:
    """Actions that must reach the receiver as-is rather than be checked by the bus first.

    The bus validates every message it receives and drops the sender for a
    malformed one, so a broken body is only seen by the receiver if it is
    broken on its way out of the bus; a reorder is about what the receiver
    sees; and dbus-daemon refuses a second call with a serial it is still
    waiting to see answered, so a call is duplicated as it reaches the callee.
    """
    return isinstance(action, Reorder | Truncate | Duplicate) or (isinstance(action, Corrupt) and not action.valid)


def body_offset(raw: bytes) -> int:
    fields_len = _U32[raw[0]].unpack_from(raw, 12)[0]
    return wire.FIXED_HEADER + fields_len + (-fields_len & 7)


def apply(action: ActionSpec, message: Message, rng: random.Random) -> Verdict:
    """The verdict for ``message``; raises ActionSkipped when the action has nothing to act on."""
    if isinstance(action, Drop):
        return Verdict(Action.DROP, notes={"done": "dropped"})
    if isinstance(action, Delay):
        jitter = rng.uniform(-action.jitter_ms, action.jitter_ms) if action.jitter_ms else 0.0
        ms = max(0.0, action.ms + jitter)
        notes: dict[str, Any] = {"done": f"delayed by {ms:.3f} ms"}
        if action.overtake:
            notes["overtake"] = True
            notes["done"] += " (later messages may pass it)"
        return Verdict(Action.DELAY, delay_s=ms / 1000, notes=notes)
    if isinstance(action, Error):
        if message.type is MessageType.SIGNAL:
            return Verdict(Action.DROP, notes={"done": "signal not delivered (an error cannot answer a signal)"})
        if message.type is MessageType.METHOD_CALL and message.no_reply_expected:
            return Verdict(Action.DROP, notes={"done": "call dropped (it expects no reply, so no error can answer it)"})
        what = "answered with" if message.type is MessageType.METHOD_CALL else "reply replaced by"
        return Verdict(
            Action.ERROR_REPLY,
            error_name=action.name,
            error_message=action.message,
            notes={"done": f"{what} {action.name}"},
        )
    if isinstance(action, Corrupt):
        return _corrupt(action, message, rng)
    if isinstance(action, SetArg):
        return _set_arg(action, message, rng)
    if isinstance(action, Truncate):
        return _truncate(action, message)
    if isinstance(action, Duplicate):
        return Verdict(Action.DUPLICATE, copies=action.copies, notes={"done": f"sent {action.copies} times"})
    if isinstance(action, Reorder):
        return Verdict(
            Action.REORDER,
            hold_for=action.after,
            delay_s=action.max_ms / 1000,
            notes={"done": f"held until {action.after} later message(s) passed (at most {action.max_ms:g} ms)"},
        )
    if isinstance(action, Disconnect):
        return Verdict(
            Action.DISCONNECT,
            disconnect_side=action.side,
            notes={"done": f"closed the {action.side}'s connection"},
        )
    raise AssertionError(f"unknown action {action!r}")


def _original(message: Message) -> list[Any]:
    try:
        return wire.jsonable(message.args)
    except Exception:  # noqa: BLE001 - already undecodable
        return []


def _remarshal(message: Message, args: list[Any]) -> Message:
    fast = wire.to_fast(message, args)
    replacement = wire.parse_message(wire.marshal(fast, unix_fds=message.unix_fds))
    replacement.fds = message.fds
    return replacement


def _raw_replacement(message: Message, raw: bytes) -> tuple[Message, bool]:
    """A message carrying ``raw`` as is, and whether that is still a valid frame."""
    try:
        parsed = wire.parse_message(raw)
        parsed.fds = message.fds
        return parsed, True
    except wire.FrameError:
        return dataclasses.replace(message, raw=raw, fds=message.fds, _args=None), False


def _corrupt(action: Corrupt, message: Message, rng: random.Random) -> Verdict:
    if not message.signature:
        raise ActionSkipped("the message has no body")
    original = _original(message)
    if action.valid:
        try:
            args, changes = mutate.flip_args(list(message.args), message.signature, action.bits, rng, action.arg)
        except mutate.MutationError as exc:
            raise ActionSkipped(str(exc)) from None
        replacement = _remarshal(message, args)
        return Verdict(
            Action.MODIFY,
            replacement=replacement,
            notes={"done": "; ".join(changes), "original_args": original, "frame_valid": True},
        )
    raw = bytearray(message.raw)
    start, end = body_offset(message.raw), len(raw)
    if action.arg is not None:
        start, end = _arg_span(message, action.arg)
        start += body_offset(message.raw)
        end += body_offset(message.raw)
    if end <= start:
        raise ActionSkipped("nothing to corrupt")
    flipped = []
    for _ in range(action.bits):
        pos = rng.randrange(start, end)
        bit = rng.randrange(8)
        raw[pos] ^= 1 << bit
        flipped.append(f"byte {pos - body_offset(message.raw)} bit {bit}")
    replacement, valid = _raw_replacement(message, bytes(raw))
    where = f"arg {action.arg}" if action.arg is not None else "body"
    return Verdict(
        Action.MODIFY,
        replacement=replacement,
        notes={
            "done": f"flipped {where} bits: " + ", ".join(flipped),
            "original_args": original,
            "frame_valid": valid,
        },
    )


def _arg_span(message: Message, index: int) -> tuple[int, int]:
    """Byte range of argument ``index`` within the body."""
    from dbus_fast._private.marshaller import Marshaller

    types = mutate.arg_types(message.signature)
    if index >= len(types):
        raise ActionSkipped(f"argument {index} does not exist (signature {message.signature!r})")
    args = list(message.args)
    sig_before = "".join(t.signature for t in types[:index])
    before = len(Marshaller(sig_before, args[:index]).marshall()) if index else 0
    upto = len(Marshaller(sig_before + types[index].signature, args[: index + 1]).marshall())
    align = {"y": 1, "g": 1, "v": 1, "n": 2, "q": 2, "x": 8, "t": 8, "d": 8, "(": 8, "{": 8}.get(types[index].token, 4)
    start = before + (-before % align)
    return start, upto


def _set_arg(action: SetArg, message: Message, rng: random.Random) -> Verdict:
    if not message.signature:
        raise ActionSkipped("the message has no arguments")
    types = mutate.arg_types(message.signature)
    if action.index >= len(types):
        raise ActionSkipped(f"argument {action.index} does not exist (signature {message.signature!r})")
    args = list(message.args)
    old, t = args[action.index], types[action.index]
    try:
        if action.has_value:
            new = mutate.coerce(action.value, old, t)
            how = "value"
        elif action.boundary is not None:
            new = mutate.boundary(old, t, action.boundary)
            how = f"boundary {action.boundary}"
        else:
            new = mutate.random_value(old, t, rng)
            how = "random"
        args[action.index] = new
        replacement = _remarshal(message, args)
    except (mutate.MutationError, ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise ActionSkipped(f"cannot set argument {action.index} ({t.signature}): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the marshaller raises its own types on bad values
        raise ActionSkipped(f"cannot set argument {action.index} ({t.signature}): {exc}") from None
    shown = wire.jsonable(new)
    if isinstance(shown, str) and len(shown) > 80:
        shown = f"{shown[:40]}... ({len(shown)} chars)"
    return Verdict(
        Action.MODIFY,
        replacement=replacement,
        notes={
            "done": f"arg {action.index} set ({how}) to {shown!r}",
            "original_args": _original(message),
            "frame_valid": True,
        },
    )


def _truncate(action: Truncate, message: Message) -> Verdict:
    raw = message.raw
    original = _original(message)
    if action.keep_length:
        cut = min(action.bytes, len(raw) - 1)
        replacement = dataclasses.replace(message, raw=raw[:-cut], fds=message.fds, _args=None)
        return Verdict(
            Action.MODIFY,
            replacement=replacement,
            notes={
                "done": f"cut the last {cut} bytes of the frame; its header still announces {len(raw)}",
                "original_args": original,
                "frame_valid": False,
            },
        )
    start = body_offset(raw)
    body_len = len(raw) - start
    if body_len == 0:
        raise ActionSkipped("the message has no body")
    cut = min(action.bytes, body_len)
    new = bytearray(raw[: len(raw) - cut])
    _U32[new[0]].pack_into(new, 4, body_len - cut)
    replacement, valid = _raw_replacement(message, bytes(new))
    return Verdict(
        Action.MODIFY,
        replacement=replacement,
        notes={
            "done": f"body cut from {body_len} to {body_len - cut} bytes (length field updated)",
            "original_args": original,
            "frame_valid": valid,
        },
    )
