"""`ipcproxy monitor`: passive capture of a bus with BecomeMonitor (eavesdropping if refused)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from .capture import add_capture_options, capture_options

HELP = "passive capture with BecomeMonitor"


def add_options(p: argparse.ArgumentParser) -> None:
    add_capture_options(p, manipulate=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--system", action="store_true")
    g.add_argument("--session", action="store_true")
    g.add_argument("--address", metavar="ADDR")
    p.add_argument("match", nargs="*", help="match rules, as for dbus-monitor")


def bus_address(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """The bus to monitor: --address, else the system or the session bus."""
    from ..dbus.address import session_bus_address, system_bus_address

    if args.address:
        return str(args.address)
    if args.system:
        return env.get("DBUS_SYSTEM_BUS_ADDRESS") or system_bus_address()
    return env.get("DBUS_SESSION_BUS_ADDRESS") or session_bus_address()


def monitor_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import asyncio

    from ..dbus.address import AddressError, parse
    from ..dbus.monitor import MonitorTransport
    from ..dbus.proxy import tune_allocator
    from ..errors import InputError, RunFailed
    from ..runtime import Runtime, new_loop
    from .status import ExitStatus

    address = bus_address(args, env)
    try:
        parse(address)
    except AddressError as exc:
        raise InputError(str(exc)) from None
    rules = list(args.match or [])
    tune_allocator()  # large frames and hex lines: no mmap and page faults per message
    transport = MonitorTransport(address, rules)
    options = capture_options(args, live_to_stdout=True)  # like dbus-monitor: the live view is the output
    loop = new_loop()
    asyncio.set_event_loop(loop)

    runtime = Runtime(transport, options, {"bus_address": address, "mode": "monitor"})

    async def go() -> None:
        await runtime.start()
        try:
            await runtime.wait()
        finally:
            runtime.close()
        if runtime.failure is not None:
            raise RunFailed(f"{runtime.failure} ({address})")

    try:
        loop.run_until_complete(go())
    finally:
        runtime.close()
        loop.close()
    # stopped by signal N: 128 + N, as a shell reports a job ended by that signal
    return runtime.exit_status() or ExitStatus.OK
