"""The D-Bus proxy as a runtime transport: clients connect to us, each gets its own upstream connection.

Used by `run`, `proxy`, `interpose` and a campaign's runs; the runtime
(``runtime.py``) gives it the chain and the recorder when it opens.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from ..errors import InputError
from ..transport import Wiring
from .address import AddressError, parse
from .proxy import ConnectionLimits, Proxy


class ProxyTransport:
    """Listens on ``listen`` (or serves an already bound ``listener``: interpose) in front of ``upstream``."""

    name = "proxy"
    resolver_poll = 0.05
    direct_writer = False
    header_from_connection = False

    def __init__(
        self,
        upstream: str,
        listen: str,
        listener: socket.socket | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        for text in (upstream, listen):  # a bad address is the user's input: say so before connecting
            try:
                parse(text)
            except AddressError as exc:
                raise InputError(str(exc)) from None
        self.bus_address: str | None = upstream
        self.listen_text = listen
        self.listener = listener
        self.limits = limits  # what clients that have not authenticated may cost (None: the defaults)
        self.proxy: Proxy | None = None
        self.address = ""  # where clients connect, once open
        self.done = asyncio.Event()
        self.failure: str | None = None

    async def prepare(self) -> dict[str, Any]:
        """Nothing to connect yet: each client gets its own upstream connection when it arrives."""
        return {}

    async def open(self, wiring: Wiring) -> dict[str, Any]:
        assert self.bus_address is not None
        proxy = Proxy(
            self.bus_address,
            self.listen_text,
            wiring.chain,
            wiring.recorder,
            wiring.directory,
            loop=asyncio.get_running_loop(),
            limits=self.limits,
        )
        self.proxy = proxy
        if self.listener is None:
            try:
                self.address = proxy.listen()
            except AddressError as exc:  # cannot listen there: a bad --listen
                raise InputError(str(exc)) from None
        else:
            proxy.adopt_listener(self.listener)
            self.listener = None  # the proxy owns it now
            self.address = proxy.address
        return {
            "upstream": proxy.upstream_text,
            "listen": self.address,
            "forwarding": "compiled" if proxy.plane is not None else "python",
        }

    def begin(self) -> None:
        """Nothing to do: the proxy accepts clients from the moment it listens."""

    def request_stop(self, urgent: bool) -> None:
        self.done.set()

    def bus_lost(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.done.set()

    def close(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self.proxy is not None:
            self.proxy.close()
            plane = self.proxy.plane
            if plane is not None:  # how many frames each path forwarded
                fields["frames"] = {"compiled": plane.compiled, "python": plane.handed}
        return fields
