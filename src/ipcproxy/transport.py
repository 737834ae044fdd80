"""What the runtime runs: a transport carries messages through the chain into the recorder.

A transport is the only part that knows how messages are obtained: the
D-Bus proxy (``dbus.proxy_transport.ProxyTransport``) sits between clients
and the bus, the D-Bus monitor (``dbus.monitor.MonitorTransport``) watches a
bus passively. A syscall tracer (`ipcproxy trace`) or an eBPF capture
(`ipcproxy watch`) would be transports too: the runtime (``runtime.py``)
starts and stops any of them the same way. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .chain import Chain
    from .dbus.bus import Directory
    from .trace.recorder import Recorder


@dataclass(slots=True)
class Wiring:
    """What the runtime hands a transport when it opens: where messages go, and who is who."""

    chain: Chain  # interceptors every message passes (a passive transport cannot apply verdicts)
    recorder: Recorder  # where every message is recorded, in order
    directory: Directory  # names and credentials of the bus's peers, kept current by the resolver
    resolver_name: str | None  # the resolver's own connection: its traffic is ours, not the user's


class Transport(Protocol):
    """The interface between the runtime and a way of obtaining messages.

    Life: ``prepare`` (connect what the trace header describes), ``open``
    (listen, wire up; both may raise InputError), ``begin``
    (messages start flowing, after the start event is in the trace),
    ``request_stop`` (possibly twice), then ``close`` once ``done`` is set or
    the runtime stops for its own reasons. ``close`` must also undo a
    partial ``open``.
    """

    name: str  # names the trace's start and stop events: "proxy" -> proxy_start, proxy_stop
    bus_address: str | None  # the bus whose names the resolver keeps current (None: no resolver)
    resolver_poll: float  # how often new peers' credentials are asked for, in seconds
    direct_writer: bool  # a high-volume capture: write the trace from a thread, bypassing the page cache
    header_from_connection: bool  # the trace header needs ``prepare``'s answer: open the trace after it
    done: asyncio.Event  # set when the transport has finished: it failed, or it stopped when asked

    @property
    def failure(self) -> str | None:
        """Why it failed (the bus went away, the capture broke), or None."""
        ...

    async def prepare(self) -> dict[str, Any]:
        """Connect what must be connected before the trace is opened; returns fields for its header."""
        ...

    async def open(self, wiring: Wiring) -> dict[str, Any]:
        """Listen and take the chain and the recorder; returns the fields of the start event."""
        ...

    def begin(self) -> None:
        """Let messages flow (the start event is recorded by now)."""
        ...

    def request_stop(self, urgent: bool) -> None:
        """Finish soon (take in what is already under way), or at once when ``urgent``; then set ``done``."""
        ...

    def bus_lost(self, reason: str) -> None:
        """The resolver's connection to the bus broke: fail, unless the transport finds out by itself."""
        ...

    def close(self) -> dict[str, Any]:
        """Stop carrying messages; returns the fields of the stop event (after its reason)."""
        ...
