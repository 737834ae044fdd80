#!/usr/bin/env python3
"""Quick interleaved A/B runs while working on the proxy's speed (not the benchmark itself).

Each run: fresh private dbus-daemon, the shared harness's echo_server, the
variant under test, the sd-bus load generator (``--client libdbus`` for ours).
Prints per variant the median calls/s, p50, and the proxy's user/sys CPU and
page faults per call.

    bench/ab.py 64x64 --reps 3 direct ipcproxy 'ipcproxy --no-args' 'env:MALLOC_ARENA_MAX=1 ipcproxy'
    bench/ab.py 1x64 direct pyfwd ipcproxy --profile py-spy.txt   # last variant under py-spy

A variant is ``direct``, ``pyfwd`` (the harness's uvloop Protocol forwarder),
``cfwd`` (bench/cfwd.c, a compiled epoll byte forwarder: the floor), ``xdp``,
or ``ipcproxy [extra proxy options]`` optionally prefixed by
``env:NAME=VALUE,...``, ``set:CONSTANT=VALUE,...`` (constants of ipcproxy.dbus.proxy), ``exec:FILE.py``
and/or ``trace:PATH`` (default: a file under bench/out; ``trace:none`` for no trace).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import BUILD, IPCPROXY, OUT, WORK, Stack, build_cfwd, read_line, wait_for  # noqa: E402


def proc_stat(pid: int) -> tuple[float, float, int]:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    clk = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / clk, int(fields[12]) / clk, int(fields[7])


def run(variant: str, conc: int, size: int, args: argparse.Namespace, run_dir: str, spy: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    trace = os.path.join(run_dir, "ab-trace.jsonl")
    words = variant.split()
    patch = ""
    while words and words[0].startswith(("env:", "trace:", "set:", "exec:")):
        word = words.pop(0)
        if word.startswith("set:"):  # module constants of ipcproxy.dbus.proxy, e.g. set:FLUSH_DELAY=0.005
            patch += "".join(f"proxy.{pair};" for pair in word[4:].split(","))
        elif word.startswith("exec:"):  # a Python file run in the proxy process before it starts
            patch += f"exec(open({word[5:]!r}).read());"
        elif word.startswith("env:"):
            for pair in word[4:].split(","):
                name, _, value = pair.partition("=")
                env[name] = value
        else:
            trace = word[6:]
    kind = words[0]
    stack = Stack("direct", run_dir)
    result: dict[str, Any] = {"variant": variant}
    spy_proc = None
    try:
        stack.start()
        address = stack.client_address
        bus_path = stack.bus_socket
        proxy_pid = None
        if kind == "pyfwd":
            proc = stack.spawn(
                "proxy",
                [
                    os.path.join(WORK, "venv", "bin", "python"),
                    os.path.join(WORK, "pyfwd.py"),
                    stack.proxy_socket,
                    bus_path,
                    "--loop",
                    "uvloop",
                    "--mode",
                    "protocol",
                ],
                subprocess.PIPE,
            )
            read_line(proc)
            proxy_pid, address = proc.pid, f"unix:path={stack.proxy_socket}"
        elif kind == "cfwd":
            proc = stack.spawn("proxy", [build_cfwd(), bus_path, stack.proxy_socket], subprocess.PIPE)
            read_line(proc)
            proxy_pid, address = proc.pid, f"unix:path={stack.proxy_socket}"
        elif kind == "xdp":
            proc = stack.spawn("proxy", ["xdg-dbus-proxy", address, stack.proxy_socket])
            wait_for(lambda: os.path.exists(stack.proxy_socket), "xdg-dbus-proxy listening")
            proxy_pid, address = proc.pid, f"unix:path={stack.proxy_socket}"
        elif kind == "ipcproxy":
            argv = [IPCPROXY, "proxy", "--upstream", address, "--listen", f"unix:path={stack.proxy_socket}", "-q"]
            if patch:
                python = os.path.join(os.path.dirname(IPCPROXY), "python")
                code = (
                    f"import sys; import ipcproxy.dbus.proxy as proxy; {patch} from ipcproxy.cli import entry; entry()"
                )
                argv = [python, "-c", code, *argv[1:]]
            if trace != "none":
                argv += ["-w", trace]
            errors = open(os.path.join(run_dir, "ab-proxy.err"), "ab")
            proc = subprocess.Popen(argv + words[1:], stdout=subprocess.PIPE, stderr=errors, env=env)
            stack.procs.append(("proxy", proc))
            read_line(proc)
            proxy_pid, address = proc.pid, f"unix:path={stack.proxy_socket}"
        elif kind != "direct":
            raise ValueError(f"unknown variant {variant}")
        if spy and proxy_pid:
            spy_proc = subprocess.Popen(
                [
                    os.path.join(os.path.dirname(IPCPROXY), "py-spy"),
                    "record",
                    "-p",
                    str(proxy_pid),
                    "-f",
                    "raw",
                    "-o",
                    spy,
                    "-r",
                    "250",
                    "-d",
                    str(int(args.window + args.warm + 1)),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
        before = proc_stat(proxy_pid) if proxy_pid else None
        bus_before = proc_stat(stack.procs[0][1].pid)
        loadgen = os.path.join(BUILD, "loadgen_libdbus") if args.client == "libdbus" else os.path.join(WORK, "loadgen")
        out = subprocess.run(
            [loadgen, "-a", address, "-c", str(conc), "-s", str(size), "-d", str(args.window), "-w", str(args.warm)],
            capture_output=True,
            timeout=args.window + 120,
        )
        after = proc_stat(proxy_pid) if proxy_pid else None
        bus_after = proc_stat(stack.procs[0][1].pid)
        result.update(json.loads(out.stdout.decode().strip().splitlines()[-1]))
        n = max(1, result["replies"])
        result["bus_us"] = (bus_after[0] + bus_after[1] - bus_before[0] - bus_before[1]) / n * 1e6
        if before and after:
            result["user_us"] = (after[0] - before[0]) / n * 1e6
            result["sys_us"] = (after[1] - before[1]) / n * 1e6
            result["faults"] = (after[2] - before[2]) / n
        if spy_proc:
            spy_proc.wait(30)
    except Exception as exc:  # noqa: BLE001
        result["error"] = repr(exc)
    finally:
        stack.stop()
        if os.path.exists(trace) and trace.startswith(OUT):
            os.unlink(trace)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", help="CONCxBYTES")
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--warm", type=float, default=0.3)
    ap.add_argument("--client", choices=("sdbus", "libdbus"), default="sdbus")
    ap.add_argument("--profile", help="py-spy raw output for the last variant's first run")
    args = ap.parse_args()
    conc, size = (int(x) for x in args.workload.split("x"))
    run_dir = os.path.join(OUT, "ab")
    os.makedirs(run_dir, exist_ok=True)
    results: list[dict[str, Any]] = []
    for rep in range(args.reps):
        order = args.variants[rep % len(args.variants) :] + args.variants[: rep % len(args.variants)]
        for variant in order:
            spy = args.profile if args.profile and rep == 0 and variant == args.variants[-1] else None
            results.append(run(variant, conc, size, args, run_dir, spy))
            r = results[-1]
            print(
                f"  {variant:40s} cps {r.get('cps', 0):8.0f} p50 {r.get('p50_us', 0):8.0f} {r.get('error', '')}",
                file=sys.stderr,
            )
    print(f"{args.workload} ({args.client} client, {args.reps} reps, load {open('/proc/loadavg').read().split()[0]})")
    for variant in args.variants:
        rs = [r for r in results if r["variant"] == variant and "cps" in r]
        if not rs:
            print(f"{variant:40s} FAILED")
            continue

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            values = [r[key] for r in rs if key in r]
            return statistics.median(values) if values else float("nan")

        print(
            f"{variant:40s} cps {med('cps'):8.0f} [{min(r['cps'] for r in rs):.0f}-{max(r['cps'] for r in rs):.0f}]"
            f" p50 {med('p50_us'):7.0f} p99 {med('p99_us'):7.0f}  proxy user {med('user_us'):6.1f}"
            f" sys {med('sys_us'):6.1f} us/call, faults {med('faults'):5.1f}/call, bus {med('bus_us'):5.1f} us/call"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
