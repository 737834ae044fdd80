"""Who a connection is, in a policy's terms (docs/architecture.md, Components: never pids).

A component is named by a well-known name it owns, else by its executable;
the uid is kept beside it. A connection does not own its name yet when it
says Hello, so a profile also records the executable and uid, and a
connection without a profiled name is recognised by those.
"""

from __future__ import annotations

from ..model import BUS_DRIVER_NAME, Endpoint
from .facts import Facts
from .model import ANY, BROADCAST, UNKNOWN, Policy, Rule, Subject


def well_known(names: list[str]) -> list[str]:
    return [n for n in names if not n.startswith(":")]


def is_known(ep: Endpoint) -> bool:
    """Whether an endpoint names anyone: a peer of a data message may be unknown (see docs/policy.md)."""
    return bool(ep.bus_name or ep.names or ep.exe)


def component_of(ep: Endpoint) -> str:
    """The name a policy uses for this endpoint."""
    return ep.component


def subjects_for(policy: Policy, ep: Endpoint) -> list[Subject]:
    """The profiles that apply to a connection (several only when identity facts cannot tell them apart)."""
    names = well_known(ep.names)
    if names:
        by_name = [
            s for s in policy.subjects if _uid_ok(s.uid, ep.uid) and (s.component in names or set(s.own) & set(names))
        ]
        if by_name:
            return by_name
    found = [
        s
        for s in policy.subjects
        if _uid_ok(s.uid, ep.uid)
        and ep.exe is not None
        and (s.component == ep.exe or (s.exe == ep.exe and not s.component.startswith("/")))
    ]
    if found:
        return found
    # a connection without executable facts (e.g. from a pcap) is named by what it is called
    component = ep.component
    return [s for s in policy.subjects if s.component == component and _uid_ok(s.uid, ep.uid)]


def _uid_ok(wanted: int | None, actual: int | None) -> bool:
    return wanted is None or wanted == actual


def peer_matches(policy: Policy, rule: Rule, peer: Endpoint | None) -> bool:
    """Whether the rule's peer (name, executable, broadcast or *) is this endpoint."""
    want = rule.peer
    if peer is None:
        return want in (BROADCAST, ANY)
    if want == ANY:
        return _uid_ok(rule.peer_uid, peer.uid)
    if want == BROADCAST:
        return False
    if want == UNKNOWN or not is_known(peer):
        return want == UNKNOWN and not is_known(peer)
    if rule.peer_uid is not None and peer.uid != rule.peer_uid:
        return False
    if want in peer.names or want == peer.exe or want == component_of(peer):
        return True
    if not well_known(peer.names) and peer.exe is not None:
        # a named component that has not acquired its name yet: recognised by its executable
        return any(s.exe == peer.exe and _uid_ok(s.uid, peer.uid) for s in policy.by_component().get(want, []))
    return False


def peer_label(peer: Endpoint | None) -> str:
    if peer is None:
        return BROADCAST
    return component_of(peer) if is_known(peer) else UNKNOWN


def peer_fields(peer: Endpoint | None) -> tuple[str, int | None]:
    """How a rule names this peer: its component, plus its uid when it is named by executable."""
    label = peer_label(peer)
    if peer is not None and label.startswith("/"):
        return label, peer.uid
    return label, None


def in_order_model(facts: Facts) -> bool:
    """Method calls a connection sends to services; calls to the bus driver (Hello, AddMatch,
    GetNameOwner...) are library plumbing whose interleaving varies, so they are left out."""
    return (
        facts.direction == "send"
        and facts.type == "method_call"
        and facts.peer is not None
        and facts.peer.bus_name != BUS_DRIVER_NAME
        and facts.message.destination != BUS_DRIVER_NAME
    )


def symbol(facts: Facts) -> str:
    """A sent method call as the order model sees it: peer and interface.member, no arguments."""
    return f"{peer_label(facts.peer)} {facts.interface or ''}.{facts.member or ''}"
