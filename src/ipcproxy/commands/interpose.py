"""`ipcproxy interpose`: take over a live bus's socket path, proxy it, and always give it back."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .capture import add_capture_options, capture_options, connection_limits

if TYPE_CHECKING:
    from ..dbus.interpose import Takeover
    from ..dbus.proxy_transport import ProxyTransport
    from ..runtime import Runtime

HELP = "take over a live bus's socket path"


def add_options(p: argparse.ArgumentParser) -> None:
    add_capture_options(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--system", action="store_true")
    g.add_argument("--session", action="store_true")
    g.add_argument("--socket", metavar="PATH")
    p.add_argument("--recover", action="store_true", help="only restore a socket left moved aside, then exit")


def interpose_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import asyncio
    import sys

    from ..dbus.interpose import ASIDE, Takeover, recover, socket_path
    from ..dbus.proxy_transport import ProxyTransport
    from ..runtime import Runtime, build_chain, new_loop
    from .status import ExitStatus

    path = socket_path(args.socket, args.system, env)
    if args.recover:
        print(f"ipcproxy: {recover(path, path + ASIDE)}", file=sys.stderr)
        return ExitStatus.OK
    takeover = Takeover(path)
    takeover.check()
    options = capture_options(args)
    chain = build_chain(options)
    transport = ProxyTransport(
        f"unix:path={takeover.aside}", f"unix:path={takeover.path}", limits=connection_limits(args)
    )
    loop = new_loop()
    asyncio.set_event_loop(loop)
    header = {"bus_address": f"unix:path={path}", "mode": "interpose", "real_socket": takeover.aside}
    runtime = Runtime(transport, options, header, chain=chain)
    try:
        return loop.run_until_complete(_interpose(takeover, transport, runtime))
    finally:
        runtime.close()
        loop.close()


async def _interpose(takeover: Takeover, transport: ProxyTransport, runtime: Runtime) -> int:
    """Serve on our socket, put it at the bus's path, and give the path back first when stopping."""
    import sys

    from ..errors import RunFailed
    from .status import ExitStatus

    try:
        transport.listener = takeover.prepare()
        await runtime.start()
        takeover.listener = None  # the proxy owns it now
        try:
            takeover.switch()
            runtime.event("interpose", path=takeover.path, real_socket=takeover.aside)
            print(transport.address, flush=True)
            print(
                f"ipcproxy: interposed on {takeover.path} (the bus stays reachable at {takeover.aside});"
                f" if this process and its watchdog both die, run: ipcproxy interpose --socket {takeover.path} --recover",
                file=sys.stderr,
            )
            await runtime.wait()
        finally:
            done = takeover.restore()  # first: new clients reach the bus directly again
            if done:
                runtime.event("restore", path=takeover.path, result=done)
            runtime.close()
    finally:
        takeover.close()
    if runtime.failure is not None:
        raise RunFailed(runtime.failure)
    return runtime.exit_status() or ExitStatus.OK
