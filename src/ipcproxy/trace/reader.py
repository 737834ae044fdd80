"""Reading traces: header check, version upgrade, tolerant of a truncated last record.

Every tool reads traces through here and sees full records (the fields of
docs/trace-format.md, decoded arguments included), whatever the file's version:
version 2's templates and raw bodies are expanded (``Expander``), version 1's
records are upgraded (``UPGRADES``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import msgspec

from ..inputs import InputFileError, open_input
from . import records
from .pcapfile import CaptureError, sniff_bytes


class TraceError(ValueError):
    """The file is not a trace this version can read."""


def _v1_to_v2(record: dict[str, Any]) -> dict[str, Any]:
    """A version-1 line is a full record, which version 2 left as it was (it added compact lines only)."""
    return record


# version -> converter to version+1; old files stay readable through these.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


class Expander:
    """Turns the lines of one version-2 trace into full records: templates are kept, compact records filled in."""

    def __init__(self, head: dict[str, Any]) -> None:
        epoch = head.get("epoch_ns")
        self.epoch_ns = epoch if isinstance(epoch, int) else 0
        self.templates: dict[int, dict[str, Any]] = {}

    def line(self, line: dict[str, Any]) -> dict[str, Any] | None:
        """The full record of a line, or None for a template definition (kept for the records after it)."""
        number = line.get("tpl")
        if number is None:
            return line  # a full record (events, and what tools write)
        if "seq" not in line:
            self.templates[number] = line
            return None
        template = self.templates.get(number)
        if template is None:
            raise ValueError(f"template {number} is not defined before it is used")
        merged = {**template, **line}
        merged.pop("tpl")
        merged.setdefault("time", records.wall_time(self.epoch_ns, line["ts"]))
        merged.setdefault("args", [])
        return _in_field_order(merged)


def _in_field_order(record: dict[str, Any]) -> dict[str, Any]:
    ordered = {key: record[key] for key in records.FIELD_ORDER if key in record}
    if len(ordered) != len(record):
        ordered.update((key, value) for key, value in record.items() if key not in ordered)
    return ordered


_decoder = msgspec.json.Decoder()
FOLLOW_POLL = 0.1  # seconds between looks at a followed trace that has not grown


def _upgrade(record: dict[str, Any], version: int) -> dict[str, Any]:
    while version < records.VERSION:
        record = UPGRADES[version](record)
        version += 1
    return record


def read_header(stream: IO[bytes], name: str) -> dict[str, Any]:
    capture = _capture_kind(stream)
    if capture is not None:
        from .pcap_convert import capture_header  # here: pcap_convert imports this module's users

        return capture_header(name, capture)
    return _parse_header(stream.readline(), name)


def _parse_header(first: bytes, name: str) -> dict[str, Any]:
    if not first:
        raise TraceError(f"{name}: empty file, not an ipcproxy trace")
    try:
        head = _decoder.decode(first)
    except msgspec.DecodeError:
        raise TraceError(f"{name}: line 1 is not JSON; not an ipcproxy trace") from None
    if not isinstance(head, dict) or head.get("format") != records.FORMAT:
        raise TraceError(f"{name}: line 1 is not an ipcproxy-trace header")
    version = head.get("version")
    if not isinstance(version, int) or version < 1 or version > records.VERSION:
        raise TraceError(f"{name}: trace version {version!r} is not supported (this tool reads 1..{records.VERSION})")
    return head


def iter_trace(
    path: str,
    warn: Callable[[str], None] | None = None,
    follow: bool = False,
    on_header: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the records of a trace file (not the header: ``on_header`` gets it, before any record).

    With ``follow``, keep reading as the file grows, like ``tail -F``: wait for
    a header not yet written, hold a partly written line until its end arrives,
    and start again from the top when the file is truncated or replaced (a
    proxy started again with the same ``-w``).
    """
    warn = warn or (lambda text: print(f"ipcproxy: warning: {text}", file=sys.stderr))
    stream = _open(path, fifo_ok=follow)
    capture = _capture_kind(stream)
    if capture is not None:
        stream.close()
        yield from _capture_records(path, capture, warn, follow, on_header)
        return
    follow = follow and stream.seekable()  # a FIFO is read until its writer closes it
    try:
        while True:
            yield from _records(stream, path, warn, follow, on_header)
            if not follow:
                return
            warn(f"{path}: the trace was truncated or replaced; reading it again from the start")
            stream.close()
            stream = _open(path)
    finally:
        stream.close()


# ---------------------------------------------------------------- captures read as traces
#
# A pcap or pcapng file (dbus-monitor --pcap, busctl capture, `convert`) is
# read as the trace `convert` would make of it, picked by its magic bytes.


def _capture_kind(stream: IO[bytes]) -> str | None:
    """'pcap' or 'pcapng' when the file starts like one; None for anything else (a trace, or not yet written)."""
    peek = getattr(stream, "peek", None)
    head = peek(4)[:4] if peek is not None else b""
    kind = sniff_bytes(head)
    return kind if kind in ("pcap", "pcapng") else None


