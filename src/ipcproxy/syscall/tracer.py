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

Decisions. With a chain (a policy, a fault plan, scripts), the loop stops
every send on a pipe or socket at its entry and every receive at its exit and
hands it over; here it becomes a data record's fields (through the channel
table), a ``Context`` and a verdict (``intercept``), and the loop carries out
the action the verdict maps to before that thread runs on. A call that did
not run as asked (failed, dropped, closed) is recorded when it is decided;
the others are recorded at their exit as usual, with the verdict. Without a
chain nothing is selected and no call waits.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from ..chain import Chain
from ..errors import InputError, RunFailed
from ..model import Action, Verdict
from ..trace.recorder import Recorder
from . import events
from .channels import RECV_CALLS, SEND_CALLS, ChannelTable, Facts, Transfer
from .framing import Framing
from .intercept import SyscallAction, data_context, syscall_action
from .records import data_fields, opaque_fields

DECIDED_CALLS = (SEND_CALLS | RECV_CALLS) - {"sendmmsg", "recvmmsg"}  # one message per call

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
        chain: Chain | None = None,
    ) -> None:
        """Runs ``cmd``, or with ``attach`` traces that running process (and ``cmd`` is empty).

        With a non-empty ``chain`` every message is decided by it before it moves.
        """
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
        self.chain = chain if chain is not None else Chain()
        self.pending: dict[int, object] = {}  # tid -> the verdict of the send it is running
        if self.chain:
            self.loop.select(sorted(n for n in _tracer.SYSCALLS if n in DECIDED_CALLS))

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
        if ev.kind == events.DECIDE:
            self._decide_send(ev)
            return
        if ev.kind == events.SYSCALL and self.chain:
            if ev.flags & events.WAITS:
                self._decide_recv(ev)
            elif ev.flags & events.COPY:
                ev.verdict = {"action": "injected", "reason": "a copy of the message before it (duplicated)"}
            elif (verdict := self.pending.pop(ev.tid, None)) is not None:
                ev.verdict = verdict
        elif ev.kind == events.EXIT:
            self.pending.pop(ev.tid, None)
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

    def _judge(self, transfer: Transfer) -> tuple[object, SyscallAction]:
        """The chain's verdict on a message (as its record's ``verdict``) and what the loop does about it."""
        fields = data_fields(transfer)
        try:
            verdict = self.chain.run(data_context(fields))
            action = syscall_action(verdict, fields)
        except Exception as exc:  # noqa: BLE001 - a message nobody could judge: fail closed when asked to
            closed = any(i.fail_closed for i in self.chain.interceptors)
            reason = f"could not decide: {type(exc).__name__}: {exc}"
            verdict = Verdict(Action.DENY if closed else Action.FORWARD, reason=reason, notes={"error": reason})
            action = syscall_action(verdict, fields)
        out = verdict.to_json()
        if action.errno and isinstance(out, dict):
            out.setdefault("errno", errno.errorcode.get(action.errno, str(action.errno)))
        return out, action

    def _carry_out(self, tid: int, action: SyscallAction) -> None:
        self.loop.decide(
            tid,
            errno=action.errno,
            skip=action.skip,
            close=action.close,
            delay=action.delay_s,
            payload=action.payload,
            length=-1 if action.length is None else action.length,
            copies=action.copies,
        )

    def _decide_send(self, ev: events.Event) -> None:
        transfer = self.table.preview(ev)
        if transfer is None:  # not a channel after all, or nothing to send
            self.loop.decide(ev.tid)
            self.table.feed(_entry(ev))
            return
        verdict, action = self._judge(transfer)
        self._carry_out(ev.tid, action)
        if action.errno or action.skip or action.close:  # it will not send as asked: recorded now
            transfer.verdict = verdict
            transfer.seq = self.recorder.record(data_fields(transfer), transfer.ts)
            self.messages += 1
            return
        if verdict != "forwarded":
            self.pending[ev.tid] = verdict
        self.table.feed(_entry(ev))

    def _decide_recv(self, ev: events.Event) -> None:
        transfer = self.table.preview(ev)
        if transfer is None:
            self.loop.decide(ev.tid)
            return
        verdict, action = self._judge(transfer)
        self._carry_out(ev.tid, action)
        if verdict != "forwarded":
            ev.verdict = verdict

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


def _entry(ev: events.Event) -> events.Event:
    """The ENTRY event a decided send stands for: its bytes may reach a reader before its exit is seen."""
    return events.Event(events.ENTRY, ev.tid, ev.pid, ev.ts, ev.nr, ev.name, ev.args)
