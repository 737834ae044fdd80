"""Running the evaluation's system once: a private bus, the proxy in front, services and clients as their own users.

Every run starts from nothing (a fresh dbus-daemon, fresh services), so runs
are independent and repeatable. All components run as distinct
unprivileged accounts: that keeps the real daemons from changing the host
even when a setter gets through, and it is what lets a per-user bus policy
(the exported XML) tell the components apart.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipcproxy.dbus.launcher import PrivateBus
from ipcproxy.trace.reader import iter_trace

PATH_ENV = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Service:
    name: str  # the bus name it owns
    user: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    user: str
    argv: tuple[str, ...]
    label: str


@dataclass
class RunResult:
    label: str
    trace: Path
    outputs: list[tuple[Step, subprocess.CompletedProcess[str]]] = field(default_factory=list)
    proxy_stderr: str = ""

    def records(self) -> list[dict[str, Any]]:
        return list(iter_trace(str(self.trace), warn=lambda _t: None))


def as_user(user: str, argv: tuple[str, ...]) -> list[str]:
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", *argv]


def _owned(bus_address: str, name: str) -> bool:
    r = subprocess.run(["busctl", f"--address={bus_address}", "status", name], capture_output=True, timeout=10)
    return r.returncode == 0


def _wait_owned(bus_address: str, name: str, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not _owned(bus_address, name):
        if proc.poll() is not None:
            raise RuntimeError(f"{name}: the service exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not appear on the bus within {timeout:.0f} s")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[Any], group: bool) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
            proc.wait()


def run_system(
    label: str,
    out: Path,
    services: list[Service],
    steps: list[Step],
    policy: Path | None = None,
    bus_policy_xml: Path | None = None,
    broker: bool = False,
) -> RunResult:
    """One run: bus (dbus-daemon or dbus-broker, optionally loading an exported <policy>), proxy (optionally
    enforcing), services, steps."""
    out.mkdir(parents=True, exist_ok=True)
    trace = out / f"{label}.jsonl"
    extra = f"<include>{bus_policy_xml}</include>" if bus_policy_xml else ""
    bus = PrivateBus(broker=broker, bus_type="system", extra_config=extra).start()
    os.chmod(bus.socket, 0o777)  # clients of every uid connect (dbus-broker's launcher leaves it 0755)
    result = RunResult(label, trace)
    procs: list[subprocess.Popen[bytes]] = []
    proxy: subprocess.Popen[bytes] | None = None
    err_path = out / f"{label}.proxy.err"
    try:
        listen = f"unix:path={Path(bus.dir) / 'proxy.sock'}"
        argv = [sys.executable, "-m", "ipcproxy", "proxy", "--upstream", bus.address, "--listen", listen, "-q"]
        argv += ["-w", str(trace)]
        if policy is not None:
            argv += ["--policy", str(policy), "--mode", "enforce"]
        with open(err_path, "wb") as err:
            proxy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
        assert proxy.stdout is not None
        address = proxy.stdout.readline().decode().strip()
        if address != listen:
            raise RuntimeError(f"the proxy did not start: {err_path.read_text()}")
        env = {"PATH": PATH_ENV, "DBUS_SYSTEM_BUS_ADDRESS": address, "DBUS_SESSION_BUS_ADDRESS": address}
        for service in services:
            with open(out / f"{label}.{service.name}.err", "wb") as service_err:
                proc = subprocess.Popen(
                    as_user(service.user, service.argv),
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=service_err,
                    start_new_session=True,
                )
            procs.append(proc)
            _wait_owned(bus.address, service.name, proc)
        for step in steps:
            completed = subprocess.run(
                as_user(step.user, step.argv), env=env, capture_output=True, text=True, timeout=60
            )
            result.outputs.append((step, completed))
    finally:
        for proc in reversed(procs):
            _stop(proc, group=True)
        if proxy is not None:
            _stop(proxy, group=False)
            if proxy.stdout is not None:
                proxy.stdout.close()
        bus.stop()
    result.proxy_stderr = err_path.read_text() if err_path.exists() else ""
    return result
