"""Reading traces: header check, version upgrade, tolerant of a truncated last record."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

import msgspec

from . import records


class TraceError(ValueError):
    """The file is not a trace this version can read."""


# version -> converter to version+1; old files stay readable through these.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

_decoder = msgspec.json.Decoder()


def _upgrade(record: dict[str, Any], version: int) -> dict[str, Any]:
    while version < records.VERSION:
        record = UPGRADES[version](record)
        version += 1
    return record


def read_header(stream: IO[bytes], name: str) -> dict[str, Any]:
    first = stream.readline()
    if not first:
        raise TraceError(f"{name}: empty file, not an ipcproxy trace")
    try:
        head = _decoder.decode(first)
    except msgspec.DecodeError:
        raise TraceError(f"{name}: line 1 is not JSON; not an ipcproxy trace") from None
    if not isinstance(head, dict) or head.get("format") != records.FORMAT:
        raise TraceError(f"{name}: line 1 is not an ipcproxy-trace header")
    version = head.get("version")
    if not isinstance(version, int) or version < 1 or version > records.VERSION:
        raise TraceError(f"{name}: trace version {version!r} is not supported (this tool reads 1..{records.VERSION})")
    return head


def iter_trace(path: str, warn: Callable[[str], None] | None = None, follow: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the records of a trace file (not the header)."""
    warn = warn or (lambda text: print(f"ipcproxy: warning: {text}", file=sys.stderr))
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below, generator lifetime
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror}") from None
    with stream:
        head = read_header(stream, path)
        version = head["version"]
        lineno = 1
        pending = b""
        while True:
            line = stream.readline()
            if not line:
                if follow:
                    import time

                    time.sleep(0.1)
                    continue
                break
            if not line.endswith(b"\n"):
                if follow:
                    pending += line
                    continue
                warn(f"{path}: last record (line {lineno + 1}) is truncated; read up to line {lineno}")
                break
            if pending:
                line, pending = pending + line, b""
            lineno += 1
            try:
                record = _decoder.decode(line)
            except msgspec.DecodeError:
                warn(f"{path}: line {lineno} is not valid JSON; skipped")
                continue
            if version != records.VERSION:
                record = _upgrade(record, version)
            yield record


def load(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with open(path, "rb") as stream:
        head = read_header(stream, path)
    return head, list(iter_trace(path))
