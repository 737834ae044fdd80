"""The campaign runner: golden runs, then one isolated run per fault, then the verdicts.

Runs execute in worker processes (``-j N`` of them, each run on its own
private bus); a worker is reused across runs so its imports are paid once.
Every finished run is written down at once (its trace, its raw result, its
line in results.jsonl), so an interrupted campaign resumes where it stopped:
finished runs are read back, never redone. Classification happens here, in
the parent, once the golden envelope is known.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from ..outputs import FILE_MODE, PRIVATE, OutputRules, make_folder, write_file
from ..trace.reader import iter_trace
from .canon import Canon, canonical
from .enumerate import enumerate_faults
from .envelope import Envelope, learn
from .harness import RunSpec, execute
from .outcome import classify
from .plan import Campaign, FaultSpec

_worker_campaign: Campaign | None = None


class CampaignError(RuntimeError):
    """The campaign cannot go on (e.g. its golden runs fail); one line for the user."""


def _init_worker(campaign: Campaign) -> None:
    global _worker_campaign
    _worker_campaign = campaign
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt means


def _work(spec: RunSpec) -> dict[str, Any]:
    assert _worker_campaign is not None
    if _worker_campaign.traced:
        from . import trace_harness

        return trace_harness.execute(_worker_campaign, spec).to_json()
    return execute(_worker_campaign, spec).to_json()


def _write_json(path: str, data: Any, mode: int = FILE_MODE) -> None:
    text = json.dumps(data, indent=1, sort_keys=True, default=str).encode()
    write_file(path, lambda stream: stream.write(text), OutputRules(force=True, mode=mode))


def read_results(path: str) -> dict[int, dict[str, Any]]:
    """Lines of results.jsonl by run number (a torn last line, from a kill, is ignored)."""
    done: dict[int, dict[str, Any]] = {}
    if not os.path.exists(path):
        return done
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("run"), int):
                done[rec["run"]] = rec
    return done


@dataclass(slots=True)
class Progress:
    """What the runner reports while it works (the CLI draws it with rich)."""

    start: Callable[[str, int], None]
    advance: Callable[[str], None]


def _quiet() -> Progress:
    return Progress(lambda _d, _n: None, lambda _t: None)


class Runner:
    def __init__(
        self,
        campaign: Campaign,
        out_dir: str,
        jobs: int = 1,
        seed: int | None = None,
        rules: OutputRules = PRIVATE,
    ) -> None:
        self.campaign = campaign
        self.out = out_dir
        self.rules = rules  # how the folder and its files are created (--force, --output-mode)
        self.jobs = max(1, jobs)
        self.seed = campaign.seed if seed is None else seed
        self._pool: ProcessPoolExecutor | None = None
        self.interrupted = False

    # ------------------------------------------------------------ files

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def _write_json(self, path: str, data: Any) -> None:
        _write_json(path, data, self.rules.mode)

    def prepare(self) -> None:
        """Create the folder, or resume in one that holds this campaign's results (a non-empty other one
        only with --force; one holding another campaign's results never)."""
        existing = self.path("campaign.json")
        make_folder(self.out, self.rules, reusable=lambda _: os.path.isfile(existing))
        meta = {"campaign": os.path.abspath(self.campaign.path), "digest": self.campaign.digest, "seed": self.seed}
        if os.path.exists(existing):
            with open(existing) as f:
                old = json.load(f)
            if old.get("digest") != meta["digest"] or old.get("seed") != meta["seed"]:
                raise CampaignError(
                    f"{self.out} holds results of another campaign or seed; give another -o or remove it"
                )
        else:
            self._write_json(existing, meta)

    # ------------------------------------------------------------ running

    def _pool_get(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.campaign,),
            )
        return self._pool

    def _run_all(self, specs: list[RunSpec]) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
        """Results as runs finish. At most ``jobs`` runs are handed to the workers at a time, so
        an interrupt stops the campaign after the runs under way (their results are kept)."""
        if not specs:
            return
        pool = self._pool_get()
        queue = list(reversed(specs))
        running: dict[Future[dict[str, Any]], RunSpec] = {}
        try:
            while running or (queue and not self.interrupted):
                while queue and len(running) < self.jobs and not self.interrupted:
                    spec = queue.pop()
                    running[pool.submit(_work, spec)] = spec
                if not running:
                    break
                finished, _ = wait(set(running), return_when=FIRST_COMPLETED)
                for fut in sorted(finished, key=lambda f: running[f].run):
                    spec = running.pop(fut)
                    yield spec, fut.result()
        except KeyboardInterrupt:  # a second interrupt: the runs under way are still waited for
            self.interrupted = True
            finished, _ = wait(set(running))
            for fut in sorted(finished, key=lambda f: running[f].run):
                if fut.exception() is None:
                    yield running[fut], fut.result()

    def _interrupt(self, _signum: int, _frame: object) -> None:
        """SIGINT: no new runs; those under way finish and are kept. Only a second one raises
        KeyboardInterrupt, so the first never lands between a run's start and its book-keeping."""
        self.interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _spec(self, run: int, golden: bool, fault: FaultSpec | None) -> RunSpec:
        name = f"golden-{run}" if golden else f"run-{run}"
        return RunSpec(
            run=run,
            golden=golden,
            fault=fault.source if fault is not None else None,
            fault_index=fault.index if fault is not None else 0,
            seed=self.seed,
            trace_path=self.path(f"{name}.jsonl"),
            log_dir=self.path(os.path.join("logs", name)),
            file_mode=self.rules.mode,
        )

    # ------------------------------------------------------------ phases

    def golden(self, progress: Progress) -> tuple[list[dict[str, Any]], list[Canon]]:
        n = self.campaign.golden_runs
        results: dict[int, dict[str, Any]] = {}
        todo = []
        for k in range(1, n + 1):
            saved = self.path(f"golden-{k}.result.json")
            if os.path.exists(saved) and os.path.exists(self.path(f"golden-{k}.jsonl")):
                with open(saved) as f:
                    results[k] = json.load(f)
            else:
                todo.append(self._spec(k, True, None))
        progress.start("golden runs", n)
        for _ in results:
            progress.advance("golden")
        for spec, result in self._run_all(todo):
            self._write_json(self.path(f"golden-{spec.run}.result.json"), result)
            results[spec.run] = result
            progress.advance("golden")
        if self.interrupted:
            return [], []
        bad = [r for r in results.values() if r.get("error") or r.get("timed_out")]
        if bad:
            r = bad[0]
            why = r.get("error") or f"the workload did not finish within {self.campaign.timeout_s:g} s"
            raise CampaignError(f"golden run {r['run']} failed: {why} (see {self.path('logs')})")
        ordered = [results[k] for k in sorted(results)]
        canons = [canonical(iter_trace(self.path(f"golden-{k}.jsonl"))) for k in sorted(results)]
        return ordered, canons

    def faults(self) -> list[FaultSpec]:
        listed = list(self.campaign.faults)
        if self.campaign.enumerate is not None:
            goldens = [
                list(iter_trace(self.path(f"golden-{k}.jsonl"))) for k in range(1, self.campaign.golden_runs + 1)
            ]
            listed += enumerate_faults(goldens, self.campaign.enumerate, self.seed, len(listed))
        return listed

    def faulty(self, envelope: Envelope, faults: list[FaultSpec], progress: Progress) -> dict[int, dict[str, Any]]:
        results_path = self.path("results.jsonl")
        done = read_results(results_path)
        progress.start("fault runs", len(faults))
        for _ in done:
            progress.advance("done before")
        todo = [self._spec(k, False, f) for k, f in enumerate(faults, 1) if k not in done]
        fd = os.open(results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, self.rules.mode)
        with os.fdopen(fd, "a") as out:
            for spec, result in self._run_all(todo):
                self._write_json(os.path.join(spec.log_dir, "result.json"), result)
                line = self.verdict(envelope, spec, result)
                out.write(json.dumps(line, sort_keys=False, default=str) + "\n")
                out.flush()
                os.fsync(out.fileno())
                done[spec.run] = line
                progress.advance(line["outcome"])
        return done

    def verdict(self, envelope: Envelope, spec: RunSpec, result: dict[str, Any]) -> dict[str, Any]:
        if result.get("error") and not os.path.exists(spec.trace_path):
            canon = Canon([], {}, [], None, None, 0)  # the run failed before its trace was opened
        else:
            canon = canonical(iter_trace(spec.trace_path))
        v = classify(envelope, canon, result)
        if result.get("error"):
            v.outcome, v.detail = "error", f"the run itself failed: {result['error']}"
            v.propagation, v.deviations = [], []
        return {
            "run": spec.run,
            "fault": spec.fault,
            "outcome": v.outcome,
            "propagation": v.propagation,
            "first_divergence": v.first_divergence,
            "exit_status": result.get("exit_status"),
            "state_diff": v.state_diff,
            "detail": v.detail,
            "injected": v.injected,
            "deviations": [
                {"component": d.component, "kind": d.kind, "message": d.message, "seq": d.seq, "count": d.count}
                for d in v.deviations[:20]
            ],
            "trace": os.path.basename(spec.trace_path),
            "timings": {k: round(t, 4) for k, t in (result.get("timings") or {}).items()},
        }

    def run(self, progress: Progress | None = None) -> list[dict[str, Any]]:
        """The whole campaign; returns the results, ordered by run."""
        progress = progress or _quiet()
        self.prepare()
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._interrupt) if in_main else None
        try:
            results, canons = self.golden(progress)
            if self.interrupted:
                return []
            envelope = learn(canons, results)
            faults = self.faults()
            self._write_json(self.path("faults.json"), [f.source for f in faults])
            done = self.faulty(envelope, faults, progress)
        finally:
            self.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return [done[k] for k in sorted(done)]


def outcome_table(results: list[dict[str, Any]]) -> list[tuple[int, str, str, str]]:
    """(run, fault, outcome, propagation) rows: what "the same outcome table" compares."""
    return [
        (r["run"], str((r.get("fault") or {}).get("name")), r["outcome"], " > ".join(r.get("propagation") or []))
        for r in sorted(results, key=lambda r: r["run"])
    ]
