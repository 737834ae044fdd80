"""Fault plans and campaigns (docs/faults.md): typed models, loaded with ``file:line`` errors.

A plan is only data; the injector, the campaign runner and the offline tools
all read the same models, so a fault means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .. import yamlfile
from ..model import MessageType
from ..yamlfile import kind, said

TYPES = {"method_call", "method_return", "error", "signal", "data"}
SIDES = {"sender", "receiver"}
TRANSPORTS = {"pipe", "fifo", "unix", "tcp", "udp", "mq", "sysv-msg"}
DATA_DIRECTIONS = {"send", "recv"}
SOCKTYPES = {"stream", "dgram", "seqpacket"}
BOUNDARIES = {"min", "max", "zero", "empty", "long"}


class PlanError(yamlfile.YamlFileError):
    """A plan or campaign that cannot be used; the text starts with ``file:line:``."""


# ---------------------------------------------------------------- selectors and triggers


@dataclass(frozen=True, slots=True)
class ArgPredicate:
    """A test on one argument: equality by default, or one operator (eq ne in re lt le gt ge prefix)."""

    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class ChannelMatch:
    """Which channel a data message travels on (syscall level); every field given must hold."""

    kind: str | None = None
    path: str | None = None  # a FIFO's or Unix socket's path: exact or a glob
    address: str | None = None  # TCP/UDP "127.0.0.1:4000" (local or remote end): exact or a glob
    socktype: str | None = None


@dataclass(frozen=True, slots=True)
class PayloadMatch:
    """A test on a data message's payload bytes: ``re``, ``contains``, ``prefix`` (text) or ``hex``."""

    op: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Selector:
    """Which messages a fault is about; every field given must hold.

    The first fields are about D-Bus messages, the ones after ``reply_to``
    about data messages seen at the syscall level (``ipcproxy trace``); a
    selector is of one kind (``is_data``), which the loader checks.
    """

    type: MessageType | None = None
    sender: str | None = None
    destination: str | None = None
    path: str | None = None
    interface: str | None = None
    member: str | None = None
    error_name: str | None = None
    args: tuple[tuple[int, ArgPredicate], ...] = ()
    reply_to: Selector | None = None  # for replies: the call they answer
    transport: str | None = None
    direction: str | None = None  # send | recv
    syscall: str | None = None  # exact or a glob ("send*")
    process: str | None = None  # the process making the call: exe, comm or pid
    fd: int | None = None
    channel: ChannelMatch | None = None
    payload: PayloadMatch | None = None
    size: tuple[ArgPredicate, ...] = ()

    @property
    def is_data(self) -> bool:
        """Whether it selects data messages (syscall level) only."""
        return self.type is MessageType.DATA or any(
            v is not None and v != ()
            for v in (
                self.transport,
                self.direction,
                self.syscall,
                self.process,
                self.fd,
                self.channel,
                self.payload,
                self.size or None,
            )
        )

    @property
    def is_dbus(self) -> bool:
        """Whether it selects D-Bus messages only."""
        return (self.type is not None and self.type is not MessageType.DATA) or any(
            v is not None and v != ()
            for v in (self.path, self.interface, self.member, self.error_name, self.args or None, self.reply_to)
        )


@dataclass(frozen=True, slots=True)
class Trigger:
    """When a matching message is faulted; all conditions given must hold."""

    nth: int | None = None
    first: int | None = None  # from
    last: int | None = None  # to
    every: int | None = None
    probability: float | None = None
    window_ms: tuple[float, float] | None = None
    after: Selector | None = None


# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Drop:
    kind: str = "drop"


@dataclass(frozen=True, slots=True)
class Delay:
    ms: float = 0.0
    jitter_ms: float = 0.0
    overtake: bool = False  # let later messages of the same connection pass it (a reordering)
    kind: str = "delay"


DEFAULT_ERROR = "org.freedesktop.DBus.Error.Failed"
DEFAULT_ERROR_TEXT = "injected by ipcproxy"


@dataclass(frozen=True, slots=True)
class Error:
    name: str = DEFAULT_ERROR
    message: str = DEFAULT_ERROR_TEXT
    kind: str = "error"


@dataclass(frozen=True, slots=True)
class Corrupt:
    bits: int = 1
    arg: int | None = None
    valid: bool = True  # keep the body decodable against its signature
    kind: str = "corrupt"


