"""An OSError in the user's words: what went wrong with which file, never a bare errno.

``[Errno 17] File exists: 'out'`` tells a user less than ``cannot write out:
it already exists``; every command that reads or writes a file words its
failure through ``reason`` so the messages are the same everywhere.
"""

from __future__ import annotations

import errno

_READING = {
    errno.ENOENT: "no such file",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "it is a folder, not a file",
}
_WRITING = {
    errno.ENOENT: "no such folder",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "it is a folder",
    errno.EEXIST: "it already exists",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "the file is too large for its file system",
    errno.EXDEV: "it is on another file system",
}
_EITHER = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "it is a symbolic link (not followed) or a loop of them",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files",
    errno.EIO: "input/output error",
    errno.ENXIO: "no such device, or a FIFO with nobody at the other end",
    errno.ECONNREFUSED: "connection refused (nothing listens there)",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ETIMEDOUT: "timed out",
    errno.EADDRINUSE: "address in use",
}


def reason(exc: OSError, writing: bool = False) -> str:
    """The cause of ``exc`` in words, for a message like ``cannot read p.yaml: no such file``."""
    table = _WRITING if writing else _READING
    code = exc.errno or 0
    words = table.get(code) or _EITHER.get(code)
    if words is not None:
        return words
    return (exc.strerror or str(exc) or "unknown error").lower()
