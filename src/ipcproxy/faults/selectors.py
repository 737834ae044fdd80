"""Does a message match a fault's selector? Pure logic over a Context.

Components are matched by any identity they have: a well-known name (also
one the injector saw them acquire, which the directory may learn later), the
executable path, the command name, or the unique name. The injector tracks
name ownership from RequestName replies itself, so matching does not depend
on how fast the proxy's resolver hears about new owners.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from collections.abc import Iterable
from typing import Any

from ..chain import Context
from ..dbus.wire import jsonable
from ..model import Direction, Endpoint, Message, MessageType
from .plan import ArgPredicate, ChannelMatch, PayloadMatch, Selector

_PRIMARY_OWNER, _ALREADY_OWNER = 1, 4


class OwnedNames:
    """Well-known names each unique name acquired, learnt from the RequestName replies it got."""

    def __init__(self) -> None:
        self._names: dict[str, set[str]] = {}

    def of(self, unique: str | None) -> set[str]:
        return self._names.get(unique or "", set())

    def observe(self, ctx: Context) -> None:
        msg = ctx.message
        call = ctx.call_message
        if (
            msg.type is MessageType.METHOD_RETURN
            and call is not None
            and call.member == "RequestName"
            and ctx.direction is Direction.FROM_BUS
            and ctx.client.bus_name
        ):
            try:
                result = msg.args[0]
                name = call.args[0]
            except Exception:  # noqa: BLE001 - a malformed reply teaches nothing
                return
            if result in (_PRIMARY_OWNER, _ALREADY_OWNER) and isinstance(name, str):
                self._names.setdefault(ctx.client.bus_name, set()).add(name)


@functools.lru_cache(maxsize=1024)
def _realpath(path: str) -> str:
    return os.path.realpath(path) if path.startswith("/") else path


def endpoint_matches(value: str, ep: Endpoint, header_name: str | None, extra: Iterable[str] = ()) -> bool:
    """Whether ``value`` names this party: well-known or unique name, executable, command name or pid."""
    if value == header_name or value == ep.bus_name or value in ep.names or value in extra:
        return True
    if value.isdigit():
        return ep.pid is not None and ep.pid == int(value)
    if ep.exe and (value == ep.exe or _realpath(value) == ep.exe or _realpath(value) == _realpath(ep.exe)):
        return True
    return value == ep.comm


def _text_matches(pattern: str, value: str | None) -> bool:
    if value is None:
        return False
    if "*" in pattern or "?" in pattern:
        return fnmatch.fnmatchcase(value, pattern)
    return pattern == value


def predicate_holds(pred: ArgPredicate, value: Any) -> bool:
    op, expected = pred.op, pred.value
    try:
        if op == "eq":
            return bool(value == expected)
        if op == "ne":
            return bool(value != expected)
        if op == "in":
            return value in expected
        if op == "re":
            return isinstance(value, str) and re.search(str(expected), value) is not None
        if op == "prefix":
            return isinstance(value, str) and value.startswith(str(expected))
        if op == "lt":
            return bool(value < expected)
        if op == "le":
            return bool(value <= expected)
        if op == "gt":
            return bool(value > expected)
        if op == "ge":
            return bool(value >= expected)
    except TypeError:
        return False
    return False


def _header_matches(sel: Selector, msg: Message) -> bool:
    if sel.type is not None and msg.type is not sel.type:
        return False
    if sel.path is not None and not _text_matches(sel.path, msg.path):
        return False
    if sel.interface is not None and not _text_matches(sel.interface, msg.interface):
        return False
    if sel.member is not None and not _text_matches(sel.member, msg.member):
        return False
    return sel.error_name is None or _text_matches(sel.error_name, msg.error_name)


def _args_match(sel: Selector, msg: Message) -> bool:
    if not sel.args:
        return True
    try:
        args = msg.args
    except Exception:  # noqa: BLE001 - an undecodable body matches no argument test
        return False
    return all(index < len(args) and predicate_holds(pred, jsonable(args[index])) for index, pred in sel.args)


def _channel_matches(want: ChannelMatch, channel: dict[str, Any]) -> bool:
    if want.kind is not None and channel.get("kind") != want.kind:
        return False
    if want.socktype is not None and channel.get("socktype") != want.socktype:
        return False
    if want.path is not None and not _text_matches(want.path, channel.get("path")):
        return False
    if want.address is not None:
        return _text_matches(want.address, channel.get("local")) or _text_matches(want.address, channel.get("remote"))
    return True


def _payload_matches(want: PayloadMatch, payload: bytes) -> bool:
    if want.op == "re":
        return _payload_re(want.value).search(payload) is not None
    if want.op == "prefix":
        return payload.startswith(want.value)
    return want.value in payload


@functools.lru_cache(maxsize=256)
def _payload_re(pattern: bytes) -> re.Pattern[bytes]:
    return re.compile(pattern)


def data_matches(sel: Selector, ctx: Context) -> bool:
    """Whether a data message (syscall level: ``ctx.data`` holds its record's fields) is selected.

    The payload tests see the bytes as recorded (the first ``--max-payload`` of them).
    """
    data = ctx.data or {}
    msg = ctx.message
    if sel.transport is not None and msg.transport != sel.transport:
        return False
    if sel.direction is not None and data.get("direction") != sel.direction:
        return False
    if sel.syscall is not None and not _text_matches(sel.syscall, msg.member):
        return False
    if sel.fd is not None and data.get("fd") != sel.fd:
        return False
    if sel.process is not None and not endpoint_matches(sel.process, ctx.client, None):
        return False
    if sel.sender is not None and not endpoint_matches(sel.sender, ctx.sender, None):
        return False
    if sel.destination is not None and not endpoint_matches(sel.destination, ctx.destination, None):
        return False
    if sel.channel is not None and not _channel_matches(sel.channel, ctx.channel or {}):
        return False
    if sel.size:
        size = data.get("size", len(msg.raw))
        if not all(predicate_holds(p, size) for p in sel.size):
            return False
    return sel.payload is None or _payload_matches(sel.payload, msg.raw)


def matches(sel: Selector, ctx: Context, owned: OwnedNames) -> bool:
    """Whether the message in ``ctx`` is selected."""
    msg = ctx.message
    if msg.type is MessageType.DATA:
        return not sel.is_dbus and data_matches(sel, ctx)
    if sel.is_data:
        return False
    if not _header_matches(sel, msg):
        return False
    if sel.sender is not None:
        ep = ctx.sender
        if not endpoint_matches(sel.sender, ep, msg.sender, owned.of(ep.bus_name)):
            return False
    if sel.destination is not None:
        ep = ctx.destination
        if not endpoint_matches(sel.destination, ep, msg.destination, owned.of(ep.bus_name)):
            return False
    if sel.reply_to is not None and not _reply_to_matches(sel.reply_to, ctx, owned):
        return False
    return _args_match(sel, msg)


def _reply_to_matches(sel: Selector, ctx: Context, owned: OwnedNames) -> bool:
    call = ctx.call_message
    if call is None or ctx.message.type not in (MessageType.METHOD_RETURN, MessageType.ERROR):
        return False
    if not _header_matches(sel, call):
        return False
    # the call went the other way: its sender is the reply's destination and vice versa
    if sel.sender is not None:
        ep = ctx.destination
        if not endpoint_matches(sel.sender, ep, None, owned.of(ep.bus_name)):
            return False
    if sel.destination is not None:
        ep = ctx.sender
        if not endpoint_matches(sel.destination, ep, call.destination, owned.of(ep.bus_name)):
            return False
    return _args_match(sel, call)
