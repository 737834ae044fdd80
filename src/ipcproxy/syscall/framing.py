"""Framing: the byte streams of stream channels turned into messages (sans-IO).

A pipe, FIFO, Unix stream or TCP socket carries bytes, not messages: one
write may hold three lines, one D-Bus message may take four reads. Per
channel and direction, a ``Framing`` reassembles the stream that the
recorded syscalls carry and records one record per message instead of one
per syscall, each naming every syscall that carried its bytes.

Modes (docs/commands-syscall.md, "Framing"): ``as-written`` (one message per
syscall), ``newline``, ``length:…`` (a length field whose layout the user
gives) and ``dbus`` (the SASL exchange, then D-Bus messages decoded by the
project's wire parser into the records the proxy writes).

What the tracer did not see is never made up: a payload cut by
``--max-payload`` leaves a gap, and a message with a gap says so
(``framing_error``); where the gap hides a boundary (a header, a newline),
the records say how far they are sure. Bytes that do not fit the mode
(garbage on a ``dbus`` socket) end the framing of that stream with one clear
record and warning; the rest of it is recorded as written.
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import InputError
from ..model import BUS_DRIVER_NAME, Endpoint, Message, MessageType
from ..trace import records as trace_records
from .channels import Channel, Key, Transfer
from .records import data_fields

# D-Bus framing needs ipcproxy.dbus.wire, and with it dbus_fast and asyncio (a third of a second to
# import): it is imported when a stream is framed as D-Bus, so that `ipcproxy trace` starts fast.
FIXED_HEADER = 16  # the D-Bus fixed header (wire.FIXED_HEADER)
MAX_MESSAGE_SIZE = 1 << 27  # the D-Bus maximum message size (wire.MAX_MESSAGE_SIZE)

Record = Callable[[dict[str, Any], int], int]  # fields, ts -> seq (the recorder's ``record``)
Warn = Callable[[str], None]

SCAN = -1  # a message that ends at the first newline
STREAM_KINDS = ("pipe", "fifo", "unix", "tcp")
MAX_OWNERS = 100_000  # writes remembered with the framed messages their bytes went into
MAX_PENDING_CALLS = 4096  # calls per connection awaiting their reply (for latency)
AUTH_COMMANDS = frozenset(
    {"AUTH", "CANCEL", "BEGIN", "DATA", "ERROR", "NEGOTIATE_UNIX_FD", "REJECTED", "OK", "AGREE_UNIX_FD"}
)
MAX_AUTH_LINE = 16 * 1024


class FramingError(ValueError):
    """Bytes that do not fit the stream's framing: its framing ends here."""


# ---------------------------------------------------------------- modes
class Mode(abc.ABC):
    """How a message's length follows from its first bytes (``as-written`` is no mode: not framed)."""

    def __init__(self, name: str, header: int = 0, keep_all: bool = False) -> None:
        self.name = name  # as the user wrote it, and as records name it (``framing``)
        self.header = header  # bytes ``measure`` may need at most
        self.keep_all = keep_all  # keep every byte of a message (to decode it), not only --max-payload

    @abc.abstractmethod
    def measure(self, head: bytes, stream: _Stream) -> int | None:
        """The message's total length, ``SCAN`` (ends at the next newline), or None (more bytes needed)."""


class NewlineMode(Mode):
    def __init__(self) -> None:
        super().__init__("newline")

    def measure(self, head: bytes, stream: _Stream) -> int | None:
        return SCAN


class LengthMode(Mode):
    """A length field of ``size`` bytes at ``offset``; the message is offset + size + value + adjust bytes."""

    def __init__(self, spec: str, size: int, big_endian: bool, offset: int, adjust: int) -> None:
        super().__init__(spec, offset + size)
        self.size = size
        self.order: Literal["big", "little"] = "big" if big_endian else "little"
        self.offset = offset
        self.adjust = adjust

    def measure(self, head: bytes, stream: _Stream) -> int | None:
        end = self.header
        if len(head) < end:
            return None
        value = int.from_bytes(head[self.offset : end], self.order)
        total = end + value + self.adjust
        if total <= 0 or total < end:
            raise FramingError(f"length field {value} gives a message of {total} bytes, shorter than its header")
        return total


