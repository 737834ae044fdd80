"""The sans-IO session: one client's connection and its own connection to the bus.

A session is fed events (bytes and fds received from the client or the bus,
the bus connection made, a timer due) and answers each with a list of
commands (send these frames to the client or the bus, connect to the bus,
hand the connection to the compiled plane, close). It never touches a socket;
``proxy.py`` turns its commands into I/O. This keeps the message logic
(handshakes, framing, pending calls, verdicts, credential rewriting) testable
as exact transcripts (tests/test_session_transcripts.py).

Records go to the recorder, which only queues them; the proxy writes them out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..chain import Chain, Context
from ..model import BUS_DRIVER_NAME, Action, Direction, Endpoint, Message, MessageType, Verdict
from ..trace.recorder import Recorder
from . import plane as plane_entries
from . import wire
from .auth import AuthError, ClientAuth, ServerAuth
from .bus import CREDENTIAL_METHODS, NAME_METHODS, Directory
from .conn import close_fds

log = logging.getLogger("ipcproxy.proxy")

INJECTED_SERIAL_BASE = 0xF0000000
DENIED = "org.freedesktop.DBus.Error.AccessDenied"


# ---------------------------------------------------------------- commands out


@dataclass(slots=True)
class Command:
    """Something the session asks its I/O layer to do."""


@dataclass(slots=True)
class SendToClient(Command):
    """Write these frames to the client, in order; ``fds`` go with the one frame given with them."""

    frames: list[bytes]
    fds: Sequence[int] = ()  # not a default_factory: one of these is made for every batch forwarded


@dataclass(slots=True)
class SendToBus(Command):
    """Write these frames to the bus, in order; ``fds`` go with the one frame given with them."""

    frames: list[bytes]
    fds: Sequence[int] = ()  # not a default_factory: one of these is made for every batch forwarded


@dataclass(slots=True)
class ConnectBus(Command):
    """Open this client's own connection to the bus; answer with ``bus_connected`` or ``bus_unreachable``."""


@dataclass(slots=True)
class CarryFds(Command):
    """File descriptors may now arrive from this side: read it with ancillary data."""

    from_bus: bool


@dataclass(slots=True)
class Authenticated(Command):
    """The client completed its handshake: it no longer counts as pending."""


@dataclass(slots=True)
class HandOver(Command):
    """Give both sockets to the compiled plane, which carries on from these unframed bytes."""

    client_buffer: bytes
    bus_buffer: bytes


@dataclass(slots=True)
class Later(Command):
    """Run ``then`` after ``delay_s`` seconds and carry out the commands it returns.

    With ``cancel_on_close``, the timer is dropped if the session ends first.
    """

    delay_s: float
    then: Callable[[], list[Command]]
    cancel_on_close: bool = False


@dataclass(slots=True)
class Close(Command):
    """Close this session: both connections."""

    reason: str


@dataclass(slots=True)
class CloseOther(Command):
    """Close another session of the same proxy (a fault disconnecting a message's receiver)."""

    connection: int
    reason: str


Send = SendToClient | SendToBus


class PlaneTables(Protocol):
    """What a session asks of the compiled plane once the plane carries its connection."""

    def take_call(self, conn: int, from_client: bool, peer: str | None, serial: int) -> int | None: ...

    def note_call(self, conn: int, to_bus: bool, peer: str | None, serial: int, ts_ns: int) -> None: ...

    def learn(self, *entry: Any) -> None: ...


# ---------------------------------------------------------------- shared state


