"""A trace record's JSON arguments back into D-Bus values by signature, and the record into wire bytes.

dbus-fast marshals; what is done here is what no library knows: the trace's
JSON form of each type (bytes as hex, variants unwrapped, dict keys as
strings), and a type for a variant, whose own signature the trace does not
keep (``guess_signature``).
"""

from __future__ import annotations

from typing import Any

from dbus_fast import Message as FastMessage
from dbus_fast import MessageFlag, Variant
from dbus_fast import MessageType as FastType
from dbus_fast.signature import SignatureType, get_signature_tree

from ..dbus import wire
from ..model import MessageType
from .record_message import UnrecordedArgs, args_recorded, message_from_record


class MarshalError(ValueError):
    """A record whose arguments cannot be turned back into its signature's values."""


_INT_RANGES = {
    "y": (0, 0xFF),
    "n": (-(1 << 15), (1 << 15) - 1),
    "q": (0, 0xFFFF),
    "i": (-(1 << 31), (1 << 31) - 1),
    "u": (0, 0xFFFFFFFF),
    "x": (-(1 << 63), (1 << 63) - 1),
    "t": (0, (1 << 64) - 1),
    "h": (0, 0xFFFFFFFF),
}


def guess_signature(value: Any) -> str:
    """A signature for a variant's JSON value (the trace does not keep the variant's own)."""
    if isinstance(value, bool):
        return "b"
    if isinstance(value, int):
        for sig in ("i", "x", "t"):
            low, high = _INT_RANGES[sig]
            if low <= value <= high:
                return sig
        raise MarshalError(f"integer {value} does not fit any D-Bus type")
    if isinstance(value, float):
        return "d"
    if isinstance(value, str):
        return "s"
    if isinstance(value, dict):
        return "a{sv}"
    if isinstance(value, list):
        sigs = {guess_signature(v) for v in value}
        if not sigs:
            return "as"
        if len(sigs) == 1:
            return "a" + sigs.pop()
        if sigs <= {"i", "x"}:
            return "ax"
        if sigs <= {"i", "x", "d"}:
            return "ad"
        return "av"
    raise MarshalError(f"cannot guess a D-Bus type for {value!r}")


def _key(t: SignatureType, key: str) -> Any:
    if t.token in _INT_RANGES:
        return int(key)
    if t.token == "b":
        return key.lower() == "true"
    if t.token == "d":
        return float(key)
    return key


def to_dbus(t: SignatureType, value: Any) -> Any:
    """The dbus-fast value of type ``t`` for a JSON value as the trace records it."""
    token = t.token
    if token in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MarshalError(f"expected an integer for {token!r}, got {value!r}")
        low, high = _INT_RANGES[token]
        if not low <= value <= high:
            raise MarshalError(f"{value} is out of range for {token!r}")
        return value
    if token == "b":
        if not isinstance(value, bool):
            raise MarshalError(f"expected a boolean, got {value!r}")
        return value
    if token == "d":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MarshalError(f"expected a number, got {value!r}")
        return float(value)
    if token in ("s", "o", "g"):
        if not isinstance(value, str):
            raise MarshalError(f"expected a string for {token!r}, got {value!r}")
        return value
    if token == "v":
        sig = guess_signature(value)
        return Variant(sig, to_dbus(get_signature_tree(sig).types[0], value))
    if token == "a":
        child = t.children[0]
        if child.token == "y":
            if isinstance(value, str):
                try:
                    return bytes.fromhex(value)
                except ValueError:
                    raise MarshalError(f"expected hex bytes, got {value[:40]!r}") from None
            if isinstance(value, list):
                return bytes(to_dbus(child, v) for v in value)
            raise MarshalError(f"expected bytes, got {value!r}")
        if child.token == "{":
            if not isinstance(value, dict):
                raise MarshalError(f"expected an object for {t.signature!r}, got {value!r}")
            kt, vt = child.children
            return {_key(kt, k): to_dbus(vt, v) for k, v in value.items()}
        if not isinstance(value, list):
            raise MarshalError(f"expected a list for {t.signature!r}, got {value!r}")
        return [to_dbus(child, v) for v in value]
    if token == "(":
        if not isinstance(value, list) or len(value) != len(t.children):
            raise MarshalError(f"expected {len(t.children)} fields for {t.signature!r}, got {value!r}")
        return [to_dbus(c, v) for c, v in zip(t.children, value, strict=True)]
    raise MarshalError(f"unsupported type {token!r}")


def body_from_json(signature: str, args: list[Any]) -> list[Any]:
    try:
        types = get_signature_tree(signature).types
    except Exception as exc:  # noqa: BLE001 - dbus-fast raises its own error types
        raise MarshalError(f"bad signature {signature!r}: {exc}") from None
    if len(types) != len(args):
        raise MarshalError(f"signature {signature!r} has {len(types)} arguments, the record {len(args)}")
    return [to_dbus(t, v) for t, v in zip(types, args, strict=True)]


def record_to_bytes(rec: dict[str, Any], sender: str | None = None) -> tuple[bytes, bool]:
    """Marshal a message record again; the flag says whether its body had to be left out.

    ``sender`` stands in for a sender the record does not name (a client's
    messages sent before the reply to its Hello told it its unique name).
    """
    sender = (rec.get("sender") or {}).get("bus_name") or sender
    message = message_from_record(rec, sender, unrecorded=UnrecordedArgs.EMPTY)
    if message.type is MessageType.DATA:
        raise MarshalError("stream data has no D-Bus form")
    # arguments not in the trace (--no-args, or an undecodable body): keep the header only
    bodyless = not args_recorded(rec)
    signature = "" if bodyless else message.signature
    body = [] if bodyless else body_from_json(signature, message.args)
    try:
        fast = FastMessage(
            destination=message.destination,
            path=message.path,
            interface=message.interface,
            member=message.member,
            message_type=FastType(int(message.type)),
            flags=MessageFlag(int(message.flags) & 0x7),
            error_name=message.error_name,
            reply_serial=message.reply_serial,
            sender=message.sender,
            signature=signature,
            body=body,
            serial=int(message.serial),
        )
        return wire.marshal(fast, unix_fds=int(message.unix_fds)), bodyless
    except Exception as exc:  # noqa: BLE001 - dbus-fast validation raises several types
        raise MarshalError(f"{type(exc).__name__}: {exc}") from None
