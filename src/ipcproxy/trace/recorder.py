"""The recorder: numbers what the proxy handled, and writes it out in order after forwarding.

The proxy calls ``message``/``frame``/``event`` as it handles traffic (cheap:
it only queues) and ``encode``/``flush`` once a batch has been forwarded;
decoding arguments, resolving endpoints and encoding happen there, off the
forwarding path. When every sink is a JSON Lines writer and nobody watches
live, records go straight to JSON lines from pre-encoded fragments
(``records.LineEncoder``); otherwise each record is built as a dict first.
"""

from __future__ import annotations

import binascii
import struct
import time
from collections.abc import Callable
from typing import Any

from ..chain import Resolver
from ..dbus import wire
from ..dbus.wire import jsonable
from ..model import Endpoint, Message, Verdict
from . import records
from .writer import Sink

LiveView = Callable[[dict[str, Any]], None]

_SERIAL = {ord("l"): struct.Struct("<I").unpack_from, ord("B"): struct.Struct(">I").unpack_from}
_BIG_ARGS = 16384  # encoded arguments this long are written as a chunk of their own, not copied into the line
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
        self._epoch_ns = time.time_ns() - time.monotonic_ns()
        self._lines = records.LineEncoder(self._epoch_ns)
        self._formats: dict[tuple[Any, ...], records.FrameFormat] = {}
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
        if self.live is None and self.sinks and all(_takes_lines(sink) for sink in self.sinks):
            self._encode_lines(pending, write_every)
        else:
            self._encode_records(pending)

    # -- every sink writes JSON lines: encode from fragments
    def _frame_format(
        self, head: wire.Header, direction: str, conn: int | None, client: Endpoint | None
    ) -> records.FrameFormat:
        sender_json, dest_json = self._encoded_endpoints(client, direction == "to_bus", head.sender, head.destination)
        hex_args = self.decode_args and head.body == wire.BODY_BYTES
        key = (head, direction, conn, sender_json, dest_json, hex_args)
        found = self._formats.get(key)
        if found is None:
            if len(self._formats) > 8192:
                self._formats.clear()
            found = self._formats[key] = records.FrameFormat(
                int(head.type),
                head.path,
                head.interface,
                head.member,
                head.error_name,
                head.destination,
                head.signature,
                head.flags,
                head.reply_at >= 0,
                hex_args,
                sender_json,
                dest_json,
                direction,
                conn,
            )
        return found

    def _encode_lines(self, pending: list[tuple[Any, ...]], write_every: int = 0) -> None:
        lines = self._lines
        endpoint = lines.endpoint
        decode = self.decode_args
        chunks: list[bytes] = []
        add = chunks.append
        hexlify = binascii.hexlify
        body_bytes = wire.BODY_BYTES
        # Endpoints are resolved once per batch for each kind of frame on each connection:
        # the directory does not change while a batch is encoded.
        memo: dict[tuple[Any, ...], records.FrameFormat] = {}
        epoch = lines.epoch_ns
        last_second = -1
        second_text = b""
        big = 0  # bytes of large arguments encoded since the last write
        for item in pending:
            if len(item) == 8:  # a frame of the fast path
                seq, ts, raw, head, direction, conn, client, latency = item
                key = (head, direction, conn, id(client))
                fmt = memo.get(key)
                if fmt is None:
                    fmt = memo[key] = self._frame_format(head, direction, conn, client)
                second, ns = divmod(epoch + ts, 1_000_000_000)
                if second != last_second:
                    last_second = second
                    second_text = lines.second_text(second)
                unpack = _SERIAL[raw[0]]
                values: tuple[Any, ...]
                if fmt.has_reply_serial:
                    values = (seq, ts, second_text, ns // 1000, unpack(raw, 8)[0], unpack(raw, head.reply_at)[0])
                else:
                    values = (seq, ts, second_text, ns // 1000, unpack(raw, 8)[0])
                if decode and head.body == body_bytes:
                    hexed = hexlify(memoryview(raw)[head.body_at + 4 :])
                    if len(hexed) > _BIG_ARGS:  # a chunk of its own: no copy into the line
                        add(fmt.prefix % values + b'["')
                        add(hexed)
                        if latency is None:
                            add(b'"]' + fmt.suffix % len(raw))
                        else:
                            add(b'"]' + fmt.suffix_latency % (len(raw), latency))
                        big += len(hexed)
                        if write_every and big >= write_every:
                            self._hand_over(chunks, write=True)
                            chunks.clear()
                            big = 0
                        continue
                    values += (hexed, len(raw))
                else:
                    values += (len(raw),)
                if latency is None:
                    add(fmt.line % values)
                else:
                    add(fmt.line_latency % (*values, latency))
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
                args = b"[]" if decoded is None else records._encode(decoded)
                sender, destination = self._endpoints_of(message, client, direction, sender, destination)
                shape = lines.shape_of(message, conn is not None)
                values = (seq, ts, lines.time(ts), message.serial)
                if message.reply_serial is not None:
                    values += (message.reply_serial,)
                values += (endpoint(sender), endpoint(destination))
                tail_values: tuple[Any, ...] = (len(message.raw), lines.verdict(verdict), lines.string(direction))
                if conn is not None:
                    tail_values += (conn,)
                tail_values += (lines.tail(latency, args_error),)
                if len(args) > _BIG_ARGS:
                    add(shape.head_fmt % values)
                    add(args)
                    add(shape.tail_fmt % tail_values)
                else:
                    add(shape.head_fmt % values + args + shape.tail_fmt % tail_values)
        self.written += len(pending)
        self._hand_over(chunks, write=False)

    def _encode_with_plane(self, pending: list[tuple[Any, ...]], write_every: int) -> None:
        """The plane's records, with ours (messages it left to Python, events) where their numbers fall."""
        pending.sort(key=_first)  # a frame numbered on arrival may be recorded after later events
        pieces, watermark, plane_records = self._plane.encode(
            [item[0] for item in pending], self._encoded_endpoints, WRITE_SLICE
        )
        # records numbered from a frame Python has not recorded yet on wait with the plane's
        held = [item for item in pending if item[0] >= watermark]
        if held:
            self._pending[:0] = held
            pending = pending[: len(pending) - len(held)]
        ours = iter(pending)
        chunks: list[bytes] = []
        encoded = 0
        for piece in pieces:
            if piece is None:
                self._hand_over(chunks, write=False)
                chunks = []
                self._encode_lines([next(ours)])
                continue
            chunks.append(piece)
            encoded += len(piece)
            if write_every and encoded >= write_every:
                self._hand_over(chunks, write=True)
                chunks = []
                encoded = 0
        self._hand_over(chunks, write=False)
        self.written += plane_records

    def _encoded_endpoints(
        self, client: Endpoint | None, to_bus: bool, sender_name: str | None, destination_name: str | None
    ) -> tuple[bytes, bytes]:
        """Sender and destination of a forwarded frame, encoded; a missing name on our client's side is our client."""
        endpoint = self._lines.endpoint
        return (
            endpoint(self._endpoint_for(sender_name, client, to_bus)),
            endpoint(self._endpoint_for(destination_name, client, not to_bus)),
        )

    def _hand_over(self, chunks: list[bytes], write: bool) -> None:
        for writer in self.sinks:
            write_bytes: Any = writer.write_bytes  # type: ignore[attr-defined]
            for chunk in chunks:
                write_bytes(chunk)
            if write:
                writer.flush()

    # -- some sink wants record dicts (pcap, a live view)
    def _encode_records(self, pending: list[tuple[Any, ...]]) -> None:
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
            for sink in self.sinks:
                sink.write(record, message)
            if self.live is not None:
                self.live(record)
            self.written += 1

    def close(self) -> None:
        self.flush()
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def _first(item: tuple[Any, ...]) -> Any:
    return item[0]


def _takes_lines(sink: Sink) -> bool:
    """A JSON Lines sink that accepts pre-encoded lines (``write_bytes``): either of the two writers."""
    return getattr(sink, "takes_lines", False) is True
