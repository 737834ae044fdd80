"""Classifying a faulty run against the golden envelope (pure logic).

Outcomes, most severe first, so each run gets exactly one:
  not-activated     the fault's selector and trigger never fired
  crash             a component process died (a service exited, a traced process or the workload was killed
                    by a signal)
  hang              the workload overran its time limit, or a probe got no answer
  state-corruption  the probed state differs from every golden run
  handled           the workload saw an error (exit status or an error reply) and exited by itself, or a traced
                    process exited with a failure status it never had in the golden runs
  behaviour-shift   messages missing, added or reordered beyond the envelope, or different output
  no-effect         trace, output and state all within the envelope
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .canon import Canon
from .envelope import Deviation, Envelope, deviations, state_diff
from .propagation import propagation

OUTCOMES = ("not-activated", "no-effect", "handled", "behaviour-shift", "state-corruption", "crash", "hang")


@dataclass(slots=True)
class Verdict:
    outcome: str
    detail: str
    propagation: list[str] = field(default_factory=list)
    first_divergence: int | None = None
    state_diff: dict[str, Any] = field(default_factory=dict)
    deviations: list[Deviation] = field(default_factory=list)
    injected: list[dict[str, Any]] = field(default_factory=list)


def killed_by_signal(status: int | None) -> bool:
    """Negative: killed (direct child); 129..192: a shell reporting its child was killed."""
    return status is not None and (status < 0 or 128 < status <= 128 + 64)


def workload_components(env: Envelope, canon: Canon) -> set[str]:
    """Components that appear only once the workload has started, in the goldens or this run."""
    before: set[str] = set()
    for c in [*env.goldens, canon]:
        for m in c.messages:
            if not m.workload:
                before.add(m.sender)
    return {m.sender for c in [*env.goldens, canon] for m in c.messages if m.workload} - before


def _errors_seen(canon: Canon, workload: set[str]) -> Counter[str]:
    seen: Counter[str] = Counter()
    for m in canon.messages:
        if m.type == "error" and m.receivers & workload:
            seen[f"{m.error_name} from {'ipcproxy' if m.injected else m.sender}"] += 1
    return seen


def _died(env: Envelope, canon: Canon, result: dict[str, Any]) -> dict[str, int]:
    """Components whose process ended during the run though it lived through every golden run."""
    died: dict[str, int] = {}
    for i, svc in enumerate(result.get("services") or []):
        alive_in_golden = i < len(env.services_alive) and env.services_alive[i]
        if svc.get("returncode") is not None and alive_in_golden:
            comp = canon.pids.get(svc.get("pid", -1))
            seqs = [s for s, c in canon.disconnects if c == comp]
            if comp is None:  # started through a wrapper: take the first setup component that went away
                golden_gone = {c for g in env.goldens for _, c in g.disconnects}
                gone = [(s, c) for s, c in canon.disconnects if c not in golden_gone]
                if gone:
                    seqs, comp = [gone[0][0]], gone[0][1]
            died[comp or svc.get("command", "?")] = seqs[0] if seqs else canon.last_seq
    return died


@dataclass(slots=True)
class _Ended:
    """How traced processes (syscall-level runs) ended otherwise than in every golden run."""

    killed: dict[str, int] = field(default_factory=dict)  # by a signal no golden run saw: seq of the exit
    failed: dict[str, str] = field(default_factory=dict)  # with a failure status new to it: "1 (golden: 0)"
    other: dict[str, int] = field(default_factory=dict)  # otherwise (SIGPIPE): seq of the exit


def _exits(env: Envelope, canon: Canon, timed_out: bool) -> _Ended:
    """Traced processes that ended otherwise than in every golden run.

    SIGPIPE is how a writer ends once its reader has gone (``head`` read what
    it wanted): a consequence to follow, not a crash. Past the time limit the
    programs are ended with SIGKILL by the tracer: that is the hang, not a crash.
    """
    golden: dict[str, set[str]] = {}
    for g in env.goldens:
        for _seq, comp, status in g.exits:
            golden.setdefault(comp, set()).add(status)
    out = _Ended()
    for seq, comp, status in canon.exits:
        if status in golden.get(comp, set()):
            continue
        if timed_out and status == "SIGKILL":
            continue
        if status == "SIGPIPE":
            out.other.setdefault(comp, seq)
        elif status.startswith("SIG"):
            out.killed.setdefault(comp, seq)
        elif status != "0":
            before = ", ".join(sorted(golden.get(comp, set()))) or "not run"
            out.failed.setdefault(comp, f"{status} (golden: {before})")
    return out


def _first_divergence(canon: Canon, devs: list[Deviation]) -> int | None:
    """The first message of the faulty trace that departs from the envelope (the fault's own excluded)."""
    seqs = [d.seq for d in devs if d.seq is not None]
    if seqs:
        return min(seqs)
    if devs:  # only missing messages: they were due after the fault
        faulted = canon.faulted
        return faulted[0].seq if faulted else None
    return None


def classify(env: Envelope, canon: Canon, result: dict[str, Any]) -> Verdict:
    canon = env.align(canon)
    injected = [
        {
            "seq": m.seq,
            "message": m.describe(),
            "done": (m.fault or {}).get("done"),
            "trigger": (m.fault or {}).get("trigger"),
        }
        for m in canon.faulted
    ]
    devs = deviations(env, canon)
    died = _died(env, canon, result)
    ended = _exits(env, canon, bool(result.get("timed_out")))
    exit_failures = ended.failed
    died.update(ended.killed)
    exit_seqs = {comp: seq for seq, comp, _status in canon.exits}
    errored = {comp: exit_seqs.get(comp, canon.last_seq) for comp in exit_failures} | ended.other
    sdiff = state_diff(env, result.get("state") or {})
    out = Verdict(
        "no-effect",
        "",
        propagation(canon, devs, {**errored, **died}),
        _first_divergence(canon, devs),
        sdiff,
        devs,
        injected,
    )
    status = result.get("exit_status")
    workload = workload_components(env, canon)
    if not injected:
        out.outcome, out.detail = "not-activated", "the fault's selector and trigger never fired"
        return out
    if died:
        out.outcome, out.detail = "crash", f"process ended: {', '.join(sorted(died))}"
    elif killed_by_signal(status) and status not in env.exit_statuses:
        out.outcome, out.detail = "crash", f"the workload was killed by a signal (status {status})"
    elif result.get("timed_out"):
        out.outcome, out.detail = "hang", "the workload did not finish within the time limit"
    elif any("timeout" in str(v.get("run")) for v in sdiff.values()):
        out.outcome, out.detail = "hang", "a state probe got no answer"
    elif sdiff:
        failed = [f"{k[: -len('/error')]}: {v['run']}" for k, v in sdiff.items() if k.endswith("/error")]
        out.outcome = "state-corruption"
        out.detail = f"state probe failed: {failed[0]}" if failed else f"{len(sdiff)} state value(s) differ from golden"
    else:
        golden_errors: Counter[str] = Counter()
        for g in env.goldens:
            golden_errors |= _errors_seen(g, workload)
        new_errors = _errors_seen(canon, workload) - golden_errors
        if status not in env.exit_statuses:
            out.outcome, out.detail = "handled", f"the workload exited with status {status} (golden: {_statuses(env)})"
        elif new_errors:
            out.outcome = "handled"
            out.detail = f"the workload got {', '.join(sorted(new_errors))} and exited with status {status}"
        elif exit_failures:
            out.outcome = "handled"
            out.detail = "exited with a failure status: " + "; ".join(
                f"{c} {s}" for c, s in sorted(exit_failures.items())
            )
        elif devs:
            out.outcome, out.detail = "behaviour-shift", _summary(devs)
        elif result.get("stdout", "") not in env.stdouts:
            out.outcome, out.detail = "behaviour-shift", "the workload's output differs from golden"
        else:
            out.outcome, out.detail = "no-effect", "trace, output and state within the golden envelope"
    return out


def _statuses(env: Envelope) -> str:
    return ", ".join(str(s) for s in sorted(env.exit_statuses, key=lambda s: (s is None, s or 0)))


def _summary(devs: list[Deviation]) -> str:
    parts = [f"{d.component}: {d.kind} {d.message}" + (f" x{d.count}" if d.count > 1 else "") for d in devs[:3]]
    more = f" (+{len(devs) - 3} more)" if len(devs) > 3 else ""
    return "; ".join(parts) + more
