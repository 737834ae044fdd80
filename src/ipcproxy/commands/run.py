"""`ipcproxy run -- CMD`: CMD on a private bus behind the proxy; exits with CMD's status."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from .capture import add_capture_options

HELP = "run CMD on a private bus behind the proxy"


def add_options(p: argparse.ArgumentParser) -> None:
    add_capture_options(p)
    p.add_argument("--broker", action="store_true", help="use dbus-broker instead of dbus-daemon")
    p.add_argument("--system-too", action="store_true", help="point DBUS_SYSTEM_BUS_ADDRESS at it as well")
    p.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="CMD",
        help="start this service on the private bus first, unproxied (repeatable)",
    )
    p.add_argument(
        "--wait-for",
        action="append",
        default=[],
        metavar="NAME",
        help="wait until NAME is owned on the bus before starting CMD",
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")


def run_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import asyncio
    import contextlib
    import os
    import shlex
    import signal
    import sys

    from ..dbus.bus import Directory
    from ..dbus.launcher import BusError, PrivateBus
    from ..errors import InputError
    from ..runtime import Service, build_chain, connection_limits, make_recorder, new_loop, wait_for_names
    from .status import ExitStatus

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise InputError("run: give the command to run after --, e.g. ipcproxy run -- busctl --user list")
    chain = build_chain(args)
    try:
        bus = PrivateBus(broker=args.broker).start()
    except BusError as exc:
        raise InputError(str(exc)) from None
    loop = new_loop()
    asyncio.set_event_loop(loop)
    directory = Directory()
    try:
        recorder = make_recorder(
            args,
            directory,
            bus_address=bus.address,
            mode="run",
            command=cmd,
            bus="dbus-broker" if args.broker else "dbus-daemon",
        )
    except BaseException:
        loop.close()
        bus.stop()
        raise
    listen = f"unix:path={os.path.join(bus.dir, 'proxy.sock')}"

    async def go() -> int:
        service = Service(bus.address, listen, chain, recorder, directory, connection_limits(args))
        address = await service.start()
        child_env = dict(env)
        child_env["DBUS_SESSION_BUS_ADDRESS"] = address
        if args.system_too:
            child_env["DBUS_SYSTEM_BUS_ADDRESS"] = address
        services: list[asyncio.subprocess.Process] = []
        status: int = ExitStatus.FAILED
        try:
            for line in args.service:
                try:
                    argv = shlex.split(line)
                    if not argv:
                        raise ValueError("empty command")
                    services.append(await asyncio.create_subprocess_exec(*argv, env=child_env, start_new_session=True))
                except ValueError as exc:
                    raise InputError(f"run: --service {line!r}: {exc}") from None
                except OSError as exc:
                    raise InputError(f"run: cannot start service {line!r}: {exc.strerror}") from None
            if args.wait_for:
                await wait_for_names(directory, args.wait_for, 10.0, service)
            try:
                child = await asyncio.create_subprocess_exec(*cmd, env=child_env)
            except OSError as exc:
                raise InputError(f"cannot run {cmd[0]}: {exc.strerror}") from None
            waiter = asyncio.ensure_future(child.wait())
            stopper = asyncio.ensure_future(service.stop_event.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), 5)
                except TimeoutError:
                    child.kill()
                    await waiter
            stopper.cancel()
            status = child.returncode if child.returncode is not None else ExitStatus.FAILED
            if status < 0:
                status = 128 - status
        finally:
            for proc in services:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in services:
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
            # let the last messages (disconnects) pass through before closing
            await asyncio.sleep(0.05)
            service.close()
        if service.failed:
            print(f"ipcproxy: {service.stop_reason}", file=sys.stderr)
        return status

    try:
        return loop.run_until_complete(go())
    finally:
        recorder.close()
        loop.close()
        bus.stop()
