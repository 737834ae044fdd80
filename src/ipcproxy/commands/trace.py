"""`ipcproxy trace -- CMD`: every pipe, FIFO and socket message of CMD's process tree; exits with CMD's status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from ..outputs import add_output_options
from .capture import command_after_dashes

HELP = "run CMD and record the IPC of its whole process tree at the syscall level"


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if not 0 <= value <= 64 << 20:
        raise argparse.ArgumentTypeError(f"must be between 0 and {64 << 20} bytes: {value}")
    return value


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-w", "--write", metavar="FILE", help="write the trace (JSON Lines)")
    add_output_options(p, "the -w file")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print messages live")
    p.add_argument(
        "--max-payload",
        type=_size,
        default=4096,
        metavar="N",
        help="bytes of each message's payload to record (the full size is always recorded; default 4096)",
    )
    p.add_argument(
        "-p",
        "--pid",
        type=int,
        metavar="PID",
        help="trace this running process (its threads and the children it starts from now on) instead of CMD",
    )
    p.add_argument(
        "--kill-on-exit",
        action="store_true",
        help="on SIGINT/SIGTERM end the traced programs (default: finish the trace and let them run to their end)",
    )
    p.add_argument(
        "--framing",
        action="append",
        default=[],
        metavar="[WHERE=]MODE",
        help="turn the byte streams of pipes, FIFOs, Unix stream and TCP sockets into messages: as-written "
        "(default), newline, length:SIZE[:be|le][:at=N][:adjust=N|:total], dbus; WHERE (pipe, fifo, unix, tcp, "
        "tcp:PORT or a socket or FIFO path) selects channels; repeat it, the first match wins",
    )
    p.add_argument(
        "--policy", metavar="FILE", help="policy to enforce on every message: a denied call fails (docs/policy.md)"
    )
    p.add_argument(
        "--mode",
        choices=["enforce", "complain"],
        default="enforce",
        help="enforce: a denied call fails with EACCES; complain: it runs and is recorded as a violation",
    )
    p.add_argument("--faults", metavar="PLAN", help="fault plan to apply to the messages (docs/faults.md)")
    p.add_argument("--seed", type=int, default=None, help="seed for probabilistic faults (default: the plan's)")
    p.add_argument(
        "-s",
        "--script",
        metavar="FILE.py",
        action="append",
        default=[],
        help="load interceptors from a Python file (repeatable; docs/interceptors.md)",
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")


def trace_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from ..errors import InputError
    from ..model import Endpoint
    from ..outputs import OutputRules
    from ..syscall.framing import Framing, parse_rule
    from ..syscall.procfs import SystemFacts
    from ..syscall.tracer import SyscallTrace
    from ..trace import records
    from ..trace.recorder import Recorder
    from ..trace.writer import JsonlWriter, Sink

    cmd = command_after_dashes(args.cmd)
    if args.pid is not None and cmd:
        raise InputError("trace: give either -p PID or a command after --, not both")
    if args.pid is None and not cmd:
        raise InputError("trace: give the command to run after --, e.g. ipcproxy trace -- sh -c 'seq 3 | cat'")
    if args.pid is not None and args.pid <= 0:
        raise InputError(f"trace: -p {args.pid}: not a process id")
    if args.write and args.write.endswith((".pcap", ".pcapng")):
        raise InputError(f"trace: {args.write}: syscall traces are JSON Lines only (pcap holds D-Bus messages)")
    rules = [parse_rule(text) for text in args.framing]
    inputs = [path for path in (args.policy, args.faults, *args.script) if path]
    chain = None
    if inputs:  # a broken policy or plan is a file:line error before anything runs
        from ..runtime import CaptureOptions, build_chain

        chain = build_chain(
            CaptureOptions(policy=args.policy, mode=args.mode, faults=args.faults, seed=args.seed, scripts=args.script)
        )
    sinks: list[Sink] = []
    if args.write:
        origin: dict[str, object] = {"attached": args.pid} if args.pid is not None else {"command": cmd}
        if args.framing:
            origin["framing"] = list(args.framing)
        sinks.append(
            JsonlWriter(args.write, records.header(mode="trace", **origin), OutputRules.from_args(args, inputs))
        )
    live = None
    if not args.quiet:  # the runtime (asyncio, the D-Bus side) is imported only for the live view: -q starts faster
        from ..runtime import CaptureOptions, live_printer

        live = live_printer(CaptureOptions(quiet=False))
    recorder = Recorder(sinks, lambda name: Endpoint(), live)
    framing = None
    if rules:
        framing = Framing(
            rules, args.max_payload, recorder.record, lambda text: print(f"ipcproxy: trace: {text}", file=sys.stderr)
        )
    try:
        tracer = SyscallTrace(
            cmd,
            env,
            recorder,
            SystemFacts(),
            max_payload=args.max_payload,
            kill_on_exit=args.kill_on_exit,
            attach=args.pid,
            framing=framing,
            chain=chain,
        )
        return tracer.run()
    finally:
        recorder.close()