def _capture_records(
    path: str,
    kind: str,
    warn: Callable[[str], None],
    follow: bool,
    on_header: Callable[[dict[str, Any]], None] | None,
) -> Iterator[dict[str, Any]]:
    from .pcap_convert import capture_header, read_capture  # here: pcap_convert imports this module's users

    if follow:
        raise TraceError(f"{path}: a {kind} capture is read whole; --follow reads ipcproxy traces only")
    header_due = on_header is not None
    try:
        for record in read_capture(path, warn):
            if header_due and on_header is not None:  # only once the file proved to be a D-Bus capture
                header_due = False
                on_header(capture_header(path, kind))
            yield record
    except CaptureError as exc:
        raise TraceError(str(exc)) from None
    if header_due and on_header is not None:
        on_header(capture_header(path, kind))


def _open(path: str, fifo_ok: bool = False) -> IO[bytes]:
    """A regular file (or, when following, a FIFO); never an open that waits for ever on a device."""
    try:
        return open_input(path, "trace", fifo_ok=fifo_ok)
    except InputFileError as exc:
        raise TraceError(str(exc)) from None


def _records(
    stream: IO[bytes],
    path: str,
    warn: Callable[[str], None],
    follow: bool,
    on_header: Callable[[dict[str, Any]], None] | None,
) -> Iterator[dict[str, Any]]:
    """The records of one file; when following, return only once it was rewritten."""
    first = _wait_for_header(stream, path) if follow else stream.readline()
    if first is None:
        return
    head = _parse_header(first, path)
    if on_header is not None:
        on_header(head)
    version = head["version"]
    expander = Expander(head) if version >= 2 else None
    lineno = 1
    pending = b""
    while True:
        line = _read_line(stream, path, follow, first)
        if line is None:
            return
        if not line.endswith(b"\n"):
            if follow:
                pending += line
                continue
            warn(f"{path}: last record (line {lineno + 1}) is truncated; read up to line {lineno}")
            return
        if pending:
            line, pending = pending + line, b""
        lineno += 1
        try:
            record = _decoder.decode(line)
        except msgspec.DecodeError:
            warn(f"{path}: line {lineno} is not valid JSON; skipped")
            continue
        if expander is not None and isinstance(record, dict):
            size = record.pop("bytes", None)
            if isinstance(size, int) and "seq" in record:  # the record's ay argument follows, raw
                body = _read_exact(stream, path, follow, first, size + 1)
                if body is None:
                    return
                if len(body) < size + 1 or body[-1:] != b"\n":
                    warn(f"{path}: the bytes after line {lineno} are truncated; read up to line {lineno - 1}")
                    return
                record["args"] = [body[:-1].hex()]
            try:
                record = expander.line(record)
            except ValueError as exc:
                warn(f"{path}: line {lineno}: {exc}; skipped")
                continue
            if record is None:
                continue
        elif version != records.VERSION:
            record = _upgrade(record, version)
        yield record


def _read_line(stream: IO[bytes], path: str, follow: bool, header: bytes) -> bytes | None:
    """The next line (maybe partial); None at the end (when following: once the file was rewritten).

    Bytes that arrive after a wait may come from a new writer that truncated
    the file and has already outgrown our position, so they count only if the
    file is still the one we were reading once they have been read.
    """
    waited = False
    while True:
        line = stream.readline()
        if line:
            if waited and _rewritten(stream, path, header):
                return None
            return line
        if not follow or _rewritten(stream, path, header):
            return None
        waited = True
        time.sleep(FOLLOW_POLL)


def _read_exact(stream: IO[bytes], path: str, follow: bool, header: bytes, size: int) -> bytes | None:
    """``size`` bytes (fewer at the end of a file not followed); None when a followed file was rewritten."""
    data = stream.read(size)
    while follow and len(data) < size:
        if _rewritten(stream, path, header):
            return None
        time.sleep(FOLLOW_POLL)
        data += stream.read(size - len(data))
        if _rewritten(stream, path, header):  # what came after the wait may be a new writer's
            return None
    return data


def _wait_for_header(stream: IO[bytes], path: str) -> bytes | None:
    """The header line, once its writer has written all of it (a trace just created is empty).

    None if the path meanwhile names another file.
    """
    while True:
        first = stream.readline()
        if first.endswith(b"\n"):
            return first
        stream.seek(0)
        if _rewritten(stream, path, b""):
            return None
        time.sleep(FOLLOW_POLL)


def _rewritten(stream: IO[bytes], path: str, header: bytes) -> bool:
    """Whether the path now names another file, or this one was written again from the start.

    A writer that truncates the file (``-w`` the same path again) may have
    outgrown the reader's position by the time it looks, so the header line
    (which carries its writer's start time and pid) is compared too.
    """
    try:
        now = os.stat(path)
    except OSError:
        return False  # removed: keep the open file, and look again later
    mine = os.fstat(stream.fileno())
    if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino) or now.st_size < stream.tell():
        return True
    return bool(header) and os.pread(stream.fileno(), len(header), 0) != header


def load(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with _open(path) as stream:
        head = read_header(stream, path)
    return head, list(iter_trace(path))
