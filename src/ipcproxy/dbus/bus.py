"""Bus-driver knowledge: who owns which name, and who each connection is.

``Directory`` is fed facts (Hello replies, NameOwnerChanged signals,
credentials from the bus driver or SO_PEERCRED) and answers "which endpoint
is this bus name" for records and interceptors. It does no I/O itself; the
adapter that owns a connection to the bus feeds it.
"""

from __future__ import annotations

import functools
from typing import Any

import psutil

from ..model import BUS_DRIVER_NAME, Endpoint, Message, MessageType

DRIVER_PATH = "/org/freedesktop/DBus"
DRIVER_INTERFACE = "org.freedesktop.DBus"

# Bus-driver methods whose answers describe a connection's identity; a proxy
# running with privileges rewrites them so services see the real client.
CREDENTIAL_METHODS = frozenset({"GetConnectionUnixUser", "GetConnectionUnixProcessID", "GetConnectionCredentials"})
NAME_METHODS = frozenset({"RequestName", "ReleaseName"})  # bus-driver methods that change what a connection owns


@functools.lru_cache(maxsize=4096)
def _process_facts(pid: int) -> tuple[str | None, str | None]:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            try:
                exe = proc.exe() or None
            except (psutil.AccessDenied, psutil.ZombieProcess):
                exe = None
            return exe, proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ProcessLookupError):
        return None, None


def process_facts(pid: int) -> tuple[str | None, str | None]:
    """Executable path and command name of a live process, or (None, None)."""
    return _process_facts(pid)


class Directory:
    """The current map of bus names to endpoints."""

    def __init__(self) -> None:
        self._by_unique: dict[str, Endpoint] = {}
        self._owner: dict[str, str] = {}  # well-known name -> unique name
        self._driver = Endpoint(bus_name=BUS_DRIVER_NAME, names=[BUS_DRIVER_NAME], comm="bus")
        self.wanted: set[str] = set()  # unique names whose credentials nobody has asked for yet

    def endpoint(self, name: str | None) -> Endpoint:
        """Resolve a unique or well-known name; unknown names give a bare endpoint."""
        if name is None:
            return Endpoint()
        if name == BUS_DRIVER_NAME:
            return self._driver
        if not name.startswith(":"):
            owner = self._owner.get(name)
            if owner is None:
                return Endpoint(bus_name=None, names=[name])
            name = owner
        found = self._by_unique.get(name)
        if found is None:
            found = Endpoint(bus_name=name)
            self._by_unique[name] = found
            self.wanted.add(name)
        return found

    def owner_of(self, name: str) -> str | None:
        return name if name.startswith(":") else self._owner.get(name)

    def add_connection(self, unique: str, pid: int | None, uid: int | None) -> Endpoint:
        ep = self._by_unique.get(unique)
        if ep is None:
            ep = Endpoint(bus_name=unique)
            self._by_unique[unique] = ep
        self._fill(ep, pid, uid)
        self.wanted.discard(unique)
        return ep

    def register(self, unique: str, ep: Endpoint) -> None:
        """A connection behind the proxy: its endpoint object is the one records share."""
        known = self._by_unique.get(unique)
        if known is not None and known is not ep:
            ep.names = sorted(set(ep.names) | set(known.names))
        self._by_unique[unique] = ep
        self.wanted.discard(unique)

    def set_credentials(self, unique: str, creds: dict[str, Any]) -> None:
        """Take the answer of GetConnectionCredentials (a{sv}, values already unwrapped)."""
        ep = self._by_unique.setdefault(unique, Endpoint(bus_name=unique))
        self._fill(ep, creds.get("ProcessID"), creds.get("UnixUserID"))
        self.wanted.discard(unique)

    @staticmethod
    def _fill(ep: Endpoint, pid: int | None, uid: int | None) -> None:
        if pid is not None and ep.pid is None:
            ep.pid = pid
            ep.exe, ep.comm = process_facts(pid)
        if uid is not None and ep.uid is None:
            ep.uid = uid

    def name_owner_changed(self, name: str, old: str, new: str) -> None:
        if name.startswith(":"):
            if not new:
                self.wanted.discard(name)
                # keep the endpoint: later records of in-flight messages still name it
            else:
                self._by_unique.setdefault(name, Endpoint(bus_name=name))
                self.wanted.add(name)
            return
        if old and old in self._by_unique:
            names = self._by_unique[old].names
            if name in names:
                # replace, don't mutate: records already built keep the names they had
                self._by_unique[old].names = [n for n in names if n != name]
        if new:
            self._owner[name] = new
            ep = self._by_unique.setdefault(new, Endpoint(bus_name=new))
            if new not in self.wanted and ep.pid is None:
                self.wanted.add(new)
            if name not in ep.names:
                ep.names = sorted([*ep.names, name])
        else:
            self._owner.pop(name, None)

    def owner_seen(self, name: str, unique: str) -> None:
        """``unique`` owns the well-known ``name``: its own traffic says so (a granted RequestName, a call
        to the name delivered to it) before the bus's NameOwnerChanged, read on another socket, may have."""
        old = self._owner.get(name)
        if old != unique:
            self.name_owner_changed(name, old or "", unique)

    def observe(self, message: Message) -> None:
        """Learn from traffic: NameOwnerChanged signals the bus driver broadcasts."""
        if (
            message.type is MessageType.SIGNAL
            and message.member == "NameOwnerChanged"
            and message.sender == BUS_DRIVER_NAME
            and message.signature == "sss"
        ):
            try:
                name, old, new = message.args
            except Exception:  # noqa: BLE001 - a forged signal must not break the proxy
                return
            self.name_owner_changed(name, old, new)

    def take_wanted(self) -> list[str]:
        wanted = sorted(self.wanted)
        self.wanted.clear()
        return wanted

    def components(self) -> dict[str, Endpoint]:
        return dict(self._by_unique)
