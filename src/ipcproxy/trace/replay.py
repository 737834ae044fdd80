"""Replaying a recorded trace as chain Contexts, so interceptors run offline with no bus.

Learning, checking and fault planning run the same code as the live proxy:
each message record becomes a ``Message`` and a ``Context`` seen from the
proxied connection it was recorded at. A trace is read twice: the first pass
gathers who every connection and bus name turned out to be (a service owns
its name only after Hello, so its first records do not show it), the second
yields the contexts with those final identities.

A message between two clients that are both behind the proxy is recorded
twice (to_bus at the sender's connection, from_bus at the receiver's); each
record is replayed from its own connection's side, so nothing is counted
twice. Passive captures (direction ``observed``) are replayed from both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..chain import Context
from ..model import BUS_DRIVER_NAME, Direction, Endpoint, Message, MessageType
from ..syscall.intercept import data_context, is_data_record
from .reader import iter_trace
from .record_message import UnrecordedArgs, message_from_record

_TYPES = frozenset(t.wire_name for t in MessageType)
PASSING = frozenset({"forwarded", "modified", "delayed", "duplicated", "reordered", "violation"})
INJECTED = "injected"


@dataclass(slots=True)
class Replayed:
    """One message record, as the connection it was recorded at saw it."""

    trace: str
    record: dict[str, Any]
    ctx: Context
    recorded: str  # action of the recorded verdict: forwarded, denied, violation, injected, ...
    # a data message: the other identities its peer's process had in the trace (before or after an exec)
    peer_aliases: tuple[Endpoint, ...] = ()

    @property
    def passed(self) -> bool:
        """Whether the message really reached its destination when it was recorded."""
        return self.recorded in PASSING

    @property
    def injected(self) -> bool:
        """A message the proxy made up itself (e.g. an AccessDenied answer), not one a client sent."""
        return self.recorded == INJECTED


def recorded_action(record: dict[str, Any]) -> str:
    verdict = record.get("verdict", "forwarded")
    if isinstance(verdict, dict):
        return str(verdict.get("action", "forwarded"))
    return str(verdict)


@dataclass(slots=True)
class _Party:
    """Everything learnt about one connection over the whole trace."""

    unique: str | None = None
    names: set[str] = field(default_factory=set)
    pid: int | None = None
    uid: int | None = None
    exe: str | None = None
    comm: str | None = None
    _final: Endpoint | None = None

    def absorb(self, data: dict[str, Any] | None) -> None:
        if not data:
            return
        if data.get("bus_name") and self.unique is None and str(data["bus_name"]).startswith(":"):
            self.unique = data["bus_name"]
        self.names.update(n for n in data.get("names") or [] if not n.startswith(":"))
        for key in ("pid", "uid", "exe", "comm"):
            if getattr(self, key) is None and data.get(key) is not None:
                setattr(self, key, data[key])

    def merge(self, other: _Party) -> None:
        self.names |= other.names
        for key in ("unique", "pid", "uid", "exe", "comm"):
            if getattr(self, key) is None:
                setattr(self, key, getattr(other, key))

    def endpoint(self) -> Endpoint:
        if self._final is None:
            self._final = Endpoint(
                bus_name=self.unique,
                names=sorted(self.names),
                pid=self.pid,
                uid=self.uid,
                exe=self.exe,
                comm=self.comm,
            )
        return self._final


_DRIVER = Endpoint(bus_name=BUS_DRIVER_NAME, names=[BUS_DRIVER_NAME], comm="bus")


class _Identities:
    """Final identities of one trace's connections and bus names."""

    def __init__(self) -> None:
        self.conns: dict[int, _Party] = {}
        self.uniques: dict[str, _Party] = {}

    def conn(self, connection: int) -> _Party:
        party = self.conns.get(connection)
        if party is None:
            party = self.conns[connection] = _Party()
        return party

    def unique(self, name: str) -> _Party:
        party = self.uniques.get(name)
        if party is None:
            party = self.uniques[name] = _Party(unique=name)
        return party

    def bind(self, party: _Party) -> None:
        """A proxied connection's unique name is now known: fold what was seen of that name into it."""
        if party.unique is None:
            return
        old = self.uniques.get(party.unique)
        if old is not None and old is not party:
            party.merge(old)
        self.uniques[party.unique] = party

    def note_peer(self, data: dict[str, Any] | None) -> None:
        if data and isinstance(data.get("bus_name"), str) and data["bus_name"].startswith(":"):
            self.unique(data["bus_name"]).absorb(data)

    def gather(self, record: dict[str, Any]) -> None:
        if record.get("type") == "event":
            if record.get("event") == "connect" and record.get("connection") is not None:
                self.conn(record["connection"]).absorb(record.get("client"))
            return
        direction = record.get("direction")
        connection = record.get("connection")
        if connection is not None and direction in ("to_bus", "from_bus"):
            party = self.conn(connection)
            own, other = ("sender", "destination") if direction == "to_bus" else ("destination", "sender")
            party.absorb(record.get(own))
            self.bind(party)
            self.note_peer(record.get(other))
        else:
            self.note_peer(record.get("sender"))
            self.note_peer(record.get("destination"))

    def resolve_json(self, data: dict[str, Any] | None) -> Endpoint:
        if not data:
            return Endpoint()
        name = data.get("bus_name")
        if name == BUS_DRIVER_NAME:
            return _DRIVER
        if isinstance(name, str) and name in self.uniques:
            return self.uniques[name].endpoint()
        return Endpoint.from_json(data)

    def resolve_name(self, name: str | None) -> Endpoint:
        if name is None:
            return Endpoint()
        if name == BUS_DRIVER_NAME:
            return _DRIVER
        if name in self.uniques:
            return self.uniques[name].endpoint()
        for party in self.uniques.values():
            if name in party.names:
                return party.endpoint()
        return Endpoint(names=[name]) if not name.startswith(":") else Endpoint(bus_name=name)


