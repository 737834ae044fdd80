"""`convert IN OUT`: a trace or a DLT_DBUS capture into the other form, or one capture container into the other.

What IN is comes from its first bytes, what OUT is from its name. OUT is
written through outputs.write_file: a temporary file renamed at the end (a
failed conversion leaves nothing half-written), never over IN, a non-empty
file (without --force) or through a symbolic link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO

import msgspec

from ..errors import InputError
from ..inputs import open_input
from ..outputs import PRIVATE, OutputRules, check_file, write_file
from .pcap_convert import ConvertReport, capture_header, connection_names, read_capture, records_to_capture
from .pcapfile import CaptureError, Warn, capture_file, dbus_packets, read_packets, sniff, stderr_warn
from .reader import TraceError, iter_trace, read_header

CAPTURE_SUFFIXES = (".pcap", ".pcapng")


@dataclass
class Converted:
    """What `convert` did: a one-line summary, and whether every message made it."""

    summary: str
    complete: bool = True


def convert(src: str, dst: str, warn: Warn = stderr_warn, rules: OutputRules = PRIVATE) -> Converted:
    """trace -> pcap/pcapng (by ``dst``'s extension), pcap/pcapng -> trace, or capture -> capture.

    ``dst`` is never ``src`` (which ``rules.inputs`` should name as well).
    """
    kind = sniff(src)  # a regular file, or an InputError naming what it is
    rules = OutputRules.make(rules.force, rules.mode, (*rules.inputs, src))
    check_file(dst, rules)
    to_capture = dst.endswith(CAPTURE_SUFFIXES)
    if kind == "unknown":
        raise InputError(f"{src}: neither an ipcproxy trace nor a pcap/pcapng capture")
    if kind == "trace":
        if not to_capture:
            raise InputError(f"convert: {src} is already a trace; name OUT *.pcap or *.pcapng")
        return _trace_to_capture(src, dst, warn, rules)
    try:
        if to_capture:
            return _capture_to_capture(src, dst, warn, rules)
        return _capture_to_trace(src, dst, kind, warn, rules)
    except CaptureError as exc:
        raise InputError(str(exc)) from None


def _trace_to_capture(src: str, dst: str, warn: Warn, rules: OutputRules) -> Converted:
    try:
        with open_input(src, "trace") as stream:
            read_header(stream, src)
    except TraceError as exc:
        raise InputError(str(exc)) from None
    box: list[ConvertReport] = []

    def fill(stream: IO[bytes]) -> None:
        names = connection_names(iter_trace(src, warn=lambda _: None))
        report = records_to_capture(iter_trace(src, warn=warn), capture_file(dst, stream), warn, names=names)
        if report.skipped and not report.written:
            raise InputError(f"{src}: none of its {report.skipped} messages could be marshalled again; nothing written")
        box.append(report)

    write_file(dst, fill, rules)
    r = box[0]
    merged = f", {r.copies} copies recorded on both sides merged" if r.copies else ""
    return Converted(f"wrote {r.written} messages to {dst} ({r.skipped} skipped{merged})", not r.skipped)


def _capture_to_capture(src: str, dst: str, warn: Warn, rules: OutputRules) -> Converted:
    count = 0

    def fill(stream: IO[bytes]) -> None:
        nonlocal count
        out = capture_file(dst, stream)
        for _number, packet in dbus_packets(read_packets(src, warn), src, warn):
            out.add(packet.ts_ns, packet.data)
            count += 1

    write_file(dst, fill, rules)
    return Converted(f"wrote {count} packets to {dst}")


def _capture_to_trace(src: str, dst: str, kind: str, warn: Warn, rules: OutputRules) -> Converted:
    count = 0

    def fill(stream: IO[bytes]) -> None:
        nonlocal count
        encoder = msgspec.json.Encoder()
        stream.write(encoder.encode(capture_header(src, kind)) + b"\n")
        for rec in read_capture(src, warn):
            stream.write(encoder.encode(rec) + b"\n")
            count += 1

    write_file(dst, fill, rules)
    return Converted(f"wrote {count} records to {dst}")
