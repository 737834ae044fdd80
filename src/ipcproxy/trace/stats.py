"""`ipcproxy stats`: counts, bytes, call latency and errors per component and per component pair.

A message between two clients that both go through the proxy is recorded
twice (leaving one connection, arriving on the other). Statistics are about
messages, not deliveries, so such copies are merged (``Deliveries``), and a
reply keeps the larger of its two latencies: the one the caller waited.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..inputs import open_input
from ..model import BUS_DRIVER_NAME, Endpoint
from ..oserror import reason
from .reader import TraceError, iter_trace, read_header

MESSAGE_TYPES = ("method_call", "method_return", "error", "signal")
DATA = "data"  # a chunk of a pipe or socket (`ipcproxy trace`): counted once, by its send
BROADCAST = "*"


class Deliveries:
    """Recognises the second record of a message already seen (same sender and serial).

    Only the proxy's own records can be copies (``to_bus`` on the sender's
    connection, ``from_bus`` on the receiver's); passive captures and the bus
    driver's messages (the driver is never behind the proxy, and its serials
    repeat across recipients) are always new. Keys are kept for a bounded
    window: copies of one message are recorded within moments of each other.
    """

    def __init__(self, window: int = 100_000) -> None:
        self._seen: OrderedDict[tuple[Any, ...], list[Any]] = OrderedDict()
        self._window = window

    @staticmethod
    def key(rec: dict[str, Any]) -> tuple[Any, ...] | None:
        if rec.get("direction") not in ("to_bus", "from_bus"):
            return None
        sender = (rec.get("sender") or {}).get("bus_name")
        if sender == BUS_DRIVER_NAME:
            return None
        if sender is None:  # before Hello's reply: only its own connection knows it
            return ("conn", rec.get("connection"), rec.get("serial"))
        return (sender, rec.get("serial"))

    def seen(self, rec: dict[str, Any]) -> tuple[bool, list[Any]]:
        """Whether ``rec`` copies a message already seen, and a list the caller may keep notes in for it."""
        key = self.key(rec)
        if key is None:
            return False, []
        notes = self._seen.get(key)
        if notes is not None:
            return True, notes
        notes = self._seen[key] = []
        if len(self._seen) > self._window:
            self._seen.popitem(last=False)
        return False, notes


Key = tuple[Any, ...]


def component_of(ep: dict[str, Any] | None, fallback: str | None = None) -> str:
    """The component name (docs/trace-format.md, Endpoints); a message with no destination is a broadcast."""
    name = Endpoint.from_json(ep).component
    if name == "?":
        return fallback or BROADCAST
    return name


def _rank(label: str) -> int:
    """How stable a component name is: well-known name, then executable, then unique name."""
    if label.startswith(":") or label == BROADCAST:
        return 2
    return 1 if label.startswith("/") else 0


def percentile(values: list[int], p: float) -> int | None:
    """Nearest-rank percentile (no interpolation: always a latency that was observed)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Tally:
    """Counters for one component or one pair."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*MESSAGE_TYPES, DATA), 0))
    bytes: int = 0
    bytes_in: int = 0
    received: int = 0
    latencies: list[int] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.counts.values())

    def to_json(self, incoming: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messages": self.sent,
            **self.counts,
            "errors": self.counts["error"],
            "bytes": self.bytes,
        }
        if incoming:
            out["received"] = self.received
            out["bytes_in"] = self.bytes_in
        out["calls_timed"] = len(self.latencies)
        out["latency_p50_ns"] = percentile(self.latencies, 50)
        out["latency_p99_ns"] = percentile(self.latencies, 99)
        return out


@dataclass
class Stats:
    """What `stats` accumulates over one or more traces.

    Tallies are keyed by process (pid) where the trace knows it, else by unique
    name, and named at the end: a service that takes its well-known name after
    Hello is one component, not two.
    """

    traces: list[str] = field(default_factory=list)
    messages: int = 0
    events: int = 0
    merged_copies: int = 0
    data: int = 0  # data records (sends and receives)
    lost: int = 0  # events a capture could not keep (`lost` events of `ipcproxy watch`)
    _delivered: set[tuple[int, int]] = field(default_factory=set)  # (trace, seq) of writes a read consumed
    _components: dict[Key, Tally] = field(default_factory=dict)
    _pairs: dict[tuple[Key, Key], Tally] = field(default_factory=dict)
    _labels: dict[Key, str] = field(default_factory=dict)

    def add_trace(self, records: Iterable[dict[str, Any]]) -> None:
        deliveries = Deliveries()
        trace = len(self.traces)
        for rec in records:
            kind = rec.get("type")
            if kind == "event":
                self.events += 1
                if rec.get("event") == "lost" and isinstance(rec.get("count"), int):
                    self.lost += rec["count"]
                continue
            if kind == DATA:
                self._add_data(trace, rec)
                continue
            if kind not in MESSAGE_TYPES:
                continue
            copy, notes = deliveries.seen(rec)
            if copy:
                self.merged_copies += 1
                self._raise_latency(rec, notes)
                continue
            self._add_message(trace, rec, notes)

    def _key(self, trace: int, ep: dict[str, Any] | None, fallback: str | None = None) -> Key:
        label = component_of(ep, fallback)
        ep = ep or {}
        if ep.get("bus_name") == BUS_DRIVER_NAME:
            key: Key = ("driver",)
        elif ep.get("pid") is not None:
            key = (trace, "pid", ep["pid"])
        elif str(ep.get("bus_name") or "").startswith(":"):
            key = (trace, "bus", ep["bus_name"])
        else:
            key = ("name", label)
        known = self._labels.get(key)
        if known is None or (_rank(label), label) < (_rank(known), known):
            self._labels[key] = label
        return key

    def _add_message(self, trace: int, rec: dict[str, Any], notes: list[Any]) -> None:
        """Count a message; ``notes`` receives where its latency went, for a later copy to raise it."""
        self.messages += 1
        kind = str(rec["type"])
        size = int(rec.get("size") or 0)
        sender = self._key(trace, rec.get("sender"))
        dest = self._key(trace, rec.get("destination"), rec.get("destination_name"))
        src_tally = self._components.setdefault(sender, Tally())
        src_tally.counts[kind] += 1
        src_tally.bytes += size
        if dest != ("name", BROADCAST):
            dst_tally = self._components.setdefault(dest, Tally())
            dst_tally.received += 1
            dst_tally.bytes_in += size
        pair = self._pairs.setdefault((sender, dest), Tally())
        pair.counts[kind] += 1
        pair.bytes += size
        latency = rec.get("latency_ns")
        if isinstance(latency, int) and kind in ("method_return", "error"):
            # the answering component's latency, and the (caller -> callee) pair's
            for values in (src_tally.latencies, self._pairs.setdefault((dest, sender), Tally()).latencies):
                values.append(latency)
                notes.append((values, len(values) - 1))

    def _add_data(self, trace: int, rec: dict[str, Any]) -> None:
        """A send counts as the message; its receives add the pair (the reader knows who wrote what it read).

        A pair counts each write once, however many reads took its bytes.

        A receive none of whose bytes a traced write accounts for (from outside the traced tree)
        is a message of its own.
        """
        self.data += 1
        size = int(rec.get("size") or 0)
        sender = self._key(trace, rec.get("sender"), "unknown")
        if rec.get("direction") == "send":
            self.messages += 1
            tally = self._components.setdefault(sender, Tally())
            tally.counts[DATA] += 1
            tally.bytes += size
            return
        dest = self._key(trace, rec.get("destination"), "unknown")
        consumed = rec.get("consumed") or []
        if all(item == "unknown" for item in consumed):
            self.messages += 1
            self._components.setdefault(sender, Tally()).counts[DATA] += 1
        dst_tally = self._components.setdefault(dest, Tally())
        dst_tally.received += 1
        dst_tally.bytes_in += size
        fresh = [item for item in consumed if isinstance(item, int) and (trace, item) not in self._delivered]
        self._delivered.update((trace, item) for item in fresh)
        pair = self._pairs.setdefault((sender, dest), Tally())
        pair.counts[DATA] += len(fresh) or int(all(item == "unknown" for item in consumed))
        pair.bytes += size

    @staticmethod
    def _raise_latency(copy: dict[str, Any], notes: list[Any]) -> None:
        latency = copy.get("latency_ns")
        if not isinstance(latency, int):
            return
        for values, index in notes:
            if latency > values[index]:
                values[index] = latency

    @property
    def components(self) -> dict[str, Tally]:
        """Tallies per component name (processes sharing a name are one component)."""
        out: dict[str, Tally] = {}
        for key, tally in self._components.items():
            _merge(out.setdefault(self._labels[key], Tally()), tally)
        return out

    @property
    def pairs(self) -> dict[tuple[str, str], Tally]:
        out: dict[tuple[str, str], Tally] = {}
        for (s, d), tally in self._pairs.items():
            _merge(out.setdefault((self._labels[s], self._labels[d]), Tally()), tally)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "traces": self.traces,
            "messages": self.messages,
            "events": self.events,
            "merged_copies": self.merged_copies,
            "components": [
                {"component": name, **tally.to_json(incoming=True)} for name, tally in sorted(self.components.items())
            ],
            "pairs": [
                {"sender": s, "destination": d, **tally.to_json(incoming=False)}
                for (s, d), tally in sorted(self.pairs.items())
            ],
        }


def _merge(into: Tally, tally: Tally) -> None:
    for kind, n in tally.counts.items():
        into.counts[kind] += n
    into.bytes += tally.bytes
    into.bytes_in += tally.bytes_in
    into.received += tally.received
    into.latencies.extend(tally.latencies)


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.3f}"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render_table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Plain aligned columns: readable on a terminal, in a file and in a test."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        out = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)]
        return "  ".join(out).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def render(stats: Stats) -> str:
    out = [
        f"{stats.messages} messages, {stats.events} events in {len(stats.traces)} trace(s)"
        + (f" ({stats.data} pipe and socket records: sends and receives)" if stats.data else "")
        + (f"; {stats.merged_copies} copies of messages recorded on both sides merged" if stats.merged_copies else "")
        + (f"; {stats.lost} events lost by the capture (see its `lost` events)" if stats.lost else "")
    ]
    out.append("")
    out.append("per component (sent by type; latency of the calls it answered)")
    data = stats.data > 0  # a column for pipe and socket data only when there is some
    headers = ["component", "calls", "returns", "errors", "signals", *(["data"] if data else [])]
    headers += ["sent", "recv", "bytes out", "bytes in", "p50 ms", "p99 ms"]
    rows = []
    for name, t in sorted(stats.components.items(), key=lambda kv: (-kv[1].sent - kv[1].received, kv[0])):
        c = t.counts
        rows.append(
            [
                name,
                str(c["method_call"]),
                str(c["method_return"]),
                str(c["error"]),
                str(c["signal"]),
                *([str(c[DATA])] if data else []),
                str(t.sent),
                str(t.received),
                _size(t.bytes),
                _size(t.bytes_in),
                _ms(percentile(t.latencies, 50)),
                _ms(percentile(t.latencies, 99)),
            ]
        )
    out += render_table(headers, rows, right=set(range(1, len(headers))))
    out.append("")
    out.append("per pair sender -> destination (latency of the calls sender made to destination)")
    headers = ["sender", "destination", "calls", "returns", "errors", "signals", *(["data"] if data else [])]
    headers += ["bytes", "p50 ms", "p99 ms"]
    rows = []
    for (s, d), t in sorted(stats.pairs.items(), key=lambda kv: (-kv[1].sent, kv[0])):
        if not t.sent:
            continue
        c = t.counts
        rows.append(
            [
                s,
                d,
                str(c["method_call"]),
                str(c["method_return"]),
                str(c["error"]),
                str(c["signal"]),
                *([str(c[DATA])] if data else []),
                _size(t.bytes),
                _ms(percentile(t.latencies, 50)),
                _ms(percentile(t.latencies, 99)),
            ]
        )
    out += render_table(headers, rows, right=set(range(2, len(headers))))
    return "\n".join(out)


def collect(paths: list[str]) -> Stats:
    """Accumulate every trace given; a path that is not a readable trace is an InputError naming it."""
    stats = Stats()
    for path in paths:
        try:
            with open_input(path, "trace") as stream:  # a regular file: a FIFO would hang
                read_header(stream, path)
            stats.add_trace(iter_trace(path))
        except IsADirectoryError:
            raise InputError(f"{path}: is a directory, not a trace") from None
        except OSError as exc:
            raise InputError(f"cannot read trace {path}: {reason(exc)}") from None
        except TraceError as exc:
            raise InputError(str(exc)) from None
        stats.traces.append(path)
    return stats
