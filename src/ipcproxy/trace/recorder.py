"""The recorder: numbers what the proxy handled, and writes it out in order after forwarding.

The proxy calls ``message``/``event`` as it handles traffic (cheap: it only
queues) and ``flush`` once a batch has been forwarded; decoding arguments,
resolving endpoints and encoding happen there, off the forwarding path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..chain import Resolver
from ..dbus.wire import jsonable
from ..model import Endpoint, Message, Verdict
from . import records
from .writer import Sink

LiveView = Callable[[dict[str, Any]], None]


class Recorder:
    def __init__(
        self,
        sinks: list[Sink],
        resolve: Resolver,
        live: LiveView | None = None,
        decode_args: bool = True,
    ) -> None:
        self.sinks = sinks
        self.resolve = resolve
        self.live = live
        self.decode_args = decode_args
        self.seq = 0
        self.written = 0
        self._pending: list[tuple[Any, ...]] = []
        self._epoch = time.time() - time.monotonic_ns() / 1e9

    @property
    def active(self) -> bool:
        return bool(self.sinks) or self.live is not None

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def message(
        self,
        message: Message,
        direction: str,
        verdict: Verdict | str | dict[str, Any],
        connection: int | None,
        client: Endpoint | None = None,
        latency_ns: int | None = None,
        ts_ns: int | None = None,
        sender: Endpoint | None = None,
        destination: Endpoint | None = None,
    ) -> int:
        seq = self.next_seq()
        if self.active:
            self._pending.append(
                (
                    seq,
                    ts_ns or time.monotonic_ns(),
                    message,
                    direction,
                    verdict,
                    connection,
                    client,
                    latency_ns,
                    sender,
                    destination,
                )
            )
        return seq

    def event(self, event: str, **fields: Any) -> int:
        seq = self.next_seq()
        if self.active:
            self._pending.append((seq, time.monotonic_ns(), event, fields))
        return seq

    def _endpoint_for(self, name: str | None, client: Endpoint | None, own_side: bool) -> Endpoint:
        if name is None and own_side and client is not None:
            return client
        return self.resolve(name)

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        epoch = self._epoch
        for item in pending:
            if len(item) == 4:
                seq, ts, event, fields = item
                record = records.event_record(seq=seq, ts_ns=ts, wall=epoch + ts / 1e9, event=event, **fields)
                message = None
            else:
                seq, ts, message, direction, verdict, conn, client, latency, sender, destination = item
                args: list[Any] | None = None
                args_error = None
                if self.decode_args and message.signature:
                    try:
                        args = jsonable(message.args)
                    except Exception as exc:  # noqa: BLE001 - a bad body is recorded, not fatal
                        args_error = str(exc)
                if sender is None:
                    sender = self._endpoint_for(message.sender, client, direction == "to_bus")
                if destination is None:
                    destination = self._endpoint_for(message.destination, client, direction == "from_bus")
                record = records.message_record(
                    seq=seq,
                    ts_ns=ts,
                    wall=epoch + ts / 1e9,
                    message=message,
                    sender=sender,
                    destination=destination,
                    verdict=verdict,
                    direction=direction,
                    connection=conn,
                    latency_ns=latency,
                    args=args,
                    args_error=args_error,
                )
            for sink in self.sinks:
                sink.write(record, message)
            if self.live is not None:
                self.live(record)
            self.written += 1
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        self.flush()
        for sink in self.sinks:
            sink.close()
        self.sinks = []
