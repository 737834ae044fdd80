"""`ipcproxy proxy`: proxy an existing bus; prints the listening address when ready."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from .capture import add_capture_options, capture_options, connection_limits

HELP = "proxy an existing bus"


def add_options(p: argparse.ArgumentParser) -> None:
    add_capture_options(p)
    p.add_argument("--upstream", required=True, metavar="ADDR", help="the bus to proxy")
    p.add_argument("--listen", required=True, metavar="ADDR", help="where clients connect")


def proxy_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import asyncio

    from ..dbus.proxy_transport import ProxyTransport
    from ..errors import RunFailed
    from ..runtime import Runtime, build_chain, new_loop, refuse_unauthenticated_root_listener
    from .status import ExitStatus

    refuse_unauthenticated_root_listener(args.listen)
    options = capture_options(args)
    chain = build_chain(options)
    transport = ProxyTransport(args.upstream, args.listen, limits=connection_limits(args))
    loop = new_loop()
    asyncio.set_event_loop(loop)
    runtime = Runtime(transport, options, {"bus_address": args.upstream, "mode": "proxy"}, chain=chain)

    async def go() -> int:
        await runtime.start()
        print(transport.address, flush=True)
        try:
            await runtime.wait()
        finally:
            runtime.close()
        if runtime.failure is not None:
            raise RunFailed(runtime.failure)
        return runtime.exit_status() or ExitStatus.OK

    try:
        return loop.run_until_complete(go())
    finally:
        runtime.close()
        loop.close()
