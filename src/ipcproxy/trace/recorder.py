"""The recorder: numbers what the proxy handled, and writes it out in order after forwarding.

The proxy calls ``message``/``frame``/``event`` as it handles traffic (cheap:
it only queues) and ``encode``/``flush`` once a batch has been forwarded;
decoding arguments, resolving endpoints and encoding happen there, off the
forwarding path. Trace files get compact lines (``records.compact``, each
naming a template of what its kind of message shares); only a live view and
pcap sinks get each record built as a dict.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..chain import Resolver
from ..model import Endpoint, Message, Verdict
from . import records
from .writer import Sink

if TYPE_CHECKING:
    from ..dbus import wire

# ipcproxy.dbus.wire (dbus_fast, asyncio: a third of a second) is imported where a D-Bus message is
# encoded, so that `ipcproxy trace`, which records data records, starts fast.
BODY_BYTES = 1  # the header cache's body of signature "ay" (wire.BODY_BYTES)

LiveView = Callable[[dict[str, Any]], None]

_SERIAL = {ord("l"): struct.Struct("<I").unpack_from, ord("B"): struct.Struct(">I").unpack_from}
WRITE_SLICE = 256 * 1024  # ``flush`` writes each time this much of such arguments is encoded


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
        self.backlog_bytes = 0  # frame bytes held by the fast path's pending records
        self._epoch_ns = records.EPOCH_NS  # the trace's header carries it: compact records have no time
        self._lines = records.LineEncoder(self._epoch_ns)
        self._templates = records.Templates()
        self._plane: Any = None  # the proxy's compiled plane: its records interleave with ours

    @property
    def epoch_ns(self) -> int:
        """Wall clock minus monotonic clock at start: turns record timestamps into times."""
        return self._epoch_ns

    @property
    def takes_lines(self) -> bool:
        """Every record can go out as a pre-encoded JSON line (no live view, no pcap)."""
        return self.live is None and all(_takes_lines(sink) for sink in self.sinks)

    def attach_plane(self, plane: Any) -> None:
        """Number records from the plane's counter and encode its queued records with ours, in order."""
        self._plane = plane

    @property
    def active(self) -> bool:
        return bool(self.sinks) or self.live is not None

    @property
    def backlog(self) -> int:
        """Records waiting to be encoded."""
        if self._plane is not None:
            return len(self._pending) + self._plane.pending
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Message bytes held for records waiting to be encoded."""
        if self._plane is not None:
            return self.backlog_bytes + self._plane.pending_bytes
        return self.backlog_bytes

    @property
    def unwritten(self) -> int:
        """Encoded bytes the sinks hold until their next flush."""
        return sum(getattr(sink, "buffered", 0) for sink in self.sinks)

    def next_seq(self) -> int:
        if self._plane is not None:
            self.seq = self._plane.next_seq()
            return self.seq
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
        seq: int = 0,
    ) -> int:
        seq = seq or self.next_seq()
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

    def frame(
        self,
        raw: bytes,
        head: wire.Header,
        direction: str,
        connection: int | None,
        client: Endpoint | None,
        latency_ns: int | None,
        ts_ns: int,
    ) -> int:
        """A forwarded, unmodified frame known by its cached header (the proxy's fast path)."""
        self.seq = seq = self.seq + 1
        if self.sinks or self.live is not None:
            self._pending.append((seq, ts_ns, raw, head, direction, connection, client, latency_ns))
            self.backlog_bytes += len(raw)
        return seq

    def event(self, event: str, seq: int = 0, **fields: Any) -> int:
        """``seq``: a number taken earlier (the compiled plane numbers frames as they arrive)."""
        seq = seq or self.next_seq()
        if self.active:
            self._pending.append((seq, time.monotonic_ns(), event, fields))
        return seq

    def record(self, fields: dict[str, Any], ts_ns: int) -> int:
        """A record another transport built (the syscall tracer's ``data``): numbered and timed here."""
        seq = self.next_seq()
        if self.active:
            self._pending.append((seq, ts_ns, fields))
        return seq

    def _endpoint_for(self, name: str | None, client: Endpoint | None, own_side: bool) -> Endpoint:
        if name is None and own_side and client is not None:
            return client
        return self.resolve(name)

    def _endpoints_of(
        self,
        message: Message,
        client: Endpoint | None,
        direction: str,
        sender: Endpoint | None,
        destination: Endpoint | None,
    ) -> tuple[Endpoint, Endpoint]:
        """A message's two endpoints, resolved now where the caller did not know them yet."""
        if sender is None:
            sender = self._endpoint_for(message.sender, client, direction == "to_bus")
        if destination is None:
            destination = self._endpoint_for(message.destination, client, direction == "from_bus")
        return sender, destination

    def _args_of(self, message: Message) -> tuple[list[Any] | None, str | None]:
        """The decoded arguments in trace form (None when not recorded), or why the body could not be decoded."""
        if not (self.decode_args and message.signature):
            return None, None
        from ..dbus.wire import jsonable

        try:
            return jsonable(message.args), None
        except Exception as exc:  # noqa: BLE001 - a bad body is recorded, not fatal
            return None, str(exc)

    def flush(self) -> None:
        """Encode what is pending and write it out (in slices of ``WRITE_SLICE`` bytes, while encoding)."""
        self.encode(WRITE_SLICE)
        for sink in self.sinks:
            sink.flush()

    def encode(self, write_every: int = 0) -> None:
        """Turn pending records into encoded bytes held by the sinks (written by ``flush``).

        With ``write_every``, the sinks are flushed each time that many bytes are
        encoded: large arguments are then written while still in the CPU's cache.
        Trace files get compact lines; a live view and pcap sinks get record dicts.
        """
        plane = self._plane
        if plane is not None:  # every record goes through it: it knows which may be written yet
            if not self._pending and not plane.pending:
                return
            pending, self._pending = self._pending, []
            self.backlog_bytes = 0
            self._encode_with_plane(pending, write_every)
            return
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self.backlog_bytes = 0
        line_sinks = [sink for sink in self.sinks if _takes_lines(sink)]
        other_sinks = [sink for sink in self.sinks if not _takes_lines(sink)]
        if line_sinks:
            self._encode_lines(pending, line_sinks, write_every)
        if other_sinks or self.live is not None:
            self._encode_records(pending, other_sinks)
        self.written += len(pending)

    # -- trace files: compact lines from templates (records.Templates, records.compact)
    def _template(
        self,
        shape: records.Shape,
        sender: Endpoint,
        destination: Endpoint,
        verdict: str | None,
        direction: str,
        conn: int | None,
        add: Callable[[bytes], Any],
    ) -> int:
        """The number of a record's template; a new template's definition goes out first."""
        endpoint = self._lines.endpoint
        number, definition = self._templates.number(
            shape, endpoint(sender), endpoint(destination), verdict, direction, conn
        )
        if definition:
            add(definition)
        return number

    def _encode_lines(self, pending: list[tuple[Any, ...]], sinks: list[Sink], write_every: int = 0) -> None:
        lines = self._lines
        decode = self.decode_args
        chunks: list[bytes] = []
        add = chunks.append
        compact = records.compact
        body_bytes = BODY_BYTES
        # Templates are looked up once per batch for each kind of frame on each connection:
        # the directory does not change while a batch is encoded.
        memo: dict[tuple[Any, ...], int] = {}
        big = 0  # bytes of large arguments encoded since the last write
        for item in pending:
            if len(item) == 8:  # a frame of the fast path
                seq, ts, raw, head, direction, conn, client, latency = item
                key = (head, direction, conn, id(client))
                template = memo.get(key)
                if template is None:
                    to_bus = direction == "to_bus"
                    template = memo[key] = self._template(
                        _shape_of_head(head),
                        self._endpoint_for(head.sender, client, to_bus),
                        self._endpoint_for(head.destination, client, not to_bus),
                        "forwarded",
                        direction,
                        conn,
                        add,
                    )
                unpack = _SERIAL[raw[0]]
                reply_serial = unpack(raw, head.reply_at)[0] if head.reply_at >= 0 else None
                serial = unpack(raw, 8)[0]
                if decode and head.body == body_bytes:
                    body = memoryview(raw)[head.body_at + 4 :]
                    line = compact(seq, ts, template, serial, reply_serial, len(raw), latency, body=len(body))
                    if len(body) >= records.BIG_BODY:  # a chunk of its own: no copy into the line
                        add(line)
                        add(body)  # type: ignore[arg-type] # writev takes any buffer
                        add(b"\n")
                        big += len(body)
                        if write_every and big >= write_every:
                            self._hand_over(chunks, sinks, write=True)
                            chunks.clear()
                            big = 0
                    else:
                        add(line + body + b"\n")
                else:  # no body (the header cache takes only "" and "ay"), or arguments not recorded
                    add(compact(seq, ts, template, serial, reply_serial, len(raw), latency))
            elif len(item) == 4:
                seq, ts, event, fields = item
                record = records.event_record(seq=seq, ts_ns=ts, time=lines.wall(ts), event=event, **fields)
                add(records._encode(record) + b"\n")
            elif len(item) == 3:
                seq, ts, fields = item
                add(records._encode({"seq": seq, "ts": ts, "time": lines.wall(ts), **fields}) + b"\n")
            else:
                seq, ts, message, direction, verdict, conn, client, latency, sender, destination = item
                decoded, args_error = self._args_of(message)
                sender, destination = self._endpoints_of(message, client, direction, sender, destination)
                plain = verdict if isinstance(verdict, str) else None
                template = self._template(records.Shape.of(message), sender, destination, plain, direction, conn, add)
                own_verdict = None if plain is not None else lines.verdict(verdict)
                fixed = (seq, ts, template, message.serial, message.reply_serial, len(message.raw), latency)
                if decoded is not None and message.signature == "ay" and isinstance(message.args[0], bytes):
                    array: bytes = message.args[0]
                    add(compact(*fixed, own_verdict, args_error, body=len(array)))
                    add(array)
                    add(b"\n")
                else:
                    args = None if decoded is None else records._encode(decoded)
                    add(compact(*fixed, own_verdict, args_error, args))
        self._hand_over(chunks, sinks, write=False)

    def _encode_with_plane(self, pending: list[tuple[Any, ...]], write_every: int) -> None:
        """The plane's records, with ours (messages it left to Python, events) where their numbers fall."""
        pending.sort(key=_first)  # a frame numbered on arrival may be recorded after later events
        ours = iter(pending)

        def encode_ours() -> list[bytes]:
            """Our next record, encoded where it falls among the plane's (templates stay defined before use)."""
            chunks: list[bytes] = []
            self._encode_lines([next(ours)], [_Collector(chunks)])  # type: ignore[list-item]
            return chunks

        pieces, watermark, plane_records = self._plane.encode(
            [item[0] for item in pending], self._plane_template, encode_ours, WRITE_SLICE
        )
        # records numbered from a frame Python has not recorded yet wait with the plane's
        held = [item for item in pending if item[0] >= watermark]
        if held:
            self._pending[:0] = held
        chunks: list[bytes] = []
        encoded = 0
        for piece in pieces:
            chunks.append(piece)
            encoded += len(piece)
            if write_every and encoded >= write_every:
                self._hand_over(chunks, self.sinks, write=True)
                chunks = []
                encoded = 0
        self._hand_over(chunks, self.sinks, write=False)
        self.written += plane_records + len(pending) - len(held)

    def _plane_template(
        self, facts: tuple[records.Shape, str | None], client: Endpoint | None, to_bus: bool, conn: int
    ) -> tuple[int, bytes]:
        """For the plane: the template of a forwarded frame, and its definition if it is new.

        A missing name on our client's side is our client.
        """
        shape, sender_name = facts
        endpoint = self._lines.endpoint
        return self._templates.number(
            shape,
            endpoint(self._endpoint_for(sender_name, client, to_bus)),
            endpoint(self._endpoint_for(shape.destination, client, not to_bus)),
            "forwarded",
            "to_bus" if to_bus else "from_bus",
            conn,
        )

    def _hand_over(self, chunks: list[bytes], sinks: list[Sink], write: bool) -> None:
        for writer in sinks:
            write_bytes: Any = writer.write_bytes  # type: ignore[attr-defined]
            for chunk in chunks:
                write_bytes(chunk)
            if write:
                writer.flush()

    # -- a live view and pcap sinks want record dicts
    def _encode_records(self, pending: list[tuple[Any, ...]], sinks: list[Sink]) -> None:
        wall = self._lines.wall
        for item in pending:
            n = len(item)
            if n == 3:
                seq, ts, fields = item
                record = {"seq": seq, "ts": ts, "time": wall(ts), **fields}
                message = None
            elif n == 4:
                seq, ts, event, fields = item
                record = records.event_record(seq=seq, ts_ns=ts, time=wall(ts), event=event, **fields)
                message = None
            else:
                if n == 8:
                    from ..dbus import wire

                    seq, ts, raw, _head, direction, conn, client, latency = item
                    message = wire.parse_message(raw)
                    verdict: Verdict | str | dict[str, Any] = "forwarded"
                    sender = destination = None
                else:
                    seq, ts, message, direction, verdict, conn, client, latency, sender, destination = item
                args, args_error = self._args_of(message)
                sender, destination = self._endpoints_of(message, client, direction, sender, destination)
                record = records.message_record(
                    seq=seq,
                    ts_ns=ts,
                    time=wall(ts),
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
            for sink in sinks:
                sink.write(record, message)
            if self.live is not None:
                self.live(record)

    def close(self) -> None:
        self.flush()
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def _first(item: tuple[Any, ...]) -> Any:
    return item[0]


def _shape_of_head(head: wire.Header) -> records.Shape:
    return records.Shape(
        "dbus",
        int(head.type),
        head.path,
        head.interface,
        head.member,
        head.error_name,
        head.destination,
        head.signature,
        0,
        head.flags,
    )


class _Collector:
    """A stand-in line sink that keeps the chunks handed to it (the plane places them)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.write_bytes = chunks.append

    def flush(self) -> None:
        pass


def _takes_lines(sink: Sink) -> bool:
    """A JSON Lines sink that accepts pre-encoded lines (``write_bytes``): either of the two writers."""
    return getattr(sink, "takes_lines", False) is True
