"""Trace sinks: JSON Lines (the trace format) and pcap with DLT_DBUS.

Writes are synchronous (a slow disk slows the proxy down: back-pressure, not
lost records) and gathered: the JSON Lines writer keeps encoded lines as a list
of chunks and hands them to one ``writev`` once enough has piled up or the
recorder's owner flushes (the proxy does so on the next loop turn while
traffic is light, within 10 ms when it is heavy), so a crash loses at most
that. The monitor's writer
(``DirectJsonlWriter``) writes the same lines from a thread of its own,
bypassing the page cache.
"""

from __future__ import annotations

import errno
import mmap
import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import msgspec

from ..model import Message
from ..outputs import PRIVATE, OutputRules, open_file
from . import records

DLT_DBUS = 231
_IOV_MAX = 1024  # iovecs one writev accepts (Linux UIO_MAXIOV)


class Sink(Protocol):
    def write(self, record: dict[str, Any], message: Message | None) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class _LineBuffer:
    """Encoded lines waiting for the next flush, as a list of chunks (written with one gather)."""

    takes_lines = True  # the recorder may hand us pre-encoded lines (write_bytes)

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self._chunks: list[bytes] = []
        self.buffered = 0  # bytes waiting in _chunks (the recorder asks)

    def write(self, record: dict[str, Any], message: Message | None = None) -> None:
        self.write_bytes(self._encoder.encode(record) + b"\n")

    def write_bytes(self, data: bytes) -> None:
        """Append already encoded bytes (whole lines, or consecutive pieces of lines)."""
        self._chunks.append(data)
        self.buffered += len(data)


class JsonlWriter(_LineBuffer):
    """Appends records as JSON lines; the first line is the versioned header."""

    def __init__(self, path: str, header: dict[str, Any] | None = None, rules: OutputRules = PRIVATE) -> None:
        self.path = path
        super().__init__()
        self._fd = open_file(path, rules)  # private, never through a link, never over an input
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


class DirectJsonlWriter(_LineBuffer):
    """The JSON Lines trace, written by a thread of its own, bypassing the page cache when it can.

    At 64 KiB per message, copying the trace into the page cache was the
    largest single cost of the monitor (a quarter of its CPU, on cold memory),
    and a trace is written once and read later. So whole 4 KiB blocks go out
    with O_DIRECT from an aligned staging buffer, on a thread (the write
    releases the GIL, encoding the next batch goes on); the unaligned tail is
    also written through the page cache whenever the writer catches up, so a
    reader following the file sees every record. Where O_DIRECT is refused
    (tmpfs, some file systems) it writes normally. At most ``depth`` batches
    wait; then ``flush`` blocks: back-pressure, never a dropped record.
    """

    STAGE = 8 * 1024 * 1024
    ALIGN = 4096

    def __init__(self, path: str, header: dict[str, Any], depth: int = 4, rules: OutputRules = PRIVATE) -> None:
        super().__init__()
        self.path = path
        self._fd = open_file(path, rules)  # private, never through a link, never over an input
        try:  # the same open file again (not the path, which may meanwhile name another one)
            self._direct = os.open(f"/proc/self/fd/{self._fd}", os.O_WRONLY | os.O_CLOEXEC | os.O_DIRECT)
        except OSError:
            self._direct = -1
        self._stage = mmap.mmap(-1, self.STAGE)  # page-aligned, as O_DIRECT requires
        self._staged = 0  # bytes in the stage, starting at file offset _offset
        self._offset = 0
        self._chunks.append(self._encoder.encode(header) + b"\n")
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=depth)
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="trace-writer", daemon=True)
        self._thread.start()
        self.flush()

    def flush(self) -> None:
        if self._error is not None:
            raise self._error
        if self._chunks:
            self._queue.put(self._chunks)
            self._chunks = []
            self.buffered = 0

    def _run(self) -> None:
        while (chunks := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(chunks, expose_tail=self._queue.empty())
                except OSError as exc:
                    self._error = exc

    def _write(self, chunks: list[bytes], expose_tail: bool) -> None:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = min(self.STAGE - self._staged, len(view))
                self._stage[self._staged : self._staged + n] = view[:n]
                self._staged += n
                view = view[n:]
                if self._staged == self.STAGE:
                    self._write_blocks()
        self._write_blocks()
        if expose_tail and self._staged:
            _pwrite_all(self._fd, memoryview(self._stage)[: self._staged], self._offset)

    def _write_blocks(self) -> None:
        """Write the stage's whole blocks; keep the unaligned tail at its front."""
        aligned = self._staged if self._direct < 0 else self._staged & ~(self.ALIGN - 1)
        if not aligned:
            return
        try:
            _pwrite_all(self._fd if self._direct < 0 else self._direct, memoryview(self._stage)[:aligned], self._offset)
        except OSError as exc:
            if self._direct < 0 or exc.errno != errno.EINVAL:
                raise
            os.close(self._direct)  # accepted at open, refused at write: write normally from now on
            self._direct = -1
            self._write_blocks()
            return
        tail = self._staged - aligned
        self._stage[:tail] = self._stage[aligned : self._staged]
        self._staged = tail
        self._offset += aligned

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.flush()
        finally:
            self._queue.put(None)
            self._thread.join()
            try:
                if self._error is None and self._staged:
                    _pwrite_all(self._fd, memoryview(self._stage)[: self._staged], self._offset)
                    os.ftruncate(self._fd, self._offset + self._staged)
            finally:
                if self._direct >= 0:
                    os.close(self._direct)
                os.close(self._fd)
                self._fd = -1
                self._stage.close()
        if self._error is not None:
            raise self._error


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    with view:
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n


def open_sink(path: str, header: dict[str, Any] | None = None, rules: OutputRules = PRIVATE) -> Sink:
    """Pick the sink from the file name: ``.pcap``/``.pcapng`` write pcap, anything else the trace."""
    if path.endswith((".pcap", ".pcapng")):
        from .capture_sink import CaptureSink  # real pcapng for .pcapng; each message once, with its sender

        return CaptureSink(path, rules)
    return JsonlWriter(path, header, rules)
