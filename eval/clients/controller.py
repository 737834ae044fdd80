#!/usr/bin/python3
"""The evaluation's controller client: runs a list of actions on one bus connection.

``controller.py '[["GetTarget"], ["Unlock"], ["SetTarget", 21.5], ...]'``
prints one JSON line per action ({"action", "ok", "error", "message"}) and
always exits 0, so a denied action does not stop the workload. Runs under
Debian's python3 with dbus-python, as an unprivileged user.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import dbus

THERMOSTAT = ("org.example.Thermostat", "/org/example/Thermostat", "org.example.Thermostat")
JOURNAL = ("org.example.Journal", "/org/example/Journal", "org.example.Journal")


def run(bus: dbus.bus.BusConnection, action: list[Any]) -> None:
    member, *args = action
    if member == "RequestName":
        bus.request_name(args[0], dbus.bus.NAME_FLAG_DO_NOT_QUEUE)
        return
    name, path, iface = JOURNAL if member == "Log" else THERMOSTAT
    proxy = bus.get_object(name, path, introspect=False)
    typed = [dbus.Double(a) if isinstance(a, float) else a for a in args]
    getattr(proxy, member)(*typed, dbus_interface=iface)


def main() -> None:
    actions = json.loads(sys.argv[1])
    bus = dbus.bus.BusConnection(os.environ["DBUS_SYSTEM_BUS_ADDRESS"])
    for action in actions:
        result: dict[str, Any] = {"action": action[0], "ok": True}
        try:
            run(bus, action)
        except dbus.exceptions.DBusException as exc:
            result.update(ok=False, error=exc.get_dbus_name(), message=exc.get_dbus_message())
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
