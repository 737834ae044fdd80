"""The stop loop compiles for aarch64 too: its register access (decisions) and syscall table are per architecture.

Only x86_64 runs here; this compiles ``_tracer.c`` with the aarch64 cross
compiler (syntax and types, against this Python's headers, which are the
same for both 64-bit Linux targets), so an edit cannot break the other
architecture unnoticed.
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

SOURCE = Path(__file__).parent.parent / "src" / "ipcproxy" / "syscall" / "_tracer.c"
CROSS = shutil.which("aarch64-linux-gnu-gcc")


@pytest.mark.skipif(CROSS is None, reason="no aarch64 cross compiler (gcc-aarch64-linux-gnu, see scripts/setup.sh)")
def test_the_stop_loop_compiles_for_aarch64() -> None:
    assert CROSS is not None
    include = sysconfig.get_paths()["include"]
    proc = subprocess.run(
        [CROSS, "-fsyntax-only", "-std=gnu11", "-Wall", "-Werror", f"-I{include}", str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
