"""Turning messages and events into trace records (plain dicts, DESIGN §5)."""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any

from .. import __version__
from ..model import Endpoint, Message, Verdict

FORMAT = "ipcproxy-trace"
VERSION = 1


def header(**extra: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "start": iso_now(),
        "host": socket.gethostname(),
        "tool": f"ipcproxy {__version__}",
        "pid": os.getpid(),
        **extra,
    }


def iso_now(ts: float | None = None) -> str:
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC) if ts else datetime.datetime.now(datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def message_record(
    *,
    seq: int,
    ts_ns: int,
    wall: float,
    message: Message,
    sender: Endpoint,
    destination: Endpoint,
    verdict: Verdict | str | dict[str, Any],
    direction: str,
    connection: int | None,
    latency_ns: int | None = None,
    args: list[Any] | None = None,
    args_error: str | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "seq": seq,
        "ts": ts_ns,
        "time": iso_now(wall),
        "transport": message.transport,
        "type": message.type.wire_name,
        "serial": message.serial,
        "reply_serial": message.reply_serial,
        "sender": sender.to_json(),
        "destination": destination.to_json(),
        "path": message.path,
        "interface": message.interface,
        "member": message.member,
        "error_name": message.error_name,
        "signature": message.signature,
        "args": args if args is not None else [],
        "size": message.size,
        "fds": message.unix_fds,
        "flags": message.flags,
        "verdict": verdict.to_json() if isinstance(verdict, Verdict) else verdict,
        "direction": direction,
        "connection": connection,
    }
    if message.destination is not None:
        record["destination_name"] = message.destination
    if latency_ns is not None:
        record["latency_ns"] = latency_ns
    if args_error is not None:
        record["args_error"] = args_error
    return record


def event_record(*, seq: int, ts_ns: int, wall: float, event: str, **fields: Any) -> dict[str, Any]:
    """Connection and proxy events (connect, disconnect, back-pressure, notes)."""
    return {"seq": seq, "ts": ts_ns, "time": iso_now(wall), "type": "event", "event": event, **fields}
