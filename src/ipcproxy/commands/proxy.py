"""`ipcproxy proxy`: proxy an existing bus; prints the listening address when ready."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from .capture import add_capture_options

HELP = "proxy an existing bus"


def add_options(p: argparse.ArgumentParser) -> None:
    add_capture_options(p)
    p.add_argument("--upstream", required=True, metavar="ADDR", help="the bus to proxy")
    p.add_argument("--listen", required=True, metavar="ADDR", help="where clients connect")


def proxy_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import asyncio

    from ..dbus.address import AddressError
    from ..dbus.bus import Directory
    from ..errors import InputError, RunFailed
    from ..runtime import (
        Service,
        build_chain,
        connection_limits,
        make_recorder,
        new_loop,
        refuse_unauthenticated_root_listener,
    )
    from .status import ExitStatus

    refuse_unauthenticated_root_listener(args.listen)
    chain = build_chain(args)
    loop = new_loop()
    asyncio.set_event_loop(loop)
    directory = Directory()
    recorder = make_recorder(args, directory, bus_address=args.upstream, mode="proxy")

    async def go() -> int:
        try:
            service = Service(args.upstream, args.listen, chain, recorder, directory, connection_limits(args))
            address = await service.start()
        except AddressError as exc:
            raise InputError(str(exc)) from None
        print(address, flush=True)
        try:
            await service.stop_event.wait()
        finally:
            service.close()
        if service.failed:
            raise RunFailed(str(service.stop_reason))
        return service.exit_status() or ExitStatus.OK

    try:
        return loop.run_until_complete(go())
    finally:
        recorder.close()
        loop.close()
