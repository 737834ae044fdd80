"""What `report` reads: a trace (or pcap) file, a campaign folder or a policy, into a page's model.

The one I/O layer of the report: files are read through ``trace.reader`` (and
the campaign's and policy's own readers); every problem with an input is an
``InputError`` naming the file.
"""

from __future__ import annotations

import os

from ..errors import InputError
from ..oserror import reason
from ..trace.reader import TraceError, iter_trace
from .model import ModelBuilder


def read_trace(path: str, limit: int | None = None) -> ModelBuilder:
    """The model of one trace file; a path that is not a readable trace is an InputError naming it."""
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a trace")
    builder = ModelBuilder(os.path.basename(path), {}, limit)
    try:
        builder.add_all(iter_trace(path, on_header=builder.header.update))
    except OSError as exc:
        raise InputError(f"cannot read trace {path}: {reason(exc)}") from None
    except TraceError as exc:
        raise InputError(str(exc)) from None
    return builder
