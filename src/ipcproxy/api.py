"""The interceptor API for users' scripts (``-s FILE.py``); see docs/interceptors.md.

A script defines functions decorated with ``@interceptor``; each is called
with a ``Context`` for every message and returns ``None`` (pass unchanged) or
a ``Verdict`` built with the helpers below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    "Verdict",
    "interceptor",
    "forward",
    "drop",
    "delay",
    "error",
    "duplicate",
    "disconnect",
    "with_args",
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
        return self.fn(ctx)


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
    return Verdict()


def drop(reason: str = "script") -> Verdict:
    return Verdict(Action.DROP, reason=reason)


def delay(seconds: float, reason: str = "script") -> Verdict:
    return Verdict(Action.DELAY, reason=reason, delay_s=seconds)


def error(name: str = "org.freedesktop.DBus.Error.Failed", message: str = "", reason: str = "script") -> Verdict:
    return Verdict(Action.ERROR_REPLY, reason=reason, error_name=name, error_message=message or None)


def duplicate(copies: int = 2, reason: str = "script") -> Verdict:
    return Verdict(Action.DUPLICATE, reason=reason, copies=copies)


def disconnect(side: str = "sender", reason: str = "script") -> Verdict:
    return Verdict(Action.DISCONNECT, reason=reason, disconnect_side=side)


def with_args(message: Message, args: list[Any], reason: str = "script") -> Verdict:
    """Rewrite the message's arguments (same signature), keeping every header field."""
    fast = wire.to_fast(message, args)
    replacement = wire.parse_message(wire.marshal(fast))
    replacement.fds = message.fds
    return Verdict(Action.MODIFY, reason=reason, replacement=replacement)
