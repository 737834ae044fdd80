"""The golden envelope: what varies naturally between clean runs, and what lies outside it.

Learnt from several golden runs, per component: which arguments change from
run to run (they are masked), how many times each message is sent (a range),
and which messages always come before which (a partial order; independent
messages may come in any order). A faulty run's component deviates when a
message count leaves its range or a must-come-before pair is reversed. States
are compared the same way: a value that differs between golden runs is
volatile and ignored.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..model import BUS_DRIVER_NAME
from .canon import Canon, Sent, key_text, relabel

MAX_ORDERED = 1500  # per component; beyond this only counts are checked (the pair check is quadratic)


@dataclass(slots=True)
class Deviation:
    component: str
    kind: str  # missing | added | reordered
    message: str  # readable description
    seq: int | None  # where it shows in the faulty trace (None: a missing message)
    count: int = 1


Call = tuple[str | None, str | None]  # (interface, member)


@dataclass(slots=True)
class ComponentModel:
    counts: dict[str, tuple[int, int]]
    before: set[tuple[tuple[str, int], tuple[str, int]]]
    describe: dict[str, str]
    received: dict[Call, tuple[int, int]] = field(default_factory=dict)  # calls it was sent, per method


@dataclass(slots=True)
class Envelope:
    goldens: list[Canon]
    masked: dict[tuple[str, tuple[Any, ...]], set[int]]  # (sender, header key) -> argument positions that vary
    models: dict[str, ComponentModel] = field(default_factory=dict)
    volatile_state: set[str] = field(default_factory=set)
    golden_state: dict[str, Any] = field(default_factory=dict)
    exit_statuses: set[int | None] = field(default_factory=set)
    stdouts: set[str] = field(default_factory=set)
    services_alive: list[bool] = field(default_factory=list)
    by_exe: dict[str, str] = field(default_factory=dict)  # executable -> the named component it is in golden runs

    def align(self, canon: Canon) -> Canon:
        """Name a faulty run's components as in the golden runs when only their executable is known.

        The name may already appear in the faulty run as a mere destination (a client calling a
        service that never got its name); it is still the same component, so the two are merged.
        """
        golden = set(self.models)
        present = canon.all_components()
        names = {exe: name for exe, name in self.by_exe.items() if exe in present and exe not in golden}
        return relabel(canon, names)

    def key(self, msg: Sent, as_sent: bool = False) -> str:
        args = msg.as_sent_args() if as_sent else msg.args
        mask = self.masked.get((msg.sender, msg.header_key()), set())
        return key_text(msg, ["*" if i in mask else a for i, a in enumerate(args)])

    def sequence(self, canon: Canon, component: str) -> list[tuple[str, Sent]]:
        return [(self.key(m, as_sent=True), m) for m in canon.sent_by(component)]


def _occurrences(keys: list[str]) -> list[tuple[str, int]]:
    seen: Counter[str] = Counter()
    out = []
    for k in keys:
        out.append((k, seen[k]))
        seen[k] += 1
    return out


def _masks(goldens: list[Canon]) -> dict[tuple[str, tuple[Any, ...]], set[int]]:
    groups: dict[tuple[str, tuple[Any, ...]], list[list[list[Any]]]] = {}
    for canon in goldens:
        per: dict[tuple[str, tuple[Any, ...]], list[list[Any]]] = {}
        for m in canon.messages:
            if not m.injected:
                per.setdefault((m.sender, m.header_key()), []).append(m.as_sent_args())
        for k, arg_lists in per.items():
            groups.setdefault(k, []).append(arg_lists)
    masked: dict[tuple[str, tuple[Any, ...]], set[int]] = {}
    for k, runs in groups.items():
        positions: set[int] = set()
        for n in range(max(len(r) for r in runs)):
            nth = [r[n] for r in runs if n < len(r)]
            if len(nth) < 2:
                continue
            width = max(len(a) for a in nth)
            for i in range(width):
                values = {repr(a[i]) if i < len(a) else "<none>" for a in nth}
                if len(values) > 1:
                    positions.add(i)
        if positions:
            masked[k] = positions
    return masked


def flatten_state(state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in state.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten_state(v, path))
        else:
            out[path] = v
    return out


def learn(goldens: list[Canon], results: list[dict[str, Any]]) -> Envelope:
    """The envelope of the golden traces and their run results (exit status, output, state)."""
    env = Envelope(goldens, _masks(goldens))
    components = set().union(*(g.all_components() for g in goldens)) if goldens else set()
    for comp in sorted(components):
        seqs = [[k for k, _ in env.sequence(g, comp)] for g in goldens]
        counters = [Counter(s) for s in seqs]
        all_keys = set().union(*counters)
        counts = {k: (min(c[k] for c in counters), max(c[k] for c in counters)) for k in all_keys}
        describe: dict[str, str] = {}
        for g in goldens:
            for k, m in env.sequence(g, comp):
                describe.setdefault(k, m.describe())
        before: set[tuple[tuple[str, int], tuple[str, int]]] = set()
        if seqs and all(len(s) <= MAX_ORDERED for s in seqs):
            positions = [{occ: i for i, occ in enumerate(_occurrences(s))} for s in seqs]
            common = set(positions[0]).intersection(*positions[1:])
            ordered = sorted(common, key=lambda o: positions[0][o])
            for i, a in enumerate(ordered):
                for b in ordered[i + 1 :]:
                    if all(p[a] < p[b] for p in positions):
                        before.add((a, b))
        got = [received_calls(g, comp) for g in goldens]
        methods = set().union(*got) if got else set()
        received = {m: (min(c[m] for c in got), max(c[m] for c in got)) for m in methods}
        env.models[comp] = ComponentModel(counts, before, describe, received)
    named: dict[str, set[str]] = {}
    for g in goldens:
        for comp, exe in g.exes.items():
            if not comp.startswith("/") and comp != BUS_DRIVER_NAME:
                named.setdefault(exe, set()).add(comp)
    env.by_exe = {exe: next(iter(comps)) for exe, comps in named.items() if len(comps) == 1}
    flats = [flatten_state(r.get("state") or {}) for r in results]
    if flats:
        keys = set().union(*flats)
        for k in keys:
            values = {repr(f.get(k, "<absent>")) for f in flats}
            if len(values) > 1:
                env.volatile_state.add(k)
        env.golden_state = {k: flats[0].get(k) for k in keys if k not in env.volatile_state}
    env.exit_statuses = {r.get("exit_status") for r in results}
    env.stdouts = {r.get("stdout", "") for r in results}
    n_services = max((len(r.get("services") or []) for r in results), default=0)
    env.services_alive = [
        all(i < len(r.get("services") or []) and r["services"][i]["returncode"] is None for r in results)
        for i in range(n_services)
    ]
    return env


def received_calls(canon: Canon, component: str) -> Counter[Call]:
    """How many calls of each method reached the component."""
    got: Counter[Call] = Counter()
    for m in canon.messages:
        if m.type == "method_call" and component in m.receivers:
            got[(m.interface, m.member)] += m.copies
    return got


def _reply_slack(model: ComponentModel, canon: Canon, comp: str) -> tuple[Counter[Call], Counter[Call]]:
    """Replies a component owes more or fewer of because it was sent more or fewer calls.

    Answering an extra call (a duplicate, a retry) or not answering a call that
    never reached it is not a change in its own behaviour, only in what it got.
    """
    got = received_calls(canon, comp)
    extra: Counter[Call] = Counter()
    fewer: Counter[Call] = Counter()
    for method in set(got) | set(model.received):
        lo, hi = model.received.get(method, (0, 0))
        if got[method] > hi:
            extra[method] = got[method] - hi
        elif got[method] < lo:
            fewer[method] = lo - got[method]
    return extra, fewer


def deviations(env: Envelope, canon: Canon) -> list[Deviation]:
    """Every way the components of ``canon`` left the envelope, in the order they show."""
    found: list[Deviation] = []
    components = set(env.models) | canon.all_components()
    for comp in sorted(components):
        if comp == BUS_DRIVER_NAME:
            continue
        model = env.models.get(comp, ComponentModel({}, set(), {}))
        extra_calls, fewer_calls = _reply_slack(model, canon, comp)
        seq = env.sequence(canon, comp)
        counts = Counter(k for k, _ in seq)
        first_at: dict[str, Sent] = {}
        for k, m in seq:
            first_at.setdefault(k, m)
        for k in sorted(set(counts) | set(model.counts)):
            lo, hi = model.counts.get(k, (0, 0))
            have = counts.get(k, 0)
            reply_to = _reply_to_of(k)
            if have < lo:
                missing = lo - have
                sample = first_at.get(k)
                if reply_to is not None:
                    use = min(fewer_calls[reply_to], missing)
                    fewer_calls[reply_to] -= use
                    missing -= use
                if missing > 0:
                    found.append(
                        Deviation(
                            comp, "missing", model.describe.get(k, sample.describe() if sample else k), None, missing
                        )
                    )
            elif have > hi:
                added = have - hi
                if reply_to is not None:
                    use = min(extra_calls[reply_to], added)
                    extra_calls[reply_to] -= use
                    added -= use
                if added > 0:
                    extra = [m for kk, m in seq if kk == k][have - added :]
                    found.append(Deviation(comp, "added", extra[0].describe(), extra[0].seq, added))
        if model.before:
            occ = _occurrences([k for k, _ in seq])
            pos = {o: i for i, o in enumerate(occ)}
            early = [pos[b] for a, b in model.before if a in pos and b in pos and pos[a] > pos[b]]
            if early:
                moved = seq[min(early)][1]
                found.append(Deviation(comp, "reordered", f"{moved.describe()} came too early", moved.seq, len(early)))
    return sorted(found, key=lambda d: (d.seq is None, d.seq or 0, d.component))


def _reply_to_of(key: str) -> tuple[str | None, str | None] | None:
    import json

    header = json.loads(key)[0]
    if header[0] in ("method_return", "error") and header[7] is not None:
        return (header[7][0], header[7][1])
    return None


def state_diff(env: Envelope, state: dict[str, Any]) -> dict[str, Any]:
    """Probe values that differ from every golden run (volatile values ignored)."""
    flat = flatten_state(state)
    diff: dict[str, Any] = {}
    for k in sorted(set(flat) | set(env.golden_state)):
        if k in env.volatile_state:
            continue
        golden = env.golden_state.get(k, "<absent>")
        value = flat.get(k, "<absent>")
        if repr(golden) != repr(value):
            diff[k] = {"golden": golden, "run": value}
    return diff
