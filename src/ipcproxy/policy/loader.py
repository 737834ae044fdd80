"""Reading a policy file: strict, and every complaint names the file and line.

The YAML is composed into a node tree (which keeps line numbers) and
validated by hand, so a misspelt key, a wrong type or an unknown version is
refused with ``file:line: reason`` before anything is enforced.
"""

from __future__ import annotations

import re
from typing import Any

from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .. import yamlfile
from ..yamlfile import kind as _kind
from .datamatch import CHANNEL_KEYS, SOCKTYPES, TRANSPORTS, ChannelMatch, PayloadMatch, is_errno
from .model import (
    ANY,
    DATA,
    DIRECTIONS,
    FORMAT,
    RULE_TYPES,
    SEND,
    VERSION,
    ArgConstraint,
    Policy,
    Rule,
    Subject,
)


class PolicyError(yamlfile.YamlFileError):
    """A policy file that cannot be used; the text is ``file:line: reason``."""


TOP_KEYS = ("format", "version", "threshold", "order", "unknown", "errno", "components")
SUBJECT_KEYS = ("component", "uid", "exe", "own", "rules", "order", "errno")
DBUS_RULE_KEYS = ("path", "path_prefix", "interface", "member", "signature", "args")
DATA_RULE_KEYS = ("transport", "channel", "size", "fds", "payload", "errno")
PAYLOAD_KEYS = ("prefix", "regex")
RULE_KEYS = (
    *DIRECTIONS,
    "to",
    "from",
    "peer_uid",
    "path",
    "path_prefix",
    "interface",
    "member",
    "signature",
    "args",
    *DATA_RULE_KEYS,
)
CONSTRAINT_KEYS = ("values", "range", "pattern", "max_len")

_PATH = re.compile(r"/|(/[A-Za-z0-9_]+)+")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)+")
_MEMBER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIGNATURE = re.compile(r"[ybnqiuxtdsogvha(){}]*")


