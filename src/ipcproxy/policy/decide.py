"""The decision: does a policy allow this message, and if not, which rule is missing.

Pure: a Policy and a Context in, a Decision out. The per-connection order
history is the only state, kept in ``OrderTracker`` so the live enforcer and
the offline checker advance it the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace

from ..chain import Context
from .datachannel import channel_match
from .datamatch import limits_violation
from .facts import Facts, facts_of
from .identity import in_order_model, peer_fields, peer_label, peer_matches, subjects_for, symbol
from .model import DATA, START, ArgConstraint, Policy, Rule, Subject, flow

# kinds of decisions
ALLOWED = "allowed"
NO_PROFILE = "no-profile"
NO_RULE = "no-rule"
ARGS = "args"
SIZE = "size"  # a data message: size or fds passed out of bounds
PAYLOAD = "payload"  # a data message: bytes outside the pattern
OWN = "own"
REPLY = "reply"
ORDER = "order"
UNDECIDABLE = "undecidable"


@dataclass(slots=True)
class Decision:
    allowed: bool
    kind: str
    reason: str
    subject: str = "?"  # the component the decision was made for
    rule: Rule | None = None  # the rule that allowed it, or the nearest one that did not
    needed: str | None = None  # the rule that would allow it, in the file's notation
    ngram: tuple[str, ...] | None = None  # for order anomalies
    errno: str | None = None  # a denied data message: the errno its syscall fails with


def needed_rule(facts: Facts) -> Rule:
    """The narrowest rule that would let this message through."""
    peer, peer_uid = peer_fields(facts.peer)
    if facts.data is not None:
        return Rule(
            direction=facts.direction,
            type=DATA,
            peer=peer,
            peer_uid=peer_uid,
            transport=facts.data.transport,
            channel=channel_match(facts.data.transport, facts.data.channel, facts.data.fd),
        )
    return Rule(
        direction=facts.direction,
        type=facts.type,
        peer=peer,
        peer_uid=peer_uid,
        paths=(facts.path,) if facts.path else None,
        interface=facts.interface,
        member=facts.member,
        signature=facts.signature,
    )


def _rule_matches_header(policy: Policy, rule: Rule, facts: Facts) -> bool:
    if facts.data is not None:
        data = facts.data
        return (
            rule.direction == facts.direction
            and rule.type in ("any", DATA)
            and rule.paths is None
            and rule.path_prefix is None
            and rule.interface is None
            and rule.member is None
            and rule.signature is None
            and not rule.args
            and (rule.transport is None or rule.transport == data.transport)
            and (rule.channel is None or rule.channel.violation(data.channel, data.fd) is None)
            and peer_matches(policy, rule, facts.peer)
        )
    if rule.type == DATA:
        return False
    return (
        rule.direction == facts.direction
        and (rule.type == "any" or rule.type == facts.type)
        and (rule.member is None or rule.member == facts.member)
        and (rule.interface is None or rule.interface == facts.interface)
        and (rule.signature is None or rule.signature == facts.signature)
        and rule.path_ok(facts.path)
        and peer_matches(policy, rule, facts.peer)
    )


def _args_violation(rule: Rule, facts: Facts) -> str | None:
    if facts.data is not None:
        broken = _limits(rule, facts)
        return None if broken is None else broken[1]
    if not rule.args:
        return None
    args = facts.args()
    for index, constraint in rule.args.items():
        if index >= len(args):
            return f"argument {index} is missing"
        why = constraint.violation(args[index])
        if why is not None:
            return f"argument {index}: {why}"
    return None


def _limits(rule: Rule, facts: Facts) -> tuple[str, str] | None:
    data = facts.data
    if data is None:
        return None
    return limits_violation(rule.size, rule.fds, rule.payload, size=data.size, nfds=data.nfds, data=data.payload)


def widened(rule: Rule, facts: Facts) -> Rule:
    """The rule changed just enough to accept this message's arguments (or size, fds, payload)."""
    if facts.data is not None:
        data = facts.data
        size = rule.size
        if size is not None:
            size = (min(size[0], data.size), max(size[1], data.size))
        fds = None if rule.fds is None else max(rule.fds, data.nfds)
        payload = rule.payload
        if payload is not None and payload.violation(data.payload, data.size) is not None:
            payload = None
        return replace(rule, size=size, fds=fds, payload=payload)
    args = facts.args()
    new_args: dict[int, ArgConstraint] = {}
    for index, c in rule.args.items():
        value = args[index] if index < len(args) else None
        if index >= len(args) or c.violation(value) is None:
            new_args[index] = c
        elif c.values is not None and c.range is None and c.pattern is None and c.max_len is None:
            new_args[index] = ArgConstraint(values=[*c.values, value])
        elif c.range is not None and isinstance(value, int | float) and not isinstance(value, bool):
            new_args[index] = ArgConstraint(range=(min(c.range[0], value), max(c.range[1], value)))
        # anything else: the constraint has to go
    return replace(rule, args=new_args)


@dataclass(slots=True)
class OrderTracker:
    """The last n-1 method calls each connection sent, to check n-grams against."""

    n: int
    limit: int = 65536
    _history: OrderedDict[int, tuple[str, ...]] = field(default_factory=OrderedDict)

    def gram(self, connection: int, sym: str) -> tuple[str, ...]:
        history = self._history.get(connection)
        if history is None:
            history = (START,) * (self.n - 1)
        return (*history, sym)

    def advance(self, connection: int, sym: str) -> None:
        gram = self.gram(connection, sym)
        self._history[connection] = gram[1:]
        self._history.move_to_end(connection)
        while len(self._history) > self.limit:
            self._history.popitem(last=False)


