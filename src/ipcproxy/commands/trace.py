"""`ipcproxy trace -- CMD`: every pipe, FIFO and socket message of CMD's process tree; exits with CMD's status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from .capture import (
    add_chain_options,
    add_framing_option,
    add_max_payload_option,
    add_write_options,
    command_after_dashes,
)

HELP = "run CMD and record the IPC of its whole process tree at the syscall level"
MAX_PAYLOAD = 64 << 20


def add_options(p: argparse.ArgumentParser) -> None:
    add_write_options(p, "JSON Lines")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print messages live")
    add_max_payload_option(p, MAX_PAYLOAD, say_maximum=False)
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
    add_framing_option(p, "as-written (default), newline, length:SIZE[:be|le][:at=N][:adjust=N|:total], dbus")
    add_chain_options(
        p,
        policy="policy to enforce on every message: a denied call fails (docs/policy.md)",
        mode="enforce: a denied call fails with EACCES; complain: it runs and is recorded as a violation",
        faults="fault plan to apply to the messages (docs/faults.md)",
        seed="seed for probabilistic faults (default: the plan's)",
        script="load interceptors from a Python file (repeatable; docs/interceptors.md)",
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
