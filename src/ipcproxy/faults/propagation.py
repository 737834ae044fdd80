"""How far a fault spread: the components whose own behaviour changed, nearest the fault first.

Nearness is the number of hops along who-sent-to-whom in the faulty run,
starting from the receiver of the faulted message (the sender, which then
waits or retries, is one hop away). Components at the same distance are
ordered by when they first deviated. The bus driver is infrastructure, not a
component of the system under test, and is left out.
"""

from __future__ import annotations

from collections import deque

from ..model import BUS_DRIVER_NAME
from .canon import Canon
from .envelope import Deviation

FAR = 1 << 30


def distances(canon: Canon) -> dict[str, int]:
    """Hops from the fault along messages of the faulty run."""
    edges: dict[str, set[str]] = {}
    for m in canon.messages:
        if m.sender == BUS_DRIVER_NAME:
            continue
        for r in m.receivers:
            if r != BUS_DRIVER_NAME and r != m.sender:
                edges.setdefault(m.sender, set()).add(r)
    dist: dict[str, int] = {}
    queue: deque[str] = deque()
    for m in canon.faulted[:1]:
        fault = m.fault or {}
        cut_sender = fault.get("fault_action") == "disconnect" and fault.get("side") == "sender"
        targets = [m.sender] if cut_sender else sorted(m.receivers | ({m.destination} if m.destination else set()))
        for t in targets:
            dist.setdefault(t, 0)
            queue.append(t)
        if m.sender not in dist:
            dist[m.sender] = 1
            queue.append(m.sender)
    while queue:
        node = queue.popleft()
        for nxt in sorted(edges.get(node, ())):
            if nxt not in dist:
                dist[nxt] = dist[node] + 1
                queue.append(nxt)
    return dist


def propagation(canon: Canon, devs: list[Deviation], died: dict[str, int]) -> list[str]:
    """Components that deviated or died, ordered by distance from the fault, then by time."""
    first: dict[str, int] = {}
    for d in devs:
        if d.component == BUS_DRIVER_NAME:
            continue
        at = d.seq if d.seq is not None else canon.last_seq + 1
        first[d.component] = min(first.get(d.component, at), at)
    for comp, seq in died.items():
        if comp != BUS_DRIVER_NAME:
            first[comp] = min(first.get(comp, seq), seq)
    dist = distances(canon)
    return sorted(first, key=lambda c: (dist.get(c, FAR), first[c], c))
