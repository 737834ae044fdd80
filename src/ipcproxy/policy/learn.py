"""Learning a least-privilege policy from what components actually did.

Fed replayed Contexts (so it sees messages exactly as the enforcer will),
it groups each component's messages into rules by direction, type, peer,
interface, member and signature; paths and method-call arguments become
constraints (see ``generalise``); names requested from the bus become
``own``; the method calls each connection sends to services (not to the
bus driver) become order n-grams.
Replies need no rule: the enforcer lets through replies to calls it let
through. ``coarse`` learns the destination-only baseline instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..model import Endpoint, MessageType
from ..trace.replay import Replayed
from .datachannel import channel_match
from .datamatch import ChannelMatch, PayloadMatch
from .decide import OrderTracker
from .facts import DataFacts, Facts, facts_of
from .generalise import constraint, path_generalisation, payload_generalisation, size_bound
from .identity import component_of, in_order_model, peer_fields, symbol
from .model import ANY, DATA, UNKNOWN, ArgConstraint, Policy, Rule, Subject

# channels whose ends are inherited by forked children: who is at the other end when a call is decided is
# a matter of timing (a forked child runs its parent's program until it execs; several processes may hold
# an end; a read may return before the write that fed it is seen to end), so a learnt rule on them names
# no peer: each side is judged as itself (exactly: it is the caller), by the fd and transport it uses
_INHERITED = frozenset({"pipe", "fifo"})
_STREAMS = frozenset({"pipe", "fifo", "tcp"})
# sizes vary with the input from run to run: the bound is twice the largest seen, to the next power of
# two, and never below a page
MIN_SIZE_BOUND = 4096


@dataclass(slots=True)
class _Group:
    """Every observation of one rule key."""

    count: int = 0
    paths: list[str] = field(default_factory=list)
    samples: list[list[Any]] | None = field(default_factory=list)  # None once a sample had no arguments


@dataclass(slots=True)
class _DataGroup:
    """Every observation of one data rule: transport, channel, peer."""

    count: int = 0
    sizes: list[int] = field(default_factory=list)
    fds: int = 0
    payloads: list[bytes] = field(default_factory=list)
    stream: bool = True

    def add(self, data: DataFacts, counted: bool) -> None:
        self.count += counted
        self.sizes.append(data.size)
        self.fds = max(self.fds, data.nfds)
        self.payloads.append(data.payload)


DataKey = tuple[str, str, int | None, str, ChannelMatch]  # direction, peer, peer uid, transport, channel


@dataclass(slots=True)
class _SubjectStats:
    component: str
    uid: int | None
    exe: str | None = None
    messages: int = 0
    replies: int = 0
    own: Counter[str] = field(default_factory=Counter)
    groups: dict[tuple[Any, ...], _Group] = field(default_factory=dict)
    data_groups: dict[DataKey, _DataGroup] = field(default_factory=dict)
    grams: set[tuple[str, ...]] = field(default_factory=set)
    dbus: bool = False  # whether it sent or received D-Bus messages (an order model is about those)


@dataclass(slots=True)
class Coverage:
    """How much of the training traffic each part of the learnt policy accounts for."""

    component: str
    uid: int | None
    messages: int
    replies: int
    own: int
    rules: list[tuple[Rule, int]]


class Learner:
    def __init__(self, threshold: int = 5, ngram: int = 2, coarse: bool = False) -> None:
        if threshold < 1:
            raise ValueError("the generalisation threshold must be at least 1")
        if ngram < 0:
            raise ValueError("the n-gram length cannot be negative")
        self.threshold = threshold
        self.ngram = 0 if coarse else ngram
        self.coarse = coarse
        self.subjects: dict[tuple[str, int | None], _SubjectStats] = {}
        self.order = OrderTracker(max(self.ngram, 1))
        self.messages = 0
        self.skipped = 0

    def feed(self, item: Replayed) -> None:
        if item.ctx.message.transport != "dbus" and item.ctx.message.type is not MessageType.DATA:
            return
        if item.injected or not item.passed:
            self.skipped += 1  # answers the proxy made up, and messages that never got through
            return
        ctx = item.ctx
        client = ctx.client
        key = (component_of(client), client.uid)
        stats = self.subjects.get(key)
        if stats is None:
            stats = self.subjects[key] = _SubjectStats(key[0], key[1])
        if stats.exe is None:
            stats.exe = client.exe
        self.messages += 1
        stats.messages += 1
        facts = facts_of(ctx)
        if facts.data is not None:
            if self.coarse:
                self._group(stats, facts)
            else:
                self._group_data(stats, facts, facts.data, item.peer_aliases)
            return
        stats.dbus = True
        if facts.is_reply:
            stats.replies += 1
            return
        try:
            owned = facts.owned_name()
        except (ValueError, TypeError):
            owned = None
        if owned is not None:
            stats.own[owned] += 1
        else:
            self._group(stats, facts)
        if self.ngram and in_order_model(facts):
            sym = symbol(facts)
            stats.grams.add(self.order.gram(ctx.connection_id, sym))
            self.order.advance(ctx.connection_id, sym)

    def _group(self, stats: _SubjectStats, facts: Facts) -> None:
        peer, peer_uid = peer_fields(facts.peer)
        if self.coarse:
            key: tuple[Any, ...] = (facts.direction, "any", peer, peer_uid, None, None, None)
        else:
            key = (facts.direction, facts.type, peer, peer_uid, facts.interface, facts.member, facts.signature)
        group = stats.groups.get(key)
        if group is None:
            group = stats.groups[key] = _Group()
        group.count += 1
        if self.coarse:
            return
        if facts.path is not None:
            group.paths.append(facts.path)
        if facts.type != "method_call" or not facts.signature or group.samples is None:
            return
        try:
            group.samples.append(facts.args())
        except Exception:  # noqa: BLE001 - arguments not recorded or undecodable: learn no constraint
            group.samples = None

    def _group_data(self, stats: _SubjectStats, facts: Facts, data: DataFacts, aliases: tuple[Endpoint, ...]) -> None:
        """One data message: its rule, plus the peers the same message could show live (see docs/policy.md)."""
        channel = channel_match(data.transport, data.channel, data.fd)
        stream = data.transport in _STREAMS or data.channel.get("socktype") == "stream"
        inherited = data.transport in _INHERITED or (data.transport == "unix" and not data.channel.get("path"))
        peers: list[tuple[str, int | None]] = (
            [(ANY, None)] if inherited else [peer_fields(facts.peer), *(peer_fields(ep) for ep in aliases)]
        )
        seen: set[tuple[str, int | None]] = set()
        for index, (peer, peer_uid) in enumerate(peers):
            if (peer, peer_uid) in seen:
                continue
            seen.add((peer, peer_uid))
            key: DataKey = (facts.direction, peer, peer_uid, data.transport, channel)
            group = stats.data_groups.get(key)
            if group is None:
                group = stats.data_groups[key] = _DataGroup(stream=stream)
            group.add(data, counted=index == 0)

    def _data_rule(self, key: DataKey, group: _DataGroup) -> Rule:
        direction, peer, peer_uid, transport, channel = key
        whole = direction == "send" or not group.stream  # a stream read returns whatever was queued
        prefix, regex = payload_generalisation(group.payloads, with_prefix=whole)
        return Rule(
            direction=direction,
            type=DATA,
            peer=peer,
            peer_uid=peer_uid,
            transport=transport,
            channel=channel if channel.to_dict() else None,
            size=(0, max(MIN_SIZE_BOUND, size_bound(2 * max(group.sizes)))) if whole and group.sizes else None,
            fds=group.fds,
            payload=PayloadMatch(prefix, regex) if prefix is not None or regex is not None else None,
            count=group.count,
        )

    def policy(self) -> Policy:
        policy = Policy(order_n=self.ngram, threshold=self.threshold)
        for key in sorted(self.subjects, key=lambda k: (k[0], -1 if k[1] is None else k[1])):
            stats = self.subjects[key]
            subject = Subject(
                component=stats.component,
                uid=stats.uid,
                exe=stats.exe,
                own=sorted(stats.own),
                messages=stats.messages,
                order=set(stats.grams) if self.ngram and stats.dbus else None,
            )
            for gkey in sorted(stats.groups, key=_sort_key):
                subject.rules.append(self._rule(gkey, stats.groups[gkey]))
            for dkey in sorted(stats.data_groups, key=_data_sort_key):
                subject.rules.append(self._data_rule(dkey, stats.data_groups[dkey]))
            policy.subjects.append(subject)
        return policy

    def _rule(self, key: tuple[Any, ...], group: _Group) -> Rule:
        direction, mtype, peer, peer_uid, interface, member, signature = key
        rule = Rule(
            direction=direction,
            type=mtype,
            peer=peer,
            peer_uid=peer_uid,
            interface=interface,
            member=member,
            signature=signature,
            count=group.count,
        )
        if group.paths and len(group.paths) == group.count:
            rule.paths, rule.path_prefix = path_generalisation(group.paths, self.threshold)
        if group.samples:
            rule.args = self._args(group.samples)
        return rule

    def _args(self, samples: list[list[Any]]) -> dict[int, ArgConstraint]:
        width = min(len(s) for s in samples)
        out: dict[int, ArgConstraint] = {}
        for index in range(width):
            c = constraint([s[index] for s in samples], self.threshold)
            if c is not None:
                out[index] = c
        return out

    def coverage(self, policy: Policy) -> list[Coverage]:
        out = []
        for subject in policy.subjects:
            stats = self.subjects[(subject.component, subject.uid)]
            out.append(
                Coverage(
                    component=subject.component,
                    uid=subject.uid,
                    messages=stats.messages,
                    replies=stats.replies,
                    own=sum(stats.own.values()),
                    rules=[(rule, rule.count) for rule in subject.rules],
                )
            )
        return out


def _sort_key(key: tuple[Any, ...]) -> tuple[str, ...]:
    """Sent before received, then by peer, interface and member."""
    direction, mtype, peer, peer_uid, interface, member, signature = key
    parts = (direction == "receive", peer, peer_uid, interface, member, mtype, signature)
    return tuple("" if part is None else str(part) for part in parts)


def _data_sort_key(key: DataKey) -> tuple[str, ...]:
    """Sent before received, then by transport, channel and peer (unknown peers last)."""
    direction, peer, peer_uid, transport, channel = key
    return (str(direction == "receive"), transport, repr(channel.to_dict()), str(peer == UNKNOWN), peer, str(peer_uid))


def learn(items: Iterable[Replayed], threshold: int = 5, ngram: int = 2, coarse: bool = False) -> Learner:
    """Feed every replayed message to a new Learner and return it."""
    learner = Learner(threshold, ngram, coarse)
    for item in items:
        learner.feed(item)
    return learner
