"""Socket addresses as the trace writes them (sans-IO): ``/run/x.sock``, ``@abstract``, ``127.0.0.1:53``, ``[::1]:53``."""

from __future__ import annotations

import ipaddress
import socket
import struct

UNIX_TYPES: dict[int, str] = {1: "stream", 2: "dgram", 5: "seqpacket"}  # SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET


def text(raw: bytes) -> str | None:
    """A sockaddr as text; None for an unnamed unix socket or a family that is not unix/inet."""
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_UNIX:
        path = raw[2:]
        if not path:
            return None
        if path.startswith(b"\0"):
            return "@" + path[1:].rstrip(b"\0").decode(errors="replace")
        return path.split(b"\0", 1)[0].decode(errors="replace") or None
    if family == socket.AF_INET and len(raw) >= 8:
        return f"{socket.inet_ntop(socket.AF_INET, raw[4:8])}:{struct.unpack_from('>H', raw, 2)[0]}"
    if family == socket.AF_INET6 and len(raw) >= 24:
        port = struct.unpack_from(">H", raw, 2)[0]
        ip = ipaddress.IPv6Address(raw[8:24])
        if ip.ipv4_mapped is not None:
            return f"{ip.ipv4_mapped}:{port}"
        return f"[{ip}]:{port}"
    return None


def wildcards(address: str) -> tuple[str, str]:
    """The any-address forms a socket bound to receive at ``address`` may have."""
    port = address.rsplit(":", 1)[1]
    return f"0.0.0.0:{port}", f"[::]:{port}"


def unix(path: str) -> bytes:
    """A sockaddr_un (for tests)."""
    name = b"\0" + path[1:].encode() if path.startswith("@") else path.encode() + b"\0"
    return struct.pack("=H", socket.AF_UNIX) + name


def inet(host: str, port: int) -> bytes:
    """A sockaddr_in (for tests)."""
    return struct.pack("=H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(host) + b"\0" * 8
