"""D-Bus server addresses (``unix:path=…``, ``unix:abstract=…``, ``tcp:host=…,port=…``)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import unquote


class AddressError(ValueError):
    """An address this tool cannot use."""


@dataclass(frozen=True, slots=True)
class Address:
    transport: str  # "unix" or "tcp"
    path: str | None = None
    abstract: str | None = None
    host: str | None = None
    port: int | None = None
    guid: str | None = None

    @property
    def family(self) -> int:
        return socket.AF_UNIX if self.transport == "unix" else socket.AF_INET

    @property
    def sockaddr(self) -> str | bytes | tuple[str, int]:
        if self.transport == "unix":
            if self.path is not None:
                return self.path
            return b"\0" + (self.abstract or "").encode()
        return (self.host or "127.0.0.1", self.port or 0)

    def __str__(self) -> str:
        if self.transport == "unix":
            return f"unix:path={self.path}" if self.path is not None else f"unix:abstract={self.abstract}"
        return f"tcp:host={self.host},port={self.port}"


def parse(text: str) -> list[Address]:
    """All usable entries of a ``;``-separated address list, in order."""
    if not text:
        raise AddressError("empty D-Bus address")
    out: list[Address] = []
    for entry in text.split(";"):
        if not entry:
            continue
        transport, sep, rest = entry.partition(":")
        if not sep:
            raise AddressError(f"D-Bus address {entry!r} has no transport (expected e.g. unix:path=/run/bus)")
        keys: dict[str, str] = {}
        for pair in rest.split(","):
            if not pair:
                continue
            key, eq, value = pair.partition("=")
            if not eq:
                raise AddressError(f"D-Bus address {entry!r}: {pair!r} is not key=value")
            keys[key] = unquote(value)
        if transport == "unix":
            if "path" in keys:
                out.append(Address("unix", path=keys["path"], guid=keys.get("guid")))
            elif "abstract" in keys:
                out.append(Address("unix", abstract=keys["abstract"], guid=keys.get("guid")))
            elif "dir" in keys or "tmpdir" in keys:
                base = keys.get("dir") or keys["tmpdir"]
                out.append(Address("unix", path=os.path.join(base, f"ipcproxy-{os.getpid()}")))
            else:
                raise AddressError(f"D-Bus address {entry!r}: unix transport needs path= or abstract=")
        elif transport == "tcp":
            try:
                port = int(keys.get("port", "0"))
            except ValueError:
                raise AddressError(f"D-Bus address {entry!r}: port is not a number") from None
            out.append(Address("tcp", host=keys.get("host", "127.0.0.1"), port=port, guid=keys.get("guid")))
        else:
            raise AddressError(f"D-Bus address {entry!r}: transport {transport!r} is not supported")
    if not out:
        raise AddressError(f"no usable entry in D-Bus address {text!r}")
    return out


def session_bus_address() -> str:
    addr = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if addr:
        return addr
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return f"unix:path={runtime}/bus"


def system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket"
