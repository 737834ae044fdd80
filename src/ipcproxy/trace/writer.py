"""Trace sinks: JSON Lines (the trace format) and pcap with DLT_DBUS.

Writes are synchronous (a slow disk slows the proxy down: back-pressure, not
lost records) and gathered: the JSON Lines writer keeps encoded lines as a list
of chunks and hands them to one ``writev`` once enough has piled up or the
recorder's owner flushes (the proxy does so within a few milliseconds), so a
crash loses at most those milliseconds.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
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
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: deque[tuple[Future[None], int]] = deque()
        self._inflight_bytes = 0
        self._max_inflight = 0
        self._min_background = 0
        self.write_bytes(self._encoder.encode(header or records.header()) + b"\n")
        self.flush()

    def start_background(self, min_size: int = 1 << 20, max_inflight: int = 64 << 20) -> None:
        """From now on, hand flushes of ``min_size`` bytes or more to a thread of their own.

        The kernel's copy into the page cache (most of a trace's cost with large
        arguments) then runs beside the caller, which waits only when more than
        ``max_inflight`` bytes are still unwritten: back-pressure, not loss.
        Smaller flushes are written at once (a thread hand-off costs more than
        it saves there), after any still in flight: the order stays.
        """
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace-writer")
            self._min_background = min_size
            self._max_inflight = max_inflight

    def write(self, record: dict[str, Any], message: Message | None = None) -> None:
        self.write_bytes(self._encoder.encode(record) + b"\n")

    def write_bytes(self, data: bytes) -> None:
        """Append already encoded bytes (whole lines, or consecutive pieces of lines)."""
        self._chunks.append(data)
        self.buffered += len(data)

    def flush(self) -> None:
        chunks = self._chunks
        if chunks:
            size = self.buffered
            self._chunks = []
            self.buffered = 0
            if self._pool is None or (size < self._min_background and not self._inflight):
                _write_all(self._fd, chunks)
                return
            self._inflight.append((self._pool.submit(_write_all, self._fd, chunks), size))
            self._inflight_bytes += size
        inflight = self._inflight
        while inflight and (inflight[0][0].done() or self._inflight_bytes > self._max_inflight):
            done, size = inflight.popleft()
            self._inflight_bytes -= size
            done.result()  # waits if need be; raises what the write raised

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.flush()
                while self._inflight:
                    self._inflight.popleft()[0].result()
            finally:
                self._inflight_bytes = 0
                if self._pool is not None:
                    self._pool.shutdown()
                    self._pool = None
                os.close(self._fd)
                self._fd = -1


def _write_all(fd: int, chunks: list[bytes]) -> None:
    start = 0
    while start < len(chunks):
        batch = chunks[start : start + _IOV_MAX]
        written = os.writev(fd, batch)
        start += len(batch)
        if written < sum(map(len, batch)):  # partial write: resume exactly where it stopped
            rest = b"".join(batch)[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]


def open_sink(path: str, header: dict[str, Any] | None = None) -> Sink:
    """Pick the sink from the file name: ``.pcap``/``.pcapng`` write pcap, anything else the trace."""
    if path.endswith((".pcap", ".pcapng")):
        from .pcap import CaptureSink  # real pcapng for .pcapng; each message once, with its sender

        return CaptureSink(path)
    return JsonlWriter(path, header)
