"""`ipcproxy watch`: the eBPF program's events through the channel table into trace records.

The reader thread of ``_ring`` keeps the kernel's ring buffer empty; here
batches of its spooled events become ``data`` records exactly as
``ipcproxy trace`` writes them (the same ``ChannelTable`` and
``data_fields``), so every tool that reads a trace reads a watch.

Lost events. The kernel counts, per CPU, the events its ring buffer could not
take and hands the count over with that CPU's next event: a ``lost`` event is
recorded at that point of the trace. Whatever is still uncounted at the end
(or was lost in the reader's spool) is recorded before ``watch_stop``.

Stopping. On SIGINT/SIGTERM, the end of ``--duration``, or an error, the
programs are detached first (the kernel produces nothing more), the reader
drains what is left, the held reads are written, ``watch_stop`` is recorded
and the trace is flushed and closed; then the object is unloaded.
"""

from __future__ import annotations

import os
import signal
import stat
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ..errors import RunFailed
from ..model import Endpoint
from ..syscall import events as sysevents
from ..syscall import sockaddr
from ..syscall.channels import SEND_CALLS, Channel, ChannelTable, Transfer
from ..syscall.events import Event
from ..syscall.framing import Framing
from ..syscall.procfs import unix_diag
from ..syscall.queues import SYSV_DEV
from ..syscall.records import data_fields
from ..trace.recorder import Recorder
from . import events, loader
from .facts import WatchFacts, exe_of

FLUSH_EVERY = 0.05  # seconds: how old records may get before they are written
POLL = 0.05  # seconds a take() waits for events (how soon a signal is seen)


@dataclass
class Result:
    messages: int
    lost: int  # events the kernel or the reader could not keep
    reason: str


def status_text(status: int) -> str:
    """A wait status as the trace writes it: ``0``, ``3``, ``SIGSEGV``."""
    if os.WIFSIGNALED(status):
        try:
            return signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            return f"signal {os.WTERMSIG(status)}"
    return str(os.WEXITSTATUS(status))


def own_channels() -> list[int]:
    """Inodes of this process's pipes and sockets, with their Unix peers: whatever reads our output."""
    found: list[int] = []
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in fds:
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if stat.S_ISFIFO(st.st_mode):
            found.append(st.st_ino)
        elif stat.S_ISSOCK(st.st_mode):
            found.append(st.st_ino)
            peer = unix_diag(st.st_ino)[1]
            if peer:
                found.append(peer)
    return sorted(set(found))[:64]


