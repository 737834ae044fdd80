"""Turning messages and events into trace records (plain dicts, see docs/trace-format.md)."""

from __future__ import annotations

import datetime
import os
import socket
import time as _time
from typing import Any, NamedTuple

import msgspec

from .. import __version__
from ..model import Endpoint, Message, MessageType, Verdict

FORMAT = "ipcproxy-trace"
VERSION = 2
# wall clock minus monotonic clock, once per process: a compact record's time is EPOCH_NS + its ts
EPOCH_NS = _time.time_ns() - _time.monotonic_ns()


def header(**extra: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "start": iso_now(),
        "host": socket.gethostname(),
        "tool": f"ipcproxy {__version__}",
        "pid": os.getpid(),
        "epoch_ns": EPOCH_NS,
        **extra,
    }


def iso_now(ts: float | None = None) -> str:
    moment = (
        datetime.datetime.fromtimestamp(ts, datetime.UTC) if ts is not None else datetime.datetime.now(datetime.UTC)
    )
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def message_record(
    *,
    seq: int,
    ts_ns: int,
    time: str,
    message: Message,
    sender: Endpoint,
    destination: Endpoint,
    verdict: Verdict | str | dict[str, Any],
    direction: str,
    connection: int | None,
    latency_ns: int | None = None,
    args: list[Any] | None = None,
    args_error: str | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "seq": seq,
        "ts": ts_ns,
        "time": time,
        "transport": message.transport,
        "type": message.type.wire_name,
        "serial": message.serial,
        "reply_serial": message.reply_serial,
        "sender": sender.to_json(),
        "destination": destination.to_json(),
        "path": message.path,
        "interface": message.interface,
        "member": message.member,
        "error_name": message.error_name,
        "signature": message.signature,
        "args": args if args is not None else [],
        "size": message.size,
        "fds": message.unix_fds,
        "flags": message.flags,
        "verdict": verdict.to_json() if isinstance(verdict, Verdict) else verdict,
        "direction": direction,
        "connection": connection,
    }
    if message.destination is not None:
        record["destination_name"] = message.destination
    if latency_ns is not None:
        record["latency_ns"] = latency_ns
    if args_error is not None:
        record["args_error"] = args_error
    return record


def event_record(*, seq: int, ts_ns: int, time: str, event: str, **fields: Any) -> dict[str, Any]:
    """Connection and proxy events (connect, disconnect, back-pressure, notes)."""
    return {"seq": seq, "ts": ts_ns, "time": time, "type": "event", "event": event, **fields}


# ---------------------------------------------------------------- compact encoding (version 2)
#
# The proxy records every message it forwards, so what a record costs to encode
# and to write is a large share of its work. A version-2 trace therefore writes
# what is constant for a kind of message (header facts, endpoints, direction,
# connection) once, as a template line, and each message as a compact record
# naming its template; the bytes of an ``ay`` argument follow their record raw
# instead of as hex. ``Templates`` and ``compact`` are the one encoder of these
# lines; the compiled plane (``_plane.c``) writes the same bytes, and the reader
# (``reader.py``) turns them back into full records.

_ENCODER = msgspec.json.Encoder()
_encode = _ENCODER.encode

# the order of a full record's fields (what readers hand out, and version 1 wrote)
FIELD_ORDER = (
    "seq",
    "ts",
    "time",
    "transport",
    "type",
    "serial",
    "reply_serial",
    "sender",
    "destination",
    "path",
    "interface",
    "member",
    "error_name",
    "signature",
    "args",
    "size",
    "fds",
    "flags",
    "verdict",
    "direction",
    "connection",
    "destination_name",
    "latency_ns",
    "args_error",
)
BIG_BODY = 16384  # raw bodies this long are handed to the writer as a chunk of their own, not copied into the line


class Shape(NamedTuple):
    """What a message's header says that is the same for every message of its kind."""

    transport: str
    mtype: int
    path: str | None
    interface: str | None
    member: str | None
    error_name: str | None
    destination: str | None  # the DESTINATION field (``destination_name``)
    signature: str
    fds: int
    flags: int

    @classmethod
    def of(cls, message: Message) -> Shape:
        return cls(
            message.transport,
            int(message.type),
            message.path,
            message.interface,
            message.member,
            message.error_name,
            message.destination,
            message.signature,
            message.unix_fds,
            message.flags,
        )


_TYPE_NAMES = {t.value: t.wire_name for t in MessageType}


def template_line(
    number: int,
    shape: Shape,
    sender: bytes,
    destination: bytes,
    verdict: str | None,
    direction: str,
    connection: int | None,
) -> bytes:
    """A template definition: ``{"tpl":N,...}`` with every field its records share, in record order."""
    e = _encode
    line = (
        b'{"tpl":%d,"transport":' % number
        + e(shape.transport)
        + b',"type":'
        + e(_TYPE_NAMES[shape.mtype])
        + b',"sender":'
        + sender
        + b',"destination":'
        + destination
        + b',"path":'
        + e(shape.path)
        + b',"interface":'
        + e(shape.interface)
        + b',"member":'
        + e(shape.member)
        + b',"error_name":'
        + e(shape.error_name)
        + b',"signature":'
        + e(shape.signature)
        + b',"fds":%d,"flags":%d' % (shape.fds, shape.flags)
    )
    if verdict is not None:
        line += b',"verdict":' + e(verdict)
    line += (
        b',"direction":' + e(direction) + b',"connection":' + (b"null" if connection is None else b"%d" % connection)
    )
    if shape.destination is not None:
        line += b',"destination_name":' + e(shape.destination)
    return line + b"}\n"


