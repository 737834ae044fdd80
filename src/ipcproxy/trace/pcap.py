"""pcap and pcapng with DLT_DBUS (231): read, write, and convert to and from traces.

Captures made by ``dbus-monitor --pcap`` (classic pcap) and ``busctl capture``
(pcapng) hold one whole D-Bus message per packet. The container formats are
small enough to read and write here, streaming, without a dependency.

A trace does not keep raw bytes, so trace -> pcap marshals each message again
from its record. What a trace cannot tell is lost on the way: endianness and
header field order (written little-endian, fields in code order), and the
exact type inside a variant (the trace stores variants unwrapped, so the type
is guessed from the JSON value: see ``guess_signature``).
"""

from __future__ import annotations

import datetime
import os
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import msgspec
from dbus_fast import Message as FastMessage
from dbus_fast import MessageFlag, Variant
from dbus_fast import MessageType as FastType
from dbus_fast.signature import SignatureType, get_signature_tree

from .. import __version__
from ..dbus import wire
from ..errors import InputError
from ..model import BUS_DRIVER_NAME, Endpoint, Message, MessageType
from . import records
from .reader import TraceError, iter_trace, read_header
from .stats import Deliveries

DLT_DBUS = 231
MAX_PACKET = wire.MAX_MESSAGE_SIZE + 4096  # anything larger is a corrupt length, not a message

Warn = Callable[[str], None]


class CaptureError(ValueError):
    """The file is not a pcap/pcapng capture this module can read."""


@dataclass(slots=True)
class Packet:
    ts_ns: int  # wall clock, ns since the epoch
    linktype: int
    data: bytes
    orig_len: int


def _stderr_warn(text: str) -> None:
    print(f"ipcproxy: warning: {text}", file=sys.stderr)


# ------------------------------------------------------------------ reading

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


def sniff(path: str) -> str:
    """'pcap', 'pcapng', 'trace' or 'unknown', from the first bytes of the file."""
    with open(path, "rb") as stream:
        head = stream.read(4)
    if head in PCAP_MAGICS:
        return "pcap"
    if head == PCAPNG_SHB:
        return "pcapng"
    if head.startswith(b"{"):
        return "trace"
    return "unknown"


def read_packets(path: str, warn: Warn = _stderr_warn) -> Iterator[Packet]:
    """Every packet of a pcap or pcapng file, streaming; a truncated tail is warned about, not fatal."""
    kind = sniff(path)
    with open(path, "rb") as stream:
        if kind == "pcap":
            yield from _read_pcap(stream, path, warn)
        elif kind == "pcapng":
            yield from _read_pcapng(stream, path, warn)
        else:
            raise CaptureError(f"{path}: not a pcap or pcapng capture")


def _read_pcap(stream: IO[bytes], path: str, warn: Warn) -> Iterator[Packet]:
    head = stream.read(24)
    if len(head) < 24:
        raise CaptureError(f"{path}: pcap header is truncated")
    order, scale = PCAP_MAGICS[head[:4]]
    _major, _minor, _zone, _sigfigs, _snaplen, network = struct.unpack(order + "HHiIII", head[4:])
    linktype = network & 0x0FFFFFFF  # the upper bits may carry FCS information
    record = struct.Struct(order + "IIII")
    number = 0
    while True:
        rec = stream.read(16)
        if not rec:
            return
        number += 1
        if len(rec) < 16:
            warn(f"{path}: packet {number} is truncated; read up to packet {number - 1}")
            return
        sec, frac, incl, orig = record.unpack(rec)
        if incl > MAX_PACKET:
            raise CaptureError(f"{path}: packet {number} claims {incl} bytes; the file is corrupt")
        data = stream.read(incl)
        if len(data) < incl:
            warn(f"{path}: packet {number} is truncated; read up to packet {number - 1}")
            return
        yield Packet(sec * 1_000_000_000 + frac * scale, linktype, data, orig)


@dataclass(slots=True)
class _Interface:
    linktype: int
    snaplen: int
    units_per_s: int = 1_000_000  # if_tsresol, default microseconds
    offset_s: int = 0  # if_tsoffset

    def ns(self, units: int) -> int:
        return (units * 1_000_000_000) // self.units_per_s + self.offset_s * 1_000_000_000


