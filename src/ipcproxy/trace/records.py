"""Turning messages and events into trace records (plain dicts, DESIGN §5)."""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any

import msgspec

from .. import __version__
from ..model import Endpoint, Message, MessageType, Verdict

FORMAT = "ipcproxy-trace"
VERSION = 1


def header(**extra: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "start": iso_now(),
        "host": socket.gethostname(),
        "tool": f"ipcproxy {__version__}",
        "pid": os.getpid(),
        **extra,
    }


def iso_now(ts: float | None = None) -> str:
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC) if ts else datetime.datetime.now(datetime.UTC)
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


# ---------------------------------------------------------------- fast encoding
#
# The proxy records every message it forwards, so building a dict per record and
# encoding it is a large share of its CPU. ``LineEncoder`` writes the same JSON
# line, byte for byte, from pre-encoded fragments: what depends only on the
# header (path, interface, member, ...) is encoded once per distinct header,
# each endpoint once per distinct state, the wall-clock prefix once per second.

_ENCODER = msgspec.json.Encoder()
_encode = _ENCODER.encode
_TYPE_NAMES = {t.value: t.wire_name for t in MessageType}


def header_fields_json(
    path: str | None, interface: str | None, member: str | None, error_name: str | None, signature: str
) -> bytes:
    """``"path":…,"interface":…,"member":…,"error_name":…,"signature":…``: the same run in every message record."""
    e = _encode
    return (
        b'"path":'
        + e(path)
        + b',"interface":'
        + e(interface)
        + b',"member":'
        + e(member)
        + b',"error_name":'
        + e(error_name)
        + b',"signature":'
        + e(signature)
    )


def _fmt_const(data: bytes) -> bytes:
    """A constant JSON fragment made safe to embed in a %-format."""
    return data.replace(b"%", b"%%")


class RecordShape:
    """The fragments of a message record that depend only on header facts."""

    __slots__ = ("head_fmt", "tail_fmt")

    def __init__(
        self,
        transport: str,
        mtype: int,
        path: str | None,
        interface: str | None,
        member: str | None,
        error_name: str | None,
        destination: str | None,
        signature: str,
        unix_fds: int,
        flags: int,
        has_reply_serial: bool,
        has_connection: bool,
    ) -> None:
        e = _encode
        self.head_fmt = (
            b'{"seq":%d,"ts":%d,"time":"%b","transport":'
            + _fmt_const(e(transport))
            + b',"type":'
            + _fmt_const(e(_TYPE_NAMES[mtype]))
            + (b',"serial":%d,"reply_serial":%d' if has_reply_serial else b',"serial":%d,"reply_serial":null')
            + b',"sender":%b,"destination":%b,'
            + _fmt_const(header_fields_json(path, interface, member, error_name, signature))
            + b',"args":'
        )
        self.tail_fmt = (
            b',"size":%d,"fds":'
            + b"%d" % unix_fds
            + b',"flags":'
            + b"%d" % flags
            + b',"verdict":%b,"direction":%b,"connection":'
            + (b"%d" if has_connection else b"null")
            + (_fmt_const(b',"destination_name":' + e(destination)) if destination is not None else b"")
            + b"%b}\n"
        )


class LineEncoder:
    """Caches for encoding message records as JSON lines without building dicts."""

    def __init__(self, epoch_ns: int) -> None:
        self.epoch_ns = epoch_ns
        self._shapes: dict[tuple[Any, ...], RecordShape] = {}
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

    def shape(
        self,
        transport: str,
        mtype: int,
        path: str | None,
        interface: str | None,
        member: str | None,
        error_name: str | None,
        destination: str | None,
        signature: str,
        unix_fds: int,
        flags: int,
        has_reply_serial: bool,
        has_connection: bool,
    ) -> RecordShape:
        key = (
            transport,
            mtype,
            path,
            interface,
            member,
            error_name,
            destination,
            signature,
            unix_fds,
            flags,
            has_reply_serial,
            has_connection,
        )
        found = self._shapes.get(key)
        if found is None:
            if len(self._shapes) > 8192:
                self._shapes.clear()
            found = self._shapes[key] = RecordShape(*key)
        return found

    def shape_of(self, message: Message, has_connection: bool) -> RecordShape:
        return self.shape(
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
            message.reply_serial is not None,
            has_connection,
        )

    def verdict(self, verdict: Verdict | str | dict[str, Any]) -> bytes:
        if isinstance(verdict, str):
            return self.string(verdict)
        if isinstance(verdict, Verdict):
            return _encode(verdict.to_json())
        return _encode(verdict)

    @staticmethod
    def tail(latency_ns: int | None, args_error: str | None) -> bytes:
        if latency_ns is None and args_error is None:
            return b""
        out = b""
        if latency_ns is not None:
            out = b',"latency_ns":%d' % latency_ns
        if args_error is not None:
            out += b',"args_error":' + _encode(args_error)
        return out


class FrameFormat:
    """Everything constant in the records of one kind of forwarded frame on one connection.

    Sender, destination, direction, connection and the header facts are baked
    in; what is left per record is seq, ts, time, serials, arguments, size and
    latency. ``body`` says how arguments go in: none (``[]``), or one hex string.
    """

    __slots__ = ("has_reply_serial", "line", "line_latency", "prefix", "suffix", "suffix_latency")

    def __init__(
        self,
        mtype: int,
        path: str | None,
        interface: str | None,
        member: str | None,
        error_name: str | None,
        destination_name: str | None,
        signature: str,
        flags: int,
        has_reply_serial: bool,
        hex_args: bool,
        sender: bytes,
        destination: bytes,
        direction: str,
        connection: int | None,
    ) -> None:
        e = _encode
        self.has_reply_serial = has_reply_serial
        self.prefix = (
            b'{"seq":%d,"ts":%d,"time":"%b.%06dZ","transport":"dbus","type":'
            + _fmt_const(e(_TYPE_NAMES[mtype]))
            + (b',"serial":%d,"reply_serial":%d' if has_reply_serial else b',"serial":%d,"reply_serial":null')
            + _fmt_const(
                b',"sender":'
                + sender
                + b',"destination":'
                + destination
                + b","
                + header_fields_json(path, interface, member, error_name, signature)
                + b',"args":'
            )
        )
        rest = _fmt_const(
            b',"fds":0,"flags":'
            + b"%d" % flags
            + b',"verdict":"forwarded","direction":'
            + e(direction)
            + b',"connection":'
            + (b"null" if connection is None else b"%d" % connection)
            + (b',"destination_name":' + e(destination_name) if destination_name is not None else b"")
        )
        self.suffix = b',"size":%d' + rest + b"}\n"
        self.suffix_latency = b',"size":%d' + rest + b',"latency_ns":%d}\n'
        args = b'["%b"]' if hex_args else b"[]"
        self.line = self.prefix + args + self.suffix
        self.line_latency = self.prefix + args + self.suffix_latency
