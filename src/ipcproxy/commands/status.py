"""Exit statuses of the ``ipcproxy`` commands (see docs/architecture.md)."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    FAILED = 1  # a check found violations, or a run failed
    USAGE = 2  # usage or input error
