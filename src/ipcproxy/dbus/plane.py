"""What the compiled data plane (``_plane.c``) is taught: the header facts of frames it may forward alone.

The plane forwards a frame without Python only when a frame with the same
header bytes (serials aside) was parsed strictly before; this module turns such
a parsed message into the plane's cache entry: the header's key bytes, where
the reply serial and the body sit, how the body is checked and recorded, and
the facts its records' template is made of (``records.Shape``), which the plane
hands back to the recorder when it encodes.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..model import BUS_DRIVER_NAME, Message
from ..trace.records import Shape
from . import wire

_plane: Any
try:
    _plane = importlib.import_module("ipcproxy.dbus._plane")
except ImportError:  # not built: the proxy forwards in Python
    _plane = None

KIND_NONE = 0
KIND_BYTES = 1
KIND_OTHER = 2


def available() -> bool:
    """Whether the compiled plane is built and not switched off (IPCPROXY_PLANE=0)."""
    return _plane is not None and os.environ.get("IPCPROXY_PLANE", "1") != "0"


def new_plane(**kwargs: Any) -> Any:
    assert _plane is not None
    return _plane.Plane(**kwargs)


def entry_for(message: Message) -> tuple[Any, ...] | None:
    """``Plane.learn`` arguments for a strictly parsed message, or None if the plane must not take its kind.

    Frames that carry fds, talk to the bus driver (the proxy keeps book of
    names and credentials from those) or whose header the plane cannot key
    reliably always take the Python path.
    """
    if message.unix_fds or message.transport != "dbus" or message.fds:
        return None
    if BUS_DRIVER_NAME in (message.sender, message.destination):
        return None
    keyed = wire.header_key(message.raw)
    if keyed is None:
        return None
    key, reply_at, body_at = keyed
    signature = message.signature
    if not signature:
        kind = KIND_NONE
    elif signature == "ay":
        kind = KIND_BYTES
    else:
        kind = KIND_OTHER
    return (
        key,
        reply_at,
        body_at,
        bool(message.flags & 1),
        kind,
        int(message.type),
        message.sender,
        message.destination,
        signature.encode(),
        (Shape.of(message), message.sender),
    )
