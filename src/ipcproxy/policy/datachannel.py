"""How a policy names a channel seen at the syscall level, so that it is the same on the next run.

A pipe's inode, a temporary directory's name and a client's TCP port change
on every run; a rule that named them would deny the next run. So:

- a **pipe** (and an unnamed Unix socket, a socketpair) is named by the fd the
  component uses it through (its role: 0 stdin, 1 stdout, ...) and by who
  is at the other end (the rule's peer), never by its inode;
- a **path** (a FIFO, a Unix socket) below a temporary directory (``/tmp``,
  ``/var/tmp``, ``/dev/shm``, ``/run/user/UID``) keeps its fixed parts and
  turns what looks generated into ``*``: a ``tmp...`` name
  (``tempfile``, ``mktemp``) entirely, a run of digits elsewhere:
  ``/tmp/tmpk3j_q9/s.sock`` -> ``/tmp/*/s.sock``, ``/tmp/pytest-12/s1.sock``
  -> ``/tmp/pytest-*/s*.sock``;
- a **TCP/UDP port** in the kernel's default ephemeral range (32768-60999)
  becomes ``*``; the address and any fixed port stay.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .datamatch import ChannelMatch

TMP_ROOTS = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/user/")
EPHEMERAL_PORTS = range(32768, 61000)
_MADE_UP = re.compile(r"tmp.+")  # tempfile.mkdtemp(), mktemp(1): tmpk3j_q9x2, tmp.1HfRTopRnY
_DIGITS = re.compile(r"[0-9]+")

# unnamed channels: named by the fd the component holds them by
FD_NAMED = frozenset({"pipe"})


def path_glob(path: str) -> str:
    """A FIFO's or socket's path with the parts a temporary directory makes up replaced by ``*``."""
    abstract = path.startswith("@")
    body = path[1:] if abstract else path
    root = next((r for r in TMP_ROOTS if body.startswith(r)), None)
    if root is None:
        return path
    parts = body[len(root) :].split("/")
    if root == "/run/user/" and parts and parts[0].isdigit():
        root, parts = root + parts[0] + "/", parts[1:]
    out = ["*" if _MADE_UP.fullmatch(part) else _DIGITS.sub("*", part) for part in parts]
    return ("@" if abstract else "") + root + "/".join(out)


def address_glob(address: str) -> str:
    """``127.0.0.1:41234`` -> ``127.0.0.1:*`` when the port is an ephemeral one."""
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and int(port) in EPHEMERAL_PORTS:
        return host + ":*"
    return address


def channel_match(transport: str, channel: Mapping[str, Any], fd: int | None) -> ChannelMatch:
    """The channel as a learnt rule names it (see the module's docstring)."""
    path = channel.get("path")
    socktype = channel.get("socktype")
    local, remote = channel.get("local"), channel.get("remote")
    unnamed = transport in FD_NAMED or (transport == "unix" and not path)
    return ChannelMatch(
        path=path_glob(path) if isinstance(path, str) and path else None,
        socktype=socktype if isinstance(socktype, str) else None,
        local=address_glob(local) if isinstance(local, str) and local else None,
        remote=address_glob(remote) if isinstance(remote, str) and remote else None,
        fd=fd if unnamed else None,
    )