class DbusMode(Mode):
    """The authentication lines (each ends at its newline), then messages by their fixed header."""

    def __init__(self) -> None:
        super().__init__("dbus", FIXED_HEADER, keep_all=True)

    def measure(self, head: bytes, stream: _Stream) -> int | None:
        if not head:
            return None
        if not stream.binary:
            first = head[0]
            if first in b"lB":
                if len(head) < 2:
                    return None
                if 1 <= head[1] <= 4:  # a message's type byte, not a letter: the handshake is over
                    stream.binary = True
            if not stream.binary:
                if first == 0 or 0x41 <= first <= 0x5A:  # the client's NUL, or a command in capitals
                    return SCAN
                raise FramingError(f"not D-Bus: byte 0x{first:02x} where a handshake line or a message starts")
        if len(head) < FIXED_HEADER:
            return None
        from ..dbus import wire

        try:
            return wire.frame_size(head[:FIXED_HEADER])
        except wire.FrameError as exc:
            raise FramingError(f"not a D-Bus message: {exc}") from None


def _is_mode(text: str) -> bool:
    return text in ("as-written", "newline", "dbus") or text.startswith("length:")


def parse_mode(text: str) -> Mode | None:
    """``as-written``, ``newline``, ``dbus`` or ``length:SIZE[:be|le][:at=N][:adjust=N|:total]``."""
    if text == "newline":
        return NewlineMode()
    if text == "dbus":
        return DbusMode()
    if text == "as-written":
        return None
    if not text.startswith("length:"):
        raise InputError(f"--framing {text}: unknown framing (as-written, newline, length:SIZE[:...], dbus)")
    parts = text.split(":")[1:]
    size = int(parts[0]) if parts[0].isdigit() else 0
    if size not in (1, 2, 4, 8):
        raise InputError(f"--framing {text}: the length field's size must be 1, 2, 4 or 8 bytes")
    big, offset, adjust, total = True, 0, 0, False
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if part in ("be", "le"):
            big = part == "be"
        elif part == "total":
            total = True
        elif key in ("at", "adjust") and value:
            try:
                number = int(value)
            except ValueError:
                raise InputError(f"--framing {text}: {key}= takes a whole number, not {value!r}") from None
            if key == "at":
                if number < 0:
                    raise InputError(f"--framing {text}: at= must not be negative")
                offset = number
            else:
                adjust = number
        else:
            raise InputError(f"--framing {text}: unknown part {part!r} (be, le, at=N, adjust=N, total)")
    if total:
        if adjust:
            raise InputError(f"--framing {text}: give either total or adjust=N, not both")
        adjust = -(offset + size)
    return LengthMode(text, size, big, offset, adjust)


@dataclass(frozen=True)
class Rule:
    """``--framing [WHERE=]MODE``: which stream channels (None: all) get which mode."""

    where: str | None
    mode: Mode | None  # None: as written

    def matches(self, channel: Channel) -> bool:
        where = self.where
        if where is None:
            return True
        if where in STREAM_KINDS:
            return channel.kind == where
        if where.startswith("tcp:"):
            port = where[4:]
            ends = (channel.local, channel.remote)
            return channel.kind == "tcp" and any(end is not None and end.rsplit(":", 1)[-1] == port for end in ends)
        return channel.path == where


def parse_rule(text: str) -> Rule:
    """One ``--framing`` option: ``MODE`` (every stream channel) or ``WHERE=MODE``."""
    if _is_mode(text):
        return Rule(None, parse_mode(text))
    for at, char in enumerate(text):
        if char == "=" and _is_mode(text[at + 1 :]):
            where = text[:at]
            break
    else:
        raise InputError(
            f"--framing {text}: unknown framing (as-written, newline, length:SIZE[:...], dbus; or WHERE=MODE)"
        )
    if where.startswith("tcp:"):
        if not where[4:].isdigit():
            raise InputError(f"--framing {text}: {where}: give a port number after tcp:")
    elif where not in STREAM_KINDS and not where.startswith(("/", "@")):
        raise InputError(
            f"--framing {text}: {where!r}: not a stream transport (pipe, fifo, unix, tcp), tcp:PORT or a path"
        )
    return Rule(where, parse_mode(text[at + 1 :]))


