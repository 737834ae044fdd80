"""When a selected message is faulted: counting, windows, gates and seeded chance (sans-IO)."""

from __future__ import annotations

import random

from .plan import Trigger


class TriggerState:
    """Counts the matching messages of one fault and decides, message by message, whether it fires.

    ``after`` and ``window_ms`` gate which matches count at all; ``nth``,
    ``from``/``to`` and ``every`` then pick among the counted matches, and
    ``probability`` finally draws from the fault's own seeded generator, so
    the same sequence of matches always gives the same decisions.
    """

    def __init__(self, trigger: Trigger, rng: random.Random) -> None:
        self.trigger = trigger
        self.rng = rng
        self.count = 0
        self.gate_open = trigger.after is None

    def open_gate(self) -> None:
        """A message matching ``after`` has been seen; later matches may count."""
        self.gate_open = True

    def consider(self, elapsed_ms: float) -> str | None:
        """Called for each matching message; returns why it fires, or None."""
        t = self.trigger
        if not self.gate_open:
            return None
        if t.window_ms is not None and not t.window_ms[0] <= elapsed_ms <= t.window_ms[1]:
            return None
        self.count += 1
        n = self.count
        why = [f"match #{n}"]
        if t.nth is not None:
            if n != t.nth:
                return None
            why.append(f"nth={t.nth}")
        first = t.first if t.first is not None else (t.every or 1)
        if t.first is not None or t.last is not None:
            if n < first or (t.last is not None and n > t.last):
                return None
            why.append(f"from {first} to {t.last if t.last is not None else 'end'}")
        if t.every is not None:
            if n < first or (n - first) % t.every:
                return None
            why.append(f"every {t.every}")
        if t.window_ms is not None:
            why.append(f"at {elapsed_ms:.0f} ms, in window {t.window_ms[0]:g}-{t.window_ms[1]:g} ms")
        if t.after is not None:
            why.append("after its gate message")
        if t.probability is not None:
            draw = self.rng.random()
            if draw >= t.probability:
                return None
            why.append(f"drew {draw:.4f} < p={t.probability:g}")
        return ", ".join(why)
