"""The runtime under `run`, `proxy` and `interpose`: build the chain and the recorder, run the proxy until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
import time
from typing import Any

from .chain import Chain
from .dbus.address import AddressError
from .dbus.address import parse as parse_address
from .dbus.bus import Directory
from .dbus.proxy import ConnectionLimits, Proxy
from .dbus.resolver import Resolver
from .errors import InputError
from .oserror import reason
from .outputs import OutputRules
from .scripting import ScriptError, load_script
from .trace import records
from .trace.recorder import Recorder
from .trace.view import format_record
from .trace.writer import Sink, open_sink


def build_chain(args: argparse.Namespace) -> Chain:
    """Enforcer first (it must see the message as sent), then faults, then users' scripts."""
    chain = Chain()
    if getattr(args, "policy", None):
        from .policy.enforcer import load_enforcer

        chain.add(load_enforcer(args.policy, args.mode))
    if getattr(args, "faults", None):
        from .faults.injector import load_injector

        chain.add(load_injector(args.faults, args.seed))
    for path in getattr(args, "script", []) or []:
        try:
            for interceptor in load_script(path):
                chain.add(interceptor)
        except ScriptError as exc:
            raise InputError(str(exc)) from None
    return chain


def live_printer(args: argparse.Namespace) -> Any:
    if args.quiet:
        return None
    matcher = None
    if getattr(args, "filter", None):
        from .trace.filters import parse_filter

        matcher = parse_filter(args.filter)
    stream = sys.stderr if getattr(args, "live_to_stderr", True) else sys.stdout

    def show(record: dict[str, Any]) -> None:
        if matcher is None or matcher(record):
            print(format_record(record), file=stream)

    return show


def input_files(args: argparse.Namespace) -> list[str]:
    """The files a capturing command reads, which its trace must never replace."""
    return [
        p
        for p in (getattr(args, "policy", None), getattr(args, "faults", None), *(getattr(args, "script", None) or []))
        if p
    ]


def make_recorder(args: argparse.Namespace, directory: Directory, **header: Any) -> Recorder:
    sinks: list[Sink] = []
    if args.write:
        rules = OutputRules.from_args(args, input_files(args))
        sinks.append(open_sink(args.write, records.header(**header), rules))
    return Recorder(sinks, directory.endpoint, live_printer(args), decode_args=not args.no_args)


def reload_chain(chain: Chain) -> None:
    for interceptor in chain.interceptors:
        reload = getattr(interceptor, "reload", None)
        if callable(reload):
            try:
                reload()
                print(f"ipcproxy: reloaded {interceptor.name}", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - keep the old rules on a bad reload
                print(
                    f"ipcproxy: reload of {interceptor.name} failed, keeping the old rules: {exc}",
                    file=sys.stderr,
                )


def connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    """--auth-timeout and --max-pending: what clients that have not authenticated may cost."""
    return ConnectionLimits(auth_timeout=args.auth_timeout, max_pending=args.max_pending)


class Service:
    """The proxy plus its bus-driver resolver, with a clean stop."""

    def __init__(
        self,
        upstream: str,
        listen: str,
        chain: Chain,
        recorder: Recorder,
        directory: Directory,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.loop = asyncio.get_event_loop()
        self.directory = directory
        self.recorder = recorder
        self.chain = chain
        self.proxy = Proxy(upstream, listen, chain, recorder, directory, loop=self.loop, limits=limits)
        self.resolver = Resolver(upstream, directory)
        self.stop_event = asyncio.Event()
        self.stop_reason: str | None = None
        self.stop_signal: int | None = None  # the signal that stopped us: exit 128 + it
        self.failed = False

    async def start(self, listener: socket.socket | None = None) -> str:
        """Connect the resolver, then listen (or serve on ``listener``, already bound: interpose)."""
        try:
            await asyncio.wait_for(self.resolver.start(), 10)
        except TimeoutError:
            raise InputError(
                f"cannot connect to the bus at {self.proxy.upstream_text}: no answer within 10 s"
            ) from None
        except OSError as exc:
            raise InputError(f"cannot connect to the bus at {self.proxy.upstream_text}: {reason(exc)}") from None
        except Exception as exc:  # noqa: BLE001
            why = str(exc) or type(exc).__name__
            raise InputError(f"cannot connect to the bus at {self.proxy.upstream_text}: {why}") from None
        try:
            if listener is None:
                address = self.proxy.listen()
            else:
                self.proxy.adopt_listener(listener)
                address = self.proxy.address
        except BaseException:
            self.resolver.stop()
            await asyncio.sleep(0)  # let the resolver's task finish cancelling
            raise
        self.recorder.event(
            "proxy_start",
            upstream=self.proxy.upstream_text,
            listen=address,
            forwarding="compiled" if self.proxy.plane is not None else "python",
        )
        self.recorder.flush()
        # everything built so far lives as long as the proxy: keep the cyclic collector
        # from walking it again and again while traffic flows
        gc.collect()
        gc.freeze()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, self.signalled, sig)
        self.loop.add_signal_handler(signal.SIGHUP, reload_chain, self.chain)
        self._tasks = [asyncio.ensure_future(self._watch_bus()), asyncio.ensure_future(self._kick_resolver())]
        return address

    async def _kick_resolver(self) -> None:
        while not self.stop_event.is_set():
            self.resolver.kick()
            await asyncio.sleep(0.05)

    async def _watch_bus(self) -> None:
        await self.resolver.lost.wait()
        if not self.stop_event.is_set():
            self.failed = True
            self.request_stop(f"the bus at {self.proxy.upstream_text} went away")

    def signalled(self, sig: int) -> None:
        if self.stop_signal is None:
            self.stop_signal = sig
        self.request_stop(f"signal {signal.Signals(sig).name}")

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop_event.set()

    def exit_status(self) -> int:
        """0, or 128 + the signal that stopped us, as a shell reports a job ended by that signal."""
        return 128 + self.stop_signal if self.stop_signal is not None else 0

    def close(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(Exception):
                self.loop.remove_signal_handler(sig)
        for task in getattr(self, "_tasks", []):
            task.cancel()
        self.proxy.close()
        self.resolver.stop()
        fields: dict[str, Any] = {"reason": self.stop_reason or "done"}
        plane = self.proxy.plane
        if plane is not None:  # how many frames each path forwarded
            fields["frames"] = {"compiled": plane.compiled, "python": plane.handed}
        self.recorder.event("proxy_stop", **fields)
        self.recorder.close()


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def refuse_unauthenticated_root_listener(listen: str) -> None:
    """A TCP client's uid cannot be known; as root, every such client would act as root on the bus."""
    try:
        transports = {address.transport for address in parse_address(listen)}
    except AddressError as exc:
        raise InputError(str(exc)) from None
    if "tcp" in transports and os.geteuid() == 0:
        raise InputError(
            f"proxy: refusing to listen on {listen} as root: TCP clients cannot be authenticated, "
            "so each would act as root on the bus; run the proxy as an unprivileged user"
        )


async def wait_for_names(directory: Directory, names: list[str], timeout: float, service: Service) -> None:
    deadline = time.monotonic() + timeout
    while True:
        missing = [n for n in names if directory.owner_of(n) is None]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise InputError(f"run: {', '.join(missing)} did not appear on the bus within {timeout:.0f} s")
        await asyncio.sleep(0.05)