class ProxyState:
    """What every session of one proxy shares: the chain, the recorder, the name directory, each other."""

    def __init__(
        self,
        chain: Chain,
        recorder: Recorder,
        directory: Directory | None = None,
        hand_over: bool = False,
        auth_timeout: float | None = None,
    ) -> None:
        self.chain = chain
        self.recorder = recorder
        self.directory = directory or Directory()
        self.hand_over = hand_over  # authenticated connections go to the compiled plane
        self.auth_timeout = auth_timeout  # seconds a client has to complete its handshake
        self.headers = wire.HeaderCache()  # the fast path's header facts
        self.by_name: dict[str, Session] = {}

    def rewrite_credentials(self, call: Message, reply: Message) -> Message | None:
        """Answer the bus driver's credential look-ups with the real client's pid, not ours."""
        try:
            (name,) = call.args
        except Exception:  # noqa: BLE001
            return None
        owner = self.directory.owner_of(name) if isinstance(name, str) else None
        target = self.by_name.get(owner) if owner else None
        if target is None or target.pid is None:
            return None
        try:
            if call.member == "GetConnectionUnixProcessID" and reply.signature == "u":
                if reply.args[0] == target.pid:
                    return None
                fast = wire.to_fast(reply, [target.pid])
            elif call.member == "GetConnectionCredentials" and reply.signature == "a{sv}":
                fast = wire.to_fast(reply)
                creds = fast.body[0]
                pid_variant = creds.get("ProcessID")
                if pid_variant is None or pid_variant.value == target.pid:
                    return None
                from dbus_fast import Variant

                creds["ProcessID"] = Variant("u", target.pid)
                creds.pop("ProcessFD", None)
                fast.unix_fds = []
            else:
                return None
            new = wire.parse_message(wire.marshal(fast))
        except Exception as exc:  # noqa: BLE001 - never break a reply over this
            log.warning("could not rewrite credentials reply: %s", exc)
            return None
        return new


def _as_message(call: Message | bytes) -> Message:
    """A pending call as a Message (calls that took the fast path are kept as their bytes)."""
    return call if isinstance(call, Message) else wire.parse_message(call)


def _send(direction: Direction) -> type[SendToClient] | type[SendToBus]:
    return SendToBus if direction is Direction.TO_BUS else SendToClient


# ---------------------------------------------------------------- the session