def _message(record: dict[str, Any], sender: str | None) -> Message:
    """Arguments the trace lacks raise when read: a rule about them cannot be judged from it."""
    return message_from_record(record, sender, unrecorded=UnrecordedArgs.RAISE)


class _Calls:
    """Which calls were let through, so replies can be told apart from forged ones (as the proxy does)."""

    def __init__(self) -> None:
        self.pending: dict[tuple[Any, ...], Message] = {}

    def call(self, key: tuple[Any, ...], message: Message, passed: bool) -> None:
        if passed and not message.no_reply_expected:
            self.pending[key] = message

    def reply(self, key: tuple[Any, ...]) -> Message | None:
        return self.pending.pop(key, None)


def replay(
    paths: Iterable[str],
    warn: Callable[[str], None] | None = None,
) -> Iterator[Replayed]:
    """Every message record of the traces, in order, as Contexts (events are skipped)."""
    ids: dict[tuple[Any, ...], int] = {}

    def conn_id(key: tuple[Any, ...]) -> int:
        if key not in ids:
            ids[key] = len(ids) + 1
        return ids[key]

    for index, path in enumerate(paths):
        identities = _Identities()
        processes = _Processes()
        for record in iter_trace(path, warn=lambda _text: None):
            if is_data_record(record):
                processes.gather(record)
            else:
                identities.gather(record)
        calls = _Calls()
        for record in iter_trace(path, warn=warn):
            if record.get("type") not in _TYPES or "direction" not in record:
                continue  # events, and kinds of records this version does not know
            if is_data_record(record):
                yield _data(path, record, processes)
                continue
            yield from _contexts(path, index, record, identities, calls, conn_id)


class _Processes:
    """Every identity each process of a syscall trace had (a forked child is its parent's exe until it execs)."""

    def __init__(self) -> None:
        self.seen: dict[int, dict[tuple[str, int | None], Endpoint]] = {}

    def note(self, data: dict[str, Any] | None) -> None:
        if not data or not isinstance(data.get("pid"), int) or not data.get("exe"):
            return
        key = (str(data["exe"]), data.get("uid"))
        found = self.seen.setdefault(data["pid"], {})
        if key not in found:
            found[key] = Endpoint(pid=data["pid"], uid=data.get("uid"), exe=key[0], comm=data.get("comm"))

    def gather(self, record: dict[str, Any]) -> None:
        self.note(record.get("sender"))
        self.note(record.get("destination"))

    def aliases(self, data: dict[str, Any] | None) -> tuple[Endpoint, ...]:
        if not data or not isinstance(data.get("pid"), int):
            return ()
        own = (data.get("exe"), data.get("uid"))
        found = self.seen.get(data["pid"], {})
        return tuple(ep for key, ep in found.items() if key != own)


