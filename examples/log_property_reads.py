"""Log every Properties.Get a client makes: which property, the value, and how long it took.

    PROPERTY_LOG=reads.jsonl ipcproxy run --system-too \
        --service /lib/systemd/systemd-hostnamed --wait-for org.freedesktop.hostname1 \
        -s examples/log_property_reads.py -- \
        busctl get-property org.freedesktop.hostname1 /org/freedesktop/hostname1 \
        org.freedesktop.hostname1 Hostname

appends one JSON line per call to $PROPERTY_LOG (default: property-reads.jsonl):

    {"client": "busctl", "service": "org.freedesktop.hostname1", "interface": "org.freedesktop.hostname1",
     "property": "Hostname", "latency_ms": 0.41, "value": "myhost"}

Only calls made by clients behind the proxy are logged; the interceptor never
changes a message, so it lets everything pass.
"""

from __future__ import annotations

import json
import os

from ipcproxy.api import Context, Direction, MessageType, Verdict, interceptor, jsonable

PROPERTIES = "org.freedesktop.DBus.Properties"
LOG = open(os.environ.get("PROPERTY_LOG", "property-reads.jsonl"), "a", buffering=1)  # line-buffered

# (connection, serial of the call) -> (when it was sent, what it asked for)
pending: dict[tuple[int, int], tuple[int, dict[str, object]]] = {}


@interceptor
def log_property_reads(ctx: Context) -> Verdict | None:
    msg = ctx.message
    if ctx.direction is Direction.TO_BUS and msg.type is MessageType.METHOD_CALL:
        # a call leaving a client behind the proxy
        if msg.interface == PROPERTIES and msg.member == "Get" and not msg.no_reply_expected:
            interface, prop = msg.args
            pending[(ctx.connection_id, msg.serial)] = (
                ctx.ts_ns,
                {
                    "client": ctx.sender.component,
                    "service": msg.destination,
                    "path": msg.path,
                    "interface": interface,
                    "property": prop,
                },
            )
    elif ctx.direction is Direction.FROM_BUS and msg.type in (MessageType.METHOD_RETURN, MessageType.ERROR):
        # its reply, on its way back to the same connection
        started = pending.pop((ctx.connection_id, msg.reply_serial or 0), None)
        if started is not None:
            sent_ns, entry = started
            entry["latency_ms"] = round((ctx.ts_ns - sent_ns) / 1e6, 3)
            if msg.type is MessageType.ERROR:
                entry["error"] = msg.error_name
            else:
                entry["value"] = jsonable(msg.args[0])
            LOG.write(json.dumps(entry) + "\n")
    return None
