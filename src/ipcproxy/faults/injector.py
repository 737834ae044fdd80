"""The fault injector: an Interceptor that applies a fault plan to live traffic.

A message between two connections behind the proxy passes the chain twice
(leaving its sender, reaching its receiver). The injector decides about each
message once, where it is first seen, and remembers the decision by
(sender, serial): counts and seeded draws then do not depend on how many
connections are proxied. Actions that concern what the receiver gets (broken
bodies, reordering) are carried out at delivery when the receiver is behind
the proxy. Every fault that fires leaves its name, trigger and what was done in
the verdict, so the trace alone explains the run.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..chain import Context
from ..model import BUS_DRIVER_NAME, Action, Direction, MessageType, Verdict
from . import actions, data_actions
from .plan import DATA_ONLY_ACTIONS, FaultPlan, FaultSpec, PlanError, load_plan
from .selectors import OwnedNames, matches
from .triggers import TriggerState

MEMORY = 65536  # decisions remembered, for messages still on their way to receivers
SPACING_S = 0.001  # between messages held behind a delayed one (the event loop's timers have ms resolution)


@dataclass(slots=True)
class _Armed:
    spec: FaultSpec
    trigger: TriggerState
    rng: random.Random


@dataclass(slots=True)
class _Decision:
    armed: _Armed
    why: str
    at_delivery: bool  # carried out on each delivery rather than where it was decided
    also: list[str]


def delivery_key(sender: str | None, serial: int, receiver: str | None) -> tuple[str, int]:
    """What identifies one message among the deliveries the proxy sees.

    A client numbers its messages itself, so (sender, serial) names a message
    however many receivers it reaches; the bus driver numbers what it sends
    per receiving connection, so its messages are told apart by receiver too.
    """
    if sender == BUS_DRIVER_NAME:
        return (f"{sender}>{receiver}", serial)
    return (sender or "?", serial)


def fault_rngs(seed: int, spec: FaultSpec) -> tuple[random.Random, random.Random]:
    """The fault's own generators (trigger draws, action draws), from the plan's seed."""
    return random.Random(f"{seed}:{spec.index}:{spec.name}:when"), random.Random(f"{seed}:{spec.index}:{spec.name}:do")


class FaultInjector:
    name = "faults"
    fail_closed = False

    def __init__(self, plan: FaultPlan, seed: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan
        self.seed = plan.seed if seed is None else seed
        self.armed: list[_Armed] = []
        for spec in plan.faults:
            when_rng, do_rng = fault_rngs(self.seed, spec)
            self.armed.append(_Armed(spec, TriggerState(spec.when, when_rng), do_rng))
        self.owned = OwnedNames()
        self.proxied: set[str] = set()
        self._decided: OrderedDict[tuple[str, int], _Decision | None] = OrderedDict()
        self._clock = clock
        self._start: float | None = None
        self._held: dict[tuple[int, Direction], tuple[float, int, str]] = {}  # stream -> (release, count, fault)
        self.fired = 0

    def intercept(self, ctx: Context) -> Verdict | None:
        if ctx.message.type is MessageType.DATA:
            return self._intercept_data(ctx)
        verdict = self._intercept(ctx)
        return self._keep_order(ctx, verdict)

    def _intercept_data(self, ctx: Context) -> Verdict | None:
        """A data message (syscall level) is seen once, by the call that moves it: decided and done there.

        No order needs keeping: the tracer holds only the delayed thread, as a slow call would.
        """
        if self._start is None:
            self._start = self._clock()
        decision = self._decide(ctx)
        if decision is None:
            return None
        return self._verdict(decision, ctx, "at the syscall")

    def _keep_order(self, ctx: Context, verdict: Verdict | None) -> Verdict | None:
        """A delayed message holds back the ones after it on its connection, as a slow link would.

        Messages on one D-Bus connection never overtake each other; without this
        a delay would also reorder, and its effects would be blamed on the delay.
        """
        stream = (ctx.connection_id, ctx.direction)
        now = self._clock()
        held = self._held.get(stream)
        if held is not None and now >= held[0]:
            del self._held[stream]
            held = None
        if verdict is not None and verdict.action is Action.DELAY and not verdict.notes.get("overtake"):
            release = now + verdict.delay_s
            if held is None or release > held[0]:
                self._held[stream] = (release, 0, str(verdict.notes.get("fault")))
                return verdict
        if held is None or (verdict is not None and verdict.action is not Action.DELAY):
            return verdict
        release, count, fault = held
        count += 1
        self._held[stream] = (release, count, fault)
        wait = release - now + count * SPACING_S
        if verdict is not None:  # delayed by its own fault too: whichever is later
            verdict.delay_s = max(verdict.delay_s, wait)
            return verdict
        return Verdict(Action.DELAY, delay_s=wait, reason=f"held behind fault {fault}", notes={"held_behind": fault})

    def _intercept(self, ctx: Context) -> Verdict | None:
        msg = ctx.message
        if self._start is None:
            self._start = self._clock()
        self.owned.observe(ctx)
        if ctx.client.bus_name:
            self.proxied.add(ctx.client.bus_name)
        if ctx.direction is Direction.TO_BUS:
            key = (ctx.client.bus_name or f"#{ctx.connection_id}", msg.serial)
            decision = self._decide(ctx)
            self._remember(key, decision)
            if decision is None:
                return None
            if decision.at_delivery:
                dest = ctx.destination.bus_name
                if dest is not None and dest in self.proxied:
                    return None  # carried out when it reaches its receiver
                decision.at_delivery = False
            return self._verdict(decision, ctx, "sender side")
        key = delivery_key(msg.sender, msg.serial, ctx.client.bus_name)
        if key in self._decided:
            decision = self._decided[key]
            if decision is None or not decision.at_delivery:
                return None  # decided (and carried out) where its sender handed it over
            return self._verdict(decision, ctx, "at delivery")
        decision = self._decide(ctx)
        if decision is not None:
            decision.at_delivery = True  # a broadcast from outside the proxy: same fate for every receiver
        self._remember(key, decision)
        return None if decision is None else self._verdict(decision, ctx, "at delivery")

    def _remember(self, key: tuple[str, int], decision: _Decision | None) -> None:
        self._decided[key] = decision
        if len(self._decided) > MEMORY:
            self._decided.popitem(last=False)

    def _decide(self, ctx: Context) -> _Decision | None:
        elapsed_ms = ((self._clock() - self._start) * 1000) if self._start is not None else 0.0
        chosen: _Decision | None = None
        for armed in self.armed:
            if matches(armed.spec.match, ctx, self.owned):
                why = armed.trigger.consider(elapsed_ms)
                if why is not None:
                    if chosen is None:
                        at_delivery = actions.needs_delivery_side(armed.spec.action)
                        chosen = _Decision(armed, why, at_delivery, [])
                    else:
                        chosen.also.append(armed.spec.name)
        for armed in self.armed:  # gates open for later messages only
            after = armed.spec.when.after
            if after is not None and not armed.trigger.gate_open and matches(after, ctx, self.owned):
                armed.trigger.open_gate()
        return chosen

    def _verdict(self, decision: _Decision, ctx: Context, where: str) -> Verdict | None:
        spec = decision.armed.spec
        try:
            if ctx.message.type is MessageType.DATA:
                verdict = data_actions.apply(spec.action, ctx, decision.armed.rng)
            elif spec.action.kind in DATA_ONLY_ACTIONS:
                return None  # errno and close are about syscalls; a D-Bus message has none
            else:
                verdict = actions.apply(spec.action, ctx.message, decision.armed.rng)
        except actions.ActionSkipped:
            return None
        self.fired += 1
        verdict.reason = f"fault {spec.name}"
        notes = {
            "fault": spec.name,
            "fault_index": spec.index,
            "fault_action": spec.action.kind,
            "trigger": decision.why,
            "where": where,
            **verdict.notes,
        }
        if decision.also:
            notes["also_triggered"] = list(decision.also)
        verdict.notes = notes
        return verdict


def load_injector(path: str, seed: int | None = None) -> FaultInjector:
    """The injector for ``--faults PLAN`` (bad plans are usage errors: one line, exit 2)."""
    from ..errors import InputError

    try:
        plan = load_plan(path)
    except PlanError as exc:
        raise InputError(str(exc)) from None
    return FaultInjector(plan, seed)
