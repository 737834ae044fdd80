"""`ipcproxy diff A B`: where two traces of the same system diverge (pure logic).

Both traces are reduced to what each component sent (unique names, serials
and times taken out). The first divergence is the earliest point, in B, where
some component's own sequence stops matching A's; per component we list the
messages only one side sent, and an edit distance (insertions, deletions,
substitutions over the components' sequences) sums up how far apart they are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..model import BUS_DRIVER_NAME
from .canon import Canon, Sent, canonical, key_text

LEVENSHTEIN_LIMIT = 4000  # longer sequences fall back to difflib's (not always minimal) count


@dataclass(slots=True)
class Divergence:
    component: str
    a_seq: int | None
    b_seq: int | None
    a: str | None
    b: str | None


@dataclass(slots=True)
class TraceDiff:
    first: Divergence | None
    missing: dict[str, list[str]] = field(default_factory=dict)  # in A, not in B
    added: dict[str, list[str]] = field(default_factory=dict)  # in B, not in A
    edit_distance: int = 0
    a_messages: int = 0
    b_messages: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    components_a: list[str] = field(default_factory=list)  # who sent messages in A (the bus driver aside)
    components_b: list[str] = field(default_factory=list)

    @property
    def unrelated(self) -> bool:
        """Both traces have senders, but none in common: not runs of the same system."""
        return bool(self.components_a and self.components_b) and not set(self.components_a) & set(self.components_b)

    @property
    def same(self) -> bool:
        return self.first is None and self.edit_distance == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "same": self.same,
            "first_divergence": None
            if self.first is None
            else {
                "component": self.first.component,
                "a_seq": self.first.a_seq,
                "b_seq": self.first.b_seq,
                "a": self.first.a,
                "b": self.first.b,
            },
            "missing": self.missing,
            "added": self.added,
            "edit_distance": self.edit_distance,
            "messages": {"a": self.a_messages, "b": self.b_messages},
            "faults": self.faults,
            "components": {"a": self.components_a, "b": self.components_b},
            "unrelated": self.unrelated,
        }


def levenshtein(a: list[str], b: list[str]) -> int:
    if len(a) > LEVENSHTEIN_LIMIT or len(b) > LEVENSHTEIN_LIMIT:
        import difflib

        ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
        return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != "equal")
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


INJECTED = "ipcproxy (injected)"


def _seq(canon: Canon, comp: str) -> list[tuple[str, Sent]]:
    """What the component's messages looked like on the bus: as delivered, with their fate."""
    chosen = [m for m in canon.messages if (m.injected and comp == INJECTED) or (not m.injected and m.sender == comp)]
    return [(key_text(m, m.args) + ("" if m.fate == "forwarded" else f" [{m.fate}]"), m) for m in chosen]


def _components(canon: Canon) -> set[str]:
    return canon.all_components() | ({INJECTED} if any(m.injected for m in canon.messages) else set())


def _senders(canon: Canon) -> set[str]:
    """The components that sent messages, the bus driver aside (every trace has it)."""
    return {m.sender for m in canon.messages if not m.injected and m.sender and m.sender != BUS_DRIVER_NAME}


def diff_canons(a: Canon, b: Canon) -> TraceDiff:
    out = TraceDiff(None, a_messages=len(a.messages), b_messages=len(b.messages))
    out.components_a = sorted(_senders(a))
    out.components_b = sorted(_senders(b))
    firsts: list[Divergence] = []
    for comp in sorted(_components(a) | _components(b)):
        sa, sb = _seq(a, comp), _seq(b, comp)
        ka, kb = [k for k, _ in sa], [k for k, _ in sb]
        if ka == kb:
            continue
        out.edit_distance += levenshtein(ka, kb)
        ca, cb = Counter(ka), Counter(kb)
        desc = {k: m.describe() + ("" if m.fate == "forwarded" else f" [{m.fate}]") for k, m in sa + sb}
        missing = [desc[k] + (f" x{n}" if n > 1 else "") for k, n in sorted((ca - cb).items())]
        added = [desc[k] + (f" x{n}" if n > 1 else "") for k, n in sorted((cb - ca).items())]
        if missing:
            out.missing[comp] = missing
        if added:
            out.added[comp] = added
        i = next((i for i, (x, y) in enumerate(zip(ka, kb, strict=False)) if x != y), min(len(ka), len(kb)))
        ma = sa[i][1] if i < len(sa) else None
        mb = sb[i][1] if i < len(sb) else None
        firsts.append(
            Divergence(
                comp,
                ma.seq if ma else None,
                mb.seq if mb else None,
                ma.describe() if ma else None,
                mb.describe() if mb else None,
            )
        )
    if firsts:
        out.first = min(firsts, key=lambda d: (d.b_seq is None, d.b_seq or 0, d.a_seq or 0))
    for side, canon in (("a", a), ("b", b)):
        for m in canon.faulted:
            out.faults.append(
                {"trace": side, "seq": m.seq, "message": m.describe(), "done": (m.fault or {}).get("done")}
            )
    return out


def diff_records(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> TraceDiff:
    return diff_canons(canonical(a), canonical(b))


def render(d: TraceDiff, name_a: str, name_b: str) -> str:
    lines = [f"A: {name_a} ({d.a_messages} messages)", f"B: {name_b} ({d.b_messages} messages)"]
    for f in d.faults:
        lines.append(f"fault in {f['trace'].upper()} at #{f['seq']}: {f['message']}: {f['done']}")
    if d.same:
        lines.append("no divergence: every component sent the same messages in the same order")
        return "\n".join(lines)
    if d.unrelated:
        lines.append(
            f"A and B have no sender in common (A: {', '.join(d.components_a)}; B: {', '.join(d.components_b)}):"
            " they do not look like traces of the same system"
        )
    if d.first is not None:
        lines.append(
            f"first divergence: {_where(d, d.first)}"
            f"\n  A: {d.first.a or '(nothing more)'}\n  B: {d.first.b or '(nothing more)'}"
        )
    for comp in sorted(set(d.missing) | set(d.added)):
        lines.append(f"{comp}:")
        lines.extend(f"  - {m}" for m in d.missing.get(comp, []))
        lines.extend(f"  + {m}" for m in d.added.get(comp, []))
    lines.append(f"edit distance: {d.edit_distance}")
    return "\n".join(lines)


def _where(d: TraceDiff, first: Divergence) -> str:
    """Where the first divergence is, in words, also when one side has no such message."""
    comp = first.component
    if first.a_seq is not None and first.b_seq is not None:
        return f"{comp} at A #{first.a_seq} / B #{first.b_seq}"
    if first.b_seq is not None:
        whose = "A has no message from it" if comp not in d.components_a else "A has no more messages from it"
        return f"{comp} at B #{first.b_seq}; {whose}"
    if first.a_seq is not None:
        whose = "B has no message from it" if comp not in d.components_b else "B has no more messages from it"
        return f"{comp} at A #{first.a_seq}; {whose}"
    return comp