class Templates:
    """The templates defined so far in one trace, by what they hold; numbers are never reused."""

    LIMIT = 8192

    def __init__(self) -> None:
        self._numbers: dict[tuple[Any, ...], int] = {}
        self._next = 1

    def number(
        self,
        shape: Shape,
        sender: bytes,
        destination: bytes,
        verdict: str | None,
        direction: str,
        connection: int | None,
    ) -> tuple[int, bytes]:
        """The template's number, and its definition line if it is new (write it before the record)."""
        key = (shape, sender, destination, verdict, direction, connection)
        found = self._numbers.get(key)
        if found is not None:
            return found, b""
        if len(self._numbers) >= self.LIMIT:
            self._numbers.clear()
        number = self._numbers[key] = self._next
        self._next += 1
        return number, template_line(number, shape, sender, destination, verdict, direction, connection)


def compact(
    seq: int,
    ts: int,
    template: int,
    serial: int,
    reply_serial: int | None,
    size: int,
    latency_ns: int | None = None,
    verdict: bytes | None = None,
    args_error: str | None = None,
    args: bytes | None = None,
    body: int | None = None,
) -> bytes:
    """A compact record line; with ``body``, the caller writes that many raw bytes and a newline after it.

    ``verdict`` is the encoded verdict of a message whose template holds none;
    ``args`` the encoded argument list (absent: ``[]``); ``body`` the length of
    the raw ``ay`` argument (args are then that argument, as hex).
    """
    line = b'{"seq":%d,"ts":%d,"tpl":%d,"serial":%d,"reply_serial":%b,"size":%d' % (
        seq,
        ts,
        template,
        serial,
        b"null" if reply_serial is None else b"%d" % reply_serial,
        size,
    )
    if latency_ns is not None:
        line += b',"latency_ns":%d' % latency_ns
    if verdict is not None:
        line += b',"verdict":' + verdict
    if args_error is not None:
        line += b',"args_error":' + _encode(args_error)
    if body is not None:
        return line + b',"bytes":%d}\n' % body
    if args is not None:
        line += b',"args":' + args
    return line + b"}\n"


class LineEncoder:
    """Caches for encoding records: endpoints and small values once per distinct value, wall-clock seconds."""

    def __init__(self, epoch_ns: int) -> None:
        self.epoch_ns = epoch_ns
        self._endpoints: dict[tuple[Any, ...], bytes] = {}
        self._strings: dict[Any, bytes] = {}
        self._second = -1
        self._second_text = b""

    def second_text(self, second: int) -> bytes:
        """``YYYY-MM-DDTHH:MM:SS`` of a wall-clock second."""
        if second != self._second:
            self._second = second
            self._second_text = iso_now(float(second))[:-8].encode()
        return self._second_text

    def time(self, ts_ns: int) -> bytes:
        """The record's ``time`` (ISO 8601, UTC, microseconds) for a monotonic timestamp."""
        second, ns = divmod(self.epoch_ns + ts_ns, 1_000_000_000)
        return b"%b.%06dZ" % (self.second_text(second), ns // 1000)

    def wall(self, ts_ns: int) -> str:
        return self.time(ts_ns).decode()

    def endpoint(self, ep: Endpoint) -> bytes:
        key = (ep.bus_name, tuple(ep.names), ep.pid, ep.uid, ep.exe, ep.comm)
        found = self._endpoints.get(key)
        if found is None:
            if len(self._endpoints) > 8192:
                self._endpoints.clear()
            found = self._endpoints[key] = _encode(ep.to_json())
        return found

    def string(self, value: Any) -> bytes:
        """Encoded form of a small, often repeated value (verdict strings, directions)."""
        try:
            found = self._strings.get(value)
        except TypeError:  # unhashable (a dict verdict)
            return _encode(value)
        if found is None:
            if len(self._strings) > 4096:
                self._strings.clear()
            found = self._strings[value] = _encode(value)
        return found

    def verdict(self, verdict: Verdict | str | dict[str, Any]) -> bytes:
        if isinstance(verdict, str):
            return self.string(verdict)
        if isinstance(verdict, Verdict):
            return _encode(verdict.to_json())
        return _encode(verdict)


def wall_time(epoch_ns: int, ts_ns: int) -> str:
    """``time`` of a record from its ``ts`` and its trace's ``epoch_ns`` (what ``LineEncoder.time`` writes)."""
    second, ns = divmod(epoch_ns + ts_ns, 1_000_000_000)
    return f"{iso_now(float(second))[:-8]}.{ns // 1000:06d}Z"
