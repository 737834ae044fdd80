"""Keeps a Directory current by asking the bus driver, over a connection of our own.

This connection is not proxied and never appears in traces. It watches
NameOwnerChanged and asks GetConnectionCredentials for every new peer, so
records can name components that are not behind the proxy. Peers the
transport meets first (they land in ``Directory.wanted``) are looked up
within ``poll`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from dbus_fast import Message as FastMessage
from dbus_fast import MessageType as FastType
from dbus_fast.aio import MessageBus

from .bus import DRIVER_INTERFACE, DRIVER_PATH, Directory
from .wire import jsonable

log = logging.getLogger("ipcproxy.resolver")


class Resolver:
    def __init__(self, address: str, directory: Directory, poll: float = 0.05) -> None:
        self.address = address
        self.directory = directory
        self.poll = poll
        self.bus: MessageBus | None = None
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()

    @property
    def unique_name(self) -> str | None:
        """Our own connection's name on the bus, once connected."""
        return self.bus.unique_name if self.bus is not None else None

    async def start(self) -> None:
        self.bus = await MessageBus(bus_address=self.address).connect()
        self.bus.add_message_handler(self._on_message)
        await self._call(
            "AddMatch",
            "s",
            ["type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged'"],
        )
        names = await self._call("ListNames", "", [])
        for name in names[0] if names else []:
            if name.startswith(":"):
                self.directory.wanted.add(name)
            elif name != "org.freedesktop.DBus":
                owner = await self._call("GetNameOwner", "s", [name])
                if owner:
                    self.directory.name_owner_changed(name, "", owner[0])
        self._task = asyncio.ensure_future(self._serve())
        self._poller = asyncio.ensure_future(self._poll())
        self._kick.set()
        self.bus._disconnect_future.add_done_callback(lambda _f: self.lost.set())  # noqa: SLF001

    def kick(self) -> None:
        if self.directory.wanted:
            self._kick.set()

    async def _poll(self) -> None:
        """Look up the peers others added to ``directory.wanted`` (the proxy and the monitor meet them first)."""
        while True:
            self.kick()
            await asyncio.sleep(self.poll)

    async def _serve(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            for name in self.directory.take_wanted():
                creds = await self._call("GetConnectionCredentials", "s", [name])
                if creds:
                    self.directory.set_credentials(name, jsonable(creds[0]))

    async def _call(self, member: str, signature: str, body: list[Any]) -> list[Any] | None:
        if self.bus is None:
            return None
        try:
            reply = await self.bus.call(
                FastMessage(
                    destination="org.freedesktop.DBus",
                    path=DRIVER_PATH,
                    interface=DRIVER_INTERFACE,
                    member=member,
                    signature=signature,
                    body=body,
                )
            )
        except Exception as exc:  # noqa: BLE001 - a vanished bus is reported via `lost`
            log.debug("%s failed: %s", member, exc)
            return None
        if reply is None or reply.message_type is not FastType.METHOD_RETURN:
            return None
        return list(reply.body)

    def _on_message(self, message: FastMessage) -> None:
        if message.member == "NameOwnerChanged" and message.sender == "org.freedesktop.DBus":
            name, old, new = message.body
            self.directory.name_owner_changed(name, old, new)
            if new and name.startswith(":"):
                self._kick.set()

    def stop(self) -> None:
        for task in (self._task, self._poller):
            if task is not None:
                task.cancel()
        if self.bus is not None:
            with contextlib.suppress(Exception):
                self.bus.disconnect()
