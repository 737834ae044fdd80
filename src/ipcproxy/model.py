"""Transport-neutral model: Message, Endpoint, Verdict.

No I/O and no transport specifics live here, so interceptors, the recorder and
the offline tools (learn, check, replay) all speak about the same objects.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class MessageType(enum.IntEnum):
    """D-Bus message types; ``DATA`` is a chunk of a byte stream (pipes, sockets)."""

    METHOD_CALL = 1
    METHOD_RETURN = 2
    ERROR = 3
    SIGNAL = 4
    DATA = 100

    @property
    def wire_name(self) -> str:
        return _TYPE_NAMES[self]

    @classmethod
    def from_name(cls, name: str) -> MessageType:
        for member, text in _TYPE_NAMES.items():
            if text == name:
                return member
        raise ValueError(f"unknown message type {name!r}")


_TYPE_NAMES = {
    MessageType.METHOD_CALL: "method_call",
    MessageType.METHOD_RETURN: "method_return",
    MessageType.ERROR: "error",
    MessageType.SIGNAL: "signal",
    MessageType.DATA: "data",
}

BUS_DRIVER_NAME = "org.freedesktop.DBus"


class Direction(enum.Enum):
    """Which way a message travels relative to the proxied client."""

    TO_BUS = "to_bus"  # sent by the client behind the proxy
    FROM_BUS = "from_bus"  # delivered to the client behind the proxy
    OBSERVED = "observed"  # seen passively (monitor, pcap import)


@dataclass(slots=True)
class Endpoint:
    """One party of a message, with every identity fact known about it."""

    bus_name: str | None = None
    names: list[str] = field(default_factory=list)
    pid: int | None = None
    uid: int | None = None
    exe: str | None = None
    comm: str | None = None

    @property
    def component(self) -> str:
        """Most stable identity: a well-known name, else the executable, else the unique name."""
        if self.bus_name == BUS_DRIVER_NAME:
            return BUS_DRIVER_NAME
        for name in sorted(self.names):
            if not name.startswith(":"):
                return name
        if self.exe:
            return self.exe
        return self.bus_name or "?"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bus_name": self.bus_name, "names": list(self.names)}
        for key in ("pid", "uid", "exe", "comm"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Endpoint:
        if not data:
            return cls()
        return cls(
            bus_name=data.get("bus_name"),
            names=list(data.get("names") or []),
            pid=data.get("pid"),
            uid=data.get("uid"),
            exe=data.get("exe"),
            comm=data.get("comm"),
        )


@dataclass(slots=True)
class Message:
    """One IPC message: header facts always, body decoded only on demand.

    ``raw`` holds the bytes as they arrived so that an unmodified message is
    forwarded byte for byte; ``body_decoder`` turns them into arguments lazily.
    """

    type: MessageType
    serial: int = 0
    flags: int = 0
    reply_serial: int | None = None
    path: str | None = None
    interface: str | None = None
    member: str | None = None
    error_name: str | None = None
    destination: str | None = None
    sender: str | None = None
    signature: str = ""
    unix_fds: int = 0
    endian: str = "l"
    transport: str = "dbus"
    raw: bytes = b""
    fds: list[int] = field(default_factory=list)
    body_decoder: Callable[[Message], list[Any]] | None = None
    _args: list[Any] | None = None

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def args(self) -> list[Any]:
        """Decoded body arguments (raises if the body is malformed)."""
        if self._args is None:
            self._args = self.body_decoder(self) if self.body_decoder else []
        return self._args

    def set_args(self, args: list[Any]) -> None:
        self._args = args

    @property
    def args_decoded(self) -> bool:
        return self._args is not None

    @property
    def no_reply_expected(self) -> bool:
        return bool(self.flags & 0x1)


class Action(enum.Enum):
    FORWARD = "forwarded"
    MODIFY = "modified"
    DROP = "dropped"
    DENY = "denied"
    DELAY = "delayed"
    ERROR_REPLY = "error_reply"
    DUPLICATE = "duplicated"
    REORDER = "reordered"
    DISCONNECT = "disconnected"
    VIOLATION = "violation"  # complain mode: forwarded, but flagged


@dataclass(slots=True)
class Verdict:
    """What happens to a message; the recorder writes it next to the message."""

    action: Action = Action.FORWARD
    reason: str | None = None  # rule or fault that caused it
    by: str | None = None  # interceptor name
    delay_s: float = 0.0
    error_name: str | None = None
    error_message: str | None = None
    replacement: Message | None = None  # for MODIFY: the message to send instead
    copies: int = 1  # for DUPLICATE
    hold_for: int = 0  # for REORDER: release after this many later messages
    disconnect_side: str = "sender"  # for DISCONNECT
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def passes(self) -> bool:
        """Whether the message (possibly modified) reaches its destination."""
        return self.action in (
            Action.FORWARD,
            Action.MODIFY,
            Action.DELAY,
            Action.DUPLICATE,
            Action.REORDER,
            Action.VIOLATION,
        )

    def to_json(self) -> dict[str, Any] | str:
        if self.action is Action.FORWARD and not self.notes:
            return "forwarded"
        out: dict[str, Any] = {"action": self.action.value}
        if self.reason:
            out["reason"] = self.reason
        if self.by:
            out["by"] = self.by
        if self.action is Action.DELAY:
            out["delay_ms"] = round(self.delay_s * 1000, 3)
        if self.error_name:
            out["error_name"] = self.error_name
        if self.error_message:
            out["error_message"] = self.error_message
        if self.action is Action.DUPLICATE:
            out["copies"] = self.copies
        if self.action is Action.REORDER:
            out["hold_for"] = self.hold_for
        if self.action is Action.DISCONNECT:
            out["side"] = self.disconnect_side
        out.update(self.notes)
        return out


FORWARD = Verdict()
