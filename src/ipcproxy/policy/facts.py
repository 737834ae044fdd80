"""What a policy looks at in one message, taken from a chain Context.

The live enforcer, the offline checker and the learner all go through
``facts_of`` so that a message means the same thing to each of them:
whose side the message is seen from, which way it goes, and who the peer is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..chain import Context
from ..dbus.wire import jsonable
from ..model import BUS_DRIVER_NAME, Direction, Endpoint, Message, MessageType
from .model import RECEIVE, SEND, normalise

OWN_METHODS = frozenset({"RequestName", "ReleaseName"})


@dataclass(slots=True)
class DataFacts:
    """What a policy looks at in a message on a pipe, FIFO or socket (its data record's fields)."""

    transport: str
    channel: Mapping[str, Any]
    fd: int | None
    size: int
    nfds: int
    payload: bytes


@dataclass(slots=True)
class Facts:
    """One message from the point of view of the connection it belongs to."""

    direction: str  # send | receive
    type: str
    peer: Endpoint | None  # None: a signal broadcast to whoever listens
    path: str | None
    interface: str | None
    member: str | None
    signature: str
    message: Message
    data: DataFacts | None = None  # a message seen at the syscall level
    _args: list[Any] | None = field(default=None, repr=False)

    @property
    def is_reply(self) -> bool:
        return self.type in ("method_return", "error")

    def args(self) -> list[Any]:
        """Arguments as JSON-safe, normalised values (raises if the body cannot be decoded)."""
        if self._args is None:
            self._args = [normalise(a) for a in jsonable(list(self.message.args))]
        return self._args

    def owned_name(self) -> str | None:
        """For RequestName/ReleaseName sent to the bus driver: the name (raises if undecodable)."""
        if (
            self.direction == SEND
            and self.type == "method_call"
            and self.member in OWN_METHODS
            and self.interface == BUS_DRIVER_NAME
            and self.message.destination == BUS_DRIVER_NAME
        ):
            args = self.args()
            if args and isinstance(args[0], str):
                return args[0]
            raise ValueError(f"{self.member} without a name argument")
        return None


def facts_of(ctx: Context) -> Facts:
    message = ctx.message
    if message.type is MessageType.DATA:
        return _data_facts(ctx)
    if ctx.direction is Direction.FROM_BUS:
        direction = RECEIVE
        peer: Endpoint | None = ctx.sender
    else:
        direction = SEND
        broadcast = message.destination is None and message.type is MessageType.SIGNAL
        peer = None if broadcast else ctx.destination
    return Facts(
        direction=direction,
        type=message.type.wire_name,
        peer=peer,
        path=message.path,
        interface=message.interface,
        member=message.member,
        signature=message.signature,
        message=message,
    )


def _data_facts(ctx: Context) -> Facts:
    """A data message, from the side of the process that made the call (send: its sender)."""
    message = ctx.message
    fields = ctx.data or {}
    send = ctx.direction is not Direction.FROM_BUS
    fd = fields.get("fd")
    return Facts(
        direction=SEND if send else RECEIVE,
        type="data",
        peer=ctx.destination if send else ctx.sender,
        path=None,
        interface=None,
        member=message.member,
        signature="",
        message=message,
        data=DataFacts(
            transport=message.transport,
            channel=ctx.channel or {},
            fd=fd if isinstance(fd, int) else None,
            size=int(fields.get("size") or len(message.raw)),
            nfds=int(fields.get("fds") or message.unix_fds or 0),
            payload=bytes(message.raw),
        ),
    )