def load_policy(path: str) -> Policy:
    try:
        text = yamlfile.read(path, "policy")
    except yamlfile.YamlFileError as exc:
        raise PolicyError(path, None, f"cannot read: {exc.reason}") from None
    return parse_policy(text, path)


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    try:
        root = yamlfile.compose(text)
    except yamlfile.YamlError as exc:
        raise PolicyError(source, exc.line, f"not valid YAML: {exc}") from None
    if root is None:
        raise PolicyError(source, 1, "empty file; a policy starts with 'version: 1'")
    return _Reader(source).policy(root)


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.constructor = SafeConstructor()

    # helpers
    def fail(self, node: Node, reason: str) -> PolicyError:
        return PolicyError(self.source, node.start_mark.line + 1, reason)

    def mapping(self, node: Node, what: str, allowed: tuple[str, ...]) -> dict[str, tuple[Node, Node]]:
        if not isinstance(node, MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node)
            if not isinstance(key, str):
                raise self.fail(key_node, f"{what}: key {key!r} is not a name")
            if key not in allowed:
                raise self.fail(key_node, f"{what}: unknown key {key!r} (expected one of: {', '.join(allowed)})")
            if key in out:
                raise self.fail(key_node, f"{what}: {key!r} given twice")
            out[key] = (key_node, value_node)
        return out

    def value(self, node: Node) -> Any:
        return self.constructor.construct_object(node, deep=True)

    def string(self, node: Node, what: str, pattern: re.Pattern[str] | None = None) -> str:
        value = self.value(node)
        if not isinstance(node, ScalarNode) or not isinstance(value, str):
            raise self.fail(node, f"{what} must be a string, not {_kind(value)}")
        if pattern is not None and pattern.fullmatch(value) is None:
            raise self.fail(node, f"{what} {value!r} is not well formed")
        return value

    def integer(self, node: Node, what: str, minimum: int | None = None) -> int:
        value = self.value(node)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(node, f"{what} must be an integer, not {_kind(value)}")
        if minimum is not None and value < minimum:
            raise self.fail(node, f"{what} must be at least {minimum}")
        return value

    def strings(self, node: Node, what: str) -> list[str]:
        if not isinstance(node, SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        return [self.string(item, f"{what} entry") for item in node.value]

    # the document
    def policy(self, root: Node) -> Policy:
        top = self.mapping(root, "policy", TOP_KEYS)
        if "version" not in top:
            raise self.fail(root, "missing 'version' (this ipcproxy reads policy version 1)")
        version_node = top["version"][1]
        version = self.value(version_node)
        if isinstance(version, bool) or not isinstance(version, int):
            raise self.fail(version_node, f"version must be an integer, not {_kind(version)}")
        if version != VERSION:
            raise self.fail(version_node, f"unknown policy version {version} (this ipcproxy reads version {VERSION})")
        if "format" in top:
            fmt = self.value(top["format"][1])
            if fmt != FORMAT:
                raise self.fail(top["format"][1], f"format must be {FORMAT!r}, not {fmt!r}")
        policy = Policy(source=self.source)
        if "order" in top:
            policy.order_n = self.integer(top["order"][1], "order (n-gram length)", 0)
        if "threshold" in top:
            policy.threshold = self.integer(top["threshold"][1], "threshold", 1)
        if "unknown" in top:
            unknown = self.value(top["unknown"][1])
            if unknown not in ("deny", "allow"):
                raise self.fail(top["unknown"][1], f"unknown must be 'deny' or 'allow', not {unknown!r}")
            policy.unknown = unknown
        if "errno" in top:
            policy.errno = self.errno(top["errno"][1])
        if "components" not in top:
            raise self.fail(root, "missing 'components' (the list of component profiles)")
        components = top["components"][1]
        if not isinstance(components, SequenceNode):
            raise self.fail(components, "components must be a list of profiles")
        seen: dict[tuple[str, int | None], int] = {}
        for item in components.value:
            subject = self.subject(item, policy.order_n)
            if subject.identity() in seen:
                raise self.fail(item, f"{subject.label} is profiled twice (first at line {seen[subject.identity()]})")
            seen[subject.identity()] = item.start_mark.line + 1
            policy.subjects.append(subject)
        return policy

    def subject(self, node: Node, order_n: int) -> Subject:
        fields = self.mapping(node, "component profile", SUBJECT_KEYS)
        if "component" not in fields:
            raise self.fail(node, "component profile without 'component' (its well-known name or executable)")
        subject = Subject(component=self.string(fields["component"][1], "component"), line=node.start_mark.line + 1)
        if "uid" in fields and self.value(fields["uid"][1]) is not None:
            subject.uid = self.integer(fields["uid"][1], "uid", 0)
        if "exe" in fields and self.value(fields["exe"][1]) is not None:
            subject.exe = self.string(fields["exe"][1], "exe")
        if "own" in fields:
            subject.own = [self._name(n) for n in self._items(fields["own"][1], "own")]
        if "rules" in fields:
            rules = fields["rules"][1]
            if not isinstance(rules, SequenceNode):
                if self.value(rules) is not None:
                    raise self.fail(rules, "rules must be a list")
            else:
                subject.rules = [self.rule(item) for item in rules.value]
        if "order" in fields:
            subject.order = self.order(fields["order"][1], order_n)
        if "errno" in fields:
            subject.errno = self.errno(fields["errno"][1])
        return subject

    def errno(self, node: Node) -> str:
        name = self.string(node, "errno")
        if not is_errno(name):
            raise self.fail(node, f"errno {name!r} is not an errno name (e.g. EACCES, EPERM)")
        return name

    def _items(self, node: Node, what: str) -> list[Node]:
        if isinstance(node, ScalarNode) and self.value(node) is None:
            return []
        if not isinstance(node, SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        return list(node.value)

    def _name(self, node: Node) -> str:
        return self.string(node, "owned name", _DOTTED)

    def order(self, node: Node, n: int) -> set[tuple[str, ...]]:
        grams: set[tuple[str, ...]] = set()
        items = self._items(node, "order")
        if items and n <= 0:
            raise self.fail(node, "order n-grams given but the top-level 'order' length is 0 or missing")
        for item in items:
            gram = tuple(self.strings(item, "order n-gram"))
            if len(gram) != n:
                raise self.fail(item, f"order n-gram has {len(gram)} entries, the policy's order length is {n}")
            grams.add(gram)
        return grams

    def rule(self, node: Node) -> Rule:
        fields = self.mapping(node, "rule", RULE_KEYS)
        directions = [d for d in DIRECTIONS if d in fields]
        if len(directions) != 1:
            raise self.fail(node, "a rule needs exactly one of 'send: TYPE' or 'receive: TYPE'")
        direction = directions[0]
        type_node = fields[direction][1]
        mtype = self.value(type_node)
        if mtype not in RULE_TYPES:
            raise self.fail(type_node, f"{direction}: {mtype!r} is not one of {', '.join(RULE_TYPES)}")
        rule = Rule(direction=direction, type=mtype, line=node.start_mark.line + 1)
        peer_key, wrong_key = ("to", "from") if direction == SEND else ("from", "to")
        if wrong_key in fields:
            raise self.fail(fields[wrong_key][0], f"a {direction} rule names its peer with '{peer_key}:'")
        if peer_key in fields:
            rule.peer = self.string(fields[peer_key][1], peer_key)
        else:
            rule.peer = ANY
        if "peer_uid" in fields:
            rule.peer_uid = self.integer(fields["peer_uid"][1], "peer_uid", 0)
        if "path" in fields:
            path_node = fields["path"][1]
            if isinstance(path_node, SequenceNode):
                rule.paths = tuple(self.string(p, "path", _PATH) for p in path_node.value)
            else:
                rule.paths = (self.string(path_node, "path", _PATH),)
        if "path_prefix" in fields:
            prefix = self.string(fields["path_prefix"][1], "path_prefix")
            if not prefix.startswith("/"):
                raise self.fail(fields["path_prefix"][1], f"path_prefix {prefix!r} must start with /")
            rule.path_prefix = prefix
        if "interface" in fields:
            rule.interface = self.string(fields["interface"][1], "interface", _DOTTED)
        if "member" in fields:
            rule.member = self.string(fields["member"][1], "member", _MEMBER)
        if "signature" in fields:
            value = self.value(fields["signature"][1])
            rule.signature = "" if value is None else self.string(fields["signature"][1], "signature", _SIGNATURE)
        if "args" in fields:
            rule.args = self.args(fields["args"][1])
        wrong = [k for k in (DBUS_RULE_KEYS if mtype == DATA else DATA_RULE_KEYS) if k in fields]
        if wrong:
            kind = "a data rule (pipes, sockets)" if mtype == DATA else f"a {mtype} rule (D-Bus)"
            raise self.fail(fields[wrong[0]][0], f"{wrong[0]!r} does not apply to {kind}")
        if mtype == DATA:
            self.data_rule(rule, fields)
        return rule

    def data_rule(self, rule: Rule, fields: dict[str, tuple[Node, Node]]) -> None:
        if "transport" in fields:
            node = fields["transport"][1]
            transport = self.string(node, "transport")
            if transport not in TRANSPORTS:
                raise self.fail(node, f"transport {transport!r} is not one of {', '.join(TRANSPORTS)}")
            rule.transport = transport
        if "channel" in fields:
            rule.channel = self.channel(fields["channel"][1])
        if "size" in fields:
            node = fields["size"][1]
            bounds = self.value(node)
            if (
                not isinstance(bounds, list)
                or len(bounds) != 2
                or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in bounds)
            ):
                raise self.fail(node, "size must be [low, high], two byte counts")
            if bounds[0] > bounds[1]:
                raise self.fail(node, f"size {bounds}: low is above high")
            rule.size = (bounds[0], bounds[1])
        if "fds" in fields:
            rule.fds = self.integer(fields["fds"][1], "fds (most file descriptors passed)", 0)
        if "payload" in fields:
            rule.payload = self.payload(fields["payload"][1])
        if "errno" in fields:
            rule.errno = self.errno(fields["errno"][1])

    def channel(self, node: Node) -> ChannelMatch:
        fields = self.mapping(node, "channel", CHANNEL_KEYS)
        values: dict[str, object] = {}
        for key in ("path", "local", "remote"):
            if key in fields:
                values[key] = self.string(fields[key][1], f"channel {key}")
        if "socktype" in fields:
            socktype = self.string(fields["socktype"][1], "channel socktype")
            if socktype not in SOCKTYPES:
                raise self.fail(fields["socktype"][1], f"socktype {socktype!r} is not one of {', '.join(SOCKTYPES)}")
            values["socktype"] = socktype
        if "fd" in fields:
            values["fd"] = self.integer(fields["fd"][1], "channel fd", 0)
        return ChannelMatch(**values)  # type: ignore[arg-type]

    def payload(self, node: Node) -> PayloadMatch:
        fields = self.mapping(node, "payload", PAYLOAD_KEYS)
        if not fields:
            raise self.fail(node, "empty payload constraint (give prefix or regex)")
        match = PayloadMatch()
        if "prefix" in fields:
            prefix_node = fields["prefix"][1]
            text = self.string(prefix_node, "payload prefix")
            try:
                match.prefix = text.encode("latin-1")
            except UnicodeEncodeError:
                raise self.fail(prefix_node, "payload prefix: one character per byte (\\x00-\\xff) only") from None
        if "regex" in fields:
            regex_node = fields["regex"][1]
            regex = self.string(regex_node, "payload regex")
            try:
                re.compile(regex)
            except re.error as exc:
                raise self.fail(regex_node, f"payload regex {regex!r} is not a regular expression: {exc}") from None
            match.regex = regex
        return match

    def args(self, node: Node) -> dict[int, ArgConstraint]:
        if not isinstance(node, MappingNode):
            raise self.fail(node, "args must be a mapping of argument index to constraint")
        out: dict[int, ArgConstraint] = {}
        for key_node, value_node in node.value:
            index = self.integer(key_node, "argument index", 0)
            if index in out:
                raise self.fail(key_node, f"argument {index} constrained twice")
            out[index] = self.constraint(value_node)
        return out

    def constraint(self, node: Node) -> ArgConstraint:
        fields = self.mapping(node, "argument constraint", CONSTRAINT_KEYS)
        if not fields:
            raise self.fail(node, "empty argument constraint (give values, range, pattern or max_len)")
        c = ArgConstraint()
        if "values" in fields:
            values_node = fields["values"][1]
            if not isinstance(values_node, SequenceNode):
                raise self.fail(values_node, "values must be a list")
            c.values = list(self.value(values_node))
        if "range" in fields:
            range_node = fields["range"][1]
            bounds = self.value(range_node)
            if (
                not isinstance(bounds, list)
                or len(bounds) != 2
                or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
            ):
                raise self.fail(range_node, "range must be [low, high], two numbers")
            if bounds[0] > bounds[1]:
                raise self.fail(range_node, f"range {bounds}: low is above high")
            c.range = (bounds[0], bounds[1])
        if "pattern" in fields:
            pattern_node = fields["pattern"][1]
            pattern = self.string(pattern_node, "pattern")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise self.fail(pattern_node, f"pattern {pattern!r} is not a regular expression: {exc}") from None
            c.pattern = pattern
        if "max_len" in fields:
            c.max_len = self.integer(fields["max_len"][1], "max_len", 0)
        return c
