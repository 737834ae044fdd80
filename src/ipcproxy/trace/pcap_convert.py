"""Converting between traces and DLT_DBUS captures, both ways.

A trace does not keep raw bytes, so trace -> pcap marshals each message again
from its record (``dbus_values``). What a trace cannot tell is lost on the
way: endianness and header field order (written little-endian, fields in code
order), and the exact type inside a variant (the trace stores variants
unwrapped, so the type is guessed from the JSON value).
"""

from __future__ import annotations

import datetime
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..dbus import wire
from ..model import BUS_DRIVER_NAME, Endpoint, Message, MessageType
from . import records
from .dbus_values import MarshalError, record_to_bytes
from .pcapfile import Packet, PcapFile, PcapngFile, Warn, dbus_packets, read_packets, stderr_warn
from .stats import Deliveries

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


def capture_header(path: str, kind: str) -> dict[str, Any]:
    """The trace header of a capture read as a trace: the one `convert` writes."""
    return records.header(mode="convert", source=os.path.abspath(path), source_format=kind)


def read_capture(path: str, warn: Warn = stderr_warn) -> Iterator[dict[str, Any]]:
    """The records of a pcap or pcapng file, as `convert` writes them into a trace (CaptureError if it is none)."""
    return packets_to_records(dbus_packets(read_packets(path, warn), path, warn))


def packets_to_records(packets: Iterable[tuple[int, Packet]]) -> Iterator[dict[str, Any]]:
    """Trace records for a capture's D-Bus packets (numbered, from ``dbus_packets``), latency matched from call to reply."""
    book = NameBook()
    calls: OrderedDict[tuple[str | None, int], int] = OrderedDict()
    seq = 0
    for number, packet in packets:
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
    warn: Warn = stderr_warn,
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
