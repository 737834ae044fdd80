"""Owning a command's whole process tree, and ending it politely, then firmly.

A command can leave processes behind: background jobs (``sh -c 'sleep 300 &'``), daemons that
double-fork and ``setsid()``. The kernel hands such orphans to the nearest *child subreaper*
instead of PID 1. The **keeper** -- this module run as a script between ipcproxy and the command --
is that subreaper: every process the command starts stays below it, whatever session or process
group it moves to. When the command finishes (or the keeper is told to stop it), the keeper ends
what is left: SIGTERM, SIGKILL for what is still there after a grace period; it reaps everything
and exits with the command's status.

Why a process of its own: ipcproxy's event loop waits for the children it started (the bus, the
services, the connector helpers); a subreaper reaping whatever arrives would steal their exit
statuses. Below the keeper every process is the command's, so the keeper may reap them all.

Only the standard library, so that the keeper starts quickly as ``python -I -S proctree.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

GRACE_S = 5.0  # between the polite signal and SIGKILL
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def keeper_argv(cmd: Sequence[str], *, grace: float = GRACE_S, keep_children: bool = False) -> list[str]:
    """The argv that runs ``cmd`` under a keeper; its exit status is the command's (128+N for signal N)."""
    argv = [sys.executable, "-I", "-S", os.path.abspath(__file__), f"--grace={grace:g}"]
    if keep_children:
        argv.append("--keep-children")
    return [*argv, "--", *cmd]


def program_error(name: str, path: str | None) -> str | None:
    """Why ``name`` cannot be executed (as execvp would find it on ``path``), or None if it can."""
    if "/" not in name:
        return None if shutil.which(name, path=path) else os.strerror(errno.ENOENT)
    if not os.path.exists(name):
        return os.strerror(errno.ENOENT)
    if os.path.isdir(name) or not os.access(name, os.X_OK):
        return os.strerror(errno.EACCES)
    return None


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def set_child_subreaper() -> bool:
    """Make orphaned descendants of this process its children instead of PID 1's (Linux)."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def end_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have ``sig`` sent to this process when its parent dies (a SIGKILLed ipcproxy leaves no tree)."""
    parent = os.getppid()
    if _prctl(PR_SET_PDEATHSIG, sig) and os.getppid() != parent:  # it died before we asked
        os.kill(os.getpid(), sig)


def children(pid: int) -> list[int]:
    """The live children of ``pid`` (zombies included), from /proc."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(word) for word in f.read().split())
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    found: list[int] = []
    todo = children(pid)
    while todo:
        child = todo.pop(0)
        if child not in found:
            found.append(child)
            todo.extend(children(child))
    return found


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _reap() -> None:
    """Collect every child of ours that has exited."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass


def end_descendants(grace: float = GRACE_S) -> tuple[int, int]:
    """End every process below this one: SIGTERM, then SIGKILL after ``grace`` s; reap them.

    Returns how many were signalled politely and how many had to be killed. Processes forked
    while this runs are ended too. Call it only in a process that may reap all its children.
    """
    me = os.getpid()
    asked: set[int] = set()
    killed: set[int] = set()
    start = time.monotonic()
    while True:
        _reap()
        alive = [pid for pid in descendants(me) if not _is_zombie(pid)]
        if not alive:
            break
        elapsed = time.monotonic() - start
        if elapsed > 2 * grace + 5:  # something is stuck in the kernel: give up on it
            break
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if elapsed >= grace:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                elif pid not in asked:
                    os.kill(pid, signal.SIGTERM)
                    os.kill(pid, signal.SIGCONT)  # a stopped process would not see SIGTERM
                    asked.add(pid)
        time.sleep(0.01)
    _reap()
    return len(asked), len(killed)


def _foreground_terminal() -> int | None:
    """fd 0 if it is a terminal whose foreground process group is ours (we were started from it)."""
    try:
        if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
            return 0
    except OSError:
        pass
    return None


def _give_terminal(fd: int, pgrp: int) -> None:
    """Make ``pgrp`` the terminal's foreground group, as a shell does for the job it runs."""
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, pgrp)
    finally:
        signal.signal(signal.SIGTTOU, old)


def _signal_command(pid: int, sig: int) -> None:
    """The command's process group, or the command alone if it has left its group; woken if stopped."""
    for each in (sig, signal.SIGCONT):
        try:
            os.killpg(pid, each)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, each)
        except PermissionError:
            pass


def keep(cmd: Sequence[str], grace: float = GRACE_S, keep_children: bool = False) -> int:
    """Run ``cmd`` in a process group of its own below this subreaper; see the module docstring.

    SIGINT, SIGTERM, SIGHUP and SIGQUIT received are passed to the command's process group; if
    the command is still there ``grace`` s later, the group gets SIGKILL.
    """
    set_child_subreaper()
    # only stdin, stdout and stderr go on, as with subprocess's close_fds (uvloop's spawn leaves
    # copies of its parent's descriptors open: a background child would keep a caller's pipe open)
    os.closerange(3, 1 << 20)
    terminal = _foreground_terminal()
    command: list[int] = []
    pending: list[int] = []

    def forward(sig: int, _frame: FrameType | None) -> None:
        if not command:
            pending.append(sig)
            return
        _signal_command(command[0], sig)
        if signal.getitimer(signal.ITIMER_REAL)[0] == 0:
            signal.setitimer(signal.ITIMER_REAL, grace)

    def firmly(_sig: int, _frame: FrameType | None) -> None:
        if command:
            _signal_command(command[0], signal.SIGKILL)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    signal.signal(signal.SIGALRM, firmly)
    end_with_parent(signal.SIGTERM)
    pid = os.fork()
    if pid == 0:  # the command
        try:
            os.setpgid(0, 0)
            if terminal is not None:
                _give_terminal(terminal, os.getpgrp())
            for sig in (*FORWARDED, signal.SIGALRM):
                signal.signal(sig, signal.SIG_DFL)
            os.execvp(cmd[0], list(cmd))
        except OSError as exc:
            os.write(2, f"ipcproxy: cannot run {cmd[0]}: {exc.strerror}\n".encode())
            os._exit(127 if exc.errno == errno.ENOENT else 126)
    with contextlib.suppress(OSError):  # on both sides, so no signal finds it in the wrong group
        os.setpgid(pid, pid)
    command.append(pid)
    if terminal is not None:
        _give_terminal(terminal, pid)
    for early in pending:
        forward(early, None)
    status = 1
    while True:  # reaps orphans as they end, until the command itself has
        try:
            done, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if done == pid:
            status = os.waitstatus_to_exitcode(wait_status)
            break
    signal.setitimer(signal.ITIMER_REAL, 0)
    if terminal is not None:
        _give_terminal(terminal, os.getpgrp())
    if not keep_children:
        end_descendants(grace)
    return 128 - status if status < 0 else status


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    grace, keep_children = GRACE_S, False
    while args and args[0] != "--":
        option = args.pop(0)
        if option.startswith("--grace="):
            grace = float(option.split("=", 1)[1])
        elif option == "--keep-children":
            keep_children = True
        else:
            print(f"proctree: unknown option {option}", file=sys.stderr)
            return 2
    if not args[1:]:
        print("proctree: usage: proctree.py [--grace=S] [--keep-children] -- CMD [ARG...]", file=sys.stderr)
        return 2
    return keep(args[1:], grace, keep_children)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
