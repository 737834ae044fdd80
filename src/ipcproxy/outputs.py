"""The one way commands create output files and folders: traces, pcaps, policies, campaign folders.

An output never replaces one of the command's inputs (compared by device
and inode, so a symlink, a hard link or another spelling of the same path is
caught), never replaces an existing non-empty file unless the user said
``--force``, and never follows a symbolic link at its own path (even as
root, a link planted there must not redirect a trace onto another file).
Files are created private (0600, folders 0700) whatever the umask: a trace
holds decoded arguments, which may be hostnames, paths or tokens. Each
refusal is one line naming the path.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO

from .errors import InputError
from .inputs import kind_of
from .oserror import reason

FILE_MODE = 0o600


class OutputError(InputError, ValueError):
    """An output the command may not or cannot create; the text is one line naming it."""


def parse_mode(text: str) -> int:
    """``--output-mode`` value: an octal mode the owner can read and write, e.g. 0600 or 0640."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 0600 or 0640") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a file mode (0000 to 0777)")
    if mode & 0o600 != 0o600:
        raise argparse.ArgumentTypeError(f"{text!r} would leave the owner unable to read or write the output")
    return mode


def folder_mode(file_mode: int) -> int:
    """The mode of a folder holding files of ``file_mode``: each read bit gets its search (x) bit."""
    return file_mode | ((file_mode & 0o444) >> 2)


def add_output_options(parser: argparse.ArgumentParser, what: str = "the output") -> None:
    """``--force`` and ``--output-mode``, for every command that writes a file or folder."""
    parser.add_argument("--force", action="store_true", help=f"replace {what} even if it exists and is not empty")
    parser.add_argument(
        "--output-mode",
        type=parse_mode,
        default=FILE_MODE,
        metavar="OCTAL",
        help="permissions of the files written (default 0600; folders get the matching x bits)",
    )


@dataclass(frozen=True, slots=True)
class OutputRules:
    """How a command may create its outputs: replace non-empty files or not, with which mode, never over which inputs."""

    force: bool = False
    mode: int = FILE_MODE
    inputs: tuple[str, ...] = ()
    _ids: frozenset[tuple[int, int]] = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def make(cls, force: bool = False, mode: int = FILE_MODE, inputs: Iterable[str | None] = ()) -> OutputRules:
        given = tuple(p for p in inputs if p)
        ids = set()
        for path in given:
            with contextlib.suppress(OSError):
                st = os.stat(path)
                ids.add((st.st_dev, st.st_ino))
        return cls(force, mode, given, frozenset(ids))

    @classmethod
    def from_args(cls, args: argparse.Namespace, inputs: Iterable[str | None] = ()) -> OutputRules:
        """From a command's ``--force`` and ``--output-mode`` (absent ones take their defaults)."""
        return cls.make(getattr(args, "force", False), getattr(args, "output_mode", FILE_MODE), inputs)

    def input_named_by(self, st: os.stat_result) -> str | None:
        """The input that is the same file as ``st``, if any."""
        if (st.st_dev, st.st_ino) not in self._ids:
            return None
        for path in self.inputs:
            with contextlib.suppress(OSError):
                other = os.stat(path)
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    return path
        return self.inputs[0]


PRIVATE = OutputRules()


def _refuse_existing(path: str, st: os.stat_result, rules: OutputRules) -> None:
    """The refusals that hold for a file already at ``path``."""
    same = rules.input_named_by(st)
    if same is not None:
        also = "" if same == path else f" ({same})"
        raise OutputError(f"cannot write {path}: it is also an input of this command{also}; name another output")
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write {path}: it is a folder")
    if stat.S_ISREG(st.st_mode) and st.st_size > 0 and not rules.force:
        raise OutputError(f"cannot write {path}: it exists and is not empty; give --force to replace it")


def _symlink_error(path: str) -> OutputError:
    return OutputError(
        f"cannot write {path}: it is a symbolic link, which is not followed; remove it or name another file"
    )


