"""One isolated run of a campaign: fresh private bus, proxy, services, workload, probes.

This is the only campaign module that does I/O. Each run gets its own
dbus-daemon and its own service processes, so nothing a fault broke can leak
into the next run; what is reused is the worker process (its imports) and the
campaign as already parsed. The proxy runs in-process (no extra interpreter
per run), on the same runtime as ``ipcproxy proxy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..chain import Chain, Context
from ..dbus.bus import Directory
from ..dbus.launcher import Activation, PrivateBus
from ..dbus.proxy_transport import ProxyTransport
from ..model import Verdict
from ..outputs import FILE_MODE, OutputRules
from ..runtime import CaptureOptions, Runtime, new_loop
from ..trace.recorder import Recorder
from . import probes
from .injector import FaultInjector
from .plan import Campaign, FaultPlan, Probe, fault_from_dict

OUTPUT_LIMIT = 64 * 1024
_SHELL_CHARS = re.compile(r"[;&|<>()`*?\[\]{}~!#]|\$\(")


@dataclass(slots=True)
class RunSpec:
    """What to run: golden (no fault) or one fault, and where to write its trace."""

    run: int  # golden runs: 1..G; fault runs: 1..N
    golden: bool
    fault: dict[str, Any] | None
    fault_index: int
    seed: int
    trace_path: str
    log_dir: str
    file_mode: int = FILE_MODE  # of the trace and logs (the campaign's --output-mode)


@dataclass(slots=True)
class ServiceStatus:
    command: str
    pid: int
    returncode: int | None  # None: still running when the run ended (then stopped by us)


@dataclass(slots=True)
class RunResult:
    run: int
    golden: bool
    exit_status: int | None  # None: killed at the time limit
    timed_out: bool
    stdout: str
    stderr: str
    services: list[ServiceStatus]
    missing_names: list[str]
    state: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        data = dict(data)
        data["services"] = [ServiceStatus(**s) for s in data.get("services", [])]
        return cls(**data)


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def command_argv(command: str, env: dict[str, str]) -> list[str]:
    """A simple command runs directly (so its own exit status is seen); anything else via sh -c."""
    if _SHELL_CHARS.search(command):
        return ["/bin/sh", "-c", command]
    return [_VAR.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), word) for word in shlex.split(command)]


class ProbePoint:
    """Counts the messages the proxy handles and starts the probes due after message k."""

    name = "probe-point"
    fail_closed = False

    def __init__(self, due: dict[int, list[tuple[int, Probe]]], start: Any) -> None:
        self.due = due
        self.start = start
        self.count = 0

    def intercept(self, ctx: Context) -> Verdict | None:
        self.count += 1
        for index, probe in self.due.pop(self.count, []):
            self.start(index, probe)
        return None


def _tail(data: bytes) -> str:
    return data[-OUTPUT_LIMIT:].decode(errors="replace")


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _stop(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            _kill_group(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 3)
        except TimeoutError:
            _kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        _kill_group(proc.pid, signal.SIGKILL)  # whatever the service left behind in its group


class Run:
    """Carries out one RunSpec; ``execute`` is the whole life of the run."""

    def __init__(self, campaign: Campaign, spec: RunSpec) -> None:
        self.campaign = campaign
        self.spec = spec
        self.state: dict[str, Any] = {}
        self.probe_tasks: list[asyncio.Task[None]] = []
        self.recorder: Recorder | None = None

    def _chain(self, address: str, env: dict[str, str]) -> Chain:
        chain = Chain()
        spec = self.spec
        if spec.fault is not None:
            fault = fault_from_dict(spec.fault, spec.fault_index)
            chain.add(FaultInjector(FaultPlan(seed=spec.seed, faults=[fault]), spec.seed))
        due: dict[int, list[tuple[int, Probe]]] = {}
        for i, probe in enumerate(self.campaign.state):
            if probe.at is not None:
                due.setdefault(probe.at, []).append((i, probe))
        if due:
            loop = asyncio.get_running_loop()

            def start(index: int, probe: Probe) -> None:
                self.probe_tasks.append(loop.create_task(self._probe(index, probe, address, env)))

            chain.add(ProbePoint(due, start))
        return chain

    async def _probe(self, index: int, probe: Probe, address: str, env: dict[str, str]) -> None:
        timeout = max(2.0, min(10.0, self.campaign.timeout_s))
        self.state[f"{index}: {probe.label}"] = await probes.take(
            probe, address, env, self.campaign.base_dir, timeout, self._probe_connected
        )

    def _probe_connected(self, unique_name: str) -> None:
        if self.recorder is not None:
            self.recorder.event("campaign", phase="probe", bus_name=unique_name)

    async def execute(self) -> RunResult:
        c, spec = self.campaign, self.spec
        t0 = time.monotonic()
        # D-Bus activation as on a session bus (or, with system_bus, a system bus), behind the proxy
        activation = Activation("system" if c.system_bus else "session", tuple(c.service_dirs))
        bus = PrivateBus(activation=activation)
        proxied = f"unix:path={os.path.join(bus.dir, 'proxy.sock')}"
        base_env = {**os.environ, "PYTHON": sys.executable, **c.env}
        bus.start(env={**base_env, "DBUS_SESSION_BUS_ADDRESS": proxied, "DBUS_SYSTEM_BUS_ADDRESS": proxied})
        header: dict[str, Any] = {"bus_address": bus.address, "mode": "campaign", "campaign": c.path, "run": spec.run}
        header["golden"] = spec.golden
        if spec.fault is not None:
            header["fault"] = spec.fault
        direct_env = {**base_env, "DBUS_SESSION_BUS_ADDRESS": bus.address, "DBUS_SYSTEM_BUS_ADDRESS": bus.address}
        transport = ProxyTransport(bus.address, proxied)
        runtime = Runtime(
            transport,
            # inside the campaign's own folder: a trace left by an interrupted run is written again
            CaptureOptions(write=spec.trace_path, output_rules=OutputRules(force=True, mode=spec.file_mode)),
            header,
            chain=self._chain(bus.address, direct_env),
            handle_signals=False,  # the campaign's worker process owns its signals
        )
        directory = runtime.directory
        services: list[asyncio.subprocess.Process] = []
        logs: list[Any] = []
        result = RunResult(spec.run, spec.golden, None, False, "", "", [], [], {})
        try:
            await runtime.start()
            self.recorder = runtime.recorder
            address = transport.address
            env = {**base_env, "DBUS_SESSION_BUS_ADDRESS": address, "DBUS_SYSTEM_BUS_ADDRESS": address}
            os.makedirs(spec.log_dir, exist_ok=True)
            for i, command in enumerate(c.setup):
                log = open(os.path.join(spec.log_dir, f"setup-{i}.log"), "wb")  # noqa: SIM115 - closed below
                logs.append(log)
                services.append(
                    await asyncio.create_subprocess_exec(
                        *command_argv(command, env),
                        env=env,
                        cwd=c.base_dir,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        start_new_session=True,
                    )
                )
            result.missing_names = await self._wait_for_names(directory, services)
            runtime.event("campaign", phase="workload_start")
            runtime.flush()
            t1 = time.monotonic()
            await self._workload(env, result)
            t2 = time.monotonic()
            runtime.event("campaign", phase="workload_end", exit_status=result.exit_status)
            runtime.flush()
            await asyncio.sleep(0.05)  # let a crash caused by the last message happen before we look
            await asyncio.gather(
                *(self._probe(i, p, bus.address, direct_env) for i, p in enumerate(c.state) if p.at is None)
            )
            for i, p in enumerate(c.state):
                if p.at is not None and not any(k.startswith(f"{i}: ") for k in self.state):
                    self.state[f"{i}: {p.label}"] = {"error": f"probe point (message {p.at}) not reached"}
            await asyncio.gather(*self.probe_tasks)
            t3 = time.monotonic()
            result.services = [
                ServiceStatus(command, proc.pid, proc.returncode)
                for command, proc in zip(c.setup, services, strict=True)
            ]
            result.state = dict(sorted(self.state.items()))
            result.timings = {"setup": t1 - t0, "workload": t2 - t1, "probe": t3 - t2}
        except Exception as exc:  # noqa: BLE001 - reported in results, the campaign goes on
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            t4 = time.monotonic()
            runtime.event("campaign", phase="teardown")
            runtime.flush()
            await _stop(services)
            for log in logs:
                log.close()
            await asyncio.sleep(0.02)  # let the last disconnects pass through the proxy
            runtime.close("run finished")
            bus.stop()
            result.timings["teardown"] = time.monotonic() - t4
            result.timings["total"] = time.monotonic() - t0
        return result

    async def _wait_for_names(self, directory: Directory, services: list[asyncio.subprocess.Process]) -> list[str]:
        deadline = time.monotonic() + max(5.0, self.campaign.timeout_s)
        while True:
            missing = [n for n in self.campaign.wait_for if directory.owner_of(n) is None]
            if not missing or time.monotonic() > deadline:
                return missing
            if services and all(p.returncode is not None for p in services):
                return missing
            await asyncio.sleep(0.01)

    async def _workload(self, env: dict[str, str], result: RunResult) -> None:
        c = self.campaign
        log_dir = self.spec.log_dir
        proc = await asyncio.create_subprocess_exec(
            *command_argv(c.workload, env),
            env=env,
            cwd=c.base_dir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), c.timeout_s)
            result.exit_status = proc.returncode
        except TimeoutError:
            result.timed_out = True
            _kill_group(proc.pid, signal.SIGKILL)
            out, err = await proc.communicate()
        _kill_group(proc.pid, signal.SIGKILL)
        result.stdout, result.stderr = _tail(out), _tail(err)
        with open(os.path.join(log_dir, "workload.out"), "wb") as f:
            f.write(out)
        with open(os.path.join(log_dir, "workload.err"), "wb") as f:
            f.write(err)


def execute(campaign: Campaign, spec: RunSpec) -> RunResult:
    """Run one spec to completion in a fresh event loop (worker processes call this)."""
    loop = new_loop()
    try:
        return loop.run_until_complete(Run(campaign, spec).execute())
    finally:
        loop.close()
