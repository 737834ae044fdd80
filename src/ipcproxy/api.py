"""The interceptor API for users' scripts (``-s FILE.py``); see docs/interceptors.md.

A script defines functions decorated with ``@interceptor``; each is called
with a ``Context`` for every message and returns ``None`` (pass unchanged) or
a ``Verdict`` built with the helpers below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dbus_fast import Variant

from .chain import Context, Interceptor
from .dbus import wire
from .model import Action, Direction, Endpoint, Message, MessageType, Verdict

__all__ = [
    "Action",
    "Context",
    "Direction",
    "Endpoint",
    "Interceptor",
    "Message",
    "MessageType",
    "Variant",
    "Verdict",
    "interceptor",
    "forward",
    "drop",
    "delay",
    "error",
    "duplicate",
    "disconnect",
    "with_args",
    "jsonable",
]

InterceptFn = Callable[[Context], Verdict | None]
_registered: list[Interceptor] = []


class FunctionInterceptor:
    """Adapts a plain function to the Interceptor protocol."""

    def __init__(self, fn: InterceptFn, name: str, fail_closed: bool) -> None:
        self.fn = fn
        self.name = name
        self.fail_closed = fail_closed

    def intercept(self, ctx: Context) -> Verdict | None:
        verdict = self.fn(ctx)
        if verdict is not None and not isinstance(verdict, Verdict):
            # raised here so the chain treats it like any other failure of this interceptor
            raise TypeError(
                f"returned {type(verdict).__name__}, expected None or a Verdict (use forward(), drop(), ...)"
            )
        return verdict

    def __repr__(self) -> str:
        return f"<interceptor {self.name}{' fail_closed' if self.fail_closed else ''}>"


def interceptor(fn: InterceptFn | None = None, *, name: str | None = None, fail_closed: bool = False) -> Any:
    """Register ``fn`` as an interceptor (usable bare or with arguments)."""

    def wrap(f: InterceptFn) -> InterceptFn:
        _registered.append(FunctionInterceptor(f, name or f.__name__, fail_closed))
        return f

    return wrap(fn) if fn is not None else wrap


def take_registered() -> list[Interceptor]:
    found = list(_registered)
    _registered.clear()
    return found


def forward() -> Verdict:
    """Let the message pass unchanged (the same as returning None)."""
    return Verdict()


def drop(reason: str = "script") -> Verdict:
    """Do not deliver the message; nobody is told (a dropped call gets no reply)."""
    return Verdict(Action.DROP, reason=reason)


def delay(seconds: float, reason: str = "script") -> Verdict:
    """Deliver the message ``seconds`` later; other messages are not held up."""
    return Verdict(Action.DELAY, reason=reason, delay_s=seconds)


def error(name: str = "org.freedesktop.DBus.Error.Failed", message: str = "", reason: str = "script") -> Verdict:
    """On a call: answer the caller with this error instead of delivering the call.
    On a reply: replace it with this error. Anything else is not delivered."""
    return Verdict(Action.ERROR_REPLY, reason=reason, error_name=name, error_message=message or None)


def duplicate(copies: int = 2, reason: str = "script") -> Verdict:
    """Deliver the message ``copies`` times in total."""
    return Verdict(Action.DUPLICATE, reason=reason, copies=copies)


def disconnect(side: str = "sender", reason: str = "script") -> Verdict:
    """Close the connection of the message's sender (``"sender"``) or receiver (``"receiver"``)."""
    if side not in ("sender", "receiver"):
        raise ValueError(f"disconnect side must be 'sender' or 'receiver', not {side!r}")
    return Verdict(Action.DISCONNECT, reason=reason, disconnect_side=side)


def with_args(message: Message, args: list[Any], reason: str = "script") -> Verdict:
    """Rewrite the message's arguments, keeping every header field (serials included).

    ``args`` must match the message's signature; variants are given as ``Variant("s", "text")``.
    """
    fast = wire.to_fast(message, args)
    replacement = wire.parse_message(wire.marshal(fast))
    replacement.fds = message.fds
    return Verdict(Action.MODIFY, reason=reason, replacement=replacement)


def jsonable(value: Any) -> Any:
    """A decoded D-Bus value as plain JSON-safe data: variants unwrapped, bytes as hex."""
    return wire.jsonable(value)
