"""Building Contexts and small traces by hand for the policy tests (no bus)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ipcproxy.chain import Context
from ipcproxy.model import BUS_DRIVER_NAME, Direction, Endpoint, Message, MessageType

BUSCTL = Endpoint(bus_name=":1.5", names=[], pid=100, uid=5, exe="/usr/bin/busctl", comm="busctl")
HOSTNAMED = Endpoint(
    bus_name=":1.2",
    names=["org.freedesktop.hostname1"],
    pid=50,
    uid=1,
    exe="/usr/lib/systemd/systemd-hostnamed",
    comm="systemd-hostnamed",
)
DRIVER = Endpoint(bus_name=BUS_DRIVER_NAME, names=[BUS_DRIVER_NAME], comm="bus")
HOST = "org.freedesktop.hostname1"
HOST_PATH = "/org/freedesktop/hostname1"
PROPS = "org.freedesktop.DBus.Properties"


def call(
    member: str,
    args: list[Any] | None = None,
    signature: str = "",
    *,
    interface: str = PROPS,
    path: str = HOST_PATH,
    destination: str | None = HOST,
    serial: int = 2,
    type: MessageType = MessageType.METHOD_CALL,
) -> Message:
    message = Message(
        type=type,
        serial=serial,
        path=path,
        interface=interface,
        member=member,
        destination=destination,
        signature=signature,
    )
    message.set_args(list(args or []))
    return message


def sent(
    message: Message,
    client: Endpoint = BUSCTL,
    to: Endpoint | None = HOSTNAMED,
    connection: int = 1,
    reply_ok: bool | None = None,
) -> Context:
    """A message the proxied client sends."""
    return Context(
        message=message,
        direction=Direction.TO_BUS,
        client=client,
        connection_id=connection,
        _sender=client,
        _destination=to if to is not None else Endpoint(),
        reply_to_allowed_call=reply_ok,
    )


def received(message: Message, client: Endpoint, sender: Endpoint, connection: int = 2) -> Context:
    """A message delivered to the proxied client."""
    return Context(
        message=message,
        direction=Direction.FROM_BUS,
        client=client,
        connection_id=connection,
        _sender=sender,
        _destination=client,
    )


def hello(connection: int = 1, client: Endpoint = BUSCTL) -> Context:
    message = call(
        "Hello",
        interface=BUS_DRIVER_NAME,
        path="/org/freedesktop/DBus",
        destination=BUS_DRIVER_NAME,
        serial=1,
    )
    return sent(message, client, DRIVER, connection)


def write_trace(path: Path, records: list[dict[str, Any]], truncated_tail: str | None = None) -> Path:
    lines = [json.dumps({"format": "ipcproxy-trace", "version": 1})]
    for seq, record in enumerate(records, 1):
        lines.append(json.dumps({"seq": seq, "ts": seq, **record}))
    text = "\n".join(lines) + "\n"
    if truncated_tail is not None:
        text += truncated_tail
    path.write_text(text)
    return path


def ep_json(ep: Endpoint) -> dict[str, Any]:
    return ep.to_json()


def record(
    direction: str,
    connection: int,
    sender: Endpoint,
    destination: Endpoint,
    member: str | None,
    *,
    type: str = "method_call",
    serial: int = 2,
    reply_serial: int | None = None,
    args: list[Any] | None = None,
    signature: str = "",
    path: str | None = HOST_PATH,
    interface: str | None = PROPS,
    destination_name: str | None = HOST,
    verdict: Any = "forwarded",
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "transport": "dbus",
        "type": type,
        "serial": serial,
        "reply_serial": reply_serial,
        "sender": sender.to_json(),
        "destination": destination.to_json(),
        "path": path,
        "interface": interface,
        "member": member,
        "error_name": None,
        "signature": signature,
        "args": args or [],
        "size": 100,
        "fds": 0,
        "flags": 0,
        "verdict": verdict,
        "direction": direction,
        "connection": connection,
    }
    if destination_name is not None:
        rec["destination_name"] = destination_name
    return rec
