"""What `report` reads: a trace (or pcap) file, a campaign folder or a policy, into a page's model.

The one I/O layer of the report: files are read through ``trace.reader`` (and
the campaign's and policy's own readers); every problem with an input is an
``InputError`` naming the file.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import InputError
from ..oserror import reason
from ..trace.reader import TraceError, iter_trace
from .model import ModelBuilder


def read_trace(path: str, limit: int | None = None) -> ModelBuilder:
    """The model of one trace file; a path that is not a readable trace is an InputError naming it."""
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a trace")
    builder = ModelBuilder(os.path.basename(path), {}, limit)
    try:
        builder.add_all(iter_trace(path, on_header=builder.header.update))
    except OSError as exc:
        raise InputError(f"cannot read trace {path}: {reason(exc)}") from None
    except TraceError as exc:
        raise InputError(str(exc)) from None
    return builder


def read_campaign(folder: str) -> tuple[dict[str, Any], list[list[dict[str, Any]]]]:
    """The model of a campaign's output folder (results.jsonl and its traces)."""
    from ..faults.campaign import read_results
    from .campaign import build_campaign

    results_path = os.path.join(folder, "results.jsonl")
    golden = "golden-1.jsonl"
    if not os.path.isfile(results_path) or not os.path.isfile(os.path.join(folder, golden)):
        raise InputError(f"{folder}: is a directory but not a campaign's output (no results.jsonl and {golden})")
    try:
        results = list(read_results(results_path).values())
    except (OSError, ValueError) as exc:
        raise InputError(f"{results_path}: {exc}") from None
    traces: dict[str, list[dict[str, Any]]] = {}
    for name in [golden, *(str(r.get("trace")) for r in results if r.get("trace"))]:
        if name in traces:
            continue
        path = os.path.join(folder, os.path.basename(name))  # a results line names a file in its own folder
        if not os.path.isfile(path):
            continue  # a run that never started has no trace: its row says so
        try:
            traces[name] = list(iter_trace(path))
        except OSError as exc:
            raise InputError(f"cannot read trace {path}: {reason(exc)}") from None
        except TraceError as exc:
            raise InputError(str(exc)) from None
    return build_campaign(os.path.basename(os.path.normpath(folder)), results, traces, golden)


def read_policy(path: str, traces: list[str]) -> dict[str, Any]:
    """The matrix of a policy file, with the hits and violations of the traces (replayed as `check` does)."""
    from ..policy.loader import load_policy
    from ..trace.replay import replay
    from .policy import build_policy

    policy = load_policy(path)  # a broken policy is an InputError naming FILE:LINE
    try:
        return build_policy(policy, replay(traces) if traces else None)
    except OSError as exc:
        raise InputError(f"cannot read trace: {reason(exc)}") from None
    except TraceError as exc:
        raise InputError(str(exc)) from None