@dataclass(frozen=True, slots=True)
class SetArg:
    index: int = 0
    value: Any = None
    has_value: bool = False
    boundary: str | None = None
    random: bool = False
    kind: str = "set-arg"


@dataclass(frozen=True, slots=True)
class Truncate:
    bytes: int = 1  # cut this many bytes off the end
    keep_length: bool = False  # True: cut the frame and leave its header lying about the size
    to: int | None = None  # instead: keep only the first ``to`` bytes
    fraction: float | None = None  # instead: keep this share of the bytes (rounded down)
    kind: str = "truncate"

    def kept(self, length: int) -> int:
        """How many of ``length`` bytes are left."""
        if self.to is not None:
            return min(self.to, length)
        if self.fraction is not None:
            return int(length * self.fraction)
        return max(0, length - self.bytes)


@dataclass(frozen=True, slots=True)
class Duplicate:
    copies: int = 2
    kind: str = "duplicate"


@dataclass(frozen=True, slots=True)
class Reorder:
    after: int = 1
    max_ms: float = 2000.0
    kind: str = "reorder"


@dataclass(frozen=True, slots=True)
class Disconnect:
    side: str = "sender"
    kind: str = "disconnect"


DEFAULT_ERRNO = "EIO"


@dataclass(frozen=True, slots=True)
class Errno:
    """A data message's syscall fails with this errno (syscall level)."""

    name: str = DEFAULT_ERRNO
    kind: str = "errno"


@dataclass(frozen=True, slots=True)
class Close:
    """The channel is closed for the process making the call (syscall level)."""

    kind: str = "close"


ActionSpec = Drop | Delay | Error | Corrupt | SetArg | Truncate | Duplicate | Reorder | Disconnect | Errno | Close

DBUS_ONLY_ACTIONS = {"error", "set-arg", "reorder", "disconnect"}
DATA_ONLY_ACTIONS = {"errno", "close"}


@dataclass(frozen=True, slots=True)
class FaultSpec:
    name: str
    index: int
    match: Selector
    when: Trigger
    action: ActionSpec
    source: dict[str, Any]  # as written (JSON-safe), for results and traces


@dataclass(slots=True)
class FaultPlan:
    seed: int
    faults: list[FaultSpec]
    path: str = "<plan>"


# ---------------------------------------------------------------- campaigns


@dataclass(frozen=True, slots=True)
class ServiceProbe:
    """Properties.GetAll on every interface of an object (or the listed ones)."""

    service: str
    path: str
    interfaces: tuple[str, ...] = ()
    at: int | None = None  # None: after the workload; k: once k messages have passed

    @property
    def label(self) -> str:
        return f"{self.service}{self.path}"


@dataclass(frozen=True, slots=True)
class CommandProbe:
    """A command whose standard output is the state."""

    command: str
    at: int | None = None

    @property
    def label(self) -> str:
        return f"$ {self.command}"


Probe = ServiceProbe | CommandProbe


@dataclass(frozen=True, slots=True)
class EnumerateSpec:
    match: Selector
    actions: tuple[dict[str, Any], ...]
    sample: int | None = None


@dataclass(slots=True)
class Campaign:
    path: str
    seed: int
    setup: list[str]
    wait_for: list[str]
    workload: str
    golden_runs: int = 3
    timeout_s: float = 10.0
    state: list[Probe] = field(default_factory=list)
    faults: list[FaultSpec] = field(default_factory=list)
    enumerate: EnumerateSpec | None = None
    env: dict[str, str] = field(default_factory=dict)
    service_dirs: list[str] = field(default_factory=list)  # absolute: searched for .service files first
    system_bus: bool = False  # the private bus activates system services, not session ones
    digest: str = ""
    traced: bool = False  # the workload runs under `ipcproxy trace` (no bus): its data messages are faulted
    max_payload: int = 4096  # traced: payload bytes recorded per message

    @property
    def base_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))


# ---------------------------------------------------------------- parsing