class Watch:
    def __init__(
        self,
        recorder: Recorder,
        settings: loader.Settings,
        *,
        duration: float | None = None,
        framing: Framing | None = None,
    ) -> None:
        self.recorder = recorder
        self.framing = framing  # None: every message as written (one record per syscall)
        self.settings = settings
        self.duration = duration
        self.facts = WatchFacts()
        self.table = ChannelTable(self.facts)
        self.entries: dict[int, int] = {}  # tid -> when its write entered
        self.unbound: dict[tuple[str, str], float] = {}  # datagram addresses nobody was bound at, until when
        self.stop_reason: str | None = None
        self.signals = 0
        self.abandoned = 0  # events not recorded: asked again to stop while draining
        self.messages = 0
        self.lost_reported = 0
        self.watcher: Any = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.stop_reason is None:
            self.stop_reason = f"signal {signal.Signals(signum).name}"

    def run(self, start_fields: dict[str, Any]) -> Result:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.watcher = loader.load(self.settings)
            try:
                if self.settings.pids:  # children started while the programs were loading: the fork hook missed them
                    self.watcher.add_pids(loader.descendants(self.settings.pids))
                self.recorder.event(
                    "watch_start",
                    max_payload=self.settings.max_payload,
                    programs=self.watcher.programs(),
                    **start_fields,
                )
                self.recorder.flush()
                self._loop()
                return self._finish(self.stop_reason or "done")
            finally:
                self.watcher.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self) -> None:
        deadline = time.monotonic() + self.duration if self.duration is not None else None
        last_flush = time.monotonic()
        while self.stop_reason is None:
            batch = self.watcher.take(POLL)
            if batch is None:
                raise RunFailed("watch: the ring-buffer reader stopped")
            if batch:
                self._feed_batch(batch)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self.stop_reason = "duration"
            if now - last_flush >= FLUSH_EVERY:
                self.recorder.flush()
                last_flush = now

    def _finish(self, reason: str) -> Result:
        self.watcher.detach()  # nothing new from the kernel; what it wrote is drained below
        self.watcher.stop()
        while (batch := self.watcher.take(0)) is not None:
            if not batch:
                break
            self._feed_batch(batch)
        for transfer in self.table.finish():
            self._record(transfer)
        if self.framing is not None:
            self.messages += self.framing.finish()
        kernel, spool = self.watcher.lost()
        if kernel > self.lost_reported:
            self.recorder.event("lost", count=kernel - self.lost_reported, where="kernel")
        if spool:
            self.recorder.event("lost", count=spool, where="reader")
        if self.abandoned:
            self.recorder.event("lost", count=self.abandoned, where="reader", reason="asked again to stop")
        lost = max(kernel, self.lost_reported) + spool + self.abandoned
        self.recorder.event("watch_stop", reason=reason, messages=self.messages, lost=lost)
        self.recorder.close()
        return Result(self.messages, lost, reason)

    def _record(self, transfer: Transfer) -> None:
        if self.framing is not None:  # frames it, or records it as written
            self.messages += self.framing.feed(transfer)
        else:
            transfer.seq = self.recorder.record(data_fields(transfer), transfer.ts)
            self.messages += 1

    def _find_receiver(self, raw: events.Raw, batch: bytes) -> None:
        """A datagram to an address no described socket has: describe the one bound there, from /proc."""
        ev = raw.event
        kind = "unix" if raw.domain == 1 else "udp"
        to = sockaddr.text(ev.addr)
        if to is None or (kind, to) in self.table.bound_at:
            return
        now = time.monotonic()
        if self.unbound.get((kind, to), 0.0) > now:
            return
        inode = self.facts.bound_at(ev.pid, kind, to)
        if inode is None:  # the process is gone already: its socket's own first event, further on
            for later in events.decode_from(batch, raw.offset):
                local = later.event.local
                if later.kind == events.DATA and later.domain == raw.domain and local and sockaddr.text(local) == to:
                    inode = later.event.inodes[0]
                    break
        if inode is None:
            self.unbound[(kind, to)] = now + 1.0  # not asked again for a second
            return
        # a "bind" that describes the socket: the table learns it as the stop loop's description
        self.table.feed(
            Event(
                sysevents.SYSCALL,
                ev.tid,
                ev.pid,
                ev.ts,
                name="bind",
                devs=(ev.devs[0], 0),
                inodes=(inode, 0),
                domain=raw.domain,
                socktype=ev.socktype,
                local=ev.addr,
            )
        )

    def _name_queue(self, ev: Event) -> None:
        """msgget returned a SysV queue's id: the key it was made with names the queue in the records.

        Not the table's own msgget: that one also reconciles the queue with the messages it holds, which
        only a tracer that stops the caller can count at that moment.
        """
        if ev.ret < 0:
            return
        key = ev.args[0] & 0xFFFFFFFF
        ipc_key = key - (1 << 32) if key >> 31 else key  # key_t: a signed 32-bit int
        found = self.table.channels.get((SYSV_DEV, ev.ret))
        if found is None or found.ipc_key != ipc_key:
            self.table.channels[(SYSV_DEV, ev.ret)] = Channel("sysv-msg", SYSV_DEV, ev.ret, ipc_key=ipc_key)
        self.table.sysv_users.setdefault(ev.ret, set()).add(ev.pid)

    def _feed_batch(self, batch: bytes) -> None:
        table = self.table
        recorder = self.recorder
        for n, raw in enumerate(events.decode(batch)):
            if self.signals > 1 and n % 1024 == 0:  # asked again: stop at once
                self.abandoned += events.count_from(batch, raw.offset)
                break
            if raw.lost:
                self.lost_reported += raw.lost
                recorder.event("lost", count=raw.lost, where="kernel")
            self.facts.current = raw
            ev = raw.event
            kind = raw.kind
            if kind == events.DATA:
                if ev.name in SEND_CALLS:
                    ev.ts_entry = self.entries.pop(ev.tid, ev.ts)
                    if ev.addr and ev.socktype & 0xF == 2:
                        self._find_receiver(raw, batch)
            elif kind == events.ENTRY:
                self.entries[ev.tid] = ev.ts
                fds = table.fds.get(ev.pid) if ev.name != "msgsnd" else None  # msgsnd: a queue id, no fd
                if fds is not None:
                    entry = fds.get(ev.args[0])
                    if entry is not None and entry.key != (ev.devs[0], ev.inodes[0]):
                        del fds[ev.args[0]]  # the fd was closed and reused since: learnt again at its exit
                        table.generation += 1
            elif kind == events.EXIT:
                self.entries.pop(ev.tid, None)
                if ev.tid == ev.pid and ev.pid in table.endpoints:
                    ep = table.endpoints[ev.pid]
                    recorder.event("exit", pid=ev.pid, exe=ep.exe, comm=ep.comm, status=status_text(ev.ret))
            elif kind == events.EXEC and not ev.payload:
                ev.payload = (exe_of(ev.pid) or "").encode()  # the kernel's walk found no path
            elif kind == events.PROC:  # who this pid is now, from the kernel: never a former holder's /proc
                table.endpoints[ev.pid] = Endpoint(
                    pid=ev.pid, uid=raw.uid, exe=ev.payload.decode(errors="replace") or None, comm=raw.comm or None
                )
                continue
            elif kind == events.MSGGET:
                self._name_queue(ev)
                continue
            for transfer in table.feed(ev):
                self._record(transfer)
        self.facts.current = None
