"""``-w FILE.pcap`` / ``-w FILE.pcapng`` while capturing: the messages the proxy handled, as raw packets."""

from __future__ import annotations

import struct
import time
from typing import Any

from ..dbus import wire
from ..model import Message
from ..outputs import PRIVATE, OutputRules, open_stream
from .pcapfile import capture_file
from .stats import Deliveries


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

    def __init__(self, path: str, rules: OutputRules = PRIVATE) -> None:
        self.path = path
        self._stream = open_stream(path, rules)  # private, never through a link, never over an input
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
