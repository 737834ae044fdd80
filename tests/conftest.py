"""Shared fixtures: real private buses, the proxy as a real process, real services and clients."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipcproxy.dbus.launcher import PrivateBus
from ipcproxy.trace import reader

ROOT = Path(__file__).resolve().parent.parent
IPCPROXY = [sys.executable, "-m", "ipcproxy"]
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python3-dbusmock lives there
HOSTNAMED = "/lib/systemd/systemd-hostnamed"
TIMEDATED = "/lib/systemd/systemd-timedated"


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None or os.path.exists(cmd)


@functools.cache
def trace_unavailable() -> str | None:
    """Why `ipcproxy trace` cannot run here (None: it can): the reason its tests are skipped with."""
    if os.geteuid() != 0:
        return "needs root (ptrace of a seccomp-filtered tree)"
    try:
        import ipcproxy.syscall._tracer  # noqa: F401
    except ImportError as exc:
        return f"the stop loop is not built: {exc}"
    proc = subprocess.run([*IPCPROXY, "trace", "-q", "--", "true"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return f"ptrace is not permitted here: {proc.stderr.strip()}"
    return None


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    """The records of a trace, as every tool sees them (header checked, then dropped)."""
    warnings: list[str] = []
    found = list(reader.iter_trace(str(path), warn=warnings.append))
    assert not warnings, warnings
    return found


def run_trace(
    args: list[str], tmp_path: Path, **kw: Any
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """`ipcproxy trace -q -w` with ARGS, and the records of the trace it wrote (none if it wrote none)."""
    trace = tmp_path / "trace.jsonl"
    proc = subprocess.run(
        [*IPCPROXY, "trace", "-q", "-w", str(trace), *args], capture_output=True, text=True, timeout=120, **kw
    )
    return proc, read_trace(trace) if trace.exists() else []


def trace_header(path: str | Path) -> dict[str, Any]:
    """A trace's header, as every tool reads it."""
    with open(path, "rb") as stream:
        return reader.read_header(stream, str(path))


def messages(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") != "event"]


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A test that fails on dbus-broker shows what the broker logged (a peer it disconnected, and why)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, PrivateBus) and value.broker:
                report.sections.append(("dbus-broker's log", value.broker_log() or "(nothing)"))


@pytest.fixture
def bus() -> Iterator[PrivateBus]:
    """A fresh private dbus-daemon."""
    with PrivateBus() as b:
        yield b


@pytest.fixture
def broker() -> Iterator[PrivateBus]:
    """A fresh private dbus-broker (needs root for its mount namespace)."""
    if os.geteuid() != 0 or not have("dbus-broker-launch"):
        pytest.skip("dbus-broker needs root and the dbus-broker package")
    with PrivateBus(broker=True) as b:
        yield b


@pytest.fixture(params=["dbus-daemon", "dbus-broker"])
def any_bus(request: pytest.FixtureRequest) -> Iterator[PrivateBus]:
    """Each test using this runs once on dbus-daemon and once on dbus-broker."""
    if request.param == "dbus-broker" and (os.geteuid() != 0 or not have("dbus-broker-launch")):
        pytest.skip("dbus-broker needs root and the dbus-broker package")
    with PrivateBus(broker=request.param == "dbus-broker") as b:
        yield b


class CommandProcess:
    """An ipcproxy subcommand as a real process writing a trace; stopped by a signal."""

    default_stop_signal = signal.SIGTERM

    def __init__(self, argv: list[str], trace: Path, stderr_path: Path) -> None:
        self.trace = trace
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)

    def first_line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().decode().strip()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int | None = None) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig if sig is not None else self.default_stop_signal)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode

    def records(self) -> list[dict[str, Any]]:
        return read_trace(self.trace)


class ProxyProcess(CommandProcess):
    """`ipcproxy proxy` as a real process, in front of a bus."""

    def __init__(self, upstream: str, workdir: Path, extra: list[str] | None = None) -> None:
        self.socket = workdir / "proxy.sock"
        self.address = f"unix:path={self.socket}"
        trace = workdir / "trace.jsonl"
        argv = [
            *IPCPROXY,
            "proxy",
            "--upstream",
            upstream,
            "--listen",
            self.address,
            "-w",
            str(trace),
            "-q",
            *(extra or []),
        ]
        super().__init__(argv, trace, workdir / "proxy.err")
        line = self.first_line()
        if line != self.address:
            self.proc.kill()
            raise AssertionError(f"proxy did not start: {line!r} {self.stderr()}")

    def env(self, **extra: str) -> dict[str, str]:
        return dict(os.environ, DBUS_SESSION_BUS_ADDRESS=self.address, DBUS_SYSTEM_BUS_ADDRESS=self.address, **extra)


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[ProxyProcess] = []

    def start(upstream: str, *extra: str) -> ProxyProcess:
        d = tmp_path / f"proxy{len(started)}"
        d.mkdir()
        p = ProxyProcess(upstream, d, list(extra))
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


class Services:
    """Real services started on a bus, stopped (process group) at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], address: str, wait_name: str | None = None) -> subprocess.Popen[bytes]:
        env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=address, DBUS_SYSTEM_BUS_ADDRESS=address)
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        self.procs.append(proc)
        if wait_name:
            wait_name_owned(address, wait_name)
        return proc

    def dbusmock(
        self,
        address: str,
        template: str | None = None,
        name: str = "org.example.Mock",
        path: str = "/org/example/Mock",
        interface: str = "org.example.Mock",
    ) -> subprocess.Popen[bytes]:
        argv = [SYSTEM_PYTHON, "-m", "dbusmock"]
        if template:
            argv += ["--template", template]
        else:
            argv += [name, path, interface]
        return self.start(argv, address, wait_name=name if not template else None)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            if p.stderr:
                p.stderr.close()


@pytest.fixture
def services() -> Iterator[Services]:
    s = Services()
    yield s
    s.stop()


def wait_name_owned(address: str, name: str, timeout: float = 15.0) -> None:
    def owned() -> bool:
        r = subprocess.run(["busctl", f"--address={address}", "status", name], capture_output=True, timeout=10)
        return r.returncode == 0

    wait_for(owned, timeout, f"{name} on {address}")


def busctl(address: str, *args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["busctl", f"--address={address}", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"busctl {' '.join(args)} failed: {r.stderr}")
    return r


def gdbus(address: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["gdbus", *args, "--address", address], capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise AssertionError(f"gdbus {' '.join(args)} failed: {r.stderr}")
    return r


def dbus_send(address: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        ["dbus-send", f"--bus={address}", "--print-reply", *args], capture_output=True, text=True, timeout=20
    )
    if check and r.returncode != 0:
        raise AssertionError(f"dbus-send {' '.join(args)} failed: {r.stderr}")
    return r


def capture_holds(address: str, path: str | Path, probe: str) -> bool:
    """Make a probe call and say whether the capture at ``path`` already holds it: its tool is monitoring
    then, and has written everything the bus passed on before the probe."""
    from ipcproxy.dbus import wire
    from ipcproxy.trace.pcapfile import read_packets

    busctl(address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", probe)
    try:
        return any(wire.parse_message(p.data).member == probe for p in read_packets(str(path), lambda _: None))
    except (ValueError, wire.FrameError):
        return False


def stop_capture(proc: subprocess.Popen[bytes]) -> None:
    """Stop a capturing tool as a user would (SIGINT), firmly if it does not end."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