def _data(path: str, record: dict[str, Any], processes: _Processes) -> Replayed:
    """A data record, through the one conversion the live tracer uses too (syscall.intercept)."""
    ctx = data_context(record)
    peer = record.get("destination") if record.get("direction") == "send" else record.get("sender")
    return Replayed(path, record, ctx, recorded_action(record), processes.aliases(peer))


def _contexts(
    path: str,
    index: int,
    record: dict[str, Any],
    identities: _Identities,
    calls: _Calls,
    conn_id: Callable[[tuple[Any, ...]], int],
) -> Iterator[Replayed]:
    action = recorded_action(record)
    passed = action in PASSING
    direction = record["direction"]
    connection = record.get("connection")
    mtype = record.get("type")
    is_reply = mtype in ("method_return", "error")
    if direction in ("to_bus", "from_bus") and connection is not None:
        party = identities.conns.get(connection) or identities.conn(connection)
        client = party.endpoint()
        to_bus = direction == "to_bus"
        sender_ep = client if to_bus else identities.resolve_json(record.get("sender"))
        sender_name = None if to_bus else (record.get("sender") or {}).get("bus_name")
        message = _message(record, sender_name)
        ctx = Context(
            message=message,
            direction=Direction.TO_BUS if to_bus else Direction.FROM_BUS,
            client=client,
            connection_id=conn_id((index, "connection", connection)),
            seq=record.get("seq") or 0,
            ts_ns=record.get("ts") or 0,
            resolve=identities.resolve_name,
            _sender=sender_ep,
            _destination=identities.resolve_json(record.get("destination")) if to_bus else client,
        )
        if action != INJECTED:
            key: tuple[Any, ...]
            if mtype == "method_call":
                key = (connection, "out", message.serial) if to_bus else (connection, "in", sender_name, message.serial)
                calls.call(key, message, passed)
            elif is_reply:
                key = (
                    (connection, "in", message.destination, message.reply_serial)
                    if to_bus
                    else (connection, "out", message.reply_serial)
                )
                ctx.call_message = calls.reply(key)
                ctx.reply_to_allowed_call = ctx.call_message is not None
        yield Replayed(path, record, ctx, action)
        return
    # a passive capture: one record per message, replayed from the sender's and the receiver's side
    sender_json = record.get("sender") or {}
    sender_ep = identities.resolve_json(sender_json)
    dest_ep = identities.resolve_json(record.get("destination"))
    sender_name = sender_json.get("bus_name")
    call_message: Message | None = None
    if action != INJECTED:
        if mtype == "method_call":
            calls.call((sender_name, record.get("serial")), _message(record, sender_name), passed)
        elif is_reply:
            call_message = calls.reply((record.get("destination_name"), record.get("reply_serial")))
    sides: list[tuple[Direction, Endpoint]] = []
    if sender_name != BUS_DRIVER_NAME:
        sides.append((Direction.TO_BUS, sender_ep))
    if dest_ep.bus_name not in (None, BUS_DRIVER_NAME):
        sides.append((Direction.FROM_BUS, dest_ep))
    for side, client in sides:
        ctx = Context(
            message=_message(record, sender_name),
            direction=side,
            client=client,
            connection_id=conn_id((index, "unique", client.bus_name)),
            seq=record.get("seq") or 0,
            ts_ns=record.get("ts") or 0,
            resolve=identities.resolve_name,
            _sender=sender_ep,
            _destination=dest_ep,
        )
        if is_reply:
            ctx.call_message = call_message
            ctx.reply_to_allowed_call = call_message is not None
        yield Replayed(path, record, ctx, action)
