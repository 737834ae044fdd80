"""A trace record back into a ``model.Message``: the one conversion every offline tool uses.

Learning, checking, fault enumeration and trace -> pcap all look at recorded
messages through the same ``Message`` the live proxy built, so they must agree
on every header fact, file-descriptor count and transport included.

What differs between them on purpose is a record whose arguments were not
recorded (a trace written with ``--no-args``, or a body that could not be
decoded): the caller says what such a message's ``args`` are.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from ..model import Message, MessageType


class UnrecordedArgs(enum.Enum):
    """What ``args`` of a message whose arguments the trace lacks does."""

    RAISE = "raise"  # reading them raises ValueError: a rule on arguments cannot be judged
    EMPTY = "empty"  # they are an empty list: only the header matters to the caller


def args_recorded(record: dict[str, Any]) -> bool:
    """Whether the record holds the message's arguments (a message without a body always does)."""
    if not record.get("signature"):
        return True
    args = record.get("args")
    return not record.get("args_error") and isinstance(args, list) and bool(args)


def message_from_record(record: dict[str, Any], sender: str | None, *, unrecorded: UnrecordedArgs) -> Message:
    """The message a record describes, with no raw bytes.

    ``sender`` is the header's sender as the receiving side saw it: the caller
    decides, because a message leaving a proxied client has none in its header
    while the record names who sent it.
    """
    message = Message(
        type=MessageType.from_name(str(record.get("type"))),
        serial=record.get("serial") or 0,
        flags=record.get("flags") or 0,
        reply_serial=record.get("reply_serial"),
        path=record.get("path"),
        interface=record.get("interface"),
        member=record.get("member"),
        error_name=record.get("error_name"),
        destination=record.get("destination_name"),
        sender=sender,
        signature=record.get("signature") or "",
        unix_fds=record.get("fds") or 0,
        transport=record.get("transport") or "dbus",
    )
    if args_recorded(record):
        message.set_args(list(record.get("args") or []))
    elif unrecorded is UnrecordedArgs.EMPTY:
        message.set_args([])
    elif record.get("args_error"):
        message.body_decoder = _raiser(f"undecodable body: {record['args_error']}")
    else:
        message.body_decoder = _raiser("arguments were not recorded in the trace")
    return message


def _raiser(text: str) -> Callable[[Message], list[Any]]:
    def decode(_message: Message) -> list[Any]:
        raise ValueError(text)

    return decode