def _fail(path: str, exc: OSError) -> OutputError:
    if exc.errno == errno.ELOOP and os.path.islink(path):
        return _symlink_error(path)
    return OutputError(f"cannot write {path}: {reason(exc, writing=True)}")


def check_file(path: str, rules: OutputRules = PRIVATE) -> None:
    """Refuse now what ``open_file``/``write_file`` would refuse later (before a bus is started for nothing)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path) or "."
        if not os.path.isdir(parent):
            raise OutputError(f"cannot write {path}: no such folder {parent}") from None
        return
    except OSError as exc:
        raise _fail(path, exc) from None
    if stat.S_ISLNK(st.st_mode):
        raise _symlink_error(path)
    _refuse_existing(path, st, rules)


def open_file(path: str, rules: OutputRules = PRIVATE) -> int:
    """A file descriptor to write ``path`` from its start (a trace written as it grows).

    A regular file is created, or emptied if ``rules`` allow, with ``rules.mode``
    exactly. A FIFO or a device (``/dev/null``) is written as it is.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, rules.mode)
    except OSError as exc:
        raise _fail(path, exc) from None
    try:
        st = os.fstat(fd)
        _refuse_existing(path, st, rules)
        if stat.S_ISREG(st.st_mode):
            if st.st_size:
                os.ftruncate(fd, 0)
            os.fchmod(fd, rules.mode)
    except OSError as exc:
        os.close(fd)
        raise _fail(path, exc) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_stream(path: str, rules: OutputRules = PRIVATE) -> IO[bytes]:
    """``open_file`` as a binary stream."""
    return os.fdopen(open_file(path, rules), "wb")


def write_file(path: str, fill: Callable[[IO[bytes]], object], rules: OutputRules = PRIVATE) -> None:
    """Write a whole file at once (a policy, a conversion): into a temporary file beside it, renamed over.

    A reader never sees it half written, and the rename replaces a link
    itself rather than its target (links are refused before anyway).
    A FIFO or a device at ``path`` is written directly.
    """
    check_file(path, rules)
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        with open_stream(path, rules) as stream:
            fill(stream)
        return
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, rules.mode)
    except OSError as exc:
        raise _fail(path, exc) from None
    try:
        os.fchmod(fd, rules.mode)
        with os.fdopen(fd, "wb") as stream:
            fill(stream)
        os.replace(tmp, path)
    except OSError as exc:
        raise _fail(path, exc) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def make_folder(path: str, rules: OutputRules = PRIVATE, reusable: Callable[[str], bool] | None = None) -> bool:
    """Create the output folder ``path`` (mode ``folder_mode(rules.mode)``); True if it was created.

    An existing empty folder is used as it is; a non-empty one only if
    ``reusable(path)`` says so (a campaign resuming its own results) or the
    user gave ``--force``.
    """
    mode = folder_mode(rules.mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except FileNotFoundError:
        parent = os.path.dirname(os.path.normpath(path)) or "."
        raise OutputError(f"cannot create folder {path}: no such folder {parent}") from None
    except OSError as exc:
        raise OutputError(f"cannot create folder {path}: {reason(exc, writing=True)}") from None
    else:
        os.chmod(path, mode)
        return True
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(f"cannot use {path} as the output folder: it is a symbolic link, which is not followed")
    if not stat.S_ISDIR(st.st_mode):
        what = "a file" if stat.S_ISREG(st.st_mode) else kind_of(st.st_mode)
        raise OutputError(f"cannot use {path} as the output folder: it is {what}")
    try:
        empty = not os.listdir(path)
    except OSError as exc:
        raise OutputError(f"cannot use {path} as the output folder: {reason(exc)}") from None
    if not empty and not rules.force and not (reusable is not None and reusable(path)):
        raise OutputError(
            f"cannot use {path} as the output folder: it exists and is not empty; give --force to write into it"
        )
    return False
