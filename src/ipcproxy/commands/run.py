"""`ipcproxy run -- CMD`: CMD on a private bus behind the proxy; exits with CMD's status."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command imports its machinery when it runs: `ipcproxy --help` stays quick
    import asyncio

from .capture import add_capture_options, capture_options, command_after_dashes, connection_limits

HELP = "run CMD on a private bus behind the proxy"


def add_options(p: argparse.ArgumentParser) -> None:
    add_capture_options(p)
    p.add_argument("--broker", action="store_true", help="use dbus-broker instead of dbus-daemon")
    p.add_argument("--system-too", action="store_true", help="point DBUS_SYSTEM_BUS_ADDRESS at it as well")
    p.add_argument(
        "--system-bus",
        action="store_true",
        help="make the private bus a system bus: system services activatable, DBUS_SYSTEM_BUS_ADDRESS set too",
    )
    p.add_argument(
        "--service-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="also activate the .service files in DIR (repeatable; searched first)",
    )
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
    p.add_argument(
        "--keep-children",
        action="store_true",
        help="leave processes CMD started running when it ends (default: end them)",
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")


def run_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import asyncio
    import os
    import signal
    import sys

    from .. import proctree
    from ..dbus.launcher import Activation, BusError, PrivateBus
    from ..dbus.proxy_transport import ProxyTransport
    from ..errors import InputError
    from ..runtime import Runtime, build_chain, new_loop, wait_for_names
    from .status import ExitStatus

    cmd = command_after_dashes(args.cmd)
    if not cmd:
        raise InputError("run: give the command to run after --, e.g. ipcproxy run -- busctl --user list")
    options = capture_options(args)
    chain = build_chain(options)
    for folder in args.service_dir:
        if not os.path.isdir(folder):
            raise InputError(f"run: --service-dir {folder}: not a directory")
    system = args.system_too or args.system_bus
    standard = "system" if args.system_bus else "session"
    service_dirs = [os.path.abspath(d) for d in args.service_dir]
    bus = PrivateBus(broker=args.broker, activation=Activation(standard, tuple(service_dirs)))
    listen = f"unix:path={os.path.join(bus.dir, 'proxy.sock')}"
    try:  # the bus starts the services it activates with the command's environment: behind the proxy too
        bus.start(env=command_environment(env, listen, system))
    except BusError as exc:
        bus.stop()
        raise InputError(str(exc)) from None
    loop = new_loop()
    asyncio.set_event_loop(loop)
    try:
        transport = ProxyTransport(bus.address, listen, limits=connection_limits(args))
        header = {
            "bus_address": bus.address,
            "mode": "run",
            "command": cmd,
            "bus": "dbus-broker" if args.broker else "dbus-daemon",
            "service_dirs": service_dirs,
            "standard_service_dirs": standard,
        }
        runtime = Runtime(transport, options, header, chain=chain)
    except BaseException:
        loop.close()
        bus.stop()
        raise
    directory = runtime.directory

    async def go() -> int:
        await runtime.start()
        address = transport.address
        child_env = command_environment(env, address, system)
        services: list[tuple[str, asyncio.subprocess.Process]] = []
        status: int = ExitStatus.FAILED
        try:
            for line in args.service:
                services.append((line, await _start_service(line, child_env)))
            if args.wait_for:
                await wait_for_names(directory, args.wait_for, 10.0)
            error = proctree.program_error(cmd[0], child_env.get("PATH"))
            if error is not None:
                raise InputError(f"cannot run {cmd[0]}: {error}")
            try:  # the keeper owns the command's whole process tree (src/ipcproxy/proctree.py)
                child = await asyncio.create_subprocess_exec(
                    *proctree.keeper_argv(cmd, keep_children=args.keep_children), env=child_env
                )
            except OSError as exc:
                raise InputError(f"cannot run {cmd[0]}: {exc.strerror}") from None
            waiter = asyncio.ensure_future(child.wait())
            stopper = asyncio.ensure_future(runtime.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():  # a signal, or the bus went away: the command ends first
                await _end(child, runtime.stop_signal or signal.SIGTERM)
            stopper.cancel()
            status = child.returncode if child.returncode is not None else ExitStatus.FAILED
            runtime.event("run", step="command_exit", exit_status=status)
        finally:
            if services:  # then the services, while the bus and the proxy still carry their last words
                for _line, proc in services:
                    _signal(proc, signal.SIGTERM)
                for _line, proc in services:
                    await _end(proc, None)
                runtime.event(
                    "run",
                    step="services_stop",
                    services=[{"command": line, "exit_status": proc.returncode} for line, proc in services],
                )
            # let the last messages (disconnects) pass through before closing
            await asyncio.sleep(0.05)
            runtime.event("run", step="bus_stop")
            runtime.close()
        if runtime.failure is not None:
            print(f"ipcproxy: {runtime.failure}", file=sys.stderr)
        return runtime.exit_status() or status

    try:
        return loop.run_until_complete(go())
    finally:
        runtime.close()
        loop.close()
        bus.stop()


# what dbus-run-session removes: they would name a bus other than the one the command gets
FOREIGN_BUS_VARIABLES = (
    "DBUS_STARTER_ADDRESS",
    "DBUS_STARTER_BUS_TYPE",
    "DBUS_SESSION_BUS_PID",
    "DBUS_SESSION_BUS_WINDOWID",
)


def command_environment(env: Mapping[str, str], address: str, system: bool) -> dict[str, str]:
    """The command's environment, as dbus-run-session makes it: the private bus, no trace of another."""
    child_env = {k: v for k, v in env.items() if k not in FOREIGN_BUS_VARIABLES}
    child_env["DBUS_SESSION_BUS_ADDRESS"] = address
    if system:
        child_env["DBUS_SYSTEM_BUS_ADDRESS"] = address
    return child_env


async def _start_service(line: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """A --service, below a keeper of its own (its whole tree ends with it)."""
    import asyncio
    import shlex

    from .. import proctree
    from ..errors import InputError

    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise InputError(f"run: --service {line!r}: {exc}") from None
    if not argv:
        raise InputError(f"run: --service {line!r}: empty command")
    error = proctree.program_error(argv[0], env.get("PATH"))
    if error is not None:
        raise InputError(f"run: cannot start service {line!r}: {error}")
    try:
        return await asyncio.create_subprocess_exec(*proctree.keeper_argv(argv), env=env, start_new_session=True)
    except OSError as exc:
        raise InputError(f"run: cannot start service {line!r}: {exc.strerror}") from None


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    import contextlib

    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


async def _end(proc: asyncio.subprocess.Process, sig: int | None) -> None:
    """Ask a keeper to end its tree (it gives the tree the grace period), and wait; kill it if it hangs."""
    import asyncio
    import signal

    from .. import proctree

    if sig is not None:
        _signal(proc, sig)
    try:
        await asyncio.wait_for(proc.wait(), 2 * proctree.GRACE_S + 10)
    except TimeoutError:
        _signal(proc, signal.SIGKILL)
        await proc.wait()
