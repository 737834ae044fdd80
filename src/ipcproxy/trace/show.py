"""`ipcproxy show`: print a trace like dbus-monitor, optionally filtered and following its growth.

Reading never locks or writes the file, so `show --follow` on a trace the
proxy is writing cannot slow the proxy down: it only polls for new lines.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

import msgspec

from ..cli import ExitStatus, UsageError
from .filters import parse_filter
from .reader import TraceError, iter_trace
from .view import format_record


def _use_color(stream: IO[str], env: Mapping[str, str]) -> bool:
    if "NO_COLOR" in env or env.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _header_line(path: str, head: dict[str, Any]) -> str:
    words = [f"# {path}: trace v{head.get('version')}"]
    for key in ("start", "host", "mode", "bus", "bus_address", "tool"):
        if head.get(key):
            words.append(f"{key}={head[key]}")
    return " ".join(words)


def show_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Print the matching records of a trace; with --follow, keep going until interrupted."""
    try:
        matcher = parse_filter(args.filter) if args.filter else None
    except ValueError as exc:
        raise UsageError(f"show: {exc}") from None
    path = args.trace
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory, not a trace")
    out = sys.stdout
    color = _use_color(out, env)
    encoder = msgspec.json.Encoder()
    t0: int | None = None  # the first record's ts: times are shown relative to it

    def print_header(head: dict[str, Any]) -> None:
        """Each header as it is read: the trace's own, and a new one when a followed file is written again."""
        nonlocal t0
        t0 = None
        if args.json:
            view_head = dict(head, shown_from=path)
            if args.filter:
                view_head["filter"] = args.filter
            out.write(encoder.encode(view_head).decode() + "\n")
        else:
            out.write(_header_line(path, head) + "\n")
        if args.follow:
            out.flush()

    try:
        for rec in iter_trace(path, follow=args.follow, on_header=print_header):
            if t0 is None and isinstance(rec.get("ts"), int):
                t0 = rec["ts"]
            if matcher is not None and not matcher(rec):
                continue
            if args.json:
                out.write(encoder.encode(rec).decode() + "\n")
            else:
                out.write(format_record(rec, t0=t0, color=color) + "\n")
            if args.follow:
                out.flush()
    except TraceError as exc:  # not a trace, unreadable, or a header this version cannot read
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        # --follow ends with Ctrl-C: that is the normal way out, not a failure
        out.flush()
        return ExitStatus.OK if args.follow else 130
    out.flush()
    return ExitStatus.OK
