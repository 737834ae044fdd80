"""A trace as the messages each component sent, comparable across runs (pure logic).

The proxy may record one message twice (leaving its sender, reaching its
receiver); here it becomes one ``Sent`` with the set of components that
received it. What differs naturally between runs of the same system is taken
out: unique names become component names, serials and times are dropped. The
probe connections of a campaign and everything after its teardown mark are
left out, since they are not the system's behaviour.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..model import BUS_DRIVER_NAME

_UNIQUE = re.compile(r"^:\d+\.\d+$")


@dataclass(slots=True)
class Sent:
    """One message as its sender sent it, and what happened to it."""

    seq: int
    sender: str
    sender_unique: str | None
    destination: str | None  # component, None for a broadcast
    type: str
    path: str | None
    interface: str | None
    member: str | None
    error_name: str | None
    signature: str
    args: list[Any]
    reply_to: tuple[str | None, str | None] | None = None  # (interface, member) of the call answered
    receivers: set[str] = field(default_factory=set)
    fate: str = "forwarded"
    fault: dict[str, Any] | None = None  # the injector's notes, when a fault acted on it
    injected: bool = False  # made by the proxy (an injected error), not by the sender
    copies: int = 1  # deliveries to each receiver (a duplicate fault makes it more)
    workload: bool = False  # sent once the workload had started

    def header_key(self) -> tuple[Any, ...]:
        return (
            self.type,
            self.destination,
            self.path,
            self.interface,
            self.member,
            self.error_name,
            self.signature,
            self.reply_to,
        )

    def as_sent_args(self) -> list[Any]:
        """The arguments as the sender wrote them (before a fault modified them)."""
        if self.fault and "original_args" in self.fault:
            return list(self.fault["original_args"])
        return self.args

    def describe(self) -> str:
        if self.type == "data":
            return self._describe_data()
        what = self.member or self.error_name or ""
        if self.reply_to:
            what = f"reply to {self.reply_to[1]}" + (f" ({self.error_name})" if self.error_name else "")
        to = self.destination or "*"
        return f"{self.type} {self.sender} -> {to} {self.interface or ''} {what}".replace("  ", " ").strip()

    def _describe_data(self) -> str:
        size, payload = (self.args + [0, ""])[:2]
        try:
            shown = bytes.fromhex(str(payload))
        except ValueError:
            shown = b""
        preview = repr(shown[:24].decode("utf-8", "replace")) + ("..." if len(shown) > 24 else "")
        to = self.destination or "*"
        return f"{self.interface} {self.member} {self.path}: {self.sender} -> {to} {size} B {preview}"


@dataclass(slots=True)
class Canon:
    """A trace reduced to what its components sent."""

    messages: list[Sent]
    components: dict[str, str]  # unique name -> component
    disconnects: list[tuple[int, str]]  # (seq, component) of connections that closed before the teardown
    workload_start: int | None
    workload_end: int | None
    last_seq: int
    pids: dict[int, str] = field(default_factory=dict)  # process id -> component
    exes: dict[str, str] = field(default_factory=dict)  # component -> executable
    exits: list[tuple[int, str, str]] = field(default_factory=list)  # traced processes: (seq, component, status)

    def sent_by(self, component: str) -> list[Sent]:
        return [m for m in self.messages if m.sender == component and not m.injected]

    @property
    def faulted(self) -> list[Sent]:
        return [m for m in self.messages if m.fault is not None]

    def all_components(self) -> set[str]:
        out = {m.sender for m in self.messages}
        for m in self.messages:
            out |= m.receivers
        return out


def _label(ep: dict[str, Any], names: dict[str, set[str]]) -> str:
    unique = ep.get("bus_name")
    if unique == BUS_DRIVER_NAME:
        return BUS_DRIVER_NAME
    known = set(names.get(unique or "", set())) | {n for n in ep.get("names") or [] if not n.startswith(":")}
    if known:
        return sorted(known)[0]
    return ep.get("exe") or ep.get("comm") or unique or "?"


def normalize(value: Any, labels: dict[str, str]) -> Any:
    """Unique names inside values become component names (they differ from run to run)."""
    if isinstance(value, str):
        if _UNIQUE.match(value):
            return "@" + labels.get(value, "unique")
        return value
    if isinstance(value, list):
        return [normalize(v, labels) for v in value]
    if isinstance(value, dict):
        return {str(normalize(k, labels)): normalize(v, labels) for k, v in value.items()}
    return value


def canonical(records: Iterable[dict[str, Any]]) -> Canon:
    everything = list(records)
    recs = [r for r in everything if r.get("type") != "data"]
    canon = _canonical_dbus(recs)
    if len(recs) < len(everything):
        _add_data(canon, everything)
    return canon


def _channel_label(r: dict[str, Any]) -> str:
    channel = r.get("channel") or {}
    kind = channel.get("kind") or r.get("transport") or "?"
    return f"{kind}:{channel['path']}" if channel.get("path") else str(kind)


def _add_data(canon: Canon, recs: list[dict[str, Any]]) -> None:
    """The data messages of a syscall-level trace, as what each process sent (docs/faults.md).

    A process is named by the executable it ended with (a shell that forks and
    execs ``head`` is ``head``); chunking of reads varies from run to run, so a
    message is a send, and each receive adds its process to the receivers of
    the sends it consumed. A receive no traced send accounts for is a message
    of its own when its sender (a peer outside the tree) is named.
    """
    final: dict[int, str] = {}
    for r in recs:
        if r.get("type") == "event" and r.get("event") == "exit" and r.get("pid") and r.get("exe"):
            final[r["pid"]] = r["exe"]
        elif r.get("type") == "data":
            for side in ("sender", "destination"):
                ep = r.get(side) or {}
                if ep.get("pid") and ep.get("exe") and ep["pid"] not in final:
                    final[ep["pid"]] = ep["exe"]

    def label(ep: dict[str, Any] | None) -> str | None:
        if not ep:
            return None
        pid = ep.get("pid")
        if pid is None:
            return None
        return final.get(pid) or ep.get("exe") or ep.get("comm") or f"pid {pid}"

    by_seq: dict[int, Sent] = {}
    added: list[Sent] = []
    for r in recs:
        seq = r.get("seq", 0)
        if r.get("type") == "event":
            if r.get("event") == "exit" and r.get("pid"):
                canon.exits.append((seq, label({"pid": r["pid"], "exe": r.get("exe")}) or "?", str(r.get("status"))))
            continue
        if r.get("type") != "data":
            continue
        verdict = r.get("verdict")
        vdict = verdict if isinstance(verdict, dict) else {}
        fault = vdict if "fault" in vdict else None
        fate = vdict.get("action", "forwarded") if vdict else str(verdict or "forwarded")
        send = r.get("direction") == "send"
        caller = r.get("sender") if send else r.get("destination")
        if send:
            msg = _data_sent(r, label(caller) or "?", label(r.get("destination")), fate, fault)
            msg.injected = fate == "injected"  # a copy the tracer sent (duplicate), not the process's own
            by_seq[seq] = msg
            added.append(msg)
            continue
        receiver = label(caller)
        linked = [by_seq[s] for s in r.get("consumed") or [] if isinstance(s, int) and s in by_seq]
        for m in linked:
            if receiver and fate not in ("dropped", "denied", "error_reply", "disconnected"):
                m.receivers.add(receiver)
        if linked and fault is not None:
            first = linked[0]
            if first.fault is None:  # the fault acted on the receive; the sender sent what it sent
                first.fault = {k: v for k, v in fault.items() if k != "original_args"}
                first.fate = fate
            continue
        if linked:
            continue
        sender = label(r.get("sender"))
        if sender is None and fault is None:
            continue  # bytes from nobody known (outside the tree): not a component's behaviour
        msg = _data_sent(r, sender or "?", receiver, fate, fault)
        if receiver and fate not in ("dropped", "denied", "error_reply", "disconnected"):
            msg.receivers.add(receiver)
        added.append(msg)
    canon.messages = sorted([*canon.messages, *added], key=lambda m: m.seq)
    canon.last_seq = max([canon.last_seq, *(r.get("seq", 0) for r in recs)])
    canon.pids.update(final)
    for exe in final.values():
        canon.exes.setdefault(exe, exe)


def _data_sent(r: dict[str, Any], sender: str, destination: str | None, fate: str, fault: Any) -> Sent:
    return Sent(
        seq=r.get("seq", 0),
        sender=sender,
        sender_unique=None,
        destination=destination,
        type="data",
        path=f"fd {r.get('fd')}",
        interface=_channel_label(r),
        member=r.get("syscall"),
        error_name=None,
        signature="",
        args=[r.get("size", 0), r.get("payload", "")],
        fate=fate,
        fault=fault,
        copies=int(fault.get("copies", 1)) if fault and fate == "duplicated" else 1,
    )


def _canonical_dbus(recs: list[dict[str, Any]]) -> Canon:
    # who is who: every name a unique name was seen with, and which unique name each connection has
    names: dict[str, set[str]] = {}
    conn_unique: dict[int, str] = {}
    eps: dict[str, dict[str, Any]] = {}
    probes: set[str] = set()
    teardown: int | None = None
    start: int | None = None
    end: int | None = None
    for r in recs:
        if r.get("type") == "event":
            client = r.get("client") or {}
            if client.get("bus_name") and r.get("connection") is not None:
                conn_unique[r["connection"]] = client["bus_name"]
                eps.setdefault(client["bus_name"], client)
            if r.get("event") == "campaign":
                phase = r.get("phase")
                if phase == "probe" and r.get("bus_name"):
                    probes.add(r["bus_name"])
                elif phase == "teardown" and teardown is None:
                    teardown = r["seq"]
                elif phase == "workload_start" and start is None:
                    start = r["seq"]
                elif phase == "workload_end" and end is None:
                    end = r["seq"]
            continue
        for side in ("sender", "destination"):
            ep = r.get(side) or {}
            unique = ep.get("bus_name")
            if unique:
                names.setdefault(unique, set()).update(n for n in ep.get("names") or [] if not n.startswith(":"))
                if ep.get("exe") or unique not in eps:
                    eps[unique] = ep
        if r.get("direction") == "to_bus" and (r.get("sender") or {}).get("bus_name"):
            conn_unique[r["connection"]] = r["sender"]["bus_name"]
    labels = {unique: _label(ep, names) for unique, ep in eps.items()}
    labels[BUS_DRIVER_NAME] = BUS_DRIVER_NAME

    def label(ep: dict[str, Any] | None, unique: str | None) -> str | None:
        if unique and unique in labels:
            return labels[unique]
        if not ep or (not ep.get("bus_name") and not ep.get("exe") and not ep.get("names")):
            return None
        return _label(ep, names)

    by_key: dict[tuple[str, int, bool], Sent] = {}
    calls: dict[tuple[str, int], Sent] = {}
    out: list[Sent] = []
    disconnects: list[tuple[int, str]] = []
    last_seq = 0
    for r in recs:
        seq = r.get("seq", 0)
        if teardown is not None and seq > teardown:
            break
        last_seq = seq
        if r.get("type") == "event":
            if r.get("event") == "disconnect":
                client = r.get("client") or {}
                unique = client.get("bus_name")
                if unique not in probes:
                    disconnects.append((seq, label(client, unique) or "?"))
            continue
        verdict = r.get("verdict")
        vdict = verdict if isinstance(verdict, dict) else {}
        injected = vdict.get("action") == "injected"
        to_bus = r.get("direction") == "to_bus"
        sender_ep = r.get("sender") or {}
        dest_ep = r.get("destination") or {}
        if to_bus and not injected:
            sender_unique = conn_unique.get(r.get("connection", -1)) or sender_ep.get("bus_name")
        else:
            sender_unique = sender_ep.get("bus_name")
        dest_unique = dest_ep.get("bus_name") or r.get("destination_name")
        if sender_unique in probes or dest_unique in probes:
            continue
        key = (sender_unique or f"#{r.get('connection')}", r.get("serial", 0), injected)
        if sender_unique == BUS_DRIVER_NAME:  # the bus numbers its messages per receiver
            key = (f"{BUS_DRIVER_NAME}>{dest_unique}", r.get("serial", 0), injected)
        fault = vdict if "fault" in vdict else None
        fate = vdict.get("action", "forwarded") if vdict else str(verdict or "forwarded")
        existing = by_key.get(key)
        if existing is not None and not to_bus:
            receiver = label(dest_ep, dest_unique)
            if receiver and fate not in ("dropped", "error_reply", "disconnected", "denied"):
                existing.receivers.add(receiver)
            if fault is not None and existing.fault is None:
                existing.fault, existing.fate = fault, fate
                existing.copies = int(vdict.get("copies", 1)) if fate == "duplicated" else 1
            continue
        msg = Sent(
            seq=seq,
            sender=label(sender_ep, sender_unique) or "?",
            sender_unique=sender_unique,
            destination=label(dest_ep, dest_unique) if (r.get("destination_name") or dest_unique) else None,
            type=r.get("type", "?"),
            path=r.get("path"),
            interface=r.get("interface"),
            member=r.get("member"),
            error_name=r.get("error_name"),
            signature=r.get("signature") or "",
            args=normalize(r.get("args") or [], labels),
            fate=fate,
            fault=fault,
            injected=injected,
            workload=start is not None and seq > start,
            copies=int(vdict.get("copies", 1)) if fate == "duplicated" else 1,
        )
        if fault is not None and "original_args" in fault:
            fault = dict(fault)
            fault["original_args"] = normalize(fault["original_args"], labels)
            msg.fault = fault
        if msg.type in ("method_return", "error"):
            call = calls.get((dest_unique or "", r.get("reply_serial") or 0))
            msg.reply_to = (call.interface, call.member) if call is not None else (None, None)
        elif msg.type == "method_call":
            calls[(sender_unique or "", r.get("serial", 0))] = msg
        if not to_bus or injected:
            receiver = label(dest_ep, dest_unique)
            if receiver and fate not in ("dropped", "error_reply", "disconnected", "denied"):
                msg.receivers.add(receiver)
        elif msg.destination and dest_unique not in conn_unique.values() and fate not in ("dropped", "error_reply"):
            msg.receivers.add(msg.destination)  # its receiver is not behind the proxy (the bus driver)
        by_key[key] = msg
        out.append(msg)
    pids = {ep["pid"]: labels[u] for u, ep in eps.items() if ep.get("pid") and u in labels}
    exes = {labels[u]: ep["exe"] for u, ep in eps.items() if ep.get("exe") and u in labels}
    return Canon(out, labels, disconnects, start, end, last_seq, pids, exes)


def relabel(canon: Canon, names: dict[str, str]) -> Canon:
    """Rename components (e.g. a service that never got its name, known by its executable)."""
    if not names:
        return canon
    for m in canon.messages:
        m.sender = names.get(m.sender, m.sender)
        if m.destination is not None:
            m.destination = names.get(m.destination, m.destination)
        m.receivers = {names.get(r, r) for r in m.receivers}
    canon.disconnects = [(seq, names.get(c, c)) for seq, c in canon.disconnects]
    canon.pids = {pid: names.get(c, c) for pid, c in canon.pids.items()}
    canon.components = {u: names.get(c, c) for u, c in canon.components.items()}
    return canon


def key_text(msg: Sent, args: list[Any]) -> str:
    """A stable text key for a message with the given (masked) arguments."""
    return json.dumps([list(msg.header_key()), args], sort_keys=True, default=str)
