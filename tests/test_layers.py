"""The layers of docs/architecture.md hold: imports point down, and every listed command answers --help.

commands/ and cli.py (with __main__.py) sit on top of the library: no library module imports
them (library errors are ipcproxy.errors, exit statuses belong to
commands/). The runtime sits on top of the transports: nothing under dbus/,
syscall/, trace/ or policy/ imports it.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import IPCPROXY, ROOT

PACKAGE = ROOT / "src" / "ipcproxy"


def module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (functions included), as absolute names."""
    module = module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from .. import cli`
    return found


COMMAND_LINE = {PACKAGE / "cli.py", PACKAGE / "__main__.py"}  # `ipcproxy` and `python -m ipcproxy`


def library_modules() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in COMMAND_LINE and PACKAGE / "commands" not in path.parents
    ]


def reaches(imports: set[str], module: str) -> bool:
    return any(name == module or name.startswith(module + ".") for name in imports)


def test_the_import_check_sees_relative_absolute_and_nested_imports() -> None:
    sample = PACKAGE / "trace" / "show.py"  # a real module: the check must find what it imports
    assert "ipcproxy.trace.reader" in imported_modules(sample)
    assert reaches(imported_modules(PACKAGE / "cli.py"), "ipcproxy.commands")
    assert reaches(imported_modules(PACKAGE / "commands" / "show.py"), "ipcproxy.trace.show")  # inside a function


@pytest.mark.parametrize("path", library_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_library_module_imports_the_command_layer(path: Path) -> None:
    imports = imported_modules(path)
    assert not reaches(imports, "ipcproxy.cli"), f"{path} imports ipcproxy.cli"
    assert not reaches(imports, "ipcproxy.commands"), f"{path} imports ipcproxy.commands"


@pytest.mark.parametrize(
    "path",
    [p for sub in ("dbus", "syscall", "ebpf", "trace", "policy") for p in sorted((PACKAGE / sub).rglob("*.py"))],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_transports_and_trace_do_not_import_the_runtime(path: Path) -> None:
    assert not reaches(imported_modules(path), "ipcproxy.runtime"), f"{path} imports ipcproxy.runtime"


HELP_ENV = {**os.environ, "COLUMNS": "100"}  # the help's layout does not depend on the terminal


def listed_commands() -> list[str]:
    r = subprocess.run([*IPCPROXY, "--help"], capture_output=True, text=True, timeout=30, env=HELP_ENV)
    assert r.returncode == 0, r.stderr
    match = re.search(r"^  COMMAND\n(.*?)(?:\n\n|\Z)", r.stdout, re.S | re.M)
    assert match, r.stdout
    return re.findall(r"^    (\S+)", match.group(1), re.M)


def test_help_lists_the_commands_in_commands_package() -> None:
    from ipcproxy.commands import NAMES

    assert listed_commands() == list(NAMES)


@pytest.mark.parametrize("command", listed_commands())
def test_every_listed_command_answers_help(command: str) -> None:
    r = subprocess.run([*IPCPROXY, command, "--help"], capture_output=True, text=True, timeout=30, env=HELP_ENV)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: ipcproxy {command}")
    assert r.stderr == ""


def architecture_layout() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    match = re.search(r"^## Layout\n.*?^```\n(.*?)^```", text, re.S | re.M)
    assert match, "docs/architecture.md has a Layout section with the tree in a code block"
    return match.group(1)


@pytest.mark.parametrize(
    "path",
    [
        p
        for folder in (PACKAGE, PACKAGE / "dbus", PACKAGE / "trace", PACKAGE / "ebpf")
        for p in sorted(folder.glob("*.py"))
        if p.name not in ("__init__.py", "__main__.py")
    ],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_architecture_lists_every_module(path: Path) -> None:
    """The architecture page is the living map: a new module gets its line there."""
    assert re.search(rf"(?<![\w.]){re.escape(path.name)}(?![\w.])", architecture_layout()), (
        f"add {path.relative_to(PACKAGE)} to the Layout of docs/architecture.md"
    )
