"""pcap and pcapng files with link type DLT_DBUS (231): reading and writing packets, streaming.

Captures made by ``dbus-monitor --pcap`` (classic pcap) and ``busctl capture``
(pcapng) hold one whole D-Bus message per packet.

The containers are read and written here rather than with a packet library:
dpkt (the well-kept one that handles both) gives timestamps as float seconds
and writes pcapng in microseconds, which loses the nanoseconds of a wall-clock
time, and its pcapng reader knows only the first interface and enhanced
packet blocks (a merged capture's second interface, simple and obsolete
packet blocks are lost). The formats themselves are small.
"""

from __future__ import annotations

import struct
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from .. import __version__
from ..dbus import wire
from ..inputs import open_input

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


def stderr_warn(text: str) -> None:
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
    """'pcap', 'pcapng', 'trace' or 'unknown', from the first bytes of the file (a regular file)."""
    with open_input(path, "input") as stream:
        return sniff_bytes(stream.read(4))


def sniff_bytes(head: bytes) -> str:
    """``sniff`` for a file's first four bytes."""
    if head in PCAP_MAGICS:
        return "pcap"
    if head == PCAPNG_SHB:
        return "pcapng"
    if head.startswith(b"{"):
        return "trace"
    return "unknown"


def read_packets(path: str, warn: Warn = stderr_warn) -> Iterator[Packet]:
    """Every packet of a pcap or pcapng file, streaming; a truncated tail is warned about, not fatal."""
    kind = sniff(path)
    with open_input(path, "capture") as stream:
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


def dbus_packets(packets: Iterable[Packet], source: str, warn: Warn) -> Iterator[tuple[int, Packet]]:
    """The DLT_DBUS packets of a capture, each with its number in the file; the others are skipped.

    A count of the skipped ones is warned about at the end; a capture that has
    packets but none of them D-Bus is refused (CaptureError), so that a
    conversion or a reading of it does not pass for an empty but valid one.
    """
    others: Counter[int] = Counter()
    dbus = 0
    for number, packet in enumerate(packets, 1):
        if packet.linktype != DLT_DBUS:
            others[packet.linktype] += 1
            continue
        dbus += 1
        yield number, packet
    if others:
        skipped = sum(others.values())
        what = f"{skipped} packet{'s' if skipped > 1 else ''} of link type {', '.join(map(str, sorted(others)))}"
        if not dbus:
            raise CaptureError(f"{source}: not a D-Bus capture: {what}, none of DLT_DBUS ({DLT_DBUS})")
        warn(f"{source}: {what} skipped (not DLT_DBUS, {DLT_DBUS})")


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
