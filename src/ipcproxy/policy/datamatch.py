"""What a rule says about a message seen at the syscall level: its channel and its bytes.

Pure checks, no I/O: a pipe, FIFO or socket is described by the facts of its
data record (docs/trace-format.md, "Data records"); a rule constrains them
with shell-style globs (paths, addresses) and exact values (socket type,
fd), and the bytes with a prefix and/or a regular expression. Used by the
decision (live and offline), the learner and the differ alike.
"""

from __future__ import annotations

import errno as errnos
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TRANSPORTS = ("pipe", "fifo", "unix", "tcp", "udp", "mq", "sysv-msg")
CHANNEL_KEYS = ("path", "socktype", "local", "remote", "fd")
SOCKTYPES = ("stream", "dgram", "seqpacket")
DEFAULT_ERRNO = "EACCES"


def is_errno(name: str) -> bool:
    """Whether ``name`` is an errno name this system knows (``EACCES``, ``EPERM``...)."""
    return name in errnos.errorcode.values() and name.startswith("E")


@functools.lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def glob_match(pattern: str, text: str) -> bool:
    """``*`` matches any run of characters (``/`` included); nothing else is special."""
    return _glob_regex(pattern).fullmatch(text) is not None


def payload_text(payload: bytes) -> str:
    """Bytes as the regular expressions of a policy see them: one character per byte (latin-1)."""
    return payload.decode("latin-1")


@dataclass(frozen=True, slots=True)
class ChannelMatch:
    """Which channels a rule is about; a field left out matches anything.

    Paths and addresses are globs where only ``*`` is special (any run of characters).
    """

    path: str | None = None  # glob over a FIFO's or Unix socket's path (``@name``: abstract)
    socktype: str | None = None
    local: str | None = None  # glob over "ADDRESS:PORT" (TCP/UDP), e.g. "127.0.0.1:*"
    remote: str | None = None
    fd: int | None = None  # the fd the component uses (pipes: its role, 0 stdin, 1 stdout...)

    def violation(self, channel: Mapping[str, Any] | None, fd: int | None) -> str | None:
        """Why this channel is not the rule's, or None if it is."""
        channel = channel or {}
        for key in ("path", "local", "remote"):
            want = getattr(self, key)
            if want is None:
                continue
            have = channel.get(key)
            if not isinstance(have, str) or not glob_match(want, have):
                return f"{key} {have if have is not None else '(none)'} is not {want}"
        if self.socktype is not None and channel.get("socktype") != self.socktype:
            return f"socket type {channel.get('socktype') or '(none)'} is not {self.socktype}"
        if self.fd is not None and fd != self.fd:
            return f"fd {fd} is not {self.fd}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in CHANNEL_KEYS if getattr(self, key) is not None}

    def covers(self, other: ChannelMatch | None) -> bool:
        """Whether every channel ``other`` matches is matched here (globs: only when equal or ``*``)."""
        other = other or ChannelMatch()
        for key in ("path", "local", "remote"):
            want = getattr(self, key)
            if want is None or want == "*":
                continue
            have = getattr(other, key)
            if have is None or not (have == want or ("*" not in have and glob_match(want, have))):
                return False
        return all(getattr(self, key) in (None, getattr(other, key)) for key in ("socktype", "fd"))


@dataclass(slots=True)
class PayloadMatch:
    """What the bytes of a message may be: a prefix, and/or a regular expression matching them whole.

    Both look at the bytes recorded (at most ``--max-payload`` of them); a
    prefix longer than what was recorded of a longer message cannot be
    judged, and raises (the enforcer then fails closed).
    """

    prefix: bytes | None = None
    regex: str | None = None  # over the bytes as latin-1 characters; must match all of them
    _compiled: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    def violation(self, payload: bytes, size: int) -> str | None:
        if self.prefix is not None and not payload.startswith(self.prefix):
            if len(payload) < len(self.prefix) and size > len(payload) and self.prefix.startswith(payload):
                raise ValueError(
                    f"only {len(payload)} bytes of the payload were seen, the rule's prefix has {len(self.prefix)}"
                )
            return f"payload {show_bytes(payload)} does not start with {show_bytes(self.prefix)}"
        if self.regex is not None:
            if self._compiled is None:
                self._compiled = re.compile(self.regex, re.DOTALL)
            if self._compiled.fullmatch(payload_text(payload)) is None:
                return f"payload {show_bytes(payload)} does not match {self.regex!r}"
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.prefix is not None:
            out["prefix"] = payload_text(self.prefix)
        if self.regex is not None:
            out["regex"] = self.regex
        return out

    def covers(self, other: PayloadMatch | None) -> bool:
        """Conservative: the same regex (or none here), and a prefix that ``other``'s starts with."""
        other = other or PayloadMatch()
        if self.prefix is not None and (other.prefix is None or not other.prefix.startswith(self.prefix)):
            return False
        return self.regex is None or self.regex == other.regex


def show_bytes(data: bytes, limit: int = 32) -> str:
    text = repr(data[:limit])
    return text + ("..." if len(data) > limit else "")


def limits_violation(
    size_range: tuple[int, int] | None,
    max_fds: int | None,
    payload: PayloadMatch | None,
    *,
    size: int,
    nfds: int,
    data: bytes,
) -> tuple[str, str] | None:
    """(kind, reason) of the first broken limit of a data rule, or None."""
    if size_range is not None and not (size_range[0] <= size <= size_range[1]):
        return "size", f"{size} bytes is outside the size range {list(size_range)}"
    if max_fds is not None and nfds > max_fds:
        return "size", f"{nfds} file descriptors passed, at most {max_fds} allowed"
    if payload is not None:
        why = payload.violation(data, size)
        if why is not None:
            return "payload", why
    return None
