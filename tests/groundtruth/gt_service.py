"""Ground-truth services for the fault-injection tests: small systems whose reaction to a fault is known.

Run with the project's Python (dbus-fast): ``python gt_service.py MODE``.

  backend   org.example.Backend  Fetch(s) -> "value-of-KEY"; the others call it
  crashy    org.example.Crashy   Get(s): asks Backend; aborts the process if Backend answers with an error
  retrier   org.example.Retrier  Get(s): asks Backend, waits 3 s for a reply, retries up to 3 times
  waiter    org.example.Waiter   Get(s): asks Backend and waits for the reply forever
  cache     org.example.Cache    Get(s): asks Backend once per key, serves later calls from its cache;
                                 the cache is its Entries property (the state probed)
  relay     --name N --next M    Compute(i): returns M.Compute(x) + 1, or x * 2 without --next;
                                 an error from M is passed on as the same error
"""

import argparse
import asyncio
import os
import sys

from dbus_fast import DBusError, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method

BACKEND = "org.example.Backend"


def _path(name: str) -> str:
    return "/" + name.replace(".", "/")


async def ask(bus: MessageBus, name: str, member: str, signature: str, body: list[object]) -> Message:
    reply = await bus.call(
        Message(destination=name, path=_path(name), interface=name, member=member, signature=signature, body=body)
    )
    assert reply is not None
    return reply


class Backend(ServiceInterface):
    def __init__(self, bus: MessageBus) -> None:
        super().__init__(BACKEND)

    @method()
    def Fetch(self, key: "s") -> "s":  # noqa: F821, N802
        return f"value-of-{key}"


class Crashy(ServiceInterface):
    def __init__(self, bus: MessageBus) -> None:
        super().__init__("org.example.Crashy")
        self.bus = bus

    @method()
    async def Get(self, key: "s") -> "s":  # noqa: F821, N802
        reply = await ask(self.bus, BACKEND, "Fetch", "s", [key])
        if reply.message_type is MessageType.ERROR:
            print(f"backend failed: {reply.error_name}; giving up", file=sys.stderr, flush=True)
            os.abort()
        return str(reply.body[0])


class Retrier(ServiceInterface):
    def __init__(self, bus: MessageBus) -> None:
        super().__init__("org.example.Retrier")
        self.bus = bus

    @method()
    async def Get(self, key: "s") -> "s":  # noqa: F821, N802
        for _attempt in range(3):
            try:
                reply = await asyncio.wait_for(ask(self.bus, BACKEND, "Fetch", "s", [key]), 3.0)
            except TimeoutError:
                continue
            if reply.message_type is not MessageType.ERROR:
                return str(reply.body[0])
        raise DBusError("org.example.Error.Unavailable", "backend did not answer")


class Waiter(ServiceInterface):
    def __init__(self, bus: MessageBus) -> None:
        super().__init__("org.example.Waiter")
        self.bus = bus

    @method()
    async def Get(self, key: "s") -> "s":  # noqa: F821, N802
        reply = await ask(self.bus, BACKEND, "Fetch", "s", [key])  # no time limit: waits forever
        return str(reply.body[0])


class Cache(ServiceInterface):
    def __init__(self, bus: MessageBus) -> None:
        super().__init__("org.example.Cache")
        self.bus = bus
        self.entries: dict[str, str] = {}

    @method()
    async def Get(self, key: "s") -> "s":  # noqa: F821, N802
        if key not in self.entries:
            reply = await ask(self.bus, BACKEND, "Fetch", "s", [key])
            if reply.message_type is MessageType.ERROR:
                raise DBusError(reply.error_name or "org.example.Error.Failed", "backend failed")
            self.entries[key] = str(reply.body[0])
        return self.entries[key]

    @dbus_property(access=PropertyAccess.READ)
    def Entries(self) -> "a{ss}":  # noqa: F722, N802
        return dict(self.entries)


class Relay(ServiceInterface):
    def __init__(self, bus: MessageBus, name: str, next_name: str | None) -> None:
        super().__init__(name)
        self.bus = bus
        self.next_name = next_name

    @method()
    async def Compute(self, x: "i") -> "i":  # noqa: F821, N802
        if self.next_name is None:
            return x * 2
        reply = await ask(self.bus, self.next_name, "Compute", "i", [x])
        if reply.message_type is MessageType.ERROR:
            raise DBusError(reply.error_name or "org.example.Error.Failed", f"{self.next_name} failed")
        return int(reply.body[0]) + 1


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["backend", "crashy", "retrier", "waiter", "cache", "relay"])
    parser.add_argument("--name")
    parser.add_argument("--next")
    args = parser.parse_args()
    bus = await MessageBus().connect()
    iface: ServiceInterface
    if args.mode == "relay":
        iface = Relay(bus, args.name, args.next)
    else:
        iface = {"backend": Backend, "crashy": Crashy, "retrier": Retrier, "waiter": Waiter, "cache": Cache}[args.mode](
            bus
        )
    bus.export(_path(iface.name), iface)
    await bus.request_name(iface.name)
    await bus.wait_for_disconnect()


if __name__ == "__main__":
    asyncio.run(main())