# ---------------------------------------------------------------- streams
@dataclass(slots=True)
class _Part:
    transfer: Transfer
    start: int  # where in the transfer this message's bytes begin
    size: int  # bytes of the transfer in this message


@dataclass(slots=True)
class _Msg:
    head: bytearray = field(default_factory=bytearray)  # the known bytes, up to the first gap (capped)
    size: int = 0  # bytes so far, known or not
    gap: int = 0  # bytes not recorded by the tracer (--max-payload)
    total: int | None = None
    scan: bool = False
    parts: list[_Part] = field(default_factory=list)

    def add(self, transfer: Transfer, start: int, known: bytes, size: int, keep: int) -> None:
        if known and not self.gap and len(self.head) < keep:
            self.head += known[: keep - len(self.head)]
        self.gap += size - len(known)
        self.size += size
        if self.parts and self.parts[-1].transfer is transfer:
            self.parts[-1].size += size
        else:
            self.parts.append(_Part(transfer, start, size))


class _Stream:
    """One direction of one channel."""

    def __init__(self, mode: Mode, direction: str, channel: Channel) -> None:
        self.mode = mode
        self.direction = direction
        self.channel = channel
        self.msg: _Msg | None = None
        self.lost: str | None = None  # why framing ended; the rest is recorded as written
        self.binary = False  # dbus: past the handshake


@dataclass
class _Conn:
    """What one D-Bus connection (a socket, both directions) has taught so far."""

    to_bus: str | None = None  # the direction (send/recv) that carries the client's bytes to the bus
    client_name: str | None = None  # the unique name the bus gave the client
    calls: dict[tuple[str, int], int] = field(default_factory=dict)  # (direction, serial) -> ts


@dataclass
class _Owner:
    """A write, and where its bytes went: the framed messages they are in, the reads that took them."""

    transfer: Transfer  # held so that its id() is not reused
    framed: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, seq), in stream order
    starts: list[int] = field(default_factory=list)  # the starts of ``framed``, for bisecting
    taken: int = 0  # bytes of it that framed reads have taken so far


# a read's bytes in order: (the write they came from, where in it, how many); None: not known
_Segments = list[tuple[Transfer, int, int]] | None


