"""`ipcproxy watch`: every pipe, FIFO and socket message of the machine's processes, captured with eBPF."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from .capture import add_framing_option, add_max_payload_option, add_write_options, positive

HELP = "record the IPC of every running process (or those selected) with eBPF, nothing restarted"

MAX_PAYLOAD = 256 << 10  # the most one kernel event carries (watch.bpf.c CAP)
TRANSPORT_NAMES = ("pipe", "fifo", "unix", "tcp", "udp", "mq", "sysv-msg")


def _transports(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TRANSPORT_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown transport {','.join(unknown) or text!r}: use {','.join(TRANSPORT_NAMES)}"
        )
    return names


def _buffer(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    scale = units.get(text[-1:].lower(), 1)
    try:
        value = int(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64M)") from None
    if not (4096 <= value <= 1 << 30) or value & (value - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two from 4K to 1G: {text}")
    return value


def add_options(p: argparse.ArgumentParser) -> None:
    add_write_options(p, "JSON Lines")
    p.add_argument("-v", "--verbose", action="store_true", help="print messages live (always, without -w)")
    p.add_argument(
        "--pid",
        type=int,
        action="append",
        default=[],
        metavar="PID",
        help="only this process and the children it starts from now on (repeatable)",
    )
    p.add_argument(
        "--comm",
        action="append",
        default=[],
        metavar="NAME",
        help="only processes with this command name (as in ps -o comm; repeatable)",
    )
    p.add_argument(
        "--exe", action="append", default=[], metavar="PATH", help="only processes running this executable (repeatable)"
    )
    p.add_argument("--cgroup", metavar="PATH", help="only processes in this cgroup (v2) or below it")
    p.add_argument(
        "--transport",
        type=_transports,
        metavar="LIST",
        help=f"only these transports, comma-separated (default all: {','.join(TRANSPORT_NAMES)})",
    )
    add_max_payload_option(p, MAX_PAYLOAD, say_maximum=True)
    p.add_argument(
        "--buffer",
        type=_buffer,
        default=64 << 20,
        metavar="SIZE",
        help="the kernel's ring buffer (a power of two, 4K to 1G; default 64M): what a burst may fill before events are lost",
    )
    add_framing_option(p, "as-written (default), newline, length:…, dbus", like=", as `ipcproxy trace --framing` does")
    p.add_argument(
        "--duration",
        type=positive(float, "seconds"),
        metavar="S",
        help="stop after S seconds (default: on SIGINT/SIGTERM)",
    )


def _cgroup_id(path: str) -> int:
    """A cgroup v2 directory's id (its inode), by path or as /proc/PID/cgroup names it."""
    from ..errors import InputError

    mounts = []
    try:
        with open("/proc/self/mountinfo") as info:
            for line in info:
                left, _, right = line.partition(" - ")
                if right.split()[:1] == ["cgroup2"]:
                    mounts.append(left.split()[4])
    except OSError:
        pass
    if not mounts:
        raise InputError("watch: --cgroup: no cgroup v2 hierarchy is mounted")
    candidates = [path] + [os.path.join(m, path.lstrip("/")) for m in mounts]
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if os.path.isdir(real) and any(real == m or real.startswith(m.rstrip("/") + "/") for m in mounts):
            return os.stat(real).st_ino
    raise InputError(f"watch: --cgroup {path}: not a cgroup v2 directory (under {', '.join(mounts)})")


def watch_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import psutil

    from ..ebpf import events, loader
    from ..ebpf.watch import Watch, own_channels
    from ..errors import InputError, RunFailed
    from ..model import Endpoint
    from ..outputs import OutputRules
    from ..runtime import CaptureOptions, live_printer
    from ..syscall.framing import Framing, parse_rule
    from ..trace import records
    from ..trace.recorder import Recorder
    from ..trace.writer import JsonlWriter, Sink

    if args.write and args.write.endswith((".pcap", ".pcapng")):
        raise InputError(f"watch: {args.write}: watch traces are JSON Lines only (pcap holds D-Bus messages)")
    pids: list[int] = []
    for pid in args.pid:
        if pid <= 0 or not psutil.pid_exists(pid):
            raise InputError(f"watch: --pid {pid}: no such process")
        pids.append(pid)
    exes = []
    for path in args.exe:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise InputError(f"watch: --exe {path}: {exc.strerror}") from None
        exes.append((events.kernel_dev(st.st_dev), st.st_ino))
    comms = [name.encode()[:15] for name in args.comm]
    rules = [parse_rule(text) for text in args.framing]
    transports = args.transport or list(TRANSPORT_NAMES)
    settings = loader.Settings(
        max_payload=args.max_payload,
        transports=sum(events.TRANSPORTS[name] for name in set(transports)),
        pids=loader.descendants(pids),
        comms=comms,
        exes=exes,
        cgroup=_cgroup_id(args.cgroup) if args.cgroup else 0,
        ignored=own_channels(),
        ring_bytes=args.buffer,
    )
    lacking = loader.missing()
    if lacking is not None:
        raise RunFailed(f"watch: {lacking}; {loader.FALLBACK}")
    selection = {
        key: value
        for key, value in (
            ("pids", args.pid),
            ("comms", args.comm),
            ("exes", args.exe),
            ("cgroup", args.cgroup),
            ("transports", transports),
            ("framing", args.framing),
        )
        if value
    }
    sinks: list[Sink] = []
    if args.write:
        sinks.append(JsonlWriter(args.write, records.header(mode="watch", **selection), OutputRules.from_args(args)))
    live = live_printer(CaptureOptions(quiet=bool(args.write) and not args.verbose))
    recorder = Recorder(sinks, lambda name: Endpoint(), live)
    framing = None
    if rules:
        framing = Framing(
            rules, args.max_payload, recorder.record, lambda text: print(f"ipcproxy: watch: {text}", file=sys.stderr)
        )
    try:
        result = Watch(recorder, settings, duration=args.duration, framing=framing).run(selection)
    finally:
        recorder.close()
    if result.lost:
        raise RunFailed(f"watch: {result.lost} events lost (the kernel's ring buffer was full); the trace marks where")
    if result.reason.startswith("signal "):
        import signal

        return 128 + int(signal.Signals[result.reason.split()[1]])
    return 0
