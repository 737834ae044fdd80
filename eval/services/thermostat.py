#!/usr/bin/python3
"""org.example.Thermostat: one of the evaluation's own services.

Clients are expected to Unlock before they SetTarget/SetMode and Lock after;
like many real services it does not check that itself, which is what an
order model is for. Every change is logged to org.example.Journal (a
service-to-service call) and announced with a TargetChanged broadcast.
Runs under Debian's python3 with dbus-python, as an unprivileged user.
"""

from __future__ import annotations

import os
import signal

import dbus
import dbus.mainloop.glib
import dbus.service
from gi.repository import GLib

NAME = "org.example.Thermostat"
PATH = "/org/example/Thermostat"
IFACE = "org.example.Thermostat"


class Thermostat(dbus.service.Object):
    def __init__(self, bus: dbus.bus.BusConnection) -> None:
        super().__init__(bus, PATH)
        self.bus = bus
        self.target = 20.0
        self.mode = "eco"

    @dbus.service.method(IFACE, in_signature="", out_signature="d")
    def GetTarget(self) -> float:  # noqa: N802 - D-Bus member names
        return self.target

    @dbus.service.method(IFACE, in_signature="", out_signature="")
    def Unlock(self) -> None:  # noqa: N802
        pass

    @dbus.service.method(IFACE, in_signature="", out_signature="")
    def Lock(self) -> None:  # noqa: N802
        pass

    @dbus.service.method(IFACE, in_signature="d", out_signature="")
    def SetTarget(self, target: float) -> None:  # noqa: N802
        self.target = float(target)
        self.TargetChanged(self.target)
        self.log(f"target {self.target:.1f}")

    @dbus.service.method(IFACE, in_signature="s", out_signature="")
    def SetMode(self, mode: str) -> None:  # noqa: N802
        self.mode = str(mode)
        self.log(f"mode {self.mode}")

    @dbus.service.signal(IFACE, signature="d")
    def TargetChanged(self, target: float) -> None:  # noqa: N802
        pass

    def log(self, text: str) -> None:
        journal = self.bus.get_object("org.example.Journal", "/org/example/Journal", introspect=False)
        journal.Log(text, dbus_interface="org.example.Journal")


def main() -> None:
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(os.environ["DBUS_SYSTEM_BUS_ADDRESS"])
    service = Thermostat(bus)
    name = dbus.service.BusName(NAME, bus)
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    loop.run()
    del name, service


if __name__ == "__main__":
    main()
