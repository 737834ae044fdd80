"""The policy model: what each component may send, receive and own, and in which order.

Plain data and pure checks, no I/O and no YAML: the loader builds it, the
learner produces it, and the enforcer, checker, differ and exporters read it,
so they all agree on what a rule means.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .datamatch import DEFAULT_ERRNO, ChannelMatch, PayloadMatch

FORMAT = "ipcproxy-policy"
VERSION = 1
ANY = "*"  # any peer / any message type
BROADCAST = "broadcast"  # peer of a signal sent without a destination
START = "^"  # padding at the start of a connection in order n-grams
SEND = "send"
RECEIVE = "receive"
DIRECTIONS = (SEND, RECEIVE)
MESSAGE_TYPES = ("method_call", "signal", "method_return", "error")
DATA = "data"  # a message on a pipe, FIFO or socket, seen at the syscall level
RULE_TYPES = (*MESSAGE_TYPES, DATA, "any")
UNKNOWN = "unknown"  # the peer of a data message that is not known (not traced, several processes)
UNIQUE_PLACEHOLDER = ":*"

# a unique connection name (":1.42") standing on its own inside a string
_UNIQUE_NAME = re.compile(r"(?<![\w.:]):[0-9]+\.[0-9]+(?![\w.])")


def normalise(value: Any) -> Any:
    """Arguments as policies compare them: unique bus names (never stable) become ``:*``."""
    if isinstance(value, str):
        return _UNIQUE_NAME.sub(UNIQUE_PLACEHOLDER, value) if ":" in value else value
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    return value


def canonical(value: Any) -> str:
    """One text per value, so compound values can live in sets and be compared."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _size(value: Any) -> int | None:
    if isinstance(value, str | list | dict):
        return len(value)
    return None


@dataclass(slots=True)
class ArgConstraint:
    """What one argument may be: a value set, a numeric range, a string pattern, a size bound."""

    values: list[Any] | None = None
    range: tuple[float, float] | None = None
    pattern: str | None = None  # regular expression that must match the whole string
    max_len: int | None = None  # strings: characters; arrays and dicts: elements
    _regex: re.Pattern[str] | None = field(default=None, repr=False, compare=False)
    _value_set: frozenset[str] | None = field(default=None, repr=False, compare=False)

    def violation(self, value: Any) -> str | None:
        """Why ``value`` (already normalised) is not allowed, or None if it is."""
        if self.values is not None:
            if self._value_set is None:
                self._value_set = frozenset(canonical(v) for v in self.values)
            if canonical(value) not in self._value_set:
                return f"{_show(value)} is not one of {_show(self.values)}"
        if self.range is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"{_show(value)} is not a number in {list(self.range)}"
            low, high = self.range
            if not (low <= value <= high) or (isinstance(value, float) and math.isnan(value)):
                return f"{_show(value)} is outside the range {list(self.range)}"
        if self.pattern is not None:
            if not isinstance(value, str):
                return f"{_show(value)} is not a string matching {self.pattern!r}"
            if self._regex is None:
                self._regex = re.compile(self.pattern)
            if self._regex.fullmatch(value) is None:
                return f"{_show(value)} does not match {self.pattern!r}"
        if self.max_len is not None:
            size = _size(value)
            if size is None or size > self.max_len:
                return f"{_show(value)} is longer than {self.max_len}"
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.values is not None:
            out["values"] = list(self.values)
        if self.range is not None:
            out["range"] = list(self.range)
        if self.pattern is not None:
            out["pattern"] = self.pattern
        if self.max_len is not None:
            out["max_len"] = self.max_len
        return out


