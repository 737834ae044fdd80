"""A fault campaign's results into the report's model: outcome table, counts, runs beside a golden run.

No I/O: the results (results.jsonl's lines) and the traces (records by file
name) come in, the model goes out. Each faulty run is shown beside the first
golden run; the first divergence is marked on both sides (on the faulty side
where the campaign found it, on the golden side where ``faults.diff`` pairs
it), and the propagation path is drawn on the faulty run's component graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..faults.canon import Canon, canonical
from ..faults.diff import diff_records
from ..faults.outcome import OUTCOMES
from .model import FORMAT, VERSION, ModelBuilder


def describe_match(match: Mapping[str, Any] | None) -> str:
    """A fault's target in one line: ``method_return from org.example.C reply to Compute``."""
    if not match:
        return "any message"
    words = [str(match["type"])] if match.get("type") else []
    for key, label in (("sender", "from"), ("destination", "to"), ("interface", ""), ("member", ""), ("path", "")):
        if match.get(key):
            words.append(f"{label} {match[key]}".strip())
    reply_to = match.get("reply_to")
    if isinstance(reply_to, Mapping):
        words.append(
            "reply to " + (str(reply_to.get("member")) if reply_to.get("member") else describe_match(reply_to))
        )
    if match.get("args"):
        words.append("args " + ", ".join(f"{k}={v}" for k, v in dict(match["args"]).items()))
    return " ".join(words) or "any message"


def describe_action(action: Mapping[str, Any] | None) -> str:
    """A fault's action in one line: ``error org.example.Error.Broken``, ``delay 100 ms``, ``set-arg 0=1000``."""
    if not action:
        return "?"
    name, params = next(iter(action.items()))
    params = params if isinstance(params, Mapping) else {}
    if name == "error" and params.get("name"):
        return f"error {params['name']}"
    if name == "delay" and params.get("ms") is not None:
        return f"delay {params['ms']} ms" + (f" ± {params['jitter_ms']}" if params.get("jitter_ms") else "")
    if name == "set-arg":
        return f"set-arg {params.get('index')}={params.get('value')!r}"
    details = " ".join(f"{k}={v}" for k, v in params.items())
    return f"{name} {details}".strip()


def _seq_of(first: Any, key: str) -> int | None:
    value = getattr(first, key, None) if first is not None else None
    return value if isinstance(value, int) else None


def counterpart(golden: Canon, faulty: Canon, seq: int | None) -> int | None:
    """The golden message that the faulty run's message ``seq`` stands in for.

    The same component's message at the same place in what it sent (its n-th
    message); past the end of the golden run's, its last one.
    """
    if seq is None:
        return None
    sent = next((m for m in faulty.messages if m.seq >= seq and not m.injected), None)
    if sent is None:
        return None
    mine = faulty.sent_by(sent.sender)
    n = next((i for i, m in enumerate(mine) if m.seq == sent.seq), None)
    theirs = golden.sent_by(sent.sender)
    if n is None or not theirs:
        return None
    return theirs[min(n, len(theirs) - 1)].seq


def build_campaign(
    title: str, results: list[dict[str, Any]], traces: Mapping[str, list[dict[str, Any]]], golden: str
) -> tuple[dict[str, Any], list[list[dict[str, Any]]]]:
    """The page's model and, per trace, the full records (the detail pane's)."""
    names = [golden] + [str(r["trace"]) for r in results if r.get("trace") in traces and r["trace"] != golden]
    models = []
    details = []
    for name in names:
        builder = ModelBuilder(name)
        builder.add_all(traces[name])
        models.append(builder.to_json())
        details.append(builder.details())
    runs = []
    canons = {golden: canonical(traces[golden])}
    for r in sorted(results, key=lambda r: r["run"]):
        fault = r.get("fault") or {}
        trace = str(r.get("trace"))
        faulty_at = r.get("first_divergence")
        golden_at = None
        if trace in traces:
            if faulty_at is None:  # the campaign found none (no-effect): where the traces differ at all
                first = diff_records(traces[golden], traces[trace]).first
                faulty_at, golden_at = _seq_of(first, "b_seq"), _seq_of(first, "a_seq")
            else:
                golden_at = counterpart(canons[golden], canons.setdefault(trace, canonical(traces[trace])), faulty_at)
        runs.append(
            {
                "run": r["run"],
                "fault": fault.get("name") or str(r["run"]),
                "target": describe_match(fault.get("match")),
                "action": describe_action(fault.get("action")),
                "outcome": r.get("outcome"),
                "propagation": list(r.get("propagation") or []),
                "first_divergence": r.get("first_divergence"),
                "golden_divergence": golden_at,
                "faulty_divergence": faulty_at,
                "injected": [i.get("seq") for i in r.get("injected") or [] if isinstance(i.get("seq"), int)],
                "detail": r.get("detail") or "",
                "exit_status": r.get("exit_status"),
                "trace": names.index(trace) if trace in names else -1,
            }
        )
    counts = {outcome: sum(1 for r in runs if r["outcome"] == outcome) for outcome in OUTCOMES}
    model = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "campaign",
        "title": title,
        "trace": models[0],
        "traces": models,
        "campaign": {"runs": runs, "outcomes": counts, "golden": golden},
    }
    return model, details
