"""`ipcproxy interpose`: take over a live bus's socket path, and always give it back.

The bus keeps listening on its own socket; only the *name* changes hands.
A second hard link (PATH.ipcproxy-real) keeps the bus reachable, then our
listening socket is renamed over PATH in one atomic step, so no client ever
finds the path missing; restoring renames the bus's socket back over ours,
again atomically. Connections made before keep working (they never looked
at the path again).

Giving the path back must not depend on this process ending well: a small
watchdog, started first in a session of its own, blocks on a pipe whose only
writer is us. The kernel closes that pipe however we die (SIGKILL included),
the watchdog reads EOF and restores the path unless we already did. If even
the watchdog is gone, ``--recover`` does the same by hand.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence

from ..errors import InputError, RunFailed
from .address import AddressError, parse, session_bus_address, system_bus_address

ASIDE = ".ipcproxy-real"  # the bus's socket while we hold its path
STAGING = ".ipcproxy-new"  # our socket until it is renamed into place
Inode = tuple[int, int]  # (st_dev, st_ino)


def socket_path(socket_path: str | None, system: bool, env: Mapping[str, str]) -> str:
    """The bus socket path to take over: ``socket_path`` if given, else the system or the session bus's."""
    if socket_path:
        return os.path.abspath(socket_path)
    if system:
        text = env.get("DBUS_SYSTEM_BUS_ADDRESS") or system_bus_address()
    else:
        text = env.get("DBUS_SESSION_BUS_ADDRESS") or session_bus_address()
    try:
        addresses = parse(text)
    except AddressError as exc:
        raise InputError(str(exc)) from None
    for address in addresses:
        if address.transport == "unix" and address.path:
            return address.path
    raise InputError(f"interpose: the bus address {text} has no socket path to take over (unix:path=...)")


def _inode(path: str) -> Inode | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _listening(path: str) -> bool:
    """Whether something accepts connections on the socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(2)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def restore(path: str, aside: str, ours: Inode | None) -> str | None:
    """Put the bus's socket back at ``path``; returns what was done, or None if nothing was needed.

    ``ours`` is the inode of our own socket: the path is only taken back from
    it, never from something else that appeared there (a restarted bus).
    """
    real = _inode(aside)
    if real is None:
        return None
    current = _inode(path)
    if current == real:  # interrupted between linking and switching
        os.unlink(aside)
        return f"{path} still was the bus's socket; removed the extra name {aside}"
    if current is not None and ours is not None and current != ours:
        return f"{path} was replaced by something else meanwhile; left the old bus socket at {aside}"
    os.rename(aside, path)
    return f"restored the bus socket at {path}"


def recover(path: str, aside: str) -> str:
    """``--recover``: give the path back after a proxy and its watchdog both died; says what was done.

    Raises RunFailed when something still serves the path: that is not ours to take back.
    """
    if _inode(aside) is None:
        return f"nothing to recover: {path} is not moved aside (no {aside})"
    current = _inode(path)
    if current is not None and current != _inode(aside) and _listening(path):
        raise RunFailed(
            f"{path} is served by a running process (an `ipcproxy interpose` still running? stop it);"
            f" if the bus itself was restarted, {aside} is stale and can be removed"
        )
    return str(restore(path, aside, None))


class Takeover:
    """Our socket at a bus's path, the bus's socket beside it, and the watchdog that undoes it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.aside = path + ASIDE
        self.staging = path + STAGING
        self.listener: socket.socket | None = None
        self.ours: Inode | None = None
        self.linked = False
        self.switched = False
        self.restored = False
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._pipe = -1

    def check(self) -> None:
        """Refuse early, with one line, whatever would make the takeover unsafe."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            raise InputError(f"interpose: {self.path} does not exist (is the bus running?)") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise InputError(f"interpose: {self.path} is not a socket")
        if os.path.lexists(self.aside):
            raise InputError(
                f"interpose: {self.aside} exists: an earlier interpose did not finish;"
                f" run `ipcproxy interpose --socket {self.path} --recover` first"
            )
        if not _listening(self.path):
            raise InputError(f"interpose: nothing accepts connections at {self.path}")

    def prepare(self) -> socket.socket:
        """Listen on a staging name with the original's mode and owner; arm the watchdog; link the bus aside."""
        st = os.lstat(self.path)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.staging).st_mode):
                os.unlink(self.staging)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o077)
        try:
            sock.bind(self.staging)
        except OSError as exc:
            sock.close()
            raise InputError(f"interpose: cannot create {self.staging}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        self.listener = sock
        os.chmod(self.staging, stat.S_IMODE(st.st_mode))
        if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            try:
                os.chown(self.staging, st.st_uid, st.st_gid)
            except PermissionError:
                pass  # not root: our socket stays ours; the bus still decides who may talk
        sock.listen(512)
        self.ours = _inode(self.staging)
        self._start_watchdog()
        try:
            os.link(self.path, self.aside)
            self.linked = True
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.EOPNOTSUPP):
                raise InputError(f"interpose: cannot move {self.path} aside: {exc.strerror}") from None
        return sock

    def _start_watchdog(self) -> None:
        read_end, self._pipe = os.pipe()
        assert self.ours is not None
        argv = [
            sys.executable,
            "-m",
            "ipcproxy.dbus.interpose",
            "--watchdog",
            str(read_end),
            self.path,
            self.aside,
            f"{self.ours[0]}:{self.ours[1]}",
        ]
        try:
            self._watchdog = subprocess.Popen(
                argv, pass_fds=(read_end,), start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
        finally:
            os.close(read_end)

    def switch(self) -> None:
        """Put our socket at the bus's path (one rename; the path never goes missing when linked)."""
        if not self.linked:
            os.rename(self.path, self.aside)
        os.rename(self.staging, self.path)
        self.switched = True

    def restore(self) -> str | None:
        if self.restored:
            return None
        self.restored = True
        return restore(self.path, self.aside, self.ours)

    def close(self) -> None:
        """Restore if not done yet, then let the watchdog go (it finds nothing left to do)."""
        try:
            self.restore()
        finally:
            if self.ours is not None and _inode(self.staging) == self.ours:
                os.unlink(self.staging)
            if self.listener is not None:
                self.listener.close()
            if self._pipe >= 0:
                os.close(self._pipe)
                self._pipe = -1
            if self._watchdog is not None:
                try:
                    self._watchdog.wait(5)
                except subprocess.TimeoutExpired:
                    self._watchdog.kill()
                    self._watchdog.wait()


def watchdog_main(argv: Sequence[str]) -> int:
    """Wait for EOF on the pipe from the interposing process, then give the path back."""
    fd_text, path, aside, ours_text = argv
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe tells us when to act
    os.chdir("/")
    fd = int(fd_text)
    dev, ino = (int(x) for x in ours_text.split(":"))
    while True:
        try:
            if not os.read(fd, 64):
                break
        except InterruptedError:
            continue
    try:
        done = restore(path, aside, (dev, ino))
    except OSError as exc:
        done = f"could not restore {path} ({exc.strerror}); run: ipcproxy interpose --socket {path} --recover"
    with contextlib.suppress(OSError):
        if _inode(path + STAGING) == (dev, ino):  # killed before our socket was put in place
            os.unlink(path + STAGING)
    if done:
        with contextlib.suppress(OSError):
            print(f"ipcproxy watchdog: {done}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--watchdog":
        sys.exit(watchdog_main(sys.argv[2:]))
    sys.exit("usage: python -m ipcproxy.dbus.interpose --watchdog FD PATH ASIDE DEV:INO (internal)")
