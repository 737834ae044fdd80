"""`ipcproxy interpose`: take over a live bus's socket path, proxy it, and always give it back."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .capture import add_capture_options

if TYPE_CHECKING:
    from ..chain import Chain
    from ..dbus.bus import Directory
    from ..dbus.interpose import Takeover
    from ..dbus.proxy import ConnectionLimits
    from ..trace.recorder import Recorder

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

    from ..dbus.bus import Directory
    from ..dbus.interpose import ASIDE, Takeover, recover, socket_path
    from ..runtime import build_chain, connection_limits, make_recorder, new_loop
    from .status import ExitStatus

    path = socket_path(args.socket, args.system, env)
    if args.recover:
        print(f"ipcproxy: {recover(path, path + ASIDE)}", file=sys.stderr)
        return ExitStatus.OK
    takeover = Takeover(path)
    takeover.check()
    chain = build_chain(args)
    loop = new_loop()
    asyncio.set_event_loop(loop)
    directory = Directory()
    recorder = make_recorder(
        args, directory, bus_address=f"unix:path={path}", mode="interpose", real_socket=takeover.aside
    )
    try:
        return loop.run_until_complete(_interpose(takeover, chain, recorder, directory, connection_limits(args)))
    finally:
        recorder.close()
        loop.close()


async def _interpose(
    takeover: Takeover, chain: Chain, recorder: Recorder, directory: Directory, limits: ConnectionLimits
) -> int:
    import sys

    from ..errors import RunFailed
    from ..runtime import Service
    from .status import ExitStatus

    try:
        listener = takeover.prepare()
        service = Service(
            f"unix:path={takeover.aside}", f"unix:path={takeover.path}", chain, recorder, directory, limits
        )
        address = await service.start(listener=listener)
        takeover.listener = None  # the proxy owns it now
        try:
            takeover.switch()
            recorder.event("interpose", path=takeover.path, real_socket=takeover.aside)
            print(address, flush=True)
            print(
                f"ipcproxy: interposed on {takeover.path} (the bus stays reachable at {takeover.aside});"
                f" if this process and its watchdog both die, run: ipcproxy interpose --socket {takeover.path} --recover",
                file=sys.stderr,
            )
            await service.stop_event.wait()
        finally:
            done = takeover.restore()  # first: new clients reach the bus directly again
            if done:
                recorder.event("restore", path=takeover.path, result=done)
            service.close()
    finally:
        takeover.close()
    if service.failed:
        raise RunFailed(str(service.stop_reason))
    return service.exit_status() or ExitStatus.OK