class _Ctx:
    """Where we are in the file, to make every error point at a line."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, container: Any, key: Any, text: str) -> PlanError:
        return PlanError(self.path, yamlfile.line_of(container, key) or None, text)


def plain(value: Any) -> Any:
    """LineDicts and LineLists back to plain JSON-safe data."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str | int) else k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _mapping(ctx: _Ctx, container: Any, key: Any, value: Any, allowed: set[str]) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ctx.fail(container, key, f"{key} must be a mapping, not {kind(value)}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise ctx.fail(
            value, unknown[0], f"unknown key {unknown[0]!r} in {key} (expected one of {', '.join(sorted(allowed))})"
        )
    return value


def _int(ctx: _Ctx, container: Any, key: Any, minimum: int = 0) -> int:
    value = container[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ctx.fail(container, key, f"{key} must be an integer >= {minimum}, not {said(value)}")
    return value


def _num(ctx: _Ctx, container: Any, key: Any, minimum: float = 0.0) -> float:
    value = container[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ctx.fail(container, key, f"{key} must be a number >= {minimum:g}, not {said(value)}")
    return float(value)


def _str(ctx: _Ctx, container: Any, key: Any) -> str:
    value = container[key]
    if not isinstance(value, str) or not value:
        raise ctx.fail(container, key, f"{key} must be a non-empty string, not {said(value)}")
    return value


_DBUS_KEYS = {"path", "interface", "member", "error_name", "args", "reply_to"}
_DATA_KEYS = {"transport", "direction", "syscall", "process", "fd", "channel", "payload", "size"}
_SELECTOR_KEYS = {"type", "sender", "destination", *_DBUS_KEYS, *_DATA_KEYS}
_ARG_OPS = {"eq", "ne", "in", "re", "lt", "le", "gt", "ge", "prefix"}
_SIZE_OPS = {"eq", "ne", "lt", "le", "gt", "ge"}
_PAYLOAD_OPS = {"re", "contains", "prefix", "hex"}
_CHANNEL_KEYS = {"kind", "path", "address", "socktype"}


def _party(ctx: _Ctx, raw: Any, name: str) -> str:
    """A sender, destination or process: a name, an executable, a command name, or a pid."""
    value = raw[name]
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    return _str(ctx, raw, name)


def parse_selector(ctx: _Ctx, container: Any, key: Any) -> Selector:
    raw = _mapping(ctx, container, key, container.get(key) if isinstance(container, dict) else None, _SELECTOR_KEYS)
    kwargs: dict[str, Any] = {}
    for name in ("sender", "destination"):
        if name in raw:
            kwargs[name] = _party(ctx, raw, name)
    for name in ("path", "interface", "member", "error_name"):
        if name in raw:
            kwargs[name] = _str(ctx, raw, name)
    if "type" in raw:
        if not isinstance(raw["type"], str) or raw["type"] not in TYPES:
            raise ctx.fail(raw, "type", f"type must be one of {', '.join(sorted(TYPES))}, not {said(raw['type'])}")
        kwargs["type"] = MessageType.from_name(raw["type"])
    if "args" in raw:
        args = raw["args"]
        if not isinstance(args, dict):
            raise ctx.fail(raw, "args", "args must map an argument index to a value, e.g. {1: Hostname}")
        preds: list[tuple[int, ArgPredicate]] = []
        for index, expected in args.items():
            try:
                i = int(index)
            except (TypeError, ValueError):
                raise ctx.fail(args, index, f"argument index {index!r} is not an integer") from None
            if i < 0:
                raise ctx.fail(args, index, f"argument index {i} is negative")
            preds.append((i, _predicate(ctx, args, index, expected)))
        kwargs["args"] = tuple(sorted(preds, key=lambda p: p[0]))
    if "reply_to" in raw:
        kwargs["reply_to"] = parse_selector(ctx, raw, "reply_to")
    kwargs.update(_data_selector(ctx, raw))
    dbus = [k for k in raw if k in _DBUS_KEYS]
    data = [k for k in raw if k in _DATA_KEYS]
    mtype = kwargs.get("type")
    if dbus and (data or mtype is MessageType.DATA):
        what = f"{data[0]} (a data message's)" if data else "type data"
        raise ctx.fail(raw, dbus[0], f"{dbus[0]} is about D-Bus messages and cannot be combined with {what}")
    if data and mtype is not None and mtype is not MessageType.DATA:
        raise ctx.fail(raw, data[0], f"{data[0]} is about data messages (ipcproxy trace), not type {raw['type']}")
    return Selector(**kwargs)


def _data_selector(ctx: _Ctx, raw: Any) -> dict[str, Any]:
    """The keys of a selector about data messages (syscall level)."""
    import re

    kwargs: dict[str, Any] = {}
    if "transport" in raw:
        if raw["transport"] not in TRANSPORTS:
            raise ctx.fail(
                raw,
                "transport",
                f"transport must be one of {', '.join(sorted(TRANSPORTS))}, not {said(raw['transport'])}",
            )
        kwargs["transport"] = raw["transport"]
    if "direction" in raw:
        if raw["direction"] not in DATA_DIRECTIONS:
            raise ctx.fail(raw, "direction", f"direction must be send or recv, not {said(raw['direction'])}")
        kwargs["direction"] = raw["direction"]
    if "syscall" in raw:
        kwargs["syscall"] = _str(ctx, raw, "syscall")
    if "process" in raw:
        kwargs["process"] = _party(ctx, raw, "process")
    if "fd" in raw:
        kwargs["fd"] = _int(ctx, raw, "fd")
    if "channel" in raw:
        ch = _mapping(ctx, raw, "channel", raw["channel"], _CHANNEL_KEYS)
        fields = {k: _str(ctx, ch, k) for k in _CHANNEL_KEYS if k in ch}
        if "kind" in fields and fields["kind"] not in TRANSPORTS:
            raise ctx.fail(ch, "kind", f"kind must be one of {', '.join(sorted(TRANSPORTS))}, not {said(ch['kind'])}")
        if "socktype" in fields and fields["socktype"] not in SOCKTYPES:
            raise ctx.fail(ch, "socktype", f"socktype must be one of {', '.join(sorted(SOCKTYPES))}")
        kwargs["channel"] = ChannelMatch(**fields)
    if "payload" in raw:
        p = raw["payload"]
        if not isinstance(p, dict) or len(p) != 1 or next(iter(p)) not in _PAYLOAD_OPS:
            raise ctx.fail(
                raw, "payload", "payload must be one of {re: R}, {contains: TEXT}, {prefix: TEXT}, {hex: HEX}"
            )
        op, value = next(iter(p.items()))
        if not isinstance(value, str) or not value:
            raise ctx.fail(p, op, f"payload {op} needs a non-empty string, not {said(value)}")
        if op == "hex":
            try:
                data = bytes.fromhex(value)
            except ValueError:
                raise ctx.fail(p, op, f"payload hex is not hexadecimal: {value!r}") from None
            kwargs["payload"] = PayloadMatch("contains", data)
        else:
            data = value.encode()
            if op == "re":
                try:
                    re.compile(data)
                except re.error as exc:
                    raise ctx.fail(p, op, f"bad regular expression: {exc}") from None
            kwargs["payload"] = PayloadMatch(op, data)
    if "size" in raw:
        size = raw["size"]
        if isinstance(size, int) and not isinstance(size, bool):
            kwargs["size"] = (ArgPredicate("eq", size),)
        elif isinstance(size, dict) and size and all(k in _SIZE_OPS for k in size):
            for k, v in size.items():
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ctx.fail(size, k, f"size {k} needs a number of bytes, not {said(v)}")
            kwargs["size"] = tuple(ArgPredicate(k, v) for k, v in size.items())
        else:
            raise ctx.fail(raw, "size", "size must be a number of bytes or {lt|le|gt|ge|eq|ne: N, ...}")
    return kwargs


def _predicate(ctx: _Ctx, container: Any, key: Any, expected: Any) -> ArgPredicate:
    if isinstance(expected, dict) and len(expected) == 1 and next(iter(expected)) in _ARG_OPS:
        op, value = next(iter(expected.items()))
        if op == "in" and not isinstance(value, list):
            raise ctx.fail(expected, op, "'in' needs a list of values")
        if op == "re":
            import re

            try:
                re.compile(str(value))
            except re.error as exc:
                raise ctx.fail(expected, op, f"bad regular expression: {exc}") from None
        return ArgPredicate(op, plain(value))
    return ArgPredicate("eq", plain(expected))


_TRIGGER_KEYS = {"nth", "from", "to", "every", "probability", "window_ms", "after"}


def parse_trigger(ctx: _Ctx, container: Any, key: Any) -> Trigger:
    raw = _mapping(ctx, container, key, container.get(key, {}), _TRIGGER_KEYS)
    kwargs: dict[str, Any] = {}
    if "nth" in raw:
        kwargs["nth"] = _int(ctx, raw, "nth", 1)
    if "from" in raw:
        kwargs["first"] = _int(ctx, raw, "from", 1)
    if "to" in raw:
        kwargs["last"] = _int(ctx, raw, "to", 1)
        if kwargs.get("first", 1) > kwargs["last"]:
            raise ctx.fail(raw, "to", "'to' is before 'from'")
    if "every" in raw:
        kwargs["every"] = _int(ctx, raw, "every", 1)
    if "probability" in raw:
        p = _num(ctx, raw, "probability")
        if p > 1:
            raise ctx.fail(raw, "probability", f"probability must be between 0 and 1, not {p:g}")
        kwargs["probability"] = p
    if "window_ms" in raw:
        w = raw["window_ms"]
        if (
            not isinstance(w, list)
            or len(w) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in w)
            or w[0] > w[1]
        ):
            raise ctx.fail(raw, "window_ms", "window_ms must be [start, end] in milliseconds since the first message")
        kwargs["window_ms"] = (float(w[0]), float(w[1]))
    if "after" in raw:
        kwargs["after"] = parse_selector(ctx, raw, "after")
    if "nth" in kwargs and ("first" in kwargs or "last" in kwargs or "every" in kwargs):
        raise ctx.fail(raw, "nth", "nth cannot be combined with from/to/every")
    return Trigger(**kwargs)


_ACTION_KEYS: dict[str, set[str]] = {
    "drop": set(),
    "delay": {"ms", "jitter_ms", "overtake"},
    "error": {"name", "message"},
    "corrupt": {"bits", "arg", "valid"},
    "set-arg": {"index", "value", "boundary", "random"},
    "truncate": {"bytes", "keep_length", "to", "fraction"},
    "duplicate": {"copies"},
    "reorder": {"after", "max_ms"},
    "disconnect": {"side"},
    "errno": {"name"},
    "close": set(),
}


def parse_action(ctx: _Ctx, container: Any, key: Any) -> ActionSpec:
    raw = container[key] if isinstance(container, list) else container.get(key)
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ctx.fail(container, key, f"action must be exactly one of {', '.join(_ACTION_KEYS)}, e.g. {{drop: {{}}}}")
    kind, params = next(iter(raw.items()))
    if kind not in _ACTION_KEYS:
        raise ctx.fail(raw, kind, f"unknown action {kind!r} (expected one of {', '.join(_ACTION_KEYS)})")
    p = _mapping(ctx, raw, kind, params, _ACTION_KEYS[kind])
    if kind == "drop":
        return Drop()
    if kind == "delay":
        if "ms" not in p:
            raise ctx.fail(raw, kind, "delay needs ms")
        overtake = p.get("overtake", False)
        if not isinstance(overtake, bool):
            raise ctx.fail(p, "overtake", "overtake must be true or false")
        return Delay(_num(ctx, p, "ms"), _num(ctx, p, "jitter_ms") if "jitter_ms" in p else 0.0, overtake)
    if kind == "error":
        name = _str(ctx, p, "name") if "name" in p else DEFAULT_ERROR
        if "." not in name:
            raise ctx.fail(p, "name", f"error name {name!r} must look like org.example.Error.Name")
        return Error(name, str(p["message"]) if "message" in p else DEFAULT_ERROR_TEXT)
    if kind == "corrupt":
        valid = p.get("valid", True)
        if not isinstance(valid, bool):
            raise ctx.fail(p, "valid", "valid must be true or false")
        return Corrupt(
            _int(ctx, p, "bits", 1) if "bits" in p else 1, _int(ctx, p, "arg") if "arg" in p else None, valid
        )
    if kind == "set-arg":
        if "index" not in p:
            raise ctx.fail(raw, kind, "set-arg needs index")
        chosen = [k for k in ("value", "boundary", "random") if k in p]
        if len(chosen) != 1:
            raise ctx.fail(raw, kind, "set-arg needs exactly one of value, boundary, random")
        if "boundary" in p and (not isinstance(p["boundary"], str) or p["boundary"] not in BOUNDARIES):
            raise ctx.fail(p, "boundary", f"boundary must be one of {', '.join(sorted(BOUNDARIES))}")
        if "random" in p and p["random"] is not True:
            raise ctx.fail(p, "random", "random must be true")
        return SetArg(
            _int(ctx, p, "index"),
            value=plain(p.get("value")),
            has_value="value" in p,
            boundary=p.get("boundary"),
            random="random" in p,
        )
    if kind == "truncate":
        keep = p.get("keep_length", False)
        if not isinstance(keep, bool):
            raise ctx.fail(p, "keep_length", "keep_length must be true or false")
        given = [k for k in ("bytes", "to", "fraction") if k in p]
        if len(given) > 1:
            raise ctx.fail(
                p, given[1], f"truncate takes one of bytes, to, fraction, not both {given[0]} and {given[1]}"
            )
        fraction = None
        if "fraction" in p:
            fraction = _num(ctx, p, "fraction")
            if fraction >= 1:
                raise ctx.fail(
                    p, "fraction", f"fraction is the share kept: between 0 and 1 (excluded), not {fraction:g}"
                )
        return Truncate(
            _int(ctx, p, "bytes", 1) if "bytes" in p else 1,
            keep,
            to=_int(ctx, p, "to") if "to" in p else None,
            fraction=fraction,
        )
    if kind == "errno":
        import errno as errnos

        name = _str(ctx, p, "name") if "name" in p else DEFAULT_ERRNO
        if name not in errnos.errorcode.values():
            raise ctx.fail(p, "name", f"errno {name!r} is not an errno name (EIO, EPIPE, ECONNRESET, EAGAIN, ...)")
        return Errno(name)
    if kind == "close":
        return Close()
    if kind == "duplicate":
        return Duplicate(_int(ctx, p, "copies", 2) if "copies" in p else 2)
    if kind == "reorder":
        return Reorder(
            _int(ctx, p, "after", 1) if "after" in p else 1, _num(ctx, p, "max_ms") if "max_ms" in p else 2000.0
        )
    side = p.get("side", "sender")
    if not isinstance(side, str) or side not in SIDES:
        raise ctx.fail(p, "side", f"side must be sender or receiver, not {said(side)}")
    return Disconnect(side)


_FAULT_KEYS = {"name", "match", "when", "action"}


def parse_fault(ctx: _Ctx, container: Any, index: int) -> FaultSpec:
    raw = container[index]
    if not isinstance(raw, dict):
        raise ctx.fail(container, index, "each fault must be a mapping with match, when and action")
    unknown = [k for k in raw if k not in _FAULT_KEYS]
    if unknown:
        raise ctx.fail(raw, unknown[0], f"unknown key {unknown[0]!r} in fault (expected name, match, when, action)")
    if "action" not in raw:
        raise ctx.fail(container, index, "fault has no action")
    name = str(raw["name"]) if "name" in raw else str(index)
    match = parse_selector(ctx, raw, "match")
    action = parse_action(ctx, raw, "action")
    check_action_fits(ctx, raw, "action", match, action)
    return FaultSpec(
        name=name,
        index=index,
        match=match,
        when=parse_trigger(ctx, raw, "when"),
        action=action,
        source={"name": name, **{k: plain(v) for k, v in raw.items() if k != "name"}},
    )


def check_action_fits(ctx: _Ctx, container: Any, key: Any, match: Selector, action: ActionSpec) -> None:
    """An action must be one the selected messages can undergo (D-Bus messages or syscall-level data)."""
    if match.is_data:
        if action.kind in DBUS_ONLY_ACTIONS:
            instead = {"error": "errno", "disconnect": "close"}.get(action.kind)
            hint = f"; use {instead} on data messages" if instead else ""
            raise ctx.fail(container, key, f"action {action.kind} is about D-Bus messages, not data messages{hint}")
        if isinstance(action, Corrupt) and (action.arg is not None or not action.valid):
            raise ctx.fail(container, key, "corrupt on data messages flips payload bits: it takes bits only")
        if isinstance(action, Truncate) and action.keep_length:
            raise ctx.fail(container, key, "keep_length is about D-Bus frames; data messages have no length field")
    elif match.is_dbus and action.kind in DATA_ONLY_ACTIONS:
        instead = {"errno": "error", "close": "disconnect"}[action.kind]
        raise ctx.fail(
            container, key, f"action {action.kind} is about data messages (ipcproxy trace); use {instead} on D-Bus"
        )


def _faults(ctx: _Ctx, doc: Any) -> list[FaultSpec]:
    faults = doc.get("faults")
    if faults is None:
        return []
    if not isinstance(faults, list):
        raise ctx.fail(doc, "faults", "faults must be a list")
    specs = [parse_fault(ctx, faults, i) for i in range(len(faults))]
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec.name in seen:
            raise ctx.fail(faults, i, f"fault name {spec.name!r} is used twice")
        seen[spec.name] = i
    return specs


def _document(path: str, text: str, allowed: set[str]) -> tuple[_Ctx, Any]:
    ctx = _Ctx(path)
    try:
        doc = yamlfile.load(text)
    except yamlfile.YamlError as exc:
        raise PlanError(path, exc.line, f"not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise PlanError(path, 1, f"expected a mapping with version: 1, not {kind(doc)}")
    if doc.get("version") != 1:
        raise ctx.fail(doc, "version", f"version must be 1, not {said(doc.get('version'))}")
    unknown = [k for k in doc if k not in allowed]
    if unknown:
        raise ctx.fail(doc, unknown[0], f"unknown key {unknown[0]!r} (expected one of {', '.join(sorted(allowed))})")
    return ctx, doc


def _read(path: str, what: str) -> str:
    try:
        return yamlfile.read(path, what)
    except yamlfile.YamlFileError as exc:
        raise PlanError(path, None, f"cannot read {what}: {exc.reason}") from None


def parse_plan(text: str, path: str = "<plan>") -> FaultPlan:
    ctx, doc = _document(path, text, {"version", "seed", "faults"})
    seed = _int(ctx, doc, "seed") if "seed" in doc else 0
    return FaultPlan(seed=seed, faults=_faults(ctx, doc), path=path)


def load_plan(path: str) -> FaultPlan:
    return parse_plan(_read(path, "fault plan"), path)


def fault_from_dict(data: dict[str, Any], index: int, where: str = "<generated>") -> FaultSpec:
    """A fault given as plain data (enumerated faults, results files)."""
    return dataclasses.replace(parse_fault(_Ctx(where), [data], 0), index=index)


_CAMPAIGN_KEYS = {
    "version",
    "seed",
    "setup",
    "wait_for",
    "workload",
    "golden_runs",
    "timeout_s",
    "state",
    "faults",
    "enumerate",
    "env",
    "service_dirs",
    "system_bus",
    "trace",
    "max_payload",
}
_BUS_ONLY_CAMPAIGN_KEYS = ("setup", "wait_for", "service_dirs", "system_bus")


def _str_list(ctx: _Ctx, doc: Any, key: str) -> list[str]:
    value = doc.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ctx.fail(doc, key, f"{key} must be a list of strings")
    return list(value)


def _probe(ctx: _Ctx, container: Any, index: int) -> Probe:
    raw = container[index]
    if not isinstance(raw, dict):
        raise ctx.fail(container, index, "a state probe is {service: NAME, path: /obj} or {command: CMD}")
    at = None
    if "at" in raw and raw["at"] != "end":
        at_map = _mapping(ctx, raw, "at", raw["at"], {"message"})
        if "message" not in at_map:
            raise ctx.fail(raw, "at", "at must be 'end' or {message: K}")
        at = _int(ctx, at_map, "message", 1)
    if "command" in raw:
        _mapping(ctx, container, index, raw, {"command", "at"})
        return CommandProbe(_str(ctx, raw, "command"), at)
    _mapping(ctx, container, index, raw, {"service", "path", "interfaces", "at"})
    if "service" not in raw or "path" not in raw:
        raise ctx.fail(container, index, "a service probe needs service and path")
    path = _str(ctx, raw, "path")
    if not path.startswith("/"):
        raise ctx.fail(raw, "path", f"path must be an object path, not {path!r}")
    return ServiceProbe(_str(ctx, raw, "service"), path, tuple(_str_list(ctx, raw, "interfaces")), at)


def parse_campaign(text: str, path: str = "<campaign>") -> Campaign:
    ctx, doc = _document(path, text, _CAMPAIGN_KEYS)
    traced = "trace" in doc
    if traced:
        if "workload" in doc:
            raise ctx.fail(doc, "workload", "give either workload (on a private bus) or trace (under ipcproxy trace)")
        for k in _BUS_ONLY_CAMPAIGN_KEYS:
            if k in doc:
                raise ctx.fail(doc, k, f"{k} is about the campaign's private bus; a trace campaign has none")
        workload = _str(ctx, doc, "trace")
    else:
        if "workload" not in doc:
            raise ctx.fail(doc, None, "campaign has no workload (or trace)")
        if "max_payload" in doc:
            raise ctx.fail(doc, "max_payload", "max_payload is about trace campaigns (trace: CMD)")
        workload = _str(ctx, doc, "workload")
    state_raw = doc.get("state") or []
    if not isinstance(state_raw, list):
        raise ctx.fail(doc, "state", "state must be a list of probes")
    env = doc.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        raise ctx.fail(doc, "env", "env must map variable names to values")
    enum_spec = None
    if "enumerate" in doc:
        raw = _mapping(ctx, doc, "enumerate", doc["enumerate"], {"match", "actions", "sample"})
        actions = raw.get("actions")
        if not isinstance(actions, list) or not actions:
            raise ctx.fail(raw, "actions", "enumerate needs a non-empty list of actions")
        enum_match = parse_selector(ctx, raw, "match")
        if traced and enum_match.is_dbus:
            raise ctx.fail(raw, "match", "a trace campaign enumerates data messages: the match cannot be about D-Bus")
        if traced and not enum_match.is_data:
            enum_match = dataclasses.replace(enum_match, type=MessageType.DATA)
        for i in range(len(actions)):
            check_action_fits(ctx, actions, i, enum_match, parse_action(ctx, actions, i))
        enum_spec = EnumerateSpec(
            match=enum_match,
            actions=tuple(plain(a) for a in actions),
            sample=_int(ctx, raw, "sample", 1) if "sample" in raw else None,
        )
    faults = _faults(ctx, doc)
    if traced:
        for spec in faults:
            if spec.match.is_dbus:
                raise ctx.fail(
                    doc["faults"], spec.index, "a trace campaign faults data messages: this match is about D-Bus"
                )
    if not faults and enum_spec is None:
        raise ctx.fail(doc, None, "campaign lists no faults and no enumerate")
    golden = _int(ctx, doc, "golden_runs", 1) if "golden_runs" in doc else 3
    system_bus = doc.get("system_bus", False)
    if not isinstance(system_bus, bool):
        raise ctx.fail(doc, "system_bus", "system_bus must be true or false")
    base_dir = os.path.dirname(os.path.abspath(path))
    service_dirs = [os.path.join(base_dir, d) for d in _str_list(ctx, doc, "service_dirs")]
    for d in service_dirs:
        if not os.path.isdir(d):
            raise ctx.fail(doc, "service_dirs", f"service_dirs: {d} is not a directory")
    state = [_probe(ctx, state_raw, i) for i in range(len(state_raw))]
    if traced:
        for i, probe in enumerate(state):
            if isinstance(probe, ServiceProbe):
                raise ctx.fail(state_raw, i, "a trace campaign has no bus to probe: use {command: CMD}")
            if probe.at is not None:
                raise ctx.fail(state_raw, i, "a trace campaign takes its probes after the workload (no at:)")
    max_payload = 4096
    if "max_payload" in doc:
        max_payload = _int(ctx, doc, "max_payload")
        if max_payload > 64 << 20:
            raise ctx.fail(doc, "max_payload", f"max_payload must be at most {64 << 20} bytes")
    return Campaign(
        path=path,
        seed=_int(ctx, doc, "seed") if "seed" in doc else 0,
        setup=_str_list(ctx, doc, "setup"),
        wait_for=_str_list(ctx, doc, "wait_for"),
        workload=workload,
        golden_runs=golden,
        timeout_s=_num(ctx, doc, "timeout_s", 0.1) if "timeout_s" in doc else 10.0,
        state=state,
        faults=faults,
        enumerate=enum_spec,
        env={k: str(v) for k, v in env.items()},
        service_dirs=service_dirs,
        system_bus=system_bus,
        digest=hashlib.sha256(json.dumps(plain(doc), sort_keys=True, default=str).encode()).hexdigest()[:16],
        traced=traced,
        max_payload=max_payload,
    )


def load_campaign(path: str) -> Campaign:
    return parse_campaign(_read(path, "campaign"), path)
