"""Trace sinks: JSON Lines (the trace format) and pcap with DLT_DBUS.

Writes are synchronous and happen once per batch of handled messages, so a
slow disk slows the proxy down (back-pressure) instead of losing records, and
a crash loses at most the batch being written.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any, Protocol

import msgspec

from ..model import Message
from . import records

DLT_DBUS = 231


class Sink(Protocol):
    def write(self, record: dict[str, Any], message: Message | None) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class JsonlWriter:
    """Appends records as JSON lines; the first line is the versioned header."""

    def __init__(self, path: str, header: dict[str, Any] | None = None) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self._encoder = msgspec.json.Encoder()
        self._buf = bytearray()
        self._buf += self._encoder.encode(header or records.header()) + b"\n"
        self.flush()

    def write(self, record: dict[str, Any], message: Message | None = None) -> None:
        self._encoder.encode_into(record, self._buf, -1)
        self._buf += b"\n"

    def flush(self) -> None:
        view = memoryview(self._buf)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        view.release()
        self._buf.clear()

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1


class PcapWriter:
    """Classic pcap, link type DLT_DBUS: each packet is one whole D-Bus message."""

    def __init__(self, path: str, snaplen: int = 1 << 27) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self._buf = bytearray(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, snaplen, DLT_DBUS))
        self._epoch_offset = time.time_ns() - time.monotonic_ns()
        self.flush()

    def write(self, record: dict[str, Any], message: Message | None) -> None:
        if message is None or not message.raw:
            return
        wall_ns = record.get("ts", 0) + self._epoch_offset
        raw = message.raw
        self._buf += struct.pack("<IIII", wall_ns // 1_000_000_000, wall_ns % 1_000_000_000, len(raw), len(raw))
        self._buf += raw

    def flush(self) -> None:
        view = memoryview(self._buf)
        while view:
            view = view[os.write(self._fd, view) :]
        view.release()
        self._buf.clear()

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1


def open_sink(path: str, header: dict[str, Any] | None = None) -> Sink:
    """Pick the sink from the file name: ``.pcap``/``.pcapng`` write pcap, anything else the trace."""
    if path.endswith((".pcap", ".pcapng")):
        return PcapWriter(path)
    return JsonlWriter(path, header)
