"""Replaying a recorded trace into the injector's view, with no bus.

Enumerating faults from a golden trace must count messages exactly as the
live injector will: decisions only where a message is first seen, and names
known only once their owner was told it got them. So this replay is kept
next to the injector rather than using the trace-wide identities that learning
and checking want (there a service's name is known from its first record on).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..chain import Context
from ..model import Direction, Endpoint, Message, MessageType
from ..trace.record_message import UnrecordedArgs, message_from_record
from .injector import delivery_key
from .selectors import OwnedNames

_TYPES = {t.wire_name: t for t in MessageType}


@dataclass(slots=True)
class Point:
    """One message record as the injector saw it, and whether it decided about it there."""

    record: dict[str, Any]
    ctx: Context
    decides: bool


def system_records(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The records of the system under test: a campaign's probe traffic and anything after its
    workload are left out (faults there could not change what the workload saw)."""
    recs = list(records)
    probes = {
        r.get("bus_name")
        for r in recs
        if r.get("type") == "event" and r.get("event") == "campaign" and r.get("phase") == "probe"
    }
    for r in recs:
        if r.get("type") == "event":
            if r.get("event") == "campaign" and r.get("phase") in ("workload_end", "teardown"):
                return
            continue
        if (r.get("sender") or {}).get("bus_name") in probes or (r.get("destination") or {}).get("bus_name") in probes:
            continue
        yield r


def _message(r: dict[str, Any], sender: str | None) -> Message:
    """Arguments the trace lacks count as none: enumerating faults needs only the header."""
    return message_from_record(r, sender, unrecorded=UnrecordedArgs.EMPTY)


def replay(records: Iterable[dict[str, Any]], owned: OwnedNames) -> Iterator[Point]:
    proxied: dict[str, Endpoint] = {}  # unique name -> endpoint of a connection behind the proxy
    outside: dict[str, Endpoint] = {}
    owners: dict[str, str] = {}
    pending_out: dict[tuple[int, int], Message] = {}
    pending_in: dict[tuple[int, str | None, int], Message] = {}
    seen: set[tuple[str, int]] = set()
    for r in records:
        if r.get("type") not in _TYPES or r.get("type") == "data":
            continue
        verdict = r.get("verdict")
        if isinstance(verdict, dict) and verdict.get("action") == "injected":
            continue
        to_bus = r.get("direction") == "to_bus"
        conn = r.get("connection") or 0
        own = r.get("sender") if to_bus else r.get("destination")
        client = Endpoint.from_json(own)
        client.names = []  # what the proxy knows at that moment comes from the injector's own book
        if client.bus_name:
            proxied[client.bus_name] = client
        if not to_bus:
            sender_ep = Endpoint.from_json(r.get("sender"))
            if sender_ep.bus_name and sender_ep.bus_name not in proxied:
                outside[sender_ep.bus_name] = sender_ep
                for n in sender_ep.names:
                    owners[n] = sender_ep.bus_name

        def resolve(name: str | None) -> Endpoint:
            if name is None:
                return Endpoint()
            unique = name if name.startswith(":") else owners.get(name)
            if unique is None:
                for u in proxied:
                    if name in owned.of(u):
                        unique = u
            if unique is None:
                return Endpoint(names=[name])
            return proxied.get(unique) or outside.get(unique) or Endpoint(bus_name=unique)

        sender = None if to_bus else (r.get("sender") or {}).get("bus_name")
        msg = _message(r, sender)
        call: Message | None = None
        if msg.type is MessageType.METHOD_CALL and not msg.no_reply_expected:
            if to_bus:
                pending_out[(conn, msg.serial)] = msg
            else:
                pending_in[(conn, msg.sender, msg.serial)] = msg
        elif msg.type in (MessageType.METHOD_RETURN, MessageType.ERROR):
            if to_bus:
                call = pending_in.pop((conn, msg.destination, msg.reply_serial or 0), None)
            else:
                call = pending_out.pop((conn, msg.reply_serial or 0), None)
        ctx = Context(
            message=msg,
            direction=Direction.TO_BUS if to_bus else Direction.FROM_BUS,
            client=client,
            connection_id=conn,
            seq=r.get("seq", 0),
            resolve=resolve,
            call_message=call,
        )
        owned.observe(ctx)
        if to_bus:
            key = (client.bus_name or f"#{conn}", msg.serial)
            decides = True
        else:
            key = delivery_key(msg.sender, msg.serial, client.bus_name)
            decides = key not in seen
        seen.add(key)
        yield Point(r, ctx, decides)