class Session:
    """One client connection and its own upstream connection, as events in and commands out."""

    def __init__(
        self,
        state: ProxyState,
        conn_id: int,
        client: Endpoint,
        gid: int | None = None,
        unix_fd_possible: bool = True,
    ) -> None:
        self.state = state
        self.id = conn_id
        self.client_ep = client
        self.pid = client.pid
        self.uid = client.uid
        self.gid = gid
        self.server_auth = ServerAuth(self.uid, unix_fd_possible=unix_fd_possible)
        self.client_auth: ClientAuth | None = None
        self.client_parser = wire.FrameParser()
        self.bus_parser = wire.FrameParser()
        self.unique_name: str | None = None
        self.hello_serial: int | None = None
        self.asked_names: set[str] = set()  # well-known names our client asked for (RequestName) and kept
        # calls awaiting replies: (when, the call, or its bytes when it took the fast path)
        self.pending_out: dict[int, tuple[int, Message | bytes]] = {}  # our client's calls
        self.pending_in: dict[tuple[str | None, int], tuple[int, Message | bytes]] = {}  # calls to our client
        self.held: dict[Direction, list[list[Any]]] = {Direction.TO_BUS: [], Direction.FROM_BUS: []}
        self.closed = False
        self.close_reason = ""
        self.frames_read = 0  # frames the last event brought (the proxy's recording pace follows it)
        self.handed_over = False
        self.bus_requested = False
        self.plane: PlaneTables | None = None  # the compiled plane, once it carries this connection
        self._injected = INJECTED_SERIAL_BASE

    # ------------------------------------------------------------ events: setup
    def start(self) -> list[Command]:
        """The client has connected; the bus connection waits until the client has proved who it is."""
        self.state.recorder.event("connect", connection=self.id, client=self.client_ep.to_json())
        timeout = self.state.auth_timeout
        return [Later(timeout, self.auth_expired, cancel_on_close=True)] if timeout is not None else []

    def auth_expired(self) -> list[Command]:
        """The time for the handshake is up: a client still not authenticated is closed."""
        if self.closed or self.server_auth.done:
            return []
        return [Close(f"not authenticated within {self.state.auth_timeout:g} s")]

    def bus_connected(self, auth_uid: int, unix_fd_possible: bool) -> list[Command]:
        """Our connection to the bus is open; we authenticate on it as ``auth_uid``."""
        self.client_auth = ClientAuth(auth_uid, unix_fd=unix_fd_possible)
        return [SendToBus([self.client_auth.start()])]

    def bus_unreachable(self, reason: str) -> list[Command]:
        log.warning("connection %d: %s", self.id, reason)
        return [Close(reason)]

    def on_plane(self, plane: PlaneTables) -> None:
        """The compiled plane carries this connection from now on (after ``HandOver``)."""
        self.plane = plane

    # ------------------------------------------------------------ events: data
    def client_data(self, data: bytes | memoryview, fds: list[int]) -> list[Command]:
        """Bytes (and fds) the client sent."""
        self.frames_read = 0
        out: list[Command] = []
        auth = self.server_auth
        if not auth.done:
            if fds:
                close_fds(fds)
                return [Close("file descriptors sent during authentication")]
            try:
                auth.feed(bytes(data))
            except AuthError as exc:
                return [*self._auth_answer(), Close(f"authentication failed: {exc}")]
            out.extend(self._auth_answer())
            if auth.awaiting_upstream and not self.bus_requested:
                self.bus_requested = True
                out.append(ConnectBus())
            if not auth.done:
                return out
            out.extend(self._authenticated())
            data = auth.leftover
            if not data:
                return out
        self.client_parser.feed(data, fds)
        return self._pump(self.client_parser, Direction.TO_BUS, out)

    def bus_data(self, data: bytes | memoryview, fds: list[int]) -> list[Command]:
        """Bytes (and fds) the bus sent."""
        self.frames_read = 0
        out: list[Command] = []
        auth = self.client_auth
        if auth is not None and not auth.done:
            try:
                auth.feed(bytes(data))
            except AuthError as exc:
                return [Close(f"the bus refused us: {exc}")]
            if not auth.done:
                return out
            assert auth.guid is not None
            if auth.unix_fd:
                out.append(CarryFds(from_bus=True))
            if auth.leftover:
                self.bus_parser.feed(auth.leftover)
            try:
                # lines the client pipelined are only read now, and may be garbage
                self.server_auth.upstream_ready(auth.guid, auth.unix_fd)
            except AuthError as exc:
                return [*out, *self._auth_answer(), Close(f"authentication failed: {exc}")]
            out.extend(self._auth_answer())
            if self.server_auth.done:
                # the client pipelined BEGIN and its first messages
                out.extend(self._authenticated())
                if self.server_auth.leftover or self.state.hand_over:
                    self.client_parser.feed(self.server_auth.leftover)
                    out = self._pump(self.client_parser, Direction.TO_BUS, out)
            if self.handed_over or not self.bus_parser.buffered:
                return out
            return self._pump(self.bus_parser, Direction.FROM_BUS, out)
        self.bus_parser.feed(data, fds)
        return self._pump(self.bus_parser, Direction.FROM_BUS, out)

    def _auth_answer(self) -> list[Command]:
        answer = self.server_auth.output()
        return [SendToClient([answer])] if answer else []

    def _authenticated(self) -> list[Command]:
        out: list[Command] = [Authenticated()]
        if self.server_auth.unix_fd:
            out.append(CarryFds(from_bus=False))
        return out

    # ------------------------------------------------------------ messages
    def _pump(self, parser: wire.FrameParser, direction: Direction, out: list[Command]) -> list[Command]:
        if self.state.hand_over and self._ready_for_plane():
            out.append(HandOver(self.client_parser.take_buffer(), self.bus_parser.take_buffer()))
            self.handed_over = True
            return out
        send = _send(direction)
        batch: list[bytes] = []  # frames forwarded unchanged, in order, not yet sent
        # Fast path: with no interceptors, a frame whose header was seen before is forwarded
        # without building a Message; its book-keeping and record follow (``_account``).
        fast: list[tuple[bytes, wire.Header, int, int]] = []
        state = self.state
        heads = state.headers if not state.chain.interceptors else None
        frames = 0
        try:
            for raw, head, serial, reply_serial in parser.scan(heads):
                frames += 1
                if head is not None and not head.driver and not self.closed:
                    batch.append(raw)
                    fast.append((raw, head, serial, reply_serial))
                    continue
                if fast:  # records stay in the order the frames came
                    self._account(fast, direction)
                    fast = []
                if self.closed:
                    close_fds(parser.message(raw).fds)
                    continue
                message = parser.message(raw)
                if heads is not None:
                    heads.learn(message)
                verdict = self._handle(message, direction)
                if verdict is None:  # plain forward, the common case
                    if message.fds:
                        if batch:
                            out.append(send(batch))
                            batch = []
                        out.append(send([message.raw], message.fds or ()))
                    else:
                        batch.append(message.raw)
                    if self.held[direction]:
                        if batch:
                            out.append(send(batch))
                            batch = []
                        self._count_held(direction, out)
                else:
                    if batch:
                        out.append(send(batch))
                        batch = []
                    self._execute(message, direction, verdict, out)
        except wire.FrameError as exc:
            if batch:
                out.append(send(batch))
                batch = []
            if fast:
                self._account(fast, direction)
                fast = []
            close_fds(parser.take_fds())
            out.extend(self.malformed("client" if direction is Direction.TO_BUS else "bus", str(exc)))
        if batch:
            out.append(send(batch))
        if fast:
            self._account(fast, direction)
        self.frames_read = frames
        return out

    def _account(self, frames: list[tuple[bytes, wire.Header, int, int]], direction: Direction) -> None:
        """Pending calls, latencies and records for frames that took the fast path."""
        now = time.monotonic_ns()
        record = self.state.recorder.frame
        direction_name = direction.value
        conn = self.id
        client = self.client_ep
        if direction is Direction.TO_BUS:
            calls, answered = self.pending_out, self.pending_in
            for raw, head, serial, reply_serial in frames:
                latency = None
                mtype = head.type
                if mtype is MessageType.METHOD_CALL:
                    if not head.no_reply:
                        calls[serial] = (now, raw)
                elif mtype is not MessageType.SIGNAL:
                    pending = answered.pop((head.destination, reply_serial), None)
                    if pending is not None:
                        latency = now - pending[0]
                record(raw, head, direction_name, conn, client, latency, now)
        else:
            calls_in, answered_out = self.pending_in, self.pending_out
            for raw, head, serial, reply_serial in frames:
                latency = None
                mtype = head.type
                if mtype is MessageType.METHOD_CALL:
                    if not head.no_reply:
                        calls_in[(head.sender, serial)] = (now, raw)
                elif mtype is not MessageType.SIGNAL:
                    pending = answered_out.pop(reply_serial, None)
                    if pending is not None:
                        latency = now - pending[0]
                record(raw, head, direction_name, conn, client, latency, now)

    # ------------------------------------------------------------ the compiled plane
    def _ready_for_plane(self) -> bool:
        """Both handshakes are over, and nothing waits that the plane could not take."""
        # (fds cannot be waiting: they are refused during authentication)
        if self.handed_over or self.closed or self.client_auth is None:
            return False
        return self.client_auth.done and self.server_auth.done

    def plane_frame(
        self, raw: bytes, direction: Direction, ts_ns: int, seq: int, take_fds: Callable[[int], list[int]]
    ) -> list[Command]:
        """A frame the plane does not forward alone: parse it strictly, record it, teach the plane its header."""
        plane = self.plane
        assert plane is not None
        to_bus = direction is Direction.TO_BUS
        try:
            message = wire.parse_message(raw)
            if message.unix_fds:
                fds = take_fds(message.unix_fds)
                message.fds = fds
                if len(fds) < message.unix_fds:
                    raise wire.FrameError(f"message announces {message.unix_fds} fds, {len(fds)} arrived")
        except wire.FrameError as exc:
            return self.malformed("client" if to_bus else "bus", str(exc), seq)
        if self.closed:
            close_fds(message.fds)
            self.state.recorder.event("discarded", seq, connection=self.id, reason="connection closed")
            return []
        entry = plane_entries.entry_for(message)
        if entry is not None:
            plane.learn(*entry)
        verdict = self._handle(message, direction, ts_ns, seq)
        if verdict is not None and verdict.replacement is not None:
            message = verdict.replacement  # a credentials reply rewritten (no interceptors run here)
        return [_send(direction)([message.raw], message.fds or ())]

    def malformed(self, side: str, reason: str, seq: int = 0) -> list[Command]:
        """A frame from ``side`` broke the protocol: only this session closes."""
        self.state.recorder.event("malformed", seq, connection=self.id, side=side, reason=reason)
        return [Close(f"malformed message from the {side}: {reason}")]

    def _handle(self, message: Message, direction: Direction, now: int = 0, seq: int = 0) -> Verdict | None:
        """Book-keeping and the chain; returns None for an unchanged forward."""
        state = self.state
        plane = self.plane
        now = now or time.monotonic_ns()
        latency = None
        mtype = message.type
        call: Message | None = None
        rewritten = False
        if direction is Direction.TO_BUS:
            if mtype is MessageType.METHOD_CALL:
                if message.destination == BUS_DRIVER_NAME:
                    if message.member == "Hello":
                        self.hello_serial = message.serial
                    elif message.member in NAME_METHODS:
                        self._asks_for_name(message)
            elif mtype is MessageType.METHOD_RETURN or mtype is MessageType.ERROR:
                pending = self.pending_in.pop((message.destination, message.reply_serial or 0), None)
                if pending is not None:
                    latency = now - pending[0]
                    call = _as_message(pending[1])
                elif plane is not None:
                    since = plane.take_call(self.id, False, message.destination, message.reply_serial or 0)
                    latency = None if since is None else now - since
        else:
            if mtype is MessageType.METHOD_CALL:
                if self.asked_names and message.destination in self.asked_names and self.unique_name:
                    # the bus gave our client the name it asked for: this call shows it
                    state.directory.owner_seen(message.destination, self.unique_name)
            elif mtype is MessageType.METHOD_RETURN or mtype is MessageType.ERROR:
                pending = self.pending_out.pop(message.reply_serial or 0, None)
                if plane is not None:  # the plane timed the call (pending_out keeps only bus-driver calls)
                    since = plane.take_call(self.id, True, None, message.reply_serial or 0)
                    latency = None if since is None else now - since
                elif pending is not None:
                    latency = now - pending[0]
                if pending is not None:
                    call = _as_message(pending[1])
                    if message.reply_serial == self.hello_serial and mtype is MessageType.METHOD_RETURN:
                        self._hello_answered(message)
                    elif call.member == "RequestName" and message.sender == BUS_DRIVER_NAME:
                        self._name_answered(call, message)
                    elif call.member in CREDENTIAL_METHODS and message.sender == BUS_DRIVER_NAME:
                        replacement = state.rewrite_credentials(call, message)
                        if replacement is not None:
                            close_fds(message.fds)
                            message = replacement
                            rewritten = True
            elif (
                mtype is MessageType.SIGNAL
                and message.member == "NameOwnerChanged"
                and message.sender == BUS_DRIVER_NAME
            ):
                state.recorder.encode()  # records still waiting name the parties as they were
                state.directory.observe(message)
        verdict: Verdict | None = None
        if state.chain:
            ctx = Context(
                message=message,
                direction=direction,
                client=self.client_ep,
                connection_id=self.id,
                ts_ns=now,
                resolve=state.directory.endpoint,
                call_message=call,
                reply_to_allowed_call=(call is not None)
                if mtype in (MessageType.METHOD_RETURN, MessageType.ERROR)
                else None,
            )
            verdict = state.chain.run(ctx)
            if verdict.action is Action.FORWARD and not verdict.notes:
                verdict = None
            if ctx.message is not message:
                message = ctx.message
        passes = verdict is None or verdict.passes
        if passes and mtype is MessageType.METHOD_CALL and not message.no_reply_expected and plane is not None:
            # the plane times every call; the call itself is kept only where its reply is looked at
            to_bus = direction is Direction.TO_BUS
            plane.note_call(self.id, to_bus, None if to_bus else message.sender, message.serial, now)
            if to_bus and message.destination == BUS_DRIVER_NAME:
                self.pending_out[message.serial] = (now, message)
        elif passes and mtype is MessageType.METHOD_CALL and not message.no_reply_expected:
            if direction is Direction.TO_BUS:
                self.pending_out[message.serial] = (now, message)
            else:
                self.pending_in[(message.sender, message.serial)] = (now, message)
        state.recorder.message(
            message,
            direction.value,
            verdict if verdict is not None else ("modified" if rewritten else "forwarded"),
            self.id,
            self.client_ep,
            latency,
            now,
            seq=seq,
        )
        if verdict is None and rewritten:
            return Verdict(Action.MODIFY, replacement=message, reason="real client's credentials")
        return verdict

    def _hello_answered(self, reply: Message) -> None:
        try:
            unique = reply.args[0]
        except Exception:  # noqa: BLE001
            return
        self.state.recorder.encode()  # records still waiting name the parties as they were
        self.unique_name = unique
        self.client_ep.bus_name = unique
        self.state.directory.register(unique, self.client_ep)
        self.state.by_name[unique] = self

    def _asks_for_name(self, call: Message) -> None:
        """RequestName/ReleaseName from our client: the names a call delivered to it may be addressed to."""
        try:
            name = call.args[0]
        except Exception:  # noqa: BLE001 - the bus answers a malformed call with an error
            return
        if not isinstance(name, str):
            return
        if call.member == "RequestName":
            self.asked_names.add(name)
        else:
            self.asked_names.discard(name)

    def _name_answered(self, call: Message, reply: Message) -> None:
        """Our client owns the name it asked for (PRIMARY_OWNER, ALREADY_OWNER): the records of calls
        to that name name it at once, not when the resolver's NameOwnerChanged comes in."""
        try:
            name, result = call.args[0], reply.args[0]
        except Exception:  # noqa: BLE001
            return
        if result == 3:  # EXISTS: not ours, not queued
            self.asked_names.discard(name)
        elif result in (1, 4) and isinstance(name, str) and self.unique_name:
            self.state.directory.owner_seen(name, self.unique_name)

    def _count_held(self, direction: Direction, out: list[Command]) -> None:
        """One more message went past those held back (reorder): release the ones whose turn came."""
        held = self.held[direction]
        if not held:
            return
        for entry in held:
            entry[1] -= 1
        send = _send(direction)
        while held and held[0][1] <= 0:
            message = held.pop(0)[0]
            out.append(send([message.raw], message.fds or ()))

    def next_injected_serial(self) -> int:
        self._injected += 1
        if self._injected > 0xFFFFFFF0:
            self._injected = INJECTED_SERIAL_BASE
        return self._injected

    def _execute(self, message: Message, direction: Direction, verdict: Verdict, out: list[Command]) -> None:
        """Carry out a verdict other than a plain forward."""
        send = _send(direction)
        action = verdict.action
        if verdict.replacement is not None:
            message = verdict.replacement  # modified, and then also delayed, duplicated or held back
        if action in (Action.FORWARD, Action.VIOLATION, Action.MODIFY):
            target = verdict.replacement if action is Action.MODIFY and verdict.replacement else message
            out.append(send([target.raw], target.fds or ()))
            self._count_held(direction, out)
        elif action is Action.DELAY:
            late: Message = message
            out.append(Later(verdict.delay_s, lambda: [send([late.raw], late.fds or ())]))
        elif action is Action.DUPLICATE:
            out.append(send([message.raw], message.fds or ()))
            for _ in range(max(0, verdict.copies - 1)):
                out.append(send([message.raw]))
        elif action is Action.REORDER:
            entry: list[Any] = [message, max(1, verdict.hold_for)]
            self.held[direction].append(entry)
            if verdict.delay_s > 0:  # release it anyway if too few later messages come
                out.append(Later(verdict.delay_s, lambda: self._release_held(direction, entry)))
        elif action is Action.DROP:
            close_fds(message.fds)
        elif action in (Action.DENY, Action.ERROR_REPLY):
            close_fds(message.fds)
            self._answer_with_error(message, direction, verdict, out)
        elif action is Action.DISCONNECT:
            close_fds(message.fds)
            out.append(self._disconnect(message, direction, verdict.disconnect_side))

    def _release_held(self, direction: Direction, entry: list[Any]) -> list[Command]:
        held = self.held[direction]
        for i, candidate in enumerate(held):
            if candidate is entry:
                del held[i]
                return [_send(direction)([entry[0].raw], entry[0].fds or ())]
        return []

    def _disconnect(self, message: Message, direction: Direction, side: str) -> Command:
        """Close the connection of the message's sender or receiver (fault injection)."""
        client_is_sender = direction is Direction.TO_BUS
        if (side == "sender") == client_is_sender:
            return Close(f"disconnected by fault ({side})")
        other_name = message.destination if client_is_sender else message.sender
        owner = self.state.directory.owner_of(other_name) if other_name else None
        target = self.state.by_name.get(owner) if owner else None
        if target is not None:
            return CloseOther(target.id, f"disconnected by fault ({side})")
        # the peer is not behind this proxy: the closest we can do is cut this message's path
        return Close(f"disconnected by fault ({side}; peer not behind the proxy)")

    def _answer_with_error(self, message: Message, direction: Direction, verdict: Verdict, out: list[Command]) -> None:
        name = verdict.error_name or DENIED
        text = verdict.error_message or (
            f"Rejected by ipcproxy: {verdict.reason}" if verdict.reason else "Rejected by ipcproxy"
        )
        recorder = self.state.recorder
        if message.type is MessageType.METHOD_CALL:
            if message.no_reply_expected:
                return
            if direction is Direction.TO_BUS:
                caller = self.unique_name
                responder = BUS_DRIVER_NAME
                if verdict.action is Action.ERROR_REPLY and message.destination:
                    responder = self.state.directory.owner_of(message.destination) or message.destination
            else:
                caller = message.sender
                responder = None  # the bus stamps our client's name on it
            error = wire.error_reply(
                message, serial=self.next_injected_serial(), error_name=name, text=text, sender=responder
            )
            if caller is not None and error.destination != caller:
                error = wire.build(
                    MessageType.ERROR,
                    serial=error.serial,
                    error_name=name,
                    reply_serial=message.serial,
                    destination=caller,
                    sender=responder,
                    signature="s",
                    body=[text],
                )
            if direction is Direction.FROM_BUS:
                self.pending_in.pop((message.sender, message.serial), None)
            back_dir = Direction.FROM_BUS if direction is Direction.TO_BUS else Direction.TO_BUS
            out.append(_send(back_dir)([error.raw]))
            recorder.message(
                error,
                back_dir.value,
                {"action": "injected", "reason": verdict.reason, "by": verdict.by},
                self.id,
                self.client_ep,
            )
        elif message.type in (MessageType.METHOD_RETURN, MessageType.ERROR) and verdict.action is Action.ERROR_REPLY:
            error = wire.build(
                MessageType.ERROR,
                serial=message.serial,
                error_name=name,
                reply_serial=message.reply_serial,
                destination=message.destination,
                sender=message.sender,
                signature="s",
                body=[text],
            )
            out.append(_send(direction)([error.raw]))
            recorder.message(
                error,
                direction.value,
                {"action": "injected", "reason": verdict.reason, "by": verdict.by},
                self.id,
                self.client_ep,
            )
        # a denied signal is simply not delivered

    # ------------------------------------------------------------ events: teardown
    def close(self, reason: str) -> None:
        """The session ends (both connections are closed, by us or a peer): release what it holds, say why."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        close_fds(self.client_parser.take_fds() + self.bus_parser.take_fds())
        for held in self.held.values():
            for entry in held:
                close_fds(entry[0].fds)
        if self.unique_name and self.state.by_name.get(self.unique_name) is self:
            del self.state.by_name[self.unique_name]
        self.state.recorder.event("disconnect", connection=self.id, client=self.client_ep.to_json(), reason=reason)
