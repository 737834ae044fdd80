#!/usr/bin/python3
"""org.example.Journal: the evaluation's log service; Log(text) appends, Count() reads.

Runs under Debian's python3 with dbus-python, as an unprivileged user.
"""

from __future__ import annotations

import os
import signal

import dbus
import dbus.mainloop.glib
import dbus.service
from gi.repository import GLib

NAME = "org.example.Journal"
PATH = "/org/example/Journal"
IFACE = "org.example.Journal"


class Journal(dbus.service.Object):
    def __init__(self, bus: dbus.bus.BusConnection) -> None:
        super().__init__(bus, PATH)
        self.lines: list[str] = []

    @dbus.service.method(IFACE, in_signature="s", out_signature="")
    def Log(self, text: str) -> None:  # noqa: N802 - D-Bus member names
        self.lines.append(str(text))

    @dbus.service.method(IFACE, in_signature="", out_signature="u")
    def Count(self) -> int:  # noqa: N802
        return len(self.lines)


def main() -> None:
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(os.environ["DBUS_SYSTEM_BUS_ADDRESS"])
    service = Journal(bus)
    name = dbus.service.BusName(NAME, bus)
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    loop.run()
    del name, service


if __name__ == "__main__":
    main()
