"""Options shared by the capturing commands: run, proxy, interpose, monitor."""

from __future__ import annotations

import argparse


def add_capture_options(p: argparse.ArgumentParser, manipulate: bool = True) -> None:
    """The trace and live-view options; with ``manipulate``, also policy, faults and scripts."""
    p.add_argument("-w", "--write", metavar="FILE", help="write the trace (.pcap/.pcapng: pcap)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print messages live")
    p.add_argument("--filter", metavar="EXPR", help="live view: only messages matching EXPR")
    p.add_argument("--no-args", action="store_true", help="do not decode arguments into the trace")
    if manipulate:
        p.add_argument("--policy", metavar="FILE", help="policy to enforce (see docs/policy.md)")
        p.add_argument("--mode", choices=["enforce", "complain"], default="enforce")
        p.add_argument("--faults", metavar="PLAN", help="fault plan to apply (see docs/faults.md)")
        p.add_argument("--seed", type=int, default=None, help="seed for probabilistic faults")
        p.add_argument(
            "-s",
            "--script",
            metavar="FILE.py",
            action="append",
            default=[],
            help="load interceptors from a Python file (repeatable)",
        )
