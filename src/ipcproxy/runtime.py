"""The runtime: the one place that wires a transport, the name resolver, the recorder and the chain.

Data goes one way (docs/architecture.md): a command turns its options into
a ``CaptureOptions`` and a transport, the ``Runtime`` opens the recorder,
connects the resolver, opens the transport and hands it the chain and the
recorder; the transport carries each message through the chain into the
recorder, which writes the trace. `run`, `proxy`, `interpose`, `monitor`
and every run of a campaign go through here, so they start, stop, record
their start and stop events and flush their traces the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .chain import Chain
from .dbus.address import AddressError
from .dbus.address import parse as parse_address
from .dbus.bus import Directory
from .dbus.resolver import Resolver
from .errors import InputError
from .oserror import reason
from .outputs import PRIVATE, OutputRules
from .scripting import ScriptError, load_script
from .trace import records
from .trace.recorder import LiveView, Recorder
from .trace.view import format_record
from .trace.writer import DirectJsonlWriter, Sink, open_sink
from .transport import Transport, Wiring


@dataclass(slots=True)
class CaptureOptions:
    """What a capturing command asks for: the trace, the live view, and what the chain holds."""

    write: str | None = None  # the trace file (.pcap/.pcapng: a capture instead)
    quiet: bool = True  # no live view
    filter: str | None = None  # live view: only records matching this expression
    no_args: bool = False  # keep decoded arguments out of the trace
    live_to_stdout: bool = False  # the live view is the output (monitor), not a side channel on stderr
    policy: str | None = None
    mode: str = "enforce"  # or "complain"
    faults: str | None = None
    seed: int | None = None
    scripts: list[str] = field(default_factory=list)
    output_rules: OutputRules = PRIVATE  # how the trace file may be created (--force, --output-mode, inputs)

    def input_files(self) -> list[str]:
        """The files the capture reads, which its trace must never replace."""
        return [p for p in (self.policy, self.faults, *self.scripts) if p]


def build_chain(options: CaptureOptions) -> Chain:
    """Enforcer first (it must see the message as sent), then faults, then users' scripts."""
    chain = Chain()
    if options.policy:
        from .policy.enforcer import load_enforcer

        chain.add(load_enforcer(options.policy, options.mode))
    if options.faults:
        from .faults.injector import load_injector

        chain.add(load_injector(options.faults, options.seed))
    for path in options.scripts:
        try:
            for interceptor in load_script(path):
                chain.add(interceptor)
        except ScriptError as exc:
            raise InputError(str(exc)) from None
    return chain


def live_printer(options: CaptureOptions) -> LiveView | None:
    """The live view: each record printed as `show` prints it, filtered, or None when quiet."""
    if options.quiet:
        return None
    matcher = None
    if options.filter:
        from .trace.filters import parse_filter

        matcher = parse_filter(options.filter)
    stream = sys.stdout if options.live_to_stdout else sys.stderr

    def show(record: dict[str, Any]) -> None:
        if matcher is None or matcher(record):
            print(format_record(record), file=stream)

    return show


def make_recorder(
    options: CaptureOptions, directory: Directory, header: dict[str, Any], *, direct_writer: bool = False
) -> Recorder:
    """The one recorder factory: the trace (or capture) file, the live view, whether arguments are decoded.

    A capture file alone needs no decoded arguments: it keeps the raw bytes.
    """
    sinks: list[Sink] = []
    path = options.write
    capture = bool(path) and str(path).endswith((".pcap", ".pcapng"))
    if path:
        head = records.header(**header)
        rules = options.output_rules
        if direct_writer and not capture:
            sinks.append(DirectJsonlWriter(path, head, rules=rules))
        else:
            sinks.append(open_sink(path, head, rules))
    live = live_printer(options)
    decode = not options.no_args and (live is not None or not capture)
    return Recorder(sinks, directory.endpoint, live, decode_args=decode)


def reload_chain(chain: Chain) -> None:
    """SIGHUP: every interceptor that can reload its rules does; a bad reload keeps the old ones."""
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


