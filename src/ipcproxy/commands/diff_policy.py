"""`ipcproxy diff-policy A B`: what one policy grants that the other does not (exit 1 if anything)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

HELP = "what one policy grants that the other does not"


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("a")
    p.add_argument("b")


def diff_policy_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from ..policy.diff import granted_only_by
    from .policy_file import load_policy_file
    from .status import ExitStatus

    a, b = load_policy_file(args.a), load_policy_file(args.b)
    only_a = granted_only_by(a, b)
    only_b = granted_only_by(b, a)
    for title, grants in ((f"granted by {args.a} only", only_a), (f"granted by {args.b} only", only_b)):
        print(f"{title}: {len(grants) or 'nothing'}")
        for grant in grants:
            print(f"  {grant.component}: {grant.kind}: {grant.text}")
    return ExitStatus.OK if not only_a and not only_b else ExitStatus.FAILED
