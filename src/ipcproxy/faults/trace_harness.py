"""One isolated run of a trace campaign: the workload under ``ipcproxy trace``, no bus.

The D-Bus harness (``harness.py``) starts a private bus and a proxy; here
the transport is the syscall tracer, run as ``ipcproxy trace`` in a process
of its own (it waits for every child of its process, so it cannot share the
campaign worker's), with the run's one fault as a plan file given to
``--faults``. Everything after the run (the trace, the envelope, the
classification) is the campaign's common code. At the time limit the
tracer is asked to stop with SIGTERM and ends the programs
(``--kill-on-exit``), finishing the trace first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from .harness import RunResult, RunSpec, _tail, command_argv
from .plan import Campaign, CommandProbe
from .probes import take

STOP_GRACE_S = 10.0  # for the tracer to end the programs and finish the trace once asked


def tracer_argv(campaign: Campaign, spec: RunSpec, env: dict[str, str]) -> list[str]:
    """The ``ipcproxy trace`` command line of one run (the fault, if any, written as a plan beside its logs)."""
    argv = [sys.executable, "-m", "ipcproxy", "trace", "-q", "--kill-on-exit", "--force"]
    argv += ["--output-mode", f"{spec.file_mode:04o}", "--max-payload", str(campaign.max_payload)]
    argv += ["-w", spec.trace_path]
    if spec.fault is not None:
        plan = os.path.join(spec.log_dir, "plan.yaml")
        text = json.dumps({"version": 1, "seed": spec.seed, "faults": [spec.fault]}, indent=1)  # JSON is YAML
        fd = os.open(plan, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, spec.file_mode)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        argv += ["--faults", plan, "--seed", str(spec.seed)]
    return [*argv, "--", *command_argv(campaign.workload, env)]


def _stop(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Ask the tracer to end the programs and finish its trace; kill the lot if it does not."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()


def _trace_started(path: str) -> bool:
    """Whether the tracer got as far as running the command (its trace has a trace_start event)."""
    try:
        with open(path, "rb") as f:
            f.readline()
            return b'"trace_start"' in f.readline()
    except OSError:
        return False


def execute(campaign: Campaign, spec: RunSpec) -> RunResult:
    """Run one spec to completion (worker processes call this for trace campaigns)."""
    t0 = time.monotonic()
    os.makedirs(spec.log_dir, exist_ok=True)
    env = {**os.environ, "PYTHON": sys.executable, **campaign.env}
    result = RunResult(spec.run, spec.golden, None, False, "", "", [], [], {})
    try:
        argv = tracer_argv(campaign, spec, env)
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=campaign.base_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=campaign.timeout_s)
            result.exit_status = proc.returncode
        except subprocess.TimeoutExpired:
            result.timed_out = True
            out, err = _stop(proc)
        t1 = time.monotonic()
        result.stdout, result.stderr = _tail(out), _tail(err)
        for name, data in (("workload.out", out), ("workload.err", err)):
            with open(os.path.join(spec.log_dir, name), "wb") as f:
                f.write(data)
        if not _trace_started(spec.trace_path):
            why = err.decode(errors="replace").strip().splitlines()
            result.error = f"ipcproxy trace did not run the workload: {why[-1] if why else f'status {proc.returncode}'}"
        result.state = dict(sorted(asyncio.run(_probes(campaign, env)).items()))
        result.timings = {"setup": 0.0, "workload": t1 - t0, "probe": time.monotonic() - t1}
    except Exception as exc:  # noqa: BLE001 - reported in results, the campaign goes on
        result.error = f"{type(exc).__name__}: {exc}"
    result.timings["teardown"] = 0.0
    result.timings["total"] = time.monotonic() - t0
    return result


async def _probes(campaign: Campaign, env: dict[str, str]) -> dict[str, Any]:
    timeout = max(2.0, min(10.0, campaign.timeout_s))
    probes = [(i, p) for i, p in enumerate(campaign.state) if isinstance(p, CommandProbe)]
    values = await asyncio.gather(*(take(p, "", env, campaign.base_dir, timeout) for _i, p in probes))
    return {f"{i}: {p.label}": v for (i, p), v in zip(probes, values, strict=True)}
