"""Trace sinks: JSON Lines (the trace format) and pcap with DLT_DBUS.

Writes are synchronous (a slow disk slows the proxy down: back-pressure, not
lost records) and gathered: the JSON Lines writer keeps encoded lines as a list
of chunks and hands them to one ``writev`` once enough has piled up or the
recorder's owner flushes (the proxy does so within a few milliseconds), so a
crash loses at most those milliseconds.
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
_IOV_MAX = 1024  # iovecs one writev accepts (Linux UIO_MAXIOV)


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
        self._chunks: list[bytes] = []
        self.buffered = 0  # bytes waiting in _chunks
        self.write_bytes(self._encoder.encode(header or records.header()) + b"\n")
        self.flush()

    def write(self, record: dict[str, Any], message: Message | None = None) -> None:
        self.write_bytes(self._encoder.encode(record) + b"\n")

    def write_bytes(self, data: bytes) -> None:
        """Append already encoded bytes (whole lines, or consecutive pieces of lines)."""
        self._chunks.append(data)
        self.buffered += len(data)

    def flush(self) -> None:
        chunks = self._chunks
        if not chunks:
            return
        self._chunks = []
        self.buffered = 0
        start = 0
        while start < len(chunks):
            batch = chunks[start : start + _IOV_MAX]
            written = os.writev(self._fd, batch)
            start += len(batch)
            wanted = sum(map(len, batch))
            if written < wanted:  # partial write: resume exactly where it stopped
                rest = b"".join(batch)[written:]
                while rest:
                    rest = rest[os.write(self._fd, rest) :]

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
        from .pcap import CaptureSink  # real pcapng for .pcapng; each message once, with its sender

        return CaptureSink(path)
    return JsonlWriter(path, header)