class Framing:
    """Framed records for the transfers of the channels the rules select; ``record`` writes one."""

    def __init__(self, rules: list[Rule], max_payload: int, record: Record, warn: Warn) -> None:
        self.rules = rules
        self.max_payload = max_payload
        self.record = record
        self.warn = warn
        self.modes: dict[Key, Mode | None] = {}
        self.streams: dict[tuple[Key, str], _Stream] = {}
        self.conns: dict[Key, _Conn] = {}
        self.owners: OrderedDict[int, _Owner] = OrderedDict()
        self.segments: dict[int, tuple[Transfer, _Segments]] = {}  # id(read) -> where its bytes came from
        self._base_of: Transfer | None = None  # the syscall whose record fields ``_base`` holds
        self._base: dict[str, Any] = {}

    def mode_of(self, channel: Channel) -> Mode | None:
        """The framing of a channel (None: as written), chosen by the first rule that matches it."""
        key = channel.key
        if key in self.modes:
            return self.modes[key]
        mode: Mode | None = None
        if channel.stream:
            for rule in self.rules:
                if rule.where is None and isinstance(rule.mode, DbusMode) and channel.kind not in ("unix", "tcp"):
                    continue  # D-Bus runs over sockets: a plain "dbus" leaves pipes and FIFOs alone
                if rule.matches(channel):
                    mode = rule.mode
                    break
        if len(self.modes) > 65536:
            self.modes.clear()
        self.modes[key] = mode
        return mode

    # ------------------------------------------------------------ transfers in, records out
    def feed(self, transfer: Transfer) -> int:
        """Frame one transfer (or record it as written, on a channel no rule frames); returns the records written."""
        mode = self.mode_of(transfer.channel)
        if mode is None:
            fields = data_fields(transfer)
            if transfer.direction == "recv" and any(w is not None and not w.seq for w in transfer.consumed or []):
                fields["consumed"] = self._consumed([_Part(transfer, 0, transfer.size)])  # it read framed writes
                self.segments.pop(id(transfer), None)
            transfer.seq = self.record(fields, transfer.ts)
            return 1
        sid = (transfer.channel.key, transfer.direction)
        stream = self.streams.get(sid)
        if stream is None:
            stream = self.streams[sid] = _Stream(mode, transfer.direction, transfer.channel)
        stream.channel = transfer.channel  # it may have learnt its peer
        return self._feed(stream, transfer)

    def finish(self) -> int:
        """The messages still incomplete when the trace ends: recorded as partial."""
        written = 0
        for stream in self.streams.values():
            if stream.msg is not None and stream.msg.size:
                written += self._emit(stream, stream.msg, partial=True)
                stream.msg = None
        return written

    def _keep(self, mode: Mode) -> int:
        return MAX_MESSAGE_SIZE if mode.keep_all else max(self.max_payload, mode.header)

    def _feed(self, stream: _Stream, transfer: Transfer) -> int:
        data, size = transfer.payload, transfer.size
        mode = stream.mode
        keep = self._keep(mode)
        written = 0
        off = 0
        while off < size:
            if stream.lost is not None:
                return written + self._as_written(stream, transfer, off)
            msg = stream.msg
            if msg is None:
                msg = stream.msg = _Msg()
            if msg.total is None and not msg.scan:
                if msg.gap:  # a gap where the length would have been read
                    return written + self._lose(stream, "payload cut by --max-payload inside a header", transfer, off)
                peek = bytes(msg.head) + data[off : off + max(mode.header, 2)]
                try:
                    measured = mode.measure(peek, stream)
                except FramingError as exc:
                    return written + self._lose(stream, str(exc), transfer, off)
                if measured is None:  # more bytes needed than this transfer shows
                    known = data[off:]
                    msg.add(transfer, off, known, size - off, keep)
                    off = size
                    continue
                if measured == SCAN:
                    msg.scan = True
                else:
                    msg.total = measured
            if msg.total is not None:
                take = min(msg.total - msg.size, size - off)
                msg.add(transfer, off, data[off : off + take], take, keep)
                off += take
                if msg.size == msg.total:
                    written += self._complete(stream, msg)
                continue
            at = data.find(b"\n", off)  # a scanned message: ends at its newline
            if at >= 0:
                take = at + 1 - off
                msg.add(transfer, off, data[off : at + 1], take, keep)
                off += take
                written += self._complete(stream, msg)
            else:
                msg.add(transfer, off, data[off:], size - off, keep)
                off = size
                if isinstance(mode, DbusMode) and msg.size > MAX_AUTH_LINE:
                    return written + self._lose(
                        stream, f"handshake line longer than {MAX_AUTH_LINE} bytes", transfer, off
                    )
        return written

    def _complete(self, stream: _Stream, msg: _Msg) -> int:
        stream.msg = None
        return self._emit(stream, msg, partial=False)

    def _lose(self, stream: _Stream, reason: str, transfer: Transfer, off: int) -> int:
        """Framing this stream ends: what is pending is recorded with the reason, the rest as written."""
        stream.lost = reason
        self.warn(
            f"{_channel_text(stream.channel)} ({stream.direction}, pid {transfer.pid}): "
            f"{stream.mode.name} framing ends: {reason}; the rest of this stream is recorded as written"
        )
        written = 0
        if stream.msg is not None and stream.msg.size:
            written += self._emit(stream, stream.msg, partial=False, error=reason)
        stream.msg = None
        if off < transfer.size:
            written += self._as_written(stream, transfer, off)
        return written

    def _as_written(self, stream: _Stream, transfer: Transfer, off: int) -> int:
        """The rest of a transfer (from ``off``) as a record of its own, on a stream no longer framed."""
        fields = data_fields(transfer)
        if off:
            payload = transfer.payload[off:]
            fields["size"] = transfer.size - off
            fields["payload"] = payload.hex()
            fields["truncated"] = len(payload) < transfer.size - off
            if not fields["truncated"]:
                del fields["truncated"]
            fields["offset"] = off
        if transfer.direction == "recv":
            fields["consumed"] = self._consumed([_Part(transfer, off, transfer.size - off)])
            self.segments.pop(id(transfer), None)
        fields["framing"] = stream.mode.name
        fields["framing_error"] = stream.lost
        seq = self.record(fields, transfer.ts)
        if not off:
            transfer.seq = seq
        if transfer.direction == "send":
            self._own(transfer, seq, off, transfer.size - off)
        return 1

    # ------------------------------------------------------------ records
    def _emit(self, stream: _Stream, msg: _Msg, partial: bool, error: str | None = None) -> int:
        last = msg.parts[-1].transfer
        fields: dict[str, Any] | None = None
        dbus = isinstance(stream.mode, DbusMode)
        if dbus and error is None and not partial and not msg.gap:
            decoded = self._dbus_fields(stream, msg)
            if isinstance(decoded, str):
                error = decoded
            else:
                fields = decoded
        if fields is None:
            fields = self._data_fields(stream, msg)
            if error is None and msg.gap:
                if dbus:
                    error = (
                        f"{msg.gap} of this D-Bus message's {msg.size} bytes were not recorded: it cannot be "
                        f"decoded (raise --max-payload above {self.max_payload})"
                    )
                else:
                    error = f"{msg.gap} of its {msg.size} bytes were not recorded (--max-payload {self.max_payload})"
                    if msg.scan:
                        error += ": the newlines in them are not known; this record runs to the next newline"
            if error is not None:
                fields["framing_error"] = error
            if partial:
                fields["partial"] = True
        seq = self.record(fields, last.ts)
        if stream.direction == "send":
            for part in msg.parts:
                self._own(part.transfer, seq, part.start, part.size)
        else:
            for part in msg.parts:
                if part.start + part.size == part.transfer.size:  # the read is framed to its end
                    self.segments.pop(id(part.transfer), None)
        return 1

    def _owner(self, transfer: Transfer) -> _Owner:
        owner = self.owners.get(id(transfer))
        if owner is None or owner.transfer is not transfer:
            if len(self.owners) >= MAX_OWNERS:
                self.owners.popitem(last=False)
            owner = self.owners[id(transfer)] = _Owner(transfer)
        return owner

    def _own(self, transfer: Transfer, seq: int, start: int, size: int) -> None:
        owner = self._owner(transfer)
        owner.framed.append((start, start + size, seq))
        owner.starts.append(start)

    def _syscalls(self, msg: _Msg) -> list[dict[str, Any]]:
        return [
            {
                "syscall": part.transfer.syscall,
                "pid": part.transfer.pid,
                "tid": part.transfer.tid,
                "fd": part.transfer.fd,
                "ts": part.transfer.ts,
                "size": part.size,
            }
            for part in msg.parts
        ]

    def _segments(self, read: Transfer) -> _Segments:
        """Which bytes of which writes a read returned, in order (the channel table takes them first come,
        first served); None when some of them are of no known write."""
        found = self.segments.get(id(read))
        if found is not None and found[0] is read:
            return found[1]
        consumed = read.consumed or [None]
        segments: _Segments = None
        if None not in consumed:
            segments = []
            want = read.size
            for i, write in enumerate(consumed):
                assert write is not None
                owner = self._owner(write)
                take = want if i == len(consumed) - 1 else min(want, write.size - owner.taken)
                segments.append((write, owner.taken, take))
                owner.taken += take
                want -= take
        if len(self.segments) > MAX_OWNERS:
            self.segments.clear()
        self.segments[id(read)] = (read, segments)
        return segments

    def _consumed(self, parts: list[_Part]) -> list[int | str]:
        """Received bytes: the framed sends (or the writes) that they were."""
        out: list[int | str] = []

        def add(item: int | str) -> None:
            if item not in out:
                out.append(item)

        for part in parts:
            read = part.transfer
            segments = self._segments(read)
            if segments is None:  # not byte for byte: every write it took from, and "unknown"
                for write in read.consumed or [None]:
                    for item in self._sends_of(write, 0, write.size if write is not None else 0):
                        add(item)
                continue
            at = 0
            begin, end = part.start, part.start + part.size
            for write, start, length in segments:
                lo, hi = max(begin, at), min(end, at + length)
                if lo < hi:
                    for item in self._sends_of(write, start + lo - at, start + hi - at):
                        add(item)
                at += length
        return out

    def _sends_of(self, write: Transfer | None, start: int, end: int) -> list[int | str]:
        """The records holding bytes ``start:end`` of a write: its framed messages, or its own record."""
        if write is None:
            return ["unknown"]
        owner = self.owners.get(id(write))
        if owner is not None and owner.transfer is write and owner.framed:
            # a write may hold thousands of messages: start at the one holding ``start``
            at = max(bisect.bisect_right(owner.starts, start) - 1, 0)
            seqs: list[int | str] = []
            covered = 0
            for lo, hi, seq in itertools.islice(owner.framed, at, None):
                if lo >= end:
                    break
                if start < hi:
                    seqs.append(seq)
                    covered += min(hi, end) - max(lo, start)
            if covered < end - start:
                seqs.append("unknown")  # not framed yet (its message is still incomplete)
            return seqs
        return [write.seq] if write.seq else ["unknown"]

    def _data_fields(self, stream: _Stream, msg: _Msg) -> dict[str, Any]:
        last = msg.parts[-1].transfer
        if self._base_of is not last:  # one syscall may end many messages: its fields are built once
            self._base_of = last
            self._base = data_fields(dataclasses.replace(last, payload=b"", consumed=None))
            self._base.pop("truncated", None)
        fields = dict(self._base)
        payload = bytes(msg.head[: self.max_payload])
        fields["size"] = msg.size
        fields["payload"] = payload.hex()
        if len(payload) < msg.size:
            fields["truncated"] = True
        transfers = [part.transfer for part in msg.parts]
        for side in ("sender", "destination") if len(transfers) > 1 else ():
            ends = {id(getattr(t, side)): getattr(t, side) for t in transfers}
            if len(ends) > 1:
                first = next(iter(ends.values()))
                same = all(end == first for end in ends.values())
                fields[side] = first.to_json() if same else Endpoint().to_json()
        fields["fds"] = sum(t.nfds for t in transfers)
        if stream.direction == "recv":
            fields["consumed"] = self._consumed(msg.parts)
        fields["framing"] = stream.mode.name
        fields["syscalls"] = self._syscalls(msg)
        return fields

    # ------------------------------------------------------------ D-Bus
    def _conn(self, channel: Channel) -> _Conn:
        conn = self.conns.get(channel.key)
        if conn is None:
            if len(self.conns) > 65536:
                self.conns.clear()
            conn = self.conns[channel.key] = _Conn()
        return conn

    def _dbus_fields(self, stream: _Stream, msg: _Msg) -> dict[str, Any] | str:
        """The record of a whole handshake line or D-Bus message, or why it is recorded as data instead."""
        raw = bytes(msg.head)
        conn = self._conn(stream.channel)
        last = msg.parts[-1].transfer
        if msg.scan:
            return self._auth_fields(stream, conn, msg, raw)
        if conn.to_bus is None:  # no handshake seen (attached late): the traced side is the client
            conn.to_bus = "send"
        from ..dbus import wire

        try:
            message = wire.parse_message(raw)
        except wire.FrameError as exc:
            self.warn(f"{_channel_text(stream.channel)} ({stream.direction}, pid {last.pid}): {exc}")
            return f"malformed D-Bus message: {exc}"
        to_bus = stream.direction == conn.to_bus
        direction = "to_bus" if to_bus else "from_bus"
        if not to_bus and message.destination and message.destination.startswith(":"):
            conn.client_name = message.destination  # the bus addresses the client by its unique name
        caller = last.sender if last.direction == "send" else last.destination
        other = last.destination if last.direction == "send" else last.sender
        # which process is the client: this one, unless it is the bus (it reads what clients send)
        client_proc, bus_proc = (caller, other) if conn.to_bus == "send" else (other, caller)
        if to_bus:
            sender = _named(client_proc, conn.client_name)
            destination = _peer(message.destination, bus_proc)
        else:
            sender = _peer(message.sender, bus_proc)
            destination = _named(client_proc, conn.client_name) if message.destination else Endpoint()
        latency = self._latency(conn, direction, message, last.ts)
        args: list[Any] | None = None
        args_error: str | None = None
        if message.signature:
            try:
                args = wire.jsonable(message.args)
            except Exception as exc:  # noqa: BLE001 - a bad body is recorded, not fatal
                args_error = str(exc)
        fields = trace_records.message_record(
            seq=0,
            ts_ns=0,
            time="",
            message=message,
            sender=sender,
            destination=destination,
            verdict="forwarded",
            direction=direction,
            connection=stream.channel.inode,
            latency_ns=latency,
            args=args,
            args_error=args_error,
        )
        for key in ("seq", "ts", "time"):
            del fields[key]
        self._add_place(fields, stream, msg)
        return fields

    def _latency(self, conn: _Conn, direction: str, message: Message, ts: int) -> int | None:
        if message.type is MessageType.METHOD_CALL:
            if not message.flags & 0x1:
                if len(conn.calls) >= MAX_PENDING_CALLS:
                    del conn.calls[next(iter(conn.calls))]
                conn.calls[(direction, message.serial)] = ts
            return None
        if message.reply_serial is None:
            return None
        other = "from_bus" if direction == "to_bus" else "to_bus"
        sent = conn.calls.pop((other, message.reply_serial), None)
        return ts - sent if sent is not None else None

    def _auth_fields(self, stream: _Stream, conn: _Conn, msg: _Msg, raw: bytes) -> dict[str, Any] | str:
        nul = raw.startswith(b"\0")
        text = (raw[1:] if nul else raw).rstrip(b"\r\n").decode("ascii", errors="replace")
        command = text.split(" ", 1)[0]
        if command not in AUTH_COMMANDS:
            reason = f"not a D-Bus handshake line: {text[:60]!r}"
            stream.lost = reason
            self.warn(
                f"{_channel_text(stream.channel)} ({stream.direction}, pid {msg.parts[-1].transfer.pid}): "
                f"dbus framing ends: {reason}; the rest of this stream is recorded as written"
            )
            return reason
        if conn.to_bus is None:
            client_side = nul or command in ("AUTH", "BEGIN", "NEGOTIATE_UNIX_FD", "CANCEL")
            if client_side or command in ("OK", "REJECTED", "AGREE_UNIX_FD"):
                mine = stream.direction
                conn.to_bus = mine if client_side else ("recv" if mine == "send" else "send")
        fields: dict[str, Any] = {"type": "event", "event": "dbus_auth", "transport": stream.channel.kind}
        if conn.to_bus is not None:
            fields["direction"] = "to_bus" if stream.direction == conn.to_bus else "from_bus"
        fields["line"] = text
        if nul:
            fields["nul"] = True
        self._add_place(fields, stream, msg)
        return fields

    def _add_place(self, fields: dict[str, Any], stream: _Stream, msg: _Msg) -> None:
        last = msg.parts[-1].transfer
        fields["channel"] = data_fields(last)["channel"]
        fields["pid"] = last.pid
        fields["tid"] = last.tid
        fields["fd"] = last.fd
        fields["framing"] = "dbus"
        fields["syscalls"] = self._syscalls(msg)
        if stream.direction == "recv":
            fields["consumed"] = self._consumed(msg.parts)


def _named(process: Endpoint, bus_name: str | None) -> Endpoint:
    return Endpoint(bus_name=bus_name, pid=process.pid, uid=process.uid, exe=process.exe, comm=process.comm)


def _peer(name: str | None, bus_process: Endpoint) -> Endpoint:
    """The far end by the name in the header; the bus driver is the process at the other end of the socket."""
    if name == BUS_DRIVER_NAME:
        return _named(bus_process, BUS_DRIVER_NAME)
    if name is None or name.startswith(":"):
        return Endpoint(bus_name=name)
    return Endpoint(names=[name])


def _channel_text(channel: Channel) -> str:
    if channel.local:
        return f"{channel.kind}:{channel.local}" + (f"->{channel.remote}" if channel.remote else "")
    if channel.path:
        return f"{channel.kind}:{channel.path}"
    return f"{channel.kind}:[{channel.inode}]"