class Runtime:
    """A transport with its recorder, resolver and chain: started once, stopped once, every record flushed.

    The trace is opened first, or, when the transport's header describes its
    connection (a monitor's BecomeMonitor or eavesdropping), once it has
    connected; either way before any message can flow. With ``handle_signals`` (a command
    that owns its process) SIGINT/SIGTERM ask the transport to stop and
    SIGHUP reloads the chain; a campaign's runs leave signals to the campaign.
    """

    def __init__(
        self,
        transport: Transport,
        options: CaptureOptions,
        header: dict[str, Any],
        *,
        chain: Chain | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.transport = transport
        self.chain = chain if chain is not None else Chain()
        self.directory = Directory()
        self.options = options
        self.header = dict(header)
        self.recorder: Recorder | None = None
        self.resolver: Resolver | None = None
        self.handle_signals = handle_signals
        self.stop_reason: str | None = None
        self.stop_signal: int | None = None  # the signal that stopped us: exit 128 + it
        self.start_fields: dict[str, Any] = {}
        self._signals: list[int] = []
        self._watch: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    @property
    def failure(self) -> str | None:
        """Why the transport failed (the bus went away, a capture broke), or None."""
        return self.transport.failure

    async def start(self) -> None:
        """Connect the resolver and the transport, open the trace, record the start event, let messages flow."""
        address = self.transport.bus_address
        try:
            if not self.transport.header_from_connection:
                self._open_trace()  # at once: a follower of a rewritten trace sees it truncated before it grows
            if address is not None:
                self.resolver = Resolver(address, self.directory, poll=self.transport.resolver_poll)
                try:
                    await asyncio.wait_for(self.resolver.start(), 10)
                except TimeoutError:
                    raise InputError(f"cannot connect to the bus at {address}: no answer within 10 s") from None
                except OSError as exc:
                    raise InputError(f"cannot connect to the bus at {address}: {reason(exc)}") from None
                except Exception as exc:  # noqa: BLE001 - dbus-fast raises many kinds; all mean "no bus here"
                    why = str(exc) or type(exc).__name__
                    raise InputError(f"cannot connect to the bus at {address}: {why}") from None
            self.header.update(await self.transport.prepare())
            recorder = self.recorder or self._open_trace()
            resolver_name = self.resolver.unique_name if self.resolver is not None else None
            wiring = Wiring(self.chain, recorder, self.directory, resolver_name)
            self.start_fields = await self.transport.open(wiring)
        except BaseException:
            self.transport.close()
            if self.resolver is not None:
                self.resolver.stop()
                self.resolver = None
            await asyncio.sleep(0)  # let the resolver's task finish cancelling
            raise
        self._started = True
        recorder.event(f"{self.transport.name}_start", **self.start_fields)
        recorder.flush()  # the start record tells a reader of the trace that capture has begun
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            # everything built so far lives as long as the process: keep the cyclic collector
            # from walking it again and again while traffic flows
            gc.collect()
            gc.freeze()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.signalled, sig)
                self._signals.append(sig)
            loop.add_signal_handler(signal.SIGHUP, reload_chain, self.chain)
            self._signals.append(signal.SIGHUP)
        if self.resolver is not None:
            self._watch = asyncio.ensure_future(self._watch_bus(self.resolver, str(address)))
        self.transport.begin()

    def _open_trace(self) -> Recorder:
        self.recorder = make_recorder(
            self.options, self.directory, self.header, direct_writer=self.transport.direct_writer
        )
        return self.recorder

    async def _watch_bus(self, resolver: Resolver, address: str) -> None:
        await resolver.lost.wait()
        if self.stop_reason is None:
            self.transport.bus_lost(f"the bus at {address} went away")

    def signalled(self, sig: int) -> None:
        """SIGINT/SIGTERM: stop, and remember the first signal for the exit status."""
        if self.stop_signal is None:
            self.stop_signal = sig
        self.request_stop(f"signal {signal.Signals(sig).name}")

    def exit_status(self) -> int:
        """0, or 128 + the signal that stopped us, as a shell reports a job ended by that signal."""
        return 128 + self.stop_signal if self.stop_signal is not None else 0

    def request_stop(self, reason: str) -> None:
        """Ask the transport to finish; a second request (a second Ctrl-C) makes it finish at once."""
        urgent = self.stop_reason is not None
        if self.stop_reason is None:
            self.stop_reason = reason
        self.transport.request_stop(urgent)

    def event(self, name: str, **fields: Any) -> None:
        """Record an event of the command's own (interpose, a campaign's phases), once the trace is open."""
        if self.recorder is not None:
            self.recorder.event(name, **fields)

    def flush(self) -> None:
        if self.recorder is not None:
            self.recorder.flush()

    async def wait(self) -> None:
        """Until the transport is done: stopped when asked, or failed."""
        await self.transport.done.wait()

    def close(self, reason: str | None = None) -> None:
        """Stop the transport and the resolver, record the stop event, close the trace (once).

        After a failed ``start`` only the trace is closed: nothing had started.
        """
        if self._closed:
            return
        self._closed = True
        if not self._started:
            if self.recorder is not None:
                self.recorder.close()
            return
        if reason is not None and self.stop_reason is None:
            self.stop_reason = reason
        loop = asyncio.get_event_loop()
        for sig in self._signals:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        if self._watch is not None:
            self._watch.cancel()
        fields = self.transport.close()
        if self.resolver is not None:
            self.resolver.stop()
        stop_reason = self.transport.failure or self.stop_reason or "done"
        assert self.recorder is not None  # started
        self.recorder.event(f"{self.transport.name}_stop", reason=stop_reason, **fields)
        self.recorder.close()


def new_loop() -> asyncio.AbstractEventLoop:
    """The event loop a command runs on: uvloop when installed."""
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


async def wait_for_names(directory: Directory, names: list[str], timeout: float) -> None:
    """Until every name is owned on the bus; an InputError naming the missing ones after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [n for n in names if directory.owner_of(n) is None]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise InputError(f"run: {', '.join(missing)} did not appear on the bus within {timeout:.0f} s")
        await asyncio.sleep(0.05)