def _show(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(slots=True)
class Rule:
    """One kind of message a component may send or receive; unset fields match anything."""

    direction: str  # send | receive
    type: str = "any"  # a message type, or any
    peer: str = ANY  # component at the other end: well-known name, executable, broadcast, *
    peer_uid: int | None = None
    paths: tuple[str, ...] | None = None  # any of these exact object paths
    path_prefix: str | None = None
    interface: str | None = None
    member: str | None = None
    signature: str | None = None
    args: dict[int, ArgConstraint] = field(default_factory=dict)
    # data messages (type: data): which transport and channel, size range, fds passed, payload, errno
    transport: str | None = None
    channel: ChannelMatch | None = None
    size: tuple[int, int] | None = None
    fds: int | None = None  # at most this many file descriptors passed
    payload: PayloadMatch | None = None
    errno: str | None = None  # the errno of a denial this rule is the nearest miss of
    count: int = field(default=0, compare=False)  # how often the learner saw it (written as a comment)
    line: int | None = field(default=None, compare=False)  # where it was read from

    def key(self) -> tuple[Any, ...]:
        """Everything but the argument constraints: rules with the same key differ only in arguments."""
        return (
            self.direction,
            self.type,
            self.peer,
            self.peer_uid,
            self.paths,
            self.path_prefix,
            self.interface,
            self.member,
            self.signature,
            self.transport,
            self.channel,
        )

    @property
    def is_data(self) -> bool:
        return self.type == DATA

    def path_ok(self, path: str | None) -> bool:
        if self.paths is not None and path not in self.paths:
            return False
        return not (
            self.path_prefix is not None
            and (path is None or not (path == self.path_prefix.rstrip("/") or path.startswith(self.path_prefix)))
        )

    def to_dict(self) -> dict[str, Any]:
        """The rule as it is written in a policy file (field order is the file's)."""
        out: dict[str, Any] = {self.direction: self.type}
        out["to" if self.direction == SEND else "from"] = self.peer
        if self.peer_uid is not None:
            out["peer_uid"] = self.peer_uid
        if self.paths is not None:
            out["path"] = self.paths[0] if len(self.paths) == 1 else list(self.paths)
        if self.path_prefix is not None:
            out["path_prefix"] = self.path_prefix
        for key in ("interface", "member", "signature"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.args:
            out["args"] = {index: c.to_dict() for index, c in sorted(self.args.items())}
        if self.transport is not None:
            out["transport"] = self.transport
        if self.channel is not None and self.channel.to_dict():
            out["channel"] = self.channel.to_dict()
        if self.size is not None:
            out["size"] = list(self.size)
        if self.fds is not None:
            out["fds"] = self.fds
        if self.payload is not None and self.payload.to_dict():
            out["payload"] = self.payload.to_dict()
        if self.errno is not None:
            out["errno"] = self.errno
        return out

    def describe(self) -> str:
        """One line, in the file's own notation, for messages and reports."""
        return flow(self.to_dict())


def flow(data: dict[str, Any]) -> str:
    """A mapping as one line of YAML-like flow text."""
    parts = []
    for key, value in data.items():
        if isinstance(value, dict):
            parts.append(f"{key}: {flow(value)}")
        elif isinstance(value, str):
            parts.append(f"{key}: {value if value and _plain(value) else json.dumps(value)}")
        else:
            parts.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
    return "{" + ", ".join(parts) + "}"


def _plain(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_./^*-][A-Za-z0-9_./ *-]*", text) is not None and not text.endswith(" ")


@dataclass(slots=True)
class Subject:
    """A component's profile: who it is, what it may own, its rules and its order model."""

    component: str  # well-known name, or executable path
    uid: int | None = None
    exe: str | None = None  # lets a connection be recognised before it owns its name
    own: list[str] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    order: set[tuple[str, ...]] | None = None  # allowed n-grams of sent method calls; None: no order model
    errno: str | None = None  # errno of its denied data messages (default: the policy's)
    messages: int = field(default=0, compare=False)  # how many messages the learner saw (comment only)
    line: int | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return self.component if self.uid is None else f"{self.component} (uid {self.uid})"

    def identity(self) -> tuple[str, int | None]:
        return (self.component, self.uid)


@dataclass(slots=True)
class Policy:
    """A whole policy file."""

    subjects: list[Subject] = field(default_factory=list)
    order_n: int = 0  # length of the order model's n-grams; 0: none
    threshold: int | None = None  # the learner's generalisation threshold (informational)
    unknown: str = "deny"  # components without a profile: deny | allow
    errno: str = DEFAULT_ERRNO  # how a denied data message's syscall fails
    source: str | None = None  # file it was read from

    def subject(self, component: str, uid: int | None) -> Subject | None:
        for subject in self.subjects:
            if subject.component == component and subject.uid == uid:
                return subject
        return None

    def by_component(self) -> dict[str, list[Subject]]:
        out: dict[str, list[Subject]] = {}
        for subject in self.subjects:
            out.setdefault(subject.component, []).append(subject)
        return out

    def rule_count(self) -> int:
        return sum(len(s.rules) for s in self.subjects)

    def size(self) -> int:
        """Rules, owned names and order n-grams: what a reviewer has to read."""
        return sum(len(s.rules) + len(s.own) + len(s.order or ()) for s in self.subjects)
