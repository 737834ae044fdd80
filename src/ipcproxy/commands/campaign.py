"""`ipcproxy campaign PLAN -o DIR`: one run per fault on a private bus, a progress bar, the results as tables."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..outputs import add_output_options

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.table import Table

    from ..faults.campaign import Progress

HELP = "run a fault-injection campaign"


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the results folder (resumed if it holds them)")
    add_output_options(p, "a non-empty DIR")
    p.add_argument("-j", "--jobs", type=int, default=1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("-q", "--quiet", action="store_true")


def campaign_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    from ..errors import InputError, RunFailed
    from ..faults.campaign import CampaignError, Runner
    from ..faults.plan import PlanError, load_campaign
    from ..oserror import reason
    from ..outputs import OutputRules
    from .status import ExitStatus

    try:
        campaign = load_campaign(args.plan)
    except PlanError as exc:
        raise InputError(str(exc)) from None
    if args.jobs < 1:
        raise InputError("campaign: -j needs at least 1")
    runner = Runner(campaign, args.output, args.jobs, args.seed, OutputRules.from_args(args, [args.plan]))
    err = Console(file=sys.stderr)
    try:
        runner.prepare()  # the output folder, refused before any progress bar is drawn
    except CampaignError as exc:
        raise RunFailed(f"ipcproxy campaign: {exc}") from None
    try:
        if args.quiet:
            results = runner.run()
        else:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            with RichProgress(*columns, console=err, transient=False) as bar:
                bar_progress = _progress(bar)
                results = runner.run(bar_progress)
    except CampaignError as exc:
        raise RunFailed(f"ipcproxy campaign: {exc}") from None
    except KeyboardInterrupt:
        # a second interrupt (the first lets the runs under way finish): every run already in
        # results.jsonl is kept, the rest is redone on resume
        print("ipcproxy campaign: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as exc:
        raise RunFailed(f"campaign: {exc.filename or args.output}: {reason(exc, writing=True)}") from None
    out = Console(file=sys.stdout, width=160)
    if results:
        out.print(summary_table(results))
        out.print(totals_table(results))
    out.print(f"results: {runner.path('results.jsonl')}")
    if runner.interrupted:
        print("ipcproxy campaign: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return ExitStatus.OK


def _progress(bar: RichProgress) -> Progress:
    from collections import Counter

    from ..faults.campaign import Progress

    task: list[Any] = []
    counts: Counter[str] = Counter()

    def start(description: str, total: int) -> None:
        if task:
            bar.update(task[0], completed=bar.tasks[0].total)
            bar.stop_task(task[0])
            bar.remove_task(task[0])
            task.clear()
        counts.clear()
        task.append(bar.add_task(description, total=total, info=""))

    def advance(tag: str) -> None:
        counts[tag] += 1
        summary = " ".join(f"{k}:{n}" for k, n in sorted(counts.items()))
        bar.update(task[0], advance=1, info=summary)

    return Progress(start, advance)


def summary_table(results: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(title="campaign results", show_lines=False)
    for col in ("run", "fault", "outcome", "propagation", "detail"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(
            str(r["run"]),
            str((r.get("fault") or {}).get("name")),
            r["outcome"],
            " > ".join(r.get("propagation") or []) or "-",
            str(r.get("detail", ""))[:100],
        )
    return table


def totals_table(results: list[dict[str, Any]]) -> Table:
    from collections import Counter

    from rich.table import Table

    from ..faults.outcome import OUTCOMES

    counts = Counter(r["outcome"] for r in results)
    table = Table(title="outcomes")
    table.add_column("outcome")
    table.add_column("runs", justify="right")
    for outcome in (*OUTCOMES, "error"):
        if counts.get(outcome):
            table.add_row(outcome, str(counts[outcome]))
    table.add_row("total", str(len(results)))
    return table
