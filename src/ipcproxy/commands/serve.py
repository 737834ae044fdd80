"""`ipcproxy serve`: the report's page on localhost, streaming a trace as it grows (docs/report.md)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

HELP = "the report's page on localhost, live from a trace being written"


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", metavar="TRACE", help="the trace to follow (it may not exist yet)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: any free one)")


def serve_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import os
    import signal

    from ..errors import InputError
    from ..oserror import reason
    from ..report.serve import LiveServer
    from .status import ExitStatus

    if os.path.isdir(args.trace):
        raise InputError(f"{args.trace}: is a directory, not a trace")
    if not 0 <= args.port <= 65535:
        raise InputError(f"serve: --port {args.port} is not a port number")
    try:
        server = LiveServer(args.trace, os.path.basename(args.trace), args.host, args.port)
    except OSError as exc:
        raise InputError(f"serve: cannot listen on {args.host}:{args.port}: {reason(exc)}") from None
    stopped: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopped.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    server.start()
    print(server.url, flush=True)
    try:
        server.wait(lambda: bool(stopped))
    finally:
        server.close()
    if server.feed.error is not None:
        raise InputError(f"serve: {server.feed.error}")
    return ExitStatus.OK
