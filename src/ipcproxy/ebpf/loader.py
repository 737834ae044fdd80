"""Loading the watcher: what this machine lacks, in one line, before the kernel is asked; then the load itself.

The program needs BTF (CO-RE), the right to load tracing programs
(CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN), the object compiled at install
time and the compiled reader (``_ring``, over libbpf). Raw tracepoints and
``tp_btf`` attach by name, so tracefs is not needed.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import RunFailed

HERE = os.path.dirname(os.path.abspath(__file__))
OBJECT = os.path.join(HERE, "watch.bpf.o")
MISSING_NOTE = os.path.join(HERE, "watch.bpf.missing")
BTF = "/sys/kernel/btf/vmlinux"
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
FALLBACK = "use `ipcproxy trace -- CMD` (ptrace, for a process tree it starts) instead"

W_PID, W_COMM, W_CGROUP, W_EXE = 1, 2, 4, 8


@dataclass
class Settings:
    """What the kernel side is told: the filters as map contents and bits."""

    max_payload: int
    transports: int
    pids: list[int] = field(default_factory=list)
    comms: list[bytes] = field(default_factory=list)
    exes: list[tuple[int, int]] = field(default_factory=list)  # (kernel dev, inode)
    cgroup: int = 0  # 0: no cgroup filter
    ignored: list[int] = field(default_factory=list)
    ring_bytes: int = 64 << 20

    @property
    def filters(self) -> int:
        return (
            (W_PID if self.pids else 0)
            | (W_COMM if self.comms else 0)
            | (W_CGROUP if self.cgroup else 0)
            | (W_EXE if self.exes else 0)
        )


def descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process below them now (``--pid`` selects a process with its children)."""
    import psutil

    found = set(pids)
    for pid in pids:
        try:
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
    return sorted(found)


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def missing() -> str | None:
    """What this machine lacks for ``watch``, in the user's words; None when nothing is known to be missing."""
    caps = _effective_caps()
    if not (caps >> CAP_SYS_ADMIN & 1 or (caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1)):
        return "loading eBPF programs needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)"
    if not os.path.exists(BTF):
        return f"the kernel has no BTF ({BTF}; CONFIG_DEBUG_INFO_BTF)"
    if not os.path.exists(OBJECT):
        why = ""
        try:
            with open(MISSING_NOTE) as note:
                why = f": {note.read().strip()} missing at install time"
        except OSError:
            pass
        return f"the eBPF program was not built{why} (run scripts/setup.sh)"
    try:
        from . import _ring  # type: ignore[attr-defined]  # noqa: F401
    except ImportError:
        return "the eBPF reader was not built: libbpf (libbpf-dev) was missing at install time (run scripts/setup.sh)"
    return None


def load(settings: Settings) -> Any:
    """The loaded and attached program with its reader (``_ring.Watcher``); RunFailed in one line."""
    lacking = missing()
    if lacking is not None:
        raise RunFailed(f"watch: {lacking}; {FALLBACK}")
    from . import _ring  # type: ignore[attr-defined]

    try:
        return _ring.Watcher(
            OBJECT,
            os.getpid(),
            settings.max_payload,
            settings.transports,
            settings.filters,
            settings.cgroup,
            settings.pids,
            settings.comms,
            settings.exes,
            settings.ignored,
            settings.ring_bytes,
        )
    except OSError as exc:
        code = exc.errno
        text = exc.strerror or str(exc)
        if code in (errno.EPERM, errno.EACCES):
            raise RunFailed(
                f"watch: the kernel refused the eBPF program ({text}: lockdown or missing privileges); {FALLBACK}"
            ) from None
        raise RunFailed(f"watch: cannot load the eBPF program: {text}; {FALLBACK}") from None
