#!/usr/bin/env python3
"""What a SIGKILL of the proxy loses from the trace, at a light, steady call rate.

Each trial: a fresh private dbus-daemon, an echo service on it, ``ipcproxy
proxy -w`` in front, and a client calling through the proxy at a fixed rate.
After a random moment the proxy gets SIGKILL. Every reply the client had
received was forwarded by the proxy; the trial counts those whose call or
reply has no record in the trace. Variants run interleaved, trial by trial:

    .venv/bin/python bench/crash_window.py --trials 20 --rate 200 default 'LIGHT_RATE=0'

A variant is ``default`` or constants of ipcproxy.dbus.proxy to set
(``LIGHT_RATE=0``: always batch records for FLUSH_DELAY, the behaviour before
light traffic was written on each loop turn).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dbus_fast import Message as FastMessage
from dbus_fast import MessageType
from dbus_fast.aio import MessageBus

from ipcproxy.dbus.launcher import PrivateBus

PYTHON = sys.executable
NAME = "org.bench.CrashEcho"


def start_proxy(upstream: str, workdir: Path, variant: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    listen = f"unix:path={workdir / 'proxy.sock'}"
    trace = workdir / "trace.jsonl"
    patch = "" if variant == "default" else "".join(f"proxy.{pair};" for pair in variant.split(","))
    code = f"import ipcproxy.dbus.proxy as proxy; {patch} from ipcproxy.cli import entry; entry()"
    argv = [PYTHON, "-c", code, "proxy", "--upstream", upstream, "--listen", listen, "-w", str(trace), "-q"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    if proc.stdout.readline().decode().strip() != listen:
        proc.kill()
        raise SystemExit("crash_window: the proxy did not start")
    return proc, listen, trace


async def trial(upstream: str, workdir: Path, variant: str, rate: float, rng: random.Random) -> dict[str, Any]:
    # the client's reader fails when the proxy dies under it: that is the point, not news
    asyncio.get_running_loop().set_exception_handler(lambda _loop, _context: None)
    service = await MessageBus(bus_address=upstream).connect()

    def echo(msg: FastMessage) -> FastMessage | None:
        if msg.message_type is MessageType.METHOD_CALL and msg.member == "Echo":
            return FastMessage.new_method_return(msg, "s", [msg.body[0]])
        return None

    service.add_message_handler(echo)
    await service.request_name(NAME)
    proc, listen, trace = start_proxy(upstream, workdir, variant)
    client = await MessageBus(bus_address=listen).connect()
    answered: list[int] = []  # serials of calls whose reply came back through the proxy

    async def calls() -> None:
        k = 0
        while True:
            k += 1
            call = FastMessage(destination=NAME, path="/", interface=NAME, member="Echo", signature="s", body=[str(k)])
            reply = await client.call(call)
            if reply is not None and reply.message_type is MessageType.METHOD_RETURN:
                answered.append(call.serial)
            await asyncio.sleep(1 / rate)

    caller = asyncio.ensure_future(calls())
    await asyncio.sleep(rng.uniform(0.5, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)
    client.disconnect()
    service.disconnect()
    calls_seen, returns_seen = set(), set()
    for line in trace.read_bytes().splitlines()[1:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the line being written when the proxy died
        if record.get("member") == "Echo" and record.get("type") == "method_call":
            calls_seen.add(record["serial"])
        elif record.get("type") == "method_return" and record.get("direction") == "from_bus":
            returns_seen.add(record["reply_serial"])
    lost = sum((s not in calls_seen) + (s not in returns_seen) for s in answered)
    return {"answered": len(answered), "lost": lost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0, help="calls per second")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    for _ in range(args.trials):
        for variant in args.variants:
            with PrivateBus() as bus, tempfile.TemporaryDirectory() as tmp:
                results[variant].append(asyncio.run(trial(bus.address, Path(tmp), variant, args.rate, rng)))
    print(f"SIGKILL of the proxy at a random moment, {args.rate:g} calls/s, {args.trials} trials per variant")
    print("| variant | replies received per trial | records lost per kill: mean | max | trials losing any |")
    print("|---|---|---|---|---|")
    for variant, rows in results.items():
        lost = [r["lost"] for r in rows]
        print(
            f"| {variant} | {statistics.median(r['answered'] for r in rows):g} | {statistics.mean(lost):.2f} "
            f"| {max(lost)} | {sum(1 for n in lost if n)}/{len(lost)} |"
        )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