def _options(body: bytes, order: str) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(order + "HH", body, pos)
        pos += 4
        if code == 0:
            return
        yield code, body[pos : pos + length]
        pos += length + (-length & 3)


def _read_pcapng(stream: IO[bytes], path: str, warn: Warn) -> Iterator[Packet]:
    order = "<"
    interfaces: list[_Interface] = []
    number = 0
    last_ts = 0
    while True:
        head = stream.read(8)
        if not head:
            return
        if len(head) < 8:
            warn(f"{path}: last block is truncated; read up to packet {number}")
            return
        if head[:4] == PCAPNG_SHB:
            bom = stream.read(4)
            if bom == b"\x4d\x3c\x2b\x1a":
                order = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                order = ">"
            else:
                raise CaptureError(f"{path}: pcapng section header has a bad byte-order magic")
            head += bom
            interfaces = []  # a new section starts its own interface list
        btype, length = struct.unpack(order + "II", head[:8])
        if length < 12 or length % 4 or length > MAX_PACKET:
            raise CaptureError(f"{path}: pcapng block of length {length} after packet {number}; the file is corrupt")
        rest = stream.read(length - len(head))
        if len(rest) < length - len(head):
            warn(f"{path}: last block is truncated; read up to packet {number}")
            return
        block = head + rest
        body = block[8:-4]
        if btype == 1:  # interface description
            linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", body)
            iface = _Interface(linktype, snaplen)
            for code, value in _options(body[8:], order):
                if code == 9 and value:  # if_tsresol
                    v = value[0]
                    iface.units_per_s = 2 ** (v & 0x7F) if v & 0x80 else 10**v
                elif code == 14 and len(value) >= 8:  # if_tsoffset
                    iface.offset_s = struct.unpack(order + "q", value[:8])[0]
            interfaces.append(iface)
            continue
        if btype == 6:  # enhanced packet
            iface_id, hi, lo, caplen, orig = struct.unpack_from(order + "IIIII", body)
            data = body[20 : 20 + caplen]
        elif btype == 3:  # simple packet: no timestamp, interface 0
            (orig,) = struct.unpack_from(order + "I", body)
            iface_id, caplen = 0, min(orig, len(body) - 4)
            if interfaces and interfaces[0].snaplen:
                caplen = min(caplen, interfaces[0].snaplen)
            data = body[4 : 4 + caplen]
            hi = lo = -1
        elif btype == 2:  # obsolete packet block
            iface_id, _drops, hi, lo, caplen, orig = struct.unpack_from(order + "HHIIII", body)
            data = body[20 : 20 + caplen]
        else:
            continue  # statistics, name resolution, custom blocks...
        number += 1
        if iface_id >= len(interfaces):
            raise CaptureError(f"{path}: packet {number} refers to undeclared interface {iface_id}")
        iface = interfaces[iface_id]
        if hi >= 0:
            last_ts = iface.ns((hi << 32) | lo)
        yield Packet(last_ts, iface.linktype, bytes(data), orig)


# ------------------------------------------------------------------ writing


class PcapFile:
    """Classic pcap (nanosecond magic, little-endian), link type DLT_DBUS."""

    def __init__(self, stream: IO[bytes], snaplen: int = wire.MAX_MESSAGE_SIZE) -> None:
        self.stream = stream
        stream.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, snaplen, DLT_DBUS))

    def add(self, ts_ns: int, data: bytes) -> None:
        sec, ns = divmod(max(ts_ns, 0), 1_000_000_000)
        self.stream.write(struct.pack("<IIII", sec, ns, len(data), len(data)))
        self.stream.write(data)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) & 3)


