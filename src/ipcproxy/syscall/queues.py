"""Which queued message a message-queue receive took: the kernel's selection rules, sans-IO.

A POSIX queue hands out its highest priority first, in send order within a
priority; a SysV queue's ``msgrcv`` selects by the requested type (``msgtyp``
0: the first message, > 0: the first of that type, or with ``MSG_EXCEPT`` of
another type, < 0: the first of the lowest type not above ``-msgtyp``;
``MSG_COPY``: the one at that index, left in the queue). The channel table
keeps the messages traced sends queued and asks here which one a receive
returned; the received message's own priority or type and its size must
agree with the pick, else the receive's origin is unknown (the queue held a
message no traced send accounts for).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MSG_NOERROR = 0o10000
MSG_EXCEPT = 0o20000
MSG_COPY = 0o40000

SYSV_DEV = -1  # the device part of a SysV queue's key in the channel table: (SYSV_DEV, msqid)


@dataclass(frozen=True, slots=True)
class Queued:
    """What a receive is matched on: a queued message's priority (mq) or type (SysV), and its size."""

    tag: int
    size: int


@dataclass(frozen=True, slots=True)
class Pick:
    index: int | None  # the queued message the receive took (None: none can be named)
    known: bool  # the pick agrees with what was received
    remove: bool = True  # False: MSG_COPY, the message stays queued


def mq_pick(queued: Sequence[Queued], priority: int | None, size: int) -> Pick:
    """``mq_timedreceive``: the first message of the highest priority; ``priority`` as received, when known."""
    if not queued:
        return Pick(None, False)
    top = max(item.tag for item in queued)
    index = next(i for i, item in enumerate(queued) if item.tag == top)
    if (priority is None or priority == top) and queued[index].size == size:
        return Pick(index, True)
    if priority is not None:  # the model missed a message: drop the one the kernel must have given
        same = [i for i, item in enumerate(queued) if item.tag == priority]
        return Pick(same[0] if same else None, False)
    return Pick(index, False)


def sysv_select(queued: Sequence[Queued], msgtyp: int, flags: int) -> int | None:
    """The index ``msgrcv(msgtyp, flags)`` selects in a queue holding exactly ``queued``."""
    if flags & MSG_COPY:
        return msgtyp if 0 <= msgtyp < len(queued) else None
    if msgtyp == 0:
        return 0 if queued else None
    if msgtyp > 0:
        for i, item in enumerate(queued):
            if (item.tag != msgtyp) if flags & MSG_EXCEPT else (item.tag == msgtyp):
                return i
        return None
    best: int | None = None
    for i, item in enumerate(queued):
        if item.tag <= -msgtyp and (best is None or item.tag < queued[best].tag):
            best = i
    return best


def sysv_pick(queued: Sequence[Queued], msgtyp: int, flags: int, mtype: int | None, size: int, room: int) -> Pick:
    """``msgrcv``: the selected message, checked against the received ``mtype`` and ``size``.

    ``room`` is the receive buffer's size: with ``MSG_NOERROR`` a longer message arrives cut to it.
    """
    keep = not flags & MSG_COPY
    index = sysv_select(queued, msgtyp, flags)
    if index is not None:
        item = queued[index]
        sized = item.size == size or (bool(flags & MSG_NOERROR) and size == room < item.size)
        if (mtype is None or item.tag == mtype) and sized:
            return Pick(index, True, keep)
    if mtype is not None:
        same = [i for i, item in enumerate(queued) if item.tag == mtype]
        return Pick(same[0] if same else None, False, keep)
    return Pick(index, False, keep)
