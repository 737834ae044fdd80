"""`ipcproxy trace`: a command's process tree under the compiled stop loop, its IPC recorded.

The loop (``_tracer``) runs the command with a seccomp filter that stops it
only at IPC syscalls; its own thread services the stops while this one turns
the batches of events it hands over into trace records (through the channel
table, in the order the table releases them), so the programs do not wait for
Python.

Stopping. A seccomp filter stays in a process for its whole life, and
without its tracer every filtered call would fail with ENOSYS. So on
SIGINT/SIGTERM the trace is finished (a ``trace_stop`` event, every held read
written, the file flushed and closed) and the tracer stays only to let the
programs' IPC calls run unrecorded until they end; with ``kill_on_exit``, or
on a second signal, it ends them with SIGKILL instead. A process traced with
``attach`` has no filter (one cannot be added from outside): it stops at every
syscall while traced, and is detached from on SIGINT/SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from ..errors import InputError, RunFailed
from ..trace.recorder import Recorder
from . import events
from .channels import ChannelTable, Facts, Transfer
from .framing import Framing
from .records import data_fields, opaque_fields

FLUSH_EVERY = 0.05  # seconds: how old records may get before they are written (what a SIGKILL can lose)


def exit_status(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for a signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return str(os.WEXITSTATUS(status))


class SyscallTrace:
    def __init__(
        self,
        cmd: Sequence[str],
        env: Mapping[str, str],
        recorder: Recorder,
        facts: Facts,
        *,
        max_payload: int,
        kill_on_exit: bool,
        attach: int | None = None,
        framing: Framing | None = None,
    ) -> None:
        """Runs ``cmd``, or with ``attach`` traces that running process (and ``cmd`` is empty)."""
        from . import _tracer  # type: ignore[attr-defined]

        self.cmd = list(cmd)
        self.attach = attach
        self.env = dict(env)
        self.recorder = recorder
        self.table = ChannelTable(facts)
        self.facts = facts
        self.kill_on_exit = kill_on_exit
        self.names = {nr: name for name, nr in _tracer.SYSCALLS.items()}
        self.loop = _tracer.Tracer(max_payload)
        self.max_payload = max_payload
        self.stop_reason: str | None = None
        self.signals = 0
        self.messages = 0
        self.framing = framing  # None: every message as written (one record per syscall)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.stop_reason is None:
            self.stop_reason = f"signal {signal.Signals(signum).name}"

    def _spawn(self) -> int:
        path = shutil.which(self.cmd[0], path=self.env.get("PATH", os.defpath))
        if path is None:
            raise InputError(f"trace: cannot run {self.cmd[0]}: command not found")
        argv = [os.fsencode(a) for a in self.cmd]
        envp = [os.fsencode(f"{k}={v}") for k, v in self.env.items()]
        try:
            return int(self.loop.spawn(path, argv, envp))
        except PermissionError as exc:
            raise RunFailed(
                f"trace: ptrace is not permitted here ({exc.strerror}): run as root or allow ptrace"
            ) from None
        except OSError as exc:
            raise RunFailed(f"trace: cannot start {self.cmd[0]}: {exc.strerror}") from None

    def run(self) -> int:
        """Runs the command to its end; returns its exit status (128+N when killed by signal N)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.attach is not None:
                pid = self._attach(self.attach)
                self.recorder.event("trace_start", attached=pid, max_payload=self.max_payload)
            else:
                pid = self._spawn()
                self.recorder.event("trace_start", command=self.cmd, pid=pid, max_payload=self.max_payload)
            self.recorder.flush()
            self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        status = self.loop.status
        if status is None:
            return 0 if self.attach is not None else 1  # attached, and let go while it ran on
        return exit_status(status)

    def _attach(self, pid: int) -> int:
        try:
            return int(self.loop.attach(pid))
        except FileNotFoundError:
            raise InputError(f"trace: -p {pid}: no such process") from None
        except PermissionError as exc:
            raise RunFailed(f"trace: cannot attach to {pid} ({exc.strerror}): run as root or allow ptrace") from None
        except OSError as exc:
            raise RunFailed(f"trace: cannot attach to {pid}: {exc.strerror}") from None

    def _loop(self) -> None:
        recording = True
        killed = False
        last_flush = time.monotonic()
        while True:
            if self.stop_reason is not None and recording:
                if self.kill_on_exit:
                    self.loop.kill_all()
                    killed = True
                else:
                    self._finish(self.stop_reason)
                    self.loop.record = False
                    recording = False
                    if self.attach is not None:  # no filter in it: it can be let go
                        self.loop.detach_all()
            if self.signals > 1 and not killed:  # asked again: end them
                self.loop.kill_all()
                killed = True
            # Written at least every FLUSH_EVERY: the wait ends by then when records are waiting
            # (the programs may not stop again for long).
            timeout = max(0.0, FLUSH_EVERY - (time.monotonic() - last_flush)) if self.recorder.backlog else None
            batch = self.loop.wait(timeout)
            if batch is None:
                break
            if not recording:
                continue
            for ev in events.decode(batch, self.names):
                self._feed(ev)
            now = time.monotonic()
            if now - last_flush >= FLUSH_EVERY:
                self.recorder.flush()
                last_flush = now
        if recording:
            self._finish(self.stop_reason or "done")

    def _feed(self, ev: events.Event) -> None:
        if ev.kind == events.EXIT and ev.tid == ev.pid:  # before the table forgets who it was
            ep = self.table.endpoint(ev.pid)
            self.recorder.event("exit", pid=ev.pid, exe=ep.exe, comm=ep.comm, status=_status_text(ev.ret))
        for transfer in self.table.feed(ev):
            self._record(transfer)
        if self.table.opaque:
            for use in self.table.opaque:
                self.recorder.record(opaque_fields(use), use.ts)
            self.table.opaque.clear()

    def _record(self, transfer: Transfer) -> None:
        if self.framing is not None:  # frames it, or records it as written
            self.messages += self.framing.feed(transfer)
        else:
            transfer.seq = self.recorder.record(data_fields(transfer), transfer.ts)
            self.messages += 1

    def _finish(self, reason: str) -> None:
        for transfer in self.table.finish():
            self._record(transfer)
        if self.framing is not None:
            self.messages += self.framing.finish()
        status = self.loop.status
        fields: dict[str, Any] = {"reason": reason, "messages": self.messages}
        if status is not None:
            fields["status"] = _status_text(status)
        self.recorder.event("trace_stop", **fields)
        self.recorder.close()
