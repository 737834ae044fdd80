"""A ``Transfer`` as a trace record's fields (``type: data``), an ``Opaque`` use as an ``opaque`` event's
(see docs/trace-format.md)."""

from __future__ import annotations

from typing import Any

from ..model import Endpoint
from .channels import Channel, Opaque, Transfer

NOT_VISIBLE = "payload not visible at this level"

# Every record of a process names it the same way, and so for a channel: their JSON is built once.
# Keyed by id(), holding the object so that the id cannot be reused; a channel is built again when
# it learns its peer.
_endpoints: dict[int, tuple[Endpoint, dict[str, Any]]] = {}
_channels: dict[int, tuple[Channel, int | None, dict[str, Any]]] = {}


def _endpoint_json(endpoint: Endpoint) -> dict[str, Any]:
    found = _endpoints.get(id(endpoint))
    if found is None or found[0] is not endpoint:
        if len(_endpoints) > 65536:
            _endpoints.clear()
        found = _endpoints[id(endpoint)] = (endpoint, endpoint.to_json())
    return found[1]


def _channel_json(channel: Channel) -> dict[str, Any]:
    found = _channels.get(id(channel))
    if found is None or found[0] is not channel or found[1] != channel.peer:
        if len(_channels) > 65536:
            _channels.clear()
        found = _channels[id(channel)] = (channel, channel.peer, channel.to_json())
    return found[2]


def data_fields(transfer: Transfer) -> dict[str, Any]:
    """Everything but ``seq``, ``ts`` and ``time``, which the recorder adds."""
    channel = transfer.channel
    fields: dict[str, Any] = {
        "transport": channel.kind,
        "type": "data",
        "direction": transfer.direction,
        "syscall": transfer.syscall,
        "sender": _endpoint_json(transfer.sender),
        "destination": _endpoint_json(transfer.destination),
        "channel": _channel_json(channel),
        "pid": transfer.pid,
        "tid": transfer.tid,
        "fd": transfer.fd,
        "size": transfer.size,
        "payload": transfer.payload.hex(),
        "fds": transfer.nfds,
        "verdict": transfer.verdict if transfer.verdict is not None else "forwarded",
    }
    if transfer.priority is not None:
        fields["priority"] = transfer.priority
    if transfer.mtype is not None:
        fields["mtype"] = transfer.mtype
    if transfer.msgtyp is not None:
        fields["msgtyp"] = transfer.msgtyp
    if transfer.address is not None:
        fields["address"] = transfer.address
    if transfer.truncated:
        fields["truncated"] = True
    if transfer.consumed is not None:
        fields["consumed"] = [item.seq if item is not None else "unknown" for item in transfer.consumed]
    return fields


def opaque_fields(use: Opaque) -> dict[str, Any]:
    """An ``opaque`` event record: everything but ``seq``, ``ts`` and ``time``."""
    fields: dict[str, Any] = {
        "type": "event",
        "event": "opaque",
        "mechanism": use.mechanism,
        "syscall": use.syscall,
        "pid": use.pid,
        "tid": use.tid,
        "process": _endpoint_json(use.process),
        "channel": use.channel.to_json() if use.channel is not None else None,
    }
    if use.source is not None or use.target is not None:
        fields["from"] = use.source.to_json() if use.source is not None else None
        fields["to"] = use.target.to_json() if use.target is not None else None
    if use.size is not None:
        fields["size"] = use.size
    fields["processes"] = [_endpoint_json(ep) for ep in use.processes]
    fields["note"] = NOT_VISIBLE
    return fields
