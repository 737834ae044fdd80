"""State probes: what a service or a command reports as its state at one point of a run.

Probes talk to the private bus directly, not through the proxy, so taking the
state never shows up in the trace it is compared with.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from dbus_fast import Message as FastMessage
from dbus_fast import MessageType as FastType
from dbus_fast.aio import MessageBus
from dbus_fast.introspection import Node

from ..dbus.wire import jsonable
from .plan import CommandProbe, Probe, ServiceProbe

STANDARD_PREFIX = "org.freedesktop.DBus."


async def _call(bus: MessageBus, probe: ServiceProbe, interface: str, member: str, sig: str, body: list[Any]) -> Any:
    reply = await bus.call(
        FastMessage(
            destination=probe.service, path=probe.path, interface=interface, member=member, signature=sig, body=body
        )
    )
    if reply is None:
        raise RuntimeError("no reply")
    if reply.message_type is FastType.ERROR:
        raise RuntimeError(f"{reply.error_name}: {reply.body[0] if reply.body else ''}")
    return reply.body


async def probe_service(address: str, probe: ServiceProbe, on_connect: Callable[[str], None]) -> dict[str, Any]:
    """{interface: {property: value}} for the object, errors as {"error": text}."""
    bus = await MessageBus(bus_address=address).connect()
    if bus.unique_name:
        on_connect(bus.unique_name)
    try:
        interfaces = list(probe.interfaces)
        if not interfaces:
            xml = (await _call(bus, probe, "org.freedesktop.DBus.Introspectable", "Introspect", "", []))[0]
            node = Node.parse(xml)
            interfaces = sorted(i.name for i in node.interfaces if not i.name.startswith(STANDARD_PREFIX))
        state: dict[str, Any] = {}
        for interface in interfaces:
            try:
                body = await _call(bus, probe, "org.freedesktop.DBus.Properties", "GetAll", "s", [interface])
                state[interface] = jsonable(body[0])
            except RuntimeError as exc:
                state[interface] = {"error": str(exc)}
        return state
    finally:
        with contextlib.suppress(Exception):
            bus.disconnect()


async def probe_command(probe: CommandProbe, env: Mapping[str, str], cwd: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        probe.command,
        env=dict(env),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    return {"stdout": out.decode(errors="replace"), "status": proc.returncode}


async def take(
    probe: Probe,
    address: str,
    env: Mapping[str, str],
    cwd: str,
    timeout: float,
    on_connect: Callable[[str], None] = lambda _name: None,
) -> dict[str, Any]:
    """One probe's state; a probe that does not answer in time is recorded as such.

    ``on_connect`` hears the probe connection's unique name, so the trace can
    say which messages were the probe's own and analysis can leave them out.
    """
    try:
        if isinstance(probe, ServiceProbe):
            return await asyncio.wait_for(probe_service(address, probe, on_connect), timeout)
        return await asyncio.wait_for(probe_command(probe, env, cwd), timeout)
    except TimeoutError:
        return {"error": "timeout"}
    except Exception as exc:  # noqa: BLE001 - a failed probe is a state too
        return {"error": f"{type(exc).__name__}: {exc}"}
