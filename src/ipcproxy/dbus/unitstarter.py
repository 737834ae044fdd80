"""Starts what dbus-broker activates on a private bus where no systemd runs.

dbus-broker-launch never starts a service itself: it asks systemd, over the bus it manages, to
start the unit named by the .service file's ``SystemdService=`` (``StartUnit``) or a transient
unit running its ``Exec=`` line (``StartTransientUnit``), then waits for the name to be taken.
A private bus has no systemd on it. This process takes ``org.freedesktop.systemd1`` there and
answers those calls the way dbus-daemon activates: it runs the ``Exec=`` line, with the bus's
environment, and reports the job done (``JobRemoved``).

Run as ``python -m ipcproxy.dbus.unitstarter ADDRESS SCOPE [DIR...]`` (by PrivateBus); it prints
READY once it owns the name.

(No ``from __future__ import annotations`` here: dbus-fast reads the D-Bus signatures from the
annotations, and would take a postponed ``-> None`` for a signature.)
"""

import asyncio
import configparser
import os
import pwd
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

from dbus_fast import BusType, DBusError, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusSignature, DBusStr
from dbus_fast.service import ServiceInterface, method
from dbus_fast.service import signal as dbus_signal

MANAGER = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
Strings = Annotated[list[str], DBusSignature("as")]
Properties = Annotated[list[tuple[str, Variant]], DBusSignature("a(sv)")]
AuxUnits = Annotated[list[tuple[str, list[tuple[str, Variant]]]], DBusSignature("a(sa(sv))")]
JobResult = Annotated[tuple[int, str, str, str], DBusSignature("uoss")]
SYSTEM_DATA_DIRS = ("/etc", "/run", "/usr/local/share", "/usr/share", "/lib")


def session_service_dirs(env: dict[str, str]) -> Iterator[str]:
    """The directories dbus-broker-launch reads in user scope, in its order."""
    if env.get("XDG_RUNTIME_DIR"):
        yield os.path.join(env["XDG_RUNTIME_DIR"], "dbus-1/services")
    home = env.get("XDG_DATA_HOME") or os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".local/share")
    yield os.path.join(home, "dbus-1/services")
    for data in (env.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share").split(":"):
        if data:
            yield os.path.join(data, "dbus-1/services")


def system_service_dirs() -> Iterator[str]:
    for data in SYSTEM_DATA_DIRS:
        yield os.path.join(data, "dbus-1/system-services")


def unit_commands(directories: Sequence[str]) -> dict[str, list[str]]:
    """``SystemdService=`` unit -> the ``Exec=`` argv of its .service file; the first file wins."""
    units: dict[str, list[str]] = {}
    for directory in directories:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if not name.endswith(".service"):
                continue
            parser = configparser.ConfigParser(interpolation=None, strict=False)
            try:
                parser.read(os.path.join(directory, name))
                section = parser["D-BUS Service"]
                unit, exec_line = section.get("SystemdService"), section.get("Exec")
            except (OSError, KeyError, configparser.Error):
                continue
            if unit and exec_line and unit not in units:
                units[unit] = shlex.split(exec_line)
    return units


class Manager(ServiceInterface):
    """The part of systemd's Manager interface that dbus-broker-launch calls."""

    def __init__(self, env: dict[str, str], units: dict[str, list[str]]) -> None:
        super().__init__("org.freedesktop.systemd1.Manager")
        self.env = env
        self.units = units
        self.jobs = 0

    def _start(self, unit: str, argv: list[str]) -> str:
        try:
            subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True)
        except (OSError, IndexError) as exc:
            raise DBusError(f"{MANAGER}.Error.ExecFailed", f"cannot start {unit}: {exc}") from None
        self.jobs += 1
        job = f"{MANAGER_PATH}/job/{self.jobs}"
        # after the reply that names the job: dbus-broker-launch matches the signal to it
        asyncio.get_running_loop().call_soon(self.JobRemoved, self.jobs, job, unit, "done")
        return job

    @method()
    def StartUnit(self, name: DBusStr, mode: DBusStr) -> DBusObjectPath:  # noqa: N802
        if name not in self.units:
            raise DBusError(f"{MANAGER}.NoSuchUnit", f"Unit {name} not found.")
        return self._start(name, self.units[name])

    @method()
    def StartTransientUnit(  # noqa: N802
        self, name: DBusStr, mode: DBusStr, properties: Properties, aux: AuxUnits
    ) -> DBusObjectPath:
        for key, value in properties:
            if key == "ExecStart" and value.value:
                _path, argv, _ignore_failure = value.value[0]
                return self._start(name, list(argv))
        raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", f"{name}: no ExecStart")

    @method()
    def LoadUnit(self, name: DBusStr) -> DBusObjectPath:  # noqa: N802
        return f"{MANAGER_PATH}/unit/{''.join(c if c.isalnum() else '_' for c in name)}"

    @method()
    def Subscribe(self) -> None:  # noqa: N802
        return None

    @method()
    def SetEnvironment(self, assignments: Strings) -> None:  # noqa: N802
        for assignment in assignments:
            key, _, value = assignment.partition("=")
            self.env[key] = value

    @method()
    def UnsetEnvironment(self, names: Strings) -> None:  # noqa: N802
        for name in names:
            self.env.pop(name.partition("=")[0], None)

    @dbus_signal()
    def JobRemoved(self, job_id: int, job: str, unit: str, result: str) -> JobResult:  # noqa: N802
        return (job_id, job, unit, result)


def _reap() -> None:
    """Collect the services that ended: every child of this process is one."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


async def serve(address: str, scope: str, extra_dirs: Sequence[str]) -> None:
    env = dict(os.environ)
    standard = list(system_service_dirs() if scope == "system" else session_service_dirs(env))
    bus = await MessageBus(bus_address=address, bus_type=BusType.SESSION).connect()
    manager = Manager(dict(env, DBUS_STARTER_ADDRESS=address), unit_commands([*extra_dirs, *standard]))
    bus.export(MANAGER_PATH, manager)
    await bus.request_name(MANAGER)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGCHLD, _reap)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    done: Any = asyncio.ensure_future(bus.wait_for_disconnect())
    await asyncio.wait({done, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    bus.disconnect()


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("user", "system"):
        print("usage: python -m ipcproxy.dbus.unitstarter ADDRESS user|system [DIR...]", file=sys.stderr)
        return 2
    asyncio.run(serve(argv[0], argv[1], argv[2:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