def decide(policy: Policy, ctx: Context, order: OrderTracker | None = None, advance_on_deny: bool = False) -> Decision:
    """Decide one message; exceptions (an undecodable body) propagate to the caller, which fails closed."""
    facts = facts_of(ctx)
    subjects = subjects_for(policy, ctx.client)
    label = subjects[0].label if len(subjects) == 1 else ctx.client.component
    decision = _decide(policy, ctx, facts, subjects, label, order, advance_on_deny)
    if facts.data is not None and not decision.allowed:
        decision.errno = _errno(policy, subjects, decision.rule)
    return decision


def _errno(policy: Policy, subjects: list[Subject], nearest: Rule | None) -> str:
    """The nearest rule's errno, else the component's, else the policy's (EACCES unless it says)."""
    if nearest is not None and nearest.errno is not None:
        return nearest.errno
    for subject in subjects:
        if subject.errno is not None:
            return subject.errno
    return policy.errno


def _decide(
    policy: Policy,
    ctx: Context,
    facts: Facts,
    subjects: list[Subject],
    label: str,
    order: OrderTracker | None,
    advance_on_deny: bool,
) -> Decision:
    if not subjects:
        if policy.unknown == "allow":
            return Decision(True, ALLOWED, "component has no profile; unknown components are allowed", label)
        needed = needed_rule(facts)
        return Decision(
            False,
            NO_PROFILE,
            f"{_who(ctx)} has no profile in the policy",
            label,
            needed=needed.describe(),
        )
    if facts.is_reply:
        if ctx.reply_to_allowed_call:
            return Decision(True, ALLOWED, "reply to a call that was let through", label)
        return Decision(False, REPLY, f"{facts.type} from {label} answers no call that was let through", label)
    owned = facts.owned_name()
    decision = _own(subjects, owned, label) if owned is not None else _match_rules(policy, subjects, facts, label)
    if order is not None and policy.order_n > 0 and in_order_model(facts):
        decision = _check_order(subjects, facts, ctx.connection_id, order, decision, advance_on_deny)
    return decision


def _own(subjects: list[Subject], name: str, label: str) -> Decision:
    if any(name in s.own for s in subjects):
        return Decision(True, ALLOWED, f"may own {name}", label)
    return Decision(
        False,
        OWN,
        f"{label} may not own {name}: no 'own: [{name}]' in its profile",
        label,
        needed=f"own: [{name}]",
    )


def _check_order(
    subjects: list[Subject],
    facts: Facts,
    connection: int,
    order: OrderTracker,
    decision: Decision,
    advance_on_deny: bool,
) -> Decision:
    models = [s.order for s in subjects if s.order is not None]
    if not models:
        return decision
    sym = symbol(facts)
    if decision.allowed:
        gram = order.gram(connection, sym)
        if not any(gram in m for m in models):
            decision = Decision(
                False,
                ORDER,
                f"{decision.subject}: {facts.member} out of order, never seen after "
                + " → ".join(gram[:-1])
                + f" (n-gram {list(gram)} is not in its order model)",
                decision.subject,
                rule=decision.rule,
                needed=flow({"order": list(gram)}),
                ngram=gram,
            )
    if decision.allowed or advance_on_deny:
        order.advance(connection, sym)
    return decision


def _match_rules(policy: Policy, subjects: list[Subject], facts: Facts, label: str) -> Decision:
    nearest: tuple[Rule, str] | None = None
    for subject in subjects:
        for rule in subject.rules:
            if not _rule_matches_header(policy, rule, facts):
                continue
            why = _args_violation(rule, facts)
            if why is None:
                return Decision(True, ALLOWED, "allowed", label, rule=rule)
            if nearest is None:
                nearest = (rule, why)
    if nearest is not None:
        rule, why = nearest
        if facts.data is not None:
            broken = _limits(rule, facts)
            return Decision(
                False,
                broken[0] if broken else ARGS,
                f"{label} may {facts.direction} data on this {facts.data.transport} channel "
                f"{'to' if facts.direction == 'send' else 'from'} {peer_label(facts.peer)} within limits only: {why}"
                + (f" (rule at line {rule.line})" if rule.line else ""),
                label,
                rule=rule,
                needed=widened(rule, facts).describe(),
            )
        return Decision(
            False,
            ARGS,
            f"{label} may {facts.direction} {facts.member} with other arguments only: {why}"
            + (f" (rule at line {rule.line})" if rule.line else ""),
            label,
            rule=rule,
            needed=widened(rule, facts).describe(),
        )
    needed = needed_rule(facts)
    return Decision(
        False,
        NO_RULE,
        f"no rule lets {label} {_verb(facts)}: missing {needed.describe()}",
        label,
        needed=needed.describe(),
    )


def _verb(facts: Facts) -> str:
    peer = peer_label(facts.peer)
    if facts.data is not None:
        data = facts.data
        what = f"{data.transport} {facts.member or 'data'}"
        if facts.direction == "send":
            return f"send data ({what}) to {peer}"
        return f"receive data ({what}) from {peer}"
    what = f"{facts.interface}.{facts.member}" if facts.interface else (facts.member or facts.type)
    if facts.direction == "send":
        return f"send {facts.type} {what} to {peer}"
    return f"receive {facts.type} {what} from {peer}"


def _who(ctx: Context) -> str:
    ep = ctx.client
    text = ep.component
    if ep.uid is not None:
        text += f" (uid {ep.uid})"
    return text
