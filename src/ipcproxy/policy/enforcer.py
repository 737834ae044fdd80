"""The enforcer interceptor: a policy's decisions as verdicts in the proxy's chain.

``enforce`` denies (the proxy answers a denied call with AccessDenied naming
the missing rule, and drops anything else; the tracer fails a denied data
message's syscall with the errno in ``notes["errno"]``); ``complain`` forwards and marks
the violation in the trace. It fails closed: anything it cannot decide is
denied, with the reason logged. ``reload`` (SIGHUP) swaps in a re-read
policy only if the new file is entirely valid.
"""

from __future__ import annotations

import logging

from ..chain import Context
from ..model import Action, MessageType, Verdict
from .decide import Decision, OrderTracker, decide
from .loader import PolicyError, load_policy
from .model import Policy

log = logging.getLogger("ipcproxy.policy")

MODES = ("enforce", "complain")


class Enforcer:
    """Interceptor (see chain.Interceptor) that applies a policy to every message."""

    name = "policy"
    fail_closed = True

    def __init__(self, policy: Policy, mode: str = "enforce", path: str | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.policy = policy
        self.mode = mode
        self.path = path or policy.source
        self.order = OrderTracker(max(policy.order_n, 1))
        self.denied = 0
        self.violations = 0

    def reload(self) -> None:
        """Re-read the policy file; raises (and keeps the current policy) if it is broken."""
        if self.path is None:
            raise PolicyError("<policy>", None, "this policy was not read from a file")
        new = load_policy(self.path)
        if new.order_n != self.policy.order_n:
            self.order = OrderTracker(max(new.order_n, 1))
        self.policy = new
        log.info("policy reloaded from %s", self.path)

    def decide(self, ctx: Context) -> Decision:
        return decide(self.policy, ctx, self.order, advance_on_deny=self.mode == "complain")

    def intercept(self, ctx: Context) -> Verdict | None:
        try:
            decision = self.decide(ctx)
        except Exception as exc:  # noqa: BLE001 - fail closed, whatever went wrong
            reason = f"policy could not decide: {type(exc).__name__}: {exc}"
            log.warning(
                "%s (message %s %s.%s)", reason, ctx.message.type.wire_name, ctx.message.interface, ctx.message.member
            )
            notes: dict[str, object] = {"policy": "undecidable"}
            if ctx.message.type is MessageType.DATA:
                notes["errno"] = self.policy.errno
            return self._refuse(reason, notes)
        if decision.allowed:
            return None
        notes = {"policy": decision.kind}
        if decision.needed:
            notes["needed"] = decision.needed
        if decision.errno is not None:
            notes["errno"] = decision.errno  # the syscall of a denied data message fails with it
        return self._refuse(decision.reason, notes)

    def _refuse(self, reason: str, notes: dict[str, object]) -> Verdict:
        if self.mode == "complain":
            self.violations += 1
            return Verdict(Action.VIOLATION, reason=reason, by=self.name, notes=notes)
        self.denied += 1
        return Verdict(Action.DENY, reason=reason, by=self.name, notes=notes)


def load_enforcer(path: str, mode: str = "enforce") -> Enforcer:
    """The enforcer for a policy file; a broken file is a usage error (file:line: reason), nothing starts."""
    from ..errors import InputError

    try:
        policy = load_policy(path)
    except PolicyError as exc:
        raise InputError(f"policy {exc}") from None
    return Enforcer(policy, mode, path)
