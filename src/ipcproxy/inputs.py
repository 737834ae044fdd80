"""Opening the files a command reads (policies, plans, campaigns, scripts, traces): regular files only.

A FIFO or a device given as a policy would make a plain ``open`` wait for a
writer that never comes, with no word to the user. So the file is opened
with ``O_NONBLOCK`` (the open itself never waits), checked with ``fstat``,
and anything but a regular file is refused in one line naming it.
"""

from __future__ import annotations

import fcntl
import os
import select
import stat
from typing import BinaryIO

from .errors import InputError
from .oserror import reason


class InputFileError(InputError, ValueError):
    """An input file that cannot be read; the text is one line naming the file and the cause."""


def kind_of(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_input(path: str, what: str = "file", fifo_ok: bool = False) -> BinaryIO:
    """``path`` opened for binary reading, or InputFileError if it cannot be read or is not a regular file.

    ``what`` names the file's role in the message (``policy``, ``trace``, ...).
    With ``fifo_ok`` (``show --follow``) a FIFO is accepted too, and read
    once its writer came, until the writer closes it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InputFileError(f"cannot read {what} {path}: {reason(exc)}") from None
    try:
        mode = os.fstat(fd).st_mode
        if fifo_ok and stat.S_ISFIFO(mode):
            # wait for a writer's first data (or its close): until a writer came, a read would
            # see the end at once. Linux reports no hang-up before a writer has been there.
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.poll()
        elif not stat.S_ISREG(mode):
            raise InputFileError(f"cannot read {what} {path}: it is {kind_of(mode)}, not a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_text(path: str, what: str = "file") -> str:
    """The whole of a regular file as UTF-8 text (InputFileError otherwise)."""
    with open_input(path, what) as stream:
        try:
            data = stream.read()
        except OSError as exc:
            raise InputFileError(f"cannot read {what} {path}: {reason(exc)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"cannot read {what} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
