"""`ipcproxy trace` without the D-Bus side: its modules leave dbus_fast and asyncio unimported (they take a
third of a second to import, which every traced command would pay), and what they copy from the D-Bus wire
module agrees with it."""

from __future__ import annotations

import subprocess
import sys

from ipcproxy.dbus import wire
from ipcproxy.syscall import framing
from ipcproxy.trace import recorder

TRACE_MODULES = (
    "ipcproxy.commands.trace",
    "ipcproxy.syscall.tracer",
    "ipcproxy.syscall.framing",
    "ipcproxy.syscall.procfs",
    "ipcproxy.trace.recorder",
    "ipcproxy.trace.writer",
    "ipcproxy.trace.records",
)


def test_trace_modules_do_not_import_the_dbus_side() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {TRACE_MODULES!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in ('dbus_fast', 'asyncio', 'ipcproxy.dbus.wire') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_copied_constants_agree_with_the_wire_module() -> None:
    assert framing.FIXED_HEADER == wire.FIXED_HEADER
    assert framing.MAX_MESSAGE_SIZE == wire.MAX_MESSAGE_SIZE
    assert recorder.BODY_BYTES == wire.BODY_BYTES
