"""Faults enumerated from a golden trace: every matching message × every listed action.

Each enumerated fault names one message of the golden run by a selector
precise enough to be stable across runs (type, path, interface, member, the
sender's and receiver's component, the call a reply answers) and the
occurrence of that selector (``nth``), counted exactly as the live injector
counts. A seeded sample keeps campaigns small.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from ..chain import Context
from ..model import BUS_DRIVER_NAME, Endpoint, MessageType
from ..syscall.intercept import data_context, is_data_record
from .offline import replay, system_records
from .plan import EnumerateSpec, FaultSpec, Selector, _Ctx, fault_from_dict, parse_selector
from .selectors import OwnedNames, matches


def _identity(ep: Endpoint, header: str | None, owned: OwnedNames) -> str | None:
    if header and not header.startswith(":"):
        return header
    if ep.bus_name == BUS_DRIVER_NAME:
        return BUS_DRIVER_NAME
    names = sorted(owned.of(ep.bus_name) | {n for n in ep.names if not n.startswith(":")})
    if names:
        return names[0]
    return ep.exe


def selector_for(ctx: Context, owned: OwnedNames) -> dict[str, Any]:
    """The plan-form selector naming this message's kind, sender and receiver."""
    msg = ctx.message
    sel: dict[str, Any] = {"type": msg.type.wire_name}
    sender = _identity(ctx.sender, msg.sender, owned)
    if sender:
        sel["sender"] = sender
    if msg.destination is not None:
        dest = _identity(ctx.destination, msg.destination, owned)
        if dest:
            sel["destination"] = dest
    for key in ("path", "interface", "member", "error_name"):
        value = getattr(msg, key)
        if value is not None:
            sel[key] = value
    call = ctx.call_message
    if msg.type in (MessageType.METHOD_RETURN, MessageType.ERROR) and call is not None:
        sel["reply_to"] = {k: getattr(call, k) for k in ("interface", "member") if getattr(call, k) is not None}
    return sel


def _key(sel: dict[str, Any]) -> str:
    return repr(sorted(sel.items()))


def data_selector_for(ctx: Context) -> dict[str, Any]:
    """The plan-form selector naming a data message by what stays the same from run to run.

    The process making the call by its executable, the call, its fd and the
    channel's path (inodes and ephemeral ports change). The other end is left
    out: a send's receiver is whoever held the other end at that moment (the
    shell about to exec it, perhaps), and a receive's writer may not be known
    yet when the tracer decides about the call (its write not seen to end).
    """
    data = ctx.data or {}
    sel: dict[str, Any] = {"type": "data", "transport": ctx.message.transport}
    for key in ("direction", "syscall", "fd"):
        if data.get(key) is not None:
            sel[key] = data[key]
    if ctx.client.exe:
        sel["process"] = ctx.client.exe
    path = (ctx.channel or {}).get("path")
    if path:
        sel["channel"] = {"path": path}
    return sel


def data_candidates(records: Iterable[dict[str, Any]], match: Selector) -> list[tuple[dict[str, Any], int, int]]:
    """(selector, nth, seq) for every data message ``match`` selects, counted as the injector counts:
    once per call, in the order of the trace."""
    ctxs = [data_context(r) for r in records if is_data_record(r)]
    owned = OwnedNames()
    chosen = [(data_selector_for(c), c.seq) for c in ctxs if matches(match, c, owned)]
    selectors = {_key(sel): parse_selector(_Ctx("<enumerate>"), {"match": sel}, "match") for sel, _ in chosen}
    running = dict.fromkeys(selectors, 0)
    nth_at: dict[tuple[str, int], int] = {}
    for c in ctxs:
        for key, sel_obj in selectors.items():
            if matches(sel_obj, c, owned):
                running[key] += 1
                nth_at[(key, c.seq)] = running[key]
    return [(sel, nth_at[(_key(sel), seq)], seq) for sel, seq in chosen]


def candidates(records: Iterable[dict[str, Any]], match: Selector) -> list[tuple[dict[str, Any], int, int]]:
    """(selector, nth, seq) for every message that ``match`` selects where the injector decides."""
    if match.is_data:
        return data_candidates(records, match)
    recs = list(system_records(records))
    owned = OwnedNames()
    chosen: list[tuple[dict[str, Any], int]] = []
    for p in replay(recs, owned):
        if p.decides and matches(match, p.ctx, owned):
            chosen.append((selector_for(p.ctx, owned), p.ctx.seq))
    selectors = {_key(sel): parse_selector(_Ctx("<enumerate>"), {"match": sel}, "match") for sel, _ in chosen}
    running = dict.fromkeys(selectors, 0)
    nth_at: dict[tuple[str, int], int] = {}
    owned = OwnedNames()  # count again from the start, as the live injector will
    for p in replay(recs, owned):
        if not p.decides:
            continue
        for key, sel_obj in selectors.items():
            if matches(sel_obj, p.ctx, owned):
                running[key] += 1
                nth_at[(key, p.ctx.seq)] = running[key]
    return [(sel, nth_at[(_key(sel), seq)], seq) for sel, seq in chosen if (_key(sel), seq) in nth_at]


def enumerate_faults(
    goldens: list[list[dict[str, Any]]], spec: EnumerateSpec, seed: int, first_index: int
) -> list[FaultSpec]:
    """One fault per (message seen in every golden run × action), optionally a seeded sample."""
    per_run = [candidates(records, spec.match) for records in goldens]
    common = set.intersection(*({(json.dumps(sel, sort_keys=True), nth) for sel, nth, _ in run} for run in per_run))
    # a stable order, independent of how independent components happened to interleave
    found = sorted(
        ((sel, nth, seq) for sel, nth, seq in per_run[0] if (json.dumps(sel, sort_keys=True), nth) in common),
        key=lambda c: (json.dumps(c[0], sort_keys=True), c[1]),
    )
    if spec.sample is not None and spec.sample < len(found):
        # each candidate draws its own seeded rank: a message that only some campaigns' golden runs
        # show changes at most one pick, instead of shifting the whole sample
        def rank(c: tuple[dict[str, Any], int, int]) -> str:
            return hashlib.sha256(f"{seed}:{json.dumps(c[0], sort_keys=True)}:{c[1]}".encode()).hexdigest()

        keep = {id(c) for c in sorted(found, key=rank)[: spec.sample]}
        found = [c for c in found if id(c) in keep]
    faults: list[FaultSpec] = []
    for sel, nth, _seq in found:
        for action in spec.actions:
            kind = next(iter(action))
            if sel["type"] == "data":
                if kind == "duplicate" and sel.get("direction") == "recv":
                    continue  # only a send can be performed twice
                fd = f" fd {sel['fd']}" if "fd" in sel else ""
                label = f"{kind} {sel.get('syscall', '')} {_short(sel.get('process'))}{fd} #{nth}"
            else:
                what = sel.get("member") or (sel.get("reply_to") or {}).get("member", "") or sel.get("error_name", "")
                route = f"{_short(sel.get('sender'))}->{_short(sel.get('destination'))}"
                label = f"{kind} {sel['type']} {what} {route} #{nth}"
            data = {"name": label, "match": sel, "when": {"nth": nth}, "action": action}
            faults.append(fault_from_dict(data, first_index + len(faults)))
    return faults


def _short(name: str | None) -> str:
    if not name:
        return "*"
    return name.rsplit("/", 1)[-1] if name.startswith("/") else name
