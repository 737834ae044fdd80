"""Print a trace like dbus-monitor (`ipcproxy show`), optionally filtered and following its growth.

Reading never locks or writes the file, so `show --follow` on a trace the
proxy is writing cannot slow the proxy down: it only polls for new lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

import msgspec

from .filters import Matcher
from .reader import iter_trace
from .view import format_record


def use_color(stream: IO[str], env: Mapping[str, str]) -> bool:
    """Colour only for a terminal, and never with NO_COLOR or TERM=dumb."""
    if "NO_COLOR" in env or env.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def header_line(path: str, head: dict[str, Any]) -> str:
    words = [f"# {path}: trace v{head.get('version')}"]
    for key in ("start", "host", "mode", "bus", "bus_address", "tool"):
        if head.get(key):
            words.append(f"{key}={head[key]}")
    return " ".join(words)


def show_trace(
    path: str,
    out: IO[str],
    *,
    matcher: Matcher | None,
    filter_text: str | None,
    follow: bool,
    as_json: bool,
    color: bool,
) -> None:
    """Print the matching records of a trace; with ``follow``, keep going until interrupted.

    Raises TraceError for a file that is not a trace (or one this version cannot read).
    """
    encoder = msgspec.json.Encoder()
    t0: int | None = None  # the first record's ts: times are shown relative to it

    def print_header(head: dict[str, Any]) -> None:
        """Each header as it is read: the trace's own, and a new one when a followed file is written again."""
        nonlocal t0
        t0 = None
        if as_json:
            view_head = dict(head, shown_from=path)
            if filter_text:
                view_head["filter"] = filter_text
            out.write(encoder.encode(view_head).decode() + "\n")
        else:
            out.write(header_line(path, head) + "\n")
        if follow:
            out.flush()

    for rec in iter_trace(path, follow=follow, on_header=print_header):
        if t0 is None and isinstance(rec.get("ts"), int):
            t0 = rec["ts"]
        if matcher is not None and not matcher(rec):
            continue
        if as_json:
            out.write(encoder.encode(rec).decode() + "\n")
        else:
            out.write(format_record(rec, t0=t0, color=color) + "\n")
        if follow:
            out.flush()
