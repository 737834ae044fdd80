"""Records into the report's compact model: lifelines, and one row per message in columns.

The page draws from columns of small integers (indices into ``lifelines`` and
``strings``), so a trace of 100,000 messages is a few megabytes of JSON and
the browser filters it in a loop over typed arrays. The full record of each
message is kept beside it, for the detail pane only. No I/O: records in,
a dict out (``ModelBuilder.to_json``); the live view feeds the same builder.

Messages are counted as `stats` counts them (docs/trace-format.md): a
message recorded on both sides of the proxy is one arrow (the larger
latency kept), a pipe or socket write is one arrow from writer to reader.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..model import BUS_DRIVER_NAME
from ..trace.filters import verdict_action
from ..trace.stats import BROADCAST, Deliveries, component_of
from ..trace.view import channel_label, format_args, payload_preview

FORMAT = "ipcproxy-report"
VERSION = 1

KINDS = ("method_call", "method_return", "error", "signal", "data")
VERDICTS = ("forwarded", "denied", "violation", "fault", "injected")
COLUMNS = ("seq", "t", "src", "dst", "kind", "iface", "member", "verdict", "latency", "size", "reply")
UNKNOWN = "unknown"  # the other end of a pipe or socket no traced process held


def verdict_class(verdict: Any) -> int:
    """Index into VERDICTS: what the page colours (any fault's action counts as ``fault``)."""
    action = verdict_action(verdict)
    if action in (None, "forwarded"):
        return 0
    if action == "denied":
        return 1
    if action == "violation":
        return 2
    if action == "injected":
        return 4
    return 3


def _rank(label: str) -> tuple[int, str]:
    """How stable a name is: well-known name, then executable, then unique name (as `stats` names)."""
    if label.startswith(":") or label in (BROADCAST, UNKNOWN):
        return (2, label)
    return (1 if label.startswith("/") else 0, label)


def detail_lines(rec: dict[str, Any]) -> list[str]:
    """The decoded arguments (``string "x"``) or a data payload as text, for the detail pane."""
    if rec.get("type") == "data":
        lines = [f"channel {channel_label(rec.get('channel'))}"]
        if rec.get("payload"):
            lines.append(
                "payload " + payload_preview(str(rec["payload"])) + (" (truncated)" if rec.get("truncated") else "")
            )
        return lines
    lines = format_args(str(rec.get("signature") or ""), list(rec.get("args") or []), limit=2000)
    if rec.get("args_error"):
        lines.append(f"(body undecodable: {rec['args_error']})")
    return lines


class ModelBuilder:
    """Accumulates records (in trace order) into the model; ``to_json`` may be called at any point.

    Lifelines are keyed by process where the trace knows it (a service that
    takes its well-known name after Hello is one lifeline), named by the most
    stable name seen for that key; keys with the same name share a lifeline.
    """

    def __init__(self, title: str = "", header: dict[str, Any] | None = None, limit: int | None = None) -> None:
        self.title = title
        self.header = header or {}
        self.limit = limit
        self.truncated = False
        self.events = 0
        self.cols: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        self.records: list[dict[str, Any]] = []
        self._keys: dict[tuple[Any, ...], int] = {}  # endpoint key -> key number
        self._key_labels: list[str] = []
        self._strings: dict[str, int] = {}
        self.strings: list[str] = []
        self._deliveries = Deliveries()
        self._calls: dict[tuple[Any, ...], int] = {}  # (caller bus name, serial) -> row of the call
        self._sends: dict[int, int] = {}  # seq of a data send -> its row
        self._t0: int | None = None
        self.relabels = 0  # how often an earlier key was renamed: earlier rows may now sit on another lifeline

    # -------------------------------------------------------------- identities
    def _key(self, ep: dict[str, Any] | None, fallback: str | None = None) -> int:
        label = component_of(ep, fallback)
        ep = ep or {}
        if ep.get("bus_name") == BUS_DRIVER_NAME:
            key: tuple[Any, ...] = ("driver",)
        elif ep.get("pid") is not None:
            key = ("pid", ep["pid"])
        elif str(ep.get("bus_name") or "").startswith(":"):
            key = ("bus", ep["bus_name"])
        else:
            key = ("name", label)
        number = self._keys.get(key)
        if number is None:
            number = self._keys[key] = len(self._key_labels)
            self._key_labels.append(label)
        elif _rank(label) < _rank(self._key_labels[number]):
            self._key_labels[number] = label
            self.relabels += 1
        return number

    def _string(self, text: Any) -> int:
        if text is None or text == "":
            return -1
        text = str(text)
        index = self._strings.get(text)
        if index is None:
            index = self._strings[text] = len(self.strings)
            self.strings.append(text)
        return index

    # -------------------------------------------------------------- records
    def add_all(self, records: Iterable[dict[str, Any]]) -> None:
        for rec in records:
            self.add(rec)

    def add(self, rec: dict[str, Any]) -> None:
        """Take one record; events and second copies of a message add no row."""
        kind = rec.get("type")
        if kind == "event":
            self.events += 1
            return
        if kind == "data":
            self._add_data(rec)
            return
        if kind not in KINDS:
            return
        copy, notes = self._deliveries.seen(rec)
        if copy:
            if notes and isinstance(rec.get("latency_ns"), int):
                row = notes[0]
                if rec["latency_ns"] > self.cols["latency"][row]:
                    self.cols["latency"][row] = rec["latency_ns"]
            return
        src = self._key(rec.get("sender"))
        dst = self._key(rec.get("destination"), rec.get("destination_name"))
        reply = -1
        if kind in ("method_return", "error"):
            reply = self._calls.get(((rec.get("destination") or {}).get("bus_name"), rec.get("reply_serial")), -1)
            if reply < 0 and rec.get("direction") == "from_bus":  # a call sent before its sender had a name: Hello
                reply = self._calls.get(("conn", rec.get("connection"), rec.get("reply_serial")), -1)
        row = self._row(
            rec,
            src,
            dst,
            KINDS.index(str(kind)),
            rec.get("interface"),
            rec.get("member") or rec.get("error_name"),
            reply,
        )
        if row is None:
            return
        notes.append(row)
        if kind == "method_call":
            self._calls[((rec.get("sender") or {}).get("bus_name"), rec.get("serial"))] = row
            if rec.get("direction") == "to_bus":
                self._calls[("conn", rec.get("connection"), rec.get("serial"))] = row

    def _add_data(self, rec: dict[str, Any]) -> None:
        """A write is the message, to the process that read it (once a read shows who); an untraced writer's read too."""
        src = self._key(rec.get("sender"), UNKNOWN)
        dst = self._key(rec.get("destination"), UNKNOWN)
        if rec.get("direction") == "send":
            row = self._row(rec, src, dst, KINDS.index("data"), rec.get("transport"), rec.get("syscall"), -1)
            if row is not None and isinstance(rec.get("seq"), int):
                self._sends[rec["seq"]] = row
            return
        consumed = rec.get("consumed") or []
        if all(item == UNKNOWN for item in consumed):
            self._row(rec, src, dst, KINDS.index("data"), rec.get("transport"), rec.get("syscall"), -1)
            return
        for item in consumed:
            # the process that read the bytes, rather than whoever held the reading end when they were
            # written (a shell that has not yet handed the pipe to its reader, say)
            row = self._sends.pop(item, None) if isinstance(item, int) else None
            if row is not None:
                self.cols["dst"][row] = dst

    def _row(
        self, rec: dict[str, Any], src: int, dst: int, kind: int, iface: Any, member: Any, reply: int
    ) -> int | None:
        if self.limit is not None and len(self.records) >= self.limit:
            self.truncated = True
            return None
        ts = rec.get("ts") if isinstance(rec.get("ts"), int) else None
        if self._t0 is None and ts is not None:
            self._t0 = ts
        c = self.cols
        c["seq"].append(rec.get("seq"))
        c["t"].append(ts - self._t0 if ts is not None and self._t0 is not None else 0)
        c["src"].append(src)
        c["dst"].append(dst)
        c["kind"].append(kind)
        c["iface"].append(self._string(iface))
        c["member"].append(self._string(member))
        c["verdict"].append(verdict_class(rec.get("verdict")))
        latency = rec.get("latency_ns")
        c["latency"].append(latency if isinstance(latency, int) and kind in (1, 2) else -1)
        c["size"].append(int(rec.get("size") or 0))
        c["reply"].append(reply)
        self.records.append(rec)
        return len(self.records) - 1

    # -------------------------------------------------------------- output
    def lifelines(self) -> tuple[list[str], list[int]]:
        """The lifeline names, in order of first appearance, and each key's lifeline."""
        names: list[str] = []
        index: dict[str, int] = {}
        of_key = [-1] * len(self._key_labels)
        for src, dst in zip(self.cols["src"], self.cols["dst"], strict=True):
            for key in (src, dst):
                if of_key[key] < 0:
                    label = self._key_labels[key]
                    if label not in index:
                        index[label] = len(names)
                        names.append(label)
                    of_key[key] = index[label]
        return names, of_key

    def to_json(self, start: int = 0) -> dict[str, Any]:
        """The model (rows from ``start`` on: the live view sends only what is new)."""
        names, of_key = self.lifelines()
        cols = {name: values[start:] for name, values in self.cols.items()}
        cols["src"] = [of_key[k] for k in cols["src"]]
        cols["dst"] = [of_key[k] for k in cols["dst"]]
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": "trace",
            "title": self.title,
            "header": self.header,
            "start": start,
            "lifelines": names,
            "strings": self.strings,
            "kinds": list(KINDS),
            "verdicts": list(VERDICTS),
            "messages": cols,
            "events": self.events,
            "truncated": self.truncated,
        }

    def details(self, start: int = 0) -> list[dict[str, Any]]:
        """The full records of the rows from ``start`` on, each with its arguments as text lines."""
        return [dict(rec, _lines=detail_lines(rec)) for rec in self.records[start:]]


def build(records: Iterable[dict[str, Any]], title: str = "", header: dict[str, Any] | None = None) -> ModelBuilder:
    builder = ModelBuilder(title, header)
    builder.add_all(records)
    return builder
