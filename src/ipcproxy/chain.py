"""The ordered chain of interceptors every message passes.

An interceptor is a typed contract (``Interceptor`` protocol) rather than a
loosely named hook, so a misspelt method is a type error. Each one declares
whether it fails closed: an exception in a fail-closed interceptor (the
enforcer) denies the message; in a fail-open one (a user's logger) it is
reported and the message goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .model import Action, Direction, Endpoint, Message, Verdict

log = logging.getLogger("ipcproxy.chain")

Resolver = Callable[[str | None], Endpoint]


def _unresolved(name: str | None) -> Endpoint:
    return Endpoint(bus_name=name)


@dataclass(slots=True)
class Context:
    """One message on its way through the chain, with what is known about its parties."""

    message: Message
    direction: Direction
    client: Endpoint  # the connection behind the proxy this message belongs to
    connection_id: int = 0
    seq: int = 0
    ts_ns: int = 0
    resolve: Resolver = _unresolved
    # Set by the proxy: True when this is a reply to a call that was let through.
    reply_to_allowed_call: bool | None = None
    call_message: Message | None = None  # for replies: the call it answers, when known
    # A message seen at the syscall level (`ipcproxy trace`): its channel as the trace records it, and
    # every field of its data record (pid, tid, fd, size, ...); both None for D-Bus messages.
    # Built by syscall.intercept.data_context, live and offline alike.
    channel: dict[str, Any] | None = None
    data: Mapping[str, Any] | None = None
    _sender: Endpoint | None = None
    _destination: Endpoint | None = None
    scratch: dict[str, object] = field(default_factory=dict)

    @property
    def sender(self) -> Endpoint:
        if self._sender is None:
            name = self.message.sender
            if name is None and self.direction is Direction.TO_BUS:
                self._sender = self.client
            else:
                self._sender = self.resolve(name)
        return self._sender

    @property
    def destination(self) -> Endpoint:
        if self._destination is None:
            name = self.message.destination
            if name is None and self.direction is Direction.FROM_BUS:
                self._destination = self.client
            else:
                self._destination = self.resolve(name)
        return self._destination


@runtime_checkable
class Interceptor(Protocol):
    """Something that looks at a message and decides its fate."""

    name: str
    fail_closed: bool

    def intercept(self, ctx: Context) -> Verdict | None:
        """Return a verdict, or None to let the message pass unchanged."""
        ...


_TERMINAL = {
    Action.DROP,
    Action.DENY,
    Action.ERROR_REPLY,
    Action.DISCONNECT,
}


@dataclass(slots=True)
class Chain:
    """Runs interceptors in order; the first terminal verdict ends the run."""

    interceptors: list[Interceptor] = field(default_factory=list)

    @classmethod
    def of(cls, interceptors: Iterable[Interceptor]) -> Chain:
        return cls(list(interceptors))

    def __bool__(self) -> bool:
        return bool(self.interceptors)

    def add(self, interceptor: Interceptor) -> None:
        self.interceptors.append(interceptor)

    def run(self, ctx: Context) -> Verdict:
        final: Verdict | None = None
        for interceptor in self.interceptors:
            try:
                verdict = interceptor.intercept(ctx)
            except Exception as exc:  # noqa: BLE001 - interceptors are user code
                if interceptor.fail_closed:
                    return Verdict(
                        Action.DENY,
                        reason=f"{interceptor.name} could not decide: {type(exc).__name__}: {exc}",
                        by=interceptor.name,
                    )
                log.warning("interceptor %s failed: %s: %s", interceptor.name, type(exc).__name__, exc)
                continue
            if verdict is None or verdict.action is Action.FORWARD:
                continue
            if verdict.by is None:
                verdict.by = interceptor.name
            if verdict.action is Action.MODIFY and verdict.replacement is not None:
                ctx.message = verdict.replacement
            if verdict.action in _TERMINAL:
                return verdict
            # Non-terminal verdicts (modify, delay, duplicate, reorder, violation) accumulate;
            # the strongest one is reported, later interceptors still see the message.
            final = _combine(final, verdict)
        return final if final is not None else Verdict()


_RANK = {
    Action.VIOLATION: 1,
    Action.MODIFY: 2,
    Action.DELAY: 3,
    Action.DUPLICATE: 4,
    Action.REORDER: 5,
}


def _combine(current: Verdict | None, new: Verdict) -> Verdict:
    if current is None:
        return new
    keep, other = (new, current) if _RANK.get(new.action, 0) >= _RANK.get(current.action, 0) else (current, new)
    if other.action is Action.VIOLATION:
        keep.notes.setdefault("violation", other.reason)
    elif other.action is Action.MODIFY and keep.replacement is None:
        keep.replacement = other.replacement
        keep.notes.setdefault("modified", other.reason)
    elif other.action is Action.DELAY and keep.delay_s == 0.0:
        keep.delay_s = other.delay_s
    return keep