def _block(btype: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", btype, length) + body + struct.pack("<I", length)


class PcapngFile:
    """pcapng: one section, one DLT_DBUS interface with nanosecond timestamps, enhanced packet blocks."""

    def __init__(self, stream: IO[bytes], application: str = f"ipcproxy {__version__}") -> None:
        self.stream = stream
        shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
        shb += _option(4, application.encode()) + _option(0, b"")
        idb = struct.pack("<HHI", DLT_DBUS, 0, 0)
        idb += _option(2, b"dbus") + _option(9, bytes([9])) + _option(0, b"")
        stream.write(_block(0x0A0D0D0A, shb) + _block(1, idb))

    def add(self, ts_ns: int, data: bytes) -> None:
        ts = max(ts_ns, 0)
        head = struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
        self.stream.write(_block(6, head + data + b"\0" * (-len(data) & 3)))


def capture_file(path: str, stream: IO[bytes]) -> PcapFile | PcapngFile:
    """The capture writer the file name asks for."""
    return PcapngFile(stream) if path.endswith(".pcapng") else PcapFile(stream)


def add_sender(raw: bytes, sender: str) -> bytes:
    """Append a SENDER header field, as the bus does on delivery, keeping endianness and body bytes."""
    u32 = "<I" if raw[0] == ord("l") else ">I"
    fields_len = struct.unpack_from(u32, raw, 12)[0]
    end = wire.FIXED_HEADER + fields_len
    body = raw[end + (-end & 7) :]
    name = sender.encode()
    fields = raw[wire.FIXED_HEADER : end] + b"\0" * (-end & 7)
    fields += bytes([wire.SENDER, 1, ord("s"), 0]) + struct.pack(u32, len(name)) + name + b"\0"
    head = bytearray(raw[:12]) + struct.pack(u32, len(fields)) + fields
    head += b"\0" * (-len(head) & 7)
    return bytes(head) + body


class CaptureSink:
    """`-w FILE.pcap` / `-w FILE.pcapng`: the messages the proxy handled, as the bus delivered them.

    Each message is written once (a message between two proxied clients is
    recorded on both connections) and carries its sender's unique name, which
    the bus adds on delivery but a client's outgoing bytes lack.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stream = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._out = capture_file(path, self._stream)
        self._epoch = time.time_ns() - time.monotonic_ns()
        self._deliveries = Deliveries()
        self.buffered = 0

    def write(self, record: dict[str, Any], message: Message | None) -> None:
        if message is None or not message.raw or record.get("type") == "event":
            return
        if self._deliveries.seen(record)[0]:
            return
        raw = message.raw
        sender = (record.get("sender") or {}).get("bus_name")
        if message.sender is None and sender:
            raw = add_sender(raw, sender)
        self._out.add(int(record.get("ts") or time.monotonic_ns()) + self._epoch, raw)
        self.buffered += len(raw)

    def flush(self) -> None:
        if self._stream.closed:
            return
        self._stream.flush()
        self.buffered = 0

    def close(self) -> None:
        if not self._stream.closed:
            self._stream.close()


# ------------------------------------------------------------------ JSON args back to D-Bus values


class MarshalError(ValueError):
    """A record whose arguments cannot be turned back into its signature's values."""


_INT_RANGES = {
    "y": (0, 0xFF),
    "n": (-(1 << 15), (1 << 15) - 1),
    "q": (0, 0xFFFF),
    "i": (-(1 << 31), (1 << 31) - 1),
    "u": (0, 0xFFFFFFFF),
    "x": (-(1 << 63), (1 << 63) - 1),
    "t": (0, (1 << 64) - 1),
    "h": (0, 0xFFFFFFFF),
}


def guess_signature(value: Any) -> str:
    """A signature for a variant's JSON value (the trace does not keep the variant's own)."""
    if isinstance(value, bool):
        return "b"
    if isinstance(value, int):
        for sig in ("i", "x", "t"):
            low, high = _INT_RANGES[sig]
            if low <= value <= high:
                return sig
        raise MarshalError(f"integer {value} does not fit any D-Bus type")
    if isinstance(value, float):
        return "d"
    if isinstance(value, str):
        return "s"
    if isinstance(value, dict):
        return "a{sv}"
    if isinstance(value, list):
        sigs = {guess_signature(v) for v in value}
        if not sigs:
            return "as"
        if len(sigs) == 1:
            return "a" + sigs.pop()
        if sigs <= {"i", "x"}:
            return "ax"
        if sigs <= {"i", "x", "d"}:
            return "ad"
        return "av"
    raise MarshalError(f"cannot guess a D-Bus type for {value!r}")


def _key(t: SignatureType, key: str) -> Any:
    if t.token in _INT_RANGES:
        return int(key)
    if t.token == "b":
        return key.lower() == "true"
    if t.token == "d":
        return float(key)
    return key


def to_dbus(t: SignatureType, value: Any) -> Any:
    """The dbus-fast value of type ``t`` for a JSON value as the trace records it."""
    token = t.token
    if token in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MarshalError(f"expected an integer for {token!r}, got {value!r}")
        low, high = _INT_RANGES[token]
        if not low <= value <= high:
            raise MarshalError(f"{value} is out of range for {token!r}")
        return value
    if token == "b":
        if not isinstance(value, bool):
            raise MarshalError(f"expected a boolean, got {value!r}")
        return value
    if token == "d":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MarshalError(f"expected a number, got {value!r}")
        return float(value)
    if token in ("s", "o", "g"):
        if not isinstance(value, str):
            raise MarshalError(f"expected a string for {token!r}, got {value!r}")
        return value
    if token == "v":
        sig = guess_signature(value)
        return Variant(sig, to_dbus(get_signature_tree(sig).types[0], value))
    if token == "a":
        child = t.children[0]
        if child.token == "y":
            if isinstance(value, str):
                try:
                    return bytes.fromhex(value)
                except ValueError:
                    raise MarshalError(f"expected hex bytes, got {value[:40]!r}") from None
            if isinstance(value, list):
                return bytes(to_dbus(child, v) for v in value)
            raise MarshalError(f"expected bytes, got {value!r}")
        if child.token == "{":
            if not isinstance(value, dict):
                raise MarshalError(f"expected an object for {t.signature!r}, got {value!r}")
            kt, vt = child.children
            return {_key(kt, k): to_dbus(vt, v) for k, v in value.items()}
        if not isinstance(value, list):
            raise MarshalError(f"expected a list for {t.signature!r}, got {value!r}")
        return [to_dbus(child, v) for v in value]
    if token == "(":
        if not isinstance(value, list) or len(value) != len(t.children):
            raise MarshalError(f"expected {len(t.children)} fields for {t.signature!r}, got {value!r}")
        return [to_dbus(c, v) for c, v in zip(t.children, value, strict=True)]
    raise MarshalError(f"unsupported type {token!r}")


def body_from_json(signature: str, args: list[Any]) -> list[Any]:
    try:
        types = get_signature_tree(signature).types
    except Exception as exc:  # noqa: BLE001 - dbus-fast raises its own error types
        raise MarshalError(f"bad signature {signature!r}: {exc}") from None
    if len(types) != len(args):
        raise MarshalError(f"signature {signature!r} has {len(types)} arguments, the record {len(args)}")
    return [to_dbus(t, v) for t, v in zip(types, args, strict=True)]


def record_to_bytes(rec: dict[str, Any], sender: str | None = None) -> tuple[bytes, bool]:
    """Marshal a message record again; the flag says whether its body had to be left out.

    ``sender`` stands in for a sender the record does not name (a client's
    messages sent before the reply to its Hello told it its unique name).
    """
    mtype = MessageType.from_name(str(rec.get("type")))
    if mtype is MessageType.DATA:
        raise MarshalError("stream data has no D-Bus form")
    signature = str(rec.get("signature") or "")
    args = rec.get("args")
    bodyless = False
    if signature and (rec.get("args_error") or not isinstance(args, list) or (not args and signature)):
        # arguments were not decoded (--no-args, or an undecodable body): keep the header only
        signature, body, bodyless = "", [], True
    else:
        body = body_from_json(signature, list(args or []))
    sender = (rec.get("sender") or {}).get("bus_name") or sender
    try:
        fast = FastMessage(
            destination=rec.get("destination_name"),
            path=rec.get("path"),
            interface=rec.get("interface"),
            member=rec.get("member"),
            message_type=FastType(int(mtype)),
            flags=MessageFlag(int(rec.get("flags") or 0) & 0x7),
            error_name=rec.get("error_name"),
            reply_serial=rec.get("reply_serial"),
            sender=sender,
            signature=signature,
            body=body,
            serial=int(rec.get("serial") or 0),
        )
        return wire.marshal(fast, unix_fds=int(rec.get("fds") or 0)), bodyless
    except MarshalError:
        raise
    except Exception as exc:  # noqa: BLE001 - dbus-fast validation raises several types
        raise MarshalError(f"{type(exc).__name__}: {exc}") from None


# ------------------------------------------------------------------ capture -> trace


class NameBook:
    """Who owns which well-known name, learnt from the bus driver's signals in the capture."""

    def __init__(self) -> None:
        self.owner: dict[str, str] = {}
        self.names: dict[str, set[str]] = {}

    def learn(self, message: Message, args: list[Any] | None) -> None:
        if message.sender != BUS_DRIVER_NAME or message.type is not MessageType.SIGNAL or not args:
            return
        if message.member == "NameOwnerChanged" and len(args) == 3:
            name, old, new = (str(a) for a in args)
            if name.startswith(":"):
                if not new:
                    self.names.pop(name, None)
                return
            if old:
                self.names.get(old, set()).discard(name)
                self.owner.pop(name, None)
            if new:
                self.owner[name] = new
                self.names.setdefault(new, set()).add(name)
        elif message.member == "NameAcquired" and message.destination and not str(args[0]).startswith(":"):
            self.owner[str(args[0])] = message.destination
            self.names.setdefault(message.destination, set()).add(str(args[0]))

    def endpoint(self, name: str | None) -> Endpoint:
        if name is None:
            return Endpoint()
        if name == BUS_DRIVER_NAME:
            return Endpoint(bus_name=BUS_DRIVER_NAME, names=[BUS_DRIVER_NAME])
        unique = name if name.startswith(":") else self.owner.get(name)
        if unique is None:
            return Endpoint(names=[name])
        return Endpoint(bus_name=unique, names=sorted(self.names.get(unique, set())))


def _iso(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns // 1000 / 1e6, datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def packets_to_records(packets: Iterable[Packet], warn: Warn = _stderr_warn) -> Iterator[dict[str, Any]]:
    """Trace records for the D-Bus packets of a capture, latency matched from call to reply."""
    book = NameBook()
    calls: OrderedDict[tuple[str | None, int], int] = OrderedDict()
    seq = 0
    other_links = 0
    for number, packet in enumerate(packets, 1):
        if packet.linktype != DLT_DBUS:
            other_links += 1
            continue
        seq += 1
        if len(packet.data) < packet.orig_len:
            yield records.event_record(
                seq=seq,
                ts_ns=packet.ts_ns,
                time=_iso(packet.ts_ns),
                event="malformed",
                packet=number,
                reason=f"packet cut to {len(packet.data)} of {packet.orig_len} bytes by the capture's snaplen",
            )
            continue
        try:
            message = wire.parse_message(packet.data)
        except wire.FrameError as exc:
            yield records.event_record(
                seq=seq, ts_ns=packet.ts_ns, time=_iso(packet.ts_ns), event="malformed", packet=number, reason=str(exc)
            )
            continue
        args: list[Any] | None = None
        args_error = None
        if message.signature:
            try:
                args = wire.jsonable(message.args)
            except Exception as exc:  # noqa: BLE001 - a bad body is recorded, not fatal
                args_error = str(exc)
        sender = book.endpoint(message.sender)
        destination = book.endpoint(message.destination)
        latency = None
        if message.type in (MessageType.METHOD_CALL,) and not message.no_reply_expected:
            calls[(message.sender, message.serial)] = packet.ts_ns
            if len(calls) > 100_000:
                calls.popitem(last=False)
        elif message.reply_serial is not None:
            start = calls.pop((message.destination, message.reply_serial), None)
            if start is not None:
                latency = packet.ts_ns - start
        book.learn(message, args)
        yield records.message_record(
            seq=seq,
            ts_ns=packet.ts_ns,
            time=_iso(packet.ts_ns),
            message=message,
            sender=sender,
            destination=destination,
            verdict="forwarded",
            direction="observed",
            connection=None,
            latency_ns=latency,
            args=args,
            args_error=args_error,
        )
    if other_links:
        warn(f"{other_links} packets with a link type other than DLT_DBUS ({DLT_DBUS}) skipped")


# ------------------------------------------------------------------ trace -> capture


def _wall_offset(rec: dict[str, Any]) -> int | None:
    """ns to add to a record's monotonic ``ts`` to get wall-clock time, from its ``time`` field."""
    text, ts = rec.get("time"), rec.get("ts")
    if not isinstance(text, str) or not isinstance(ts, int):
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    wall = int(moment.replace(microsecond=0).timestamp()) * 1_000_000_000 + moment.microsecond * 1000
    return wall - ts


@dataclass
class ConvertReport:
    written: int = 0
    skipped: int = 0
    bodyless: int = 0
    copies: int = 0


def connection_names(recs: Iterable[dict[str, Any]]) -> dict[int, str]:
    """The unique name of each proxied connection, as later records of the trace reveal it."""
    names: dict[int, str] = {}
    for rec in recs:
        conn = rec.get("connection")
        if not isinstance(conn, int) or conn in names:
            continue
        side = {"to_bus": "sender", "from_bus": "destination"}.get(str(rec.get("direction")))
        name = (rec.get(side) or {}).get("bus_name") if side else None
        if isinstance(name, str) and name.startswith(":"):
            names[conn] = name
    return names


def records_to_capture(
    recs: Iterable[dict[str, Any]],
    out: PcapFile | PcapngFile,
    warn: Warn = _stderr_warn,
    names: Mapping[int, str] | None = None,
) -> ConvertReport:
    """Write each message once; ``names`` (from ``connection_names``) fills in senders a record lacks."""
    names = names or {}
    report = ConvertReport()
    deliveries = Deliveries()
    offset: int | None = None
    for rec in recs:
        if rec.get("type") in ("event", "data", None):
            continue
        if deliveries.seen(rec)[0]:
            report.copies += 1
            continue
        try:
            fallback = names.get(rec["connection"]) if rec.get("direction") == "to_bus" else None
            raw, bodyless = record_to_bytes(rec, fallback)
        except (MarshalError, ValueError) as exc:
            report.skipped += 1
            warn(f"record {rec.get('seq')}: cannot marshal it again ({exc}); skipped")
            continue
        if offset is None:
            offset = _wall_offset(rec) or 0
        out.add(int(rec.get("ts") or 0) + offset, raw)
        report.written += 1
        report.bodyless += bodyless
    if report.bodyless:
        warn(f"{report.bodyless} messages had no decoded arguments in the trace; written without a body")
    return report


# ------------------------------------------------------------------ conversion


def _write_atomically(path: str, fill: Callable[[IO[bytes]], None]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as stream:
            fill(stream)
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass
class Converted:
    """What `convert` did: a one-line summary, and whether every message made it."""

    summary: str
    complete: bool = True


def convert(src: str, dst: str) -> Converted:
    """trace -> pcap/pcapng (by ``dst``'s extension), pcap/pcapng -> trace, or capture -> capture."""
    try:
        kind = sniff(src)
    except IsADirectoryError:
        raise InputError(f"{src}: is a directory") from None
    except OSError as exc:
        raise InputError(f"{src}: {exc.strerror}") from None
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise InputError(f"convert: {src} would be overwritten by its own conversion")
    to_capture = dst.endswith((".pcap", ".pcapng"))
    if kind == "unknown":
        raise InputError(f"{src}: neither an ipcproxy trace nor a pcap/pcapng capture")
    if kind == "trace":
        if not to_capture:
            raise InputError(f"convert: {src} is already a trace; name OUT *.pcap or *.pcapng")
        try:
            with open(src, "rb") as stream:
                read_header(stream, src)
        except TraceError as exc:
            raise InputError(str(exc)) from None
        box: list[ConvertReport] = []

        def fill_capture(stream: IO[bytes]) -> None:
            names = connection_names(iter_trace(src, warn=lambda _: None))
            box.append(records_to_capture(iter_trace(src), capture_file(dst, stream), names=names))

        _write_atomically(dst, fill_capture)
        r = box[0]
        merged = f", {r.copies} copies recorded on both sides merged" if r.copies else ""
        return Converted(f"wrote {r.written} messages to {dst} ({r.skipped} skipped{merged})", not r.skipped)

    count = [0]
    try:
        if to_capture:

            def fill_copy(stream: IO[bytes]) -> None:
                out = capture_file(dst, stream)
                for packet in read_packets(src):
                    if packet.linktype == DLT_DBUS:
                        out.add(packet.ts_ns, packet.data)
                        count[0] += 1

            _write_atomically(dst, fill_copy)
        else:

            def fill_trace(stream: IO[bytes]) -> None:
                encoder = msgspec.json.Encoder()
                head = records.header(mode="convert", source=os.path.abspath(src), source_format=kind)
                stream.write(encoder.encode(head) + b"\n")
                for rec in packets_to_records(read_packets(src)):
                    stream.write(encoder.encode(rec) + b"\n")
                    count[0] += 1

            _write_atomically(dst, fill_trace)
    except CaptureError as exc:
        raise InputError(str(exc)) from None
    return Converted(f"wrote {count[0]} records to {dst}")
