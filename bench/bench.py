#!/usr/bin/env python3
"""ipcproxy's speed benchmark: one command, every baseline side by side.

Two row sets, both printed as calls/s and p50/p99 latency for concurrency 1
and 64, payloads 64 B and 64 KiB, with ratios against the direct bus measured
in the same repetition slot:

1. **sd-bus client** -- the common yardstick in /work/shared/bench-dbus is
   set up (its ``setup.sh``) and run as it is (its ``bench.py``) with the
   configurations direct, ipcproxy, ipcproxy-mon (once ``ipcproxy monitor``
   exists), mon-pcap (dbus-monitor --pcap) and pyfwd-proto-uvloop (a bare
   Python byte forwarder: what any Python proxy costs before it parses or
   records anything). Its table lacks the proxy's CPU for the ipcproxy row,
   so that is added from its raw results.
2. **sd-bus client, floor** -- the harness takes no configuration beyond
   its own list, so the floor row runs here, with the harness's sd-bus load
   generator and echo server: the direct bus and ``cfwd`` (``cfwd.c``, a
   compiled epoll byte forwarder that parses nothing: what any
   intermediary costs on this machine), each with its own direct row.
3. **libdbus client** -- Debian's xdg-dbus-proxy 0.1.4 rejects sd-bus
   clients (they pipeline SASL), so a libdbus load generator of our own
   (``loadgen_libdbus.c``) drives the same echo server through: the direct
   bus, cfwd, xdg-dbus-proxy, ipcproxy (full recording), and the client
   under ``strace`` (syscall capture of the client's sendmsg/recvmsg).

Every run gets a fresh private dbus-daemon; configurations are interleaved,
in an order rotated per slot. Results go to bench/out/runs/<time>/.

    bench/run.sh                 # short: --reps 2 --window 2
    bench/run.sh --full          # --reps 5 --window 4
    bench/run.sh --only libdbus --workloads 64x64 --reps 3
    bench/run.sh --only floor --workloads 1x64,64x64 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
HARNESS = os.environ.get("IPCPROXY_BENCH_HARNESS", "/work/shared/bench-dbus")
WORK = os.path.join(OUT, "harness")  # where the shared harness is set up and built
BUILD = os.path.join(OUT, "build")
LOADGEN = os.path.join(BUILD, "loadgen_libdbus")
SDBUS_LOADGEN = os.path.join(WORK, "loadgen")  # the shared harness's, built by its setup.sh
CFWD = os.path.join(BUILD, "cfwd")
IPCPROXY = os.environ.get("IPCPROXY") or os.path.join(ROOT, ".venv", "bin", "ipcproxy")
XDP = os.environ.get("XDP", "xdg-dbus-proxy")
NAME = "org.bench.Echo"
WORKLOADS = [(1, 64), (1, 65536), (64, 64), (64, 65536)]
LIBDBUS_CONFIGS = ["direct", "cfwd", "xdp", "ipcproxy", "ipcproxy-mon", "strace"]
FLOOR_CONFIGS = ["direct", "cfwd"]
INTERMEDIARIES = ("cfwd", "xdp", "ipcproxy", "ipcproxy-mon")  # configurations whose "proxy" CPU is shown
CLK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- set-up


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def setup(logfile: str) -> None:
    """Run the shared harness's setup.sh into WORK and build the libdbus load generator."""
    os.makedirs(WORK, exist_ok=True)
    os.makedirs(BUILD, exist_ok=True)
    log(f"setting up the shared harness in {WORK} (log: {logfile})")
    with open(logfile, "ab") as out:
        subprocess.run(
            ["bash", os.path.join(HARNESS, "setup.sh")],
            env=dict(os.environ, WORK=WORK),
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "dbus-1"], capture_output=True, text=True, check=True
    ).stdout.split()
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-o", LOADGEN, os.path.join(HERE, "loadgen_libdbus.c"), *flags],
        check=True,
    )
    build_cfwd()


def build_cfwd() -> str:
    """Build the bare compiled forwarder (cfwd.c) into BUILD unless it is up to date; return its path."""
    source = os.path.join(HERE, "cfwd.c")
    if not os.path.exists(CFWD) or os.path.getmtime(CFWD) < os.path.getmtime(source):
        os.makedirs(BUILD, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", CFWD, source], check=True)
    return CFWD


def monitor_available() -> bool:
    python = os.path.join(os.path.dirname(IPCPROXY), "python")
    probe = subprocess.run([python, "-c", "import ipcproxy.dbus.monitor"], capture_output=True)
    return probe.returncode == 0


# ---------------------------------------------------------------- helpers


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, IndexError, ValueError):
        return None


def wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise RuntimeError(f"{what} did not happen within {timeout:.0f} s")


def read_line(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> str:
    assert proc.stdout is not None
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise RuntimeError(f"{proc.args!r} printed nothing within {timeout:.0f} s")
    return proc.stdout.readline().decode(errors="replace").strip()


_RAW_BODY = re.compile(rb',"bytes":(\d+)\}\n$')
_TEMPLATE_USE = re.compile(rb'"tpl":(\d+)')


def trace_records(path: str) -> Iterator[tuple[int, bytes]]:
    """Each record of a trace: the file offset after it, and its line with its template's fields.

    A light scan of docs/trace-format.md (version 2): template lines are kept,
    raw bodies skipped; enough to count records of a multi-GB trace quickly.
    """
    templates: dict[bytes, bytes] = {}
    offset = 0
    with open(path, "rb") as trace:
        offset += len(trace.readline())  # the header
        for line in trace:
            offset += len(line)
            raw = _RAW_BODY.search(line)
            if raw:
                size = int(raw.group(1)) + 1
                trace.seek(size, os.SEEK_CUR)
                offset += size
            if line.startswith(b'{"tpl":'):
                templates[_TEMPLATE_USE.match(line, 1).group(1)] = line  # type: ignore[union-attr]
                continue
            used = _TEMPLATE_USE.search(line, 0, 80)
            yield offset, line + templates.get(used.group(1), b"") if used else line


def drain_seconds(pid: int, client_end: float, cap: float = 120.0) -> float:
    """How long a monitor kept working after the load stopped (its CPU time still growing)."""
    last = cpu_seconds(pid)
    changed = client_end
    quiet = 0
    while time.monotonic() - client_end < cap and quiet < 3:
        time.sleep(0.2)
        now = cpu_seconds(pid)
        if now != last:
            last, changed, quiet = now, time.monotonic(), 0
        else:
            quiet += 1
    return max(0.0, changed - client_end)


def count_echo(path: str, upto: int) -> dict[str, int]:
    """Echo calls and their returns in a trace, in all and within its first ``upto`` bytes."""
    counts = {"calls": 0, "returns": 0, "calls_at_end": 0, "returns_at_end": 0}
    for offset, line in trace_records(path):
        call = b'"type":"method_call"' in line and b'"member":"Echo"' in line
        ret = b'"type":"method_return"' in line and b'"signature":"ay"' in line
        counts["calls"] += call
        counts["returns"] += ret
        if offset <= upto:
            counts["calls_at_end"] += call
            counts["returns_at_end"] += ret
    return counts


def median(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


# ---------------------------------------------------------------- libdbus row set

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  <limit name="max_incoming_bytes">1000000000</limit>
  <limit name="max_outgoing_bytes">1000000000</limit>
  <limit name="max_message_size">1000000000</limit>
  <limit name="max_replies_per_connection">50000</limit>
  <limit name="max_connections_per_user">100000</limit>
</busconfig>
"""


@dataclass
class Stack:
    """The processes of one run: bus, echo server, and the configuration's intermediary."""

    cfg: str
    run_dir: str
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    client_address: str = ""
    client_prefix: list[str] = field(default_factory=list)  # e.g. strace in front of the load generator
    trace: str | None = None

    @property
    def bus_socket(self) -> str:
        return os.path.join(self.run_dir, "bus.sock")

    @property
    def proxy_socket(self) -> str:
        return os.path.join(self.run_dir, "proxy.sock")

    def spawn(self, name: str, argv: list[str], stdout: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        errors = open(os.path.join(self.run_dir, f"{self.cfg}.{name}.err"), "ab")
        proc = subprocess.Popen(argv, stdout=stdout, stderr=errors)
        errors.close()
        self.procs.append((name, proc))
        return proc

    def pid(self, name: str) -> int | None:
        return next((p.pid for n, p in self.procs if n == name), None)

    def start(self) -> None:
        config = os.path.join(self.run_dir, "bus.conf")
        with open(config, "w") as conf:
            conf.write(BUS_CONFIG.format(socket=self.bus_socket))
        bus = self.spawn(
            "bus", ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"], subprocess.PIPE
        )
        read_line(bus)
        bus_address = f"unix:path={self.bus_socket}"
        server = self.spawn("server", [os.path.join(WORK, "echo_server"), "bus", bus_address, NAME], subprocess.PIPE)
        if read_line(server) != "READY":
            raise RuntimeError("echo_server did not start")
        self.client_address = bus_address
        proxy_address = f"unix:path={self.proxy_socket}"
        if self.cfg == "cfwd":
            proxy = self.spawn("proxy", [CFWD, self.bus_socket, self.proxy_socket], subprocess.PIPE)
            if read_line(proxy) != "READY":
                raise RuntimeError("cfwd did not start")
            self.client_address = proxy_address
        elif self.cfg == "xdp":
            self.spawn("proxy", [XDP, bus_address, self.proxy_socket])
            wait_for(lambda: os.path.exists(self.proxy_socket), "xdg-dbus-proxy listening")
            self.client_address = proxy_address
        elif self.cfg == "ipcproxy":
            self.trace = os.path.join(self.run_dir, "ipcproxy-trace.jsonl")
            proxy = self.spawn(
                "proxy",
                [IPCPROXY, "proxy", "--upstream", bus_address, "--listen", proxy_address, "-w", self.trace, "-q"],
                subprocess.PIPE,
            )
            read_line(proxy)  # it prints its address once it listens
            self.client_address = proxy_address
        elif self.cfg == "ipcproxy-mon":
            self.trace = os.path.join(self.run_dir, "ipcproxy-monitor.jsonl")
            self.spawn("proxy", [IPCPROXY, "monitor", "--address", bus_address, "-w", self.trace, "-q"])
            trace = self.trace
            wait_for(lambda: os.path.exists(trace) and b"monitor_start" in open(trace, "rb").read(4096), "monitor up")
        elif self.cfg == "strace":
            self.trace = os.path.join(self.run_dir, "strace.txt")
            self.client_prefix = [
                "strace",
                "-f",
                "-qq",
                "--seccomp-bpf",
                "-e",
                "trace=sendmsg,recvmsg",
                "-o",
                self.trace,
                "--",
            ]
        elif self.cfg != "direct":
            raise ValueError(f"unknown configuration {self.cfg}")

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        for path in (self.proxy_socket, self.bus_socket):
            if os.path.exists(path):
                os.unlink(path)


def run_stack_one(
    cfg: str, conc: int, size: int, rep: int, args: argparse.Namespace, run_dir: str, loadgen: str
) -> dict[str, Any]:
    result: dict[str, Any] = {"cfg": cfg, "conc": conc, "size": size, "rep": rep}
    stack = Stack(cfg, run_dir)
    try:
        stack.start()
        watched = {n: stack.pid(n) for n in ("bus", "server", "proxy")}
        before = {n: cpu_seconds(p) for n, p in watched.items() if p}
        argv = [loadgen, "-a", stack.client_address, "-c", str(conc), "-s", str(size)]
        argv += ["-d", str(args.window), "-w", str(args.warm)]
        client = subprocess.run(stack.client_prefix + argv, capture_output=True, timeout=args.window + args.warm + 120)
        after = {n: cpu_seconds(p) for n, p in watched.items() if p}
        if client.returncode != 0 or not client.stdout:
            result["error"] = client.stderr.decode(errors="replace")[-400:]
        else:
            result.update(json.loads(client.stdout.decode().strip().splitlines()[-1]))
        result["cpu"] = {n: after[n] - before[n] for n in before if before[n] is not None and after.get(n) is not None}
        if cfg == "ipcproxy-mon":
            assert stack.trace is not None
            size_at_end = os.path.getsize(stack.trace)
            monitor = stack.pid("proxy")
            assert monitor is not None
            result["monitor_drain_s"] = drain_seconds(monitor, time.monotonic())
            stack.stop()
            result["monitor"] = count_echo(stack.trace, size_at_end)
        if cfg == "ipcproxy":
            stack.stop()  # flushes the trace
            assert stack.trace is not None
            if os.path.exists(stack.trace):
                result["trace_bytes"] = os.path.getsize(stack.trace)
                result["trace_records"] = sum(1 for _ in trace_records(stack.trace))
    except Exception as exc:  # noqa: BLE001 - record the failure and go on with the next run
        result["error"] = repr(exc)
    finally:
        stack.stop()
        if stack.trace and os.path.exists(stack.trace):
            os.unlink(stack.trace)
    return result


def run_stacks(args: argparse.Namespace, out_dir: str, configs: list[str], loadgen: str) -> list[dict[str, Any]]:
    """Every configuration on a Stack of our own, driven by ``loadgen``, interleaved as in the shared harness."""
    configs = list(configs)
    run_dir = os.path.join(out_dir, "run")
    os.makedirs(run_dir, exist_ok=True)
    if "ipcproxy-mon" in configs and not monitor_available():
        log("`ipcproxy monitor` is not available yet: leaving out the ipcproxy-mon row")
        configs.remove("ipcproxy-mon")
    results: list[dict[str, Any]] = []
    with open(os.path.join(out_dir, "raw.jsonl"), "w") as raw:
        for rep in range(args.reps):
            for index, (conc, size) in enumerate(args.workload_list):
                shift = (rep * len(args.workload_list) + index) % len(configs)
                for cfg in configs[shift:] + configs[:shift]:
                    result = run_stack_one(cfg, conc, size, rep, args, run_dir, loadgen)
                    results.append(result)
                    raw.write(json.dumps(result) + "\n")
                    raw.flush()
                    shown = {k: result.get(k) for k in ("cfg", "conc", "size", "rep", "cps", "p50_us", "p99_us")}
                    if "error" in result:
                        shown["error"] = result["error"]
                    log(json.dumps(shown))
    return results


# ---------------------------------------------------------------- tables


def ratio(results: list[dict[str, Any]], r: dict[str, Any], key: str) -> float | None:
    """r[key] over the direct run of the same (rep, workload) slot."""
    for d in results:
        if (
            d["cfg"] == "direct"
            and d["conc"] == r["conc"]
            and d["size"] == r["size"]
            and d["rep"] == r["rep"]
            and d.get(key)
        ):
            return float(r[key]) / float(d[key])
    return None


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def stack_table(
    results: list[dict[str, Any]], configs: list[str], workloads: list[tuple[int, int]], client: str
) -> str:
    lines: list[str] = []
    for conc, size in workloads:
        lines.append(f"\n#### {client} client, concurrency {conc}, payload {size} B\n")
        lines.append(
            "| config | calls/s (median) | min-max | x direct | p50 us | x direct | p99 us | x direct "
            "| intermediary CPU us/call | bus CPU us/call | trace records/call |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for cfg in configs:
            rs = [r for r in results if r["cfg"] == cfg and r["conc"] == conc and r["size"] == size and "cps" in r]
            if not rs:
                lines.append(f"| {cfg} | FAILED | | | | | | | | | |")
                continue
            cps = [r["cps"] for r in rs]
            inter = "proxy" if cfg in INTERMEDIARIES else None
            inter_cpu = median(
                r["cpu"][inter] / r["replies"] * 1e6 if inter and inter in r["cpu"] and r["replies"] else None
                for r in rs
            )
            if cfg == "strace":  # the tracer's own CPU is not measured; the client's is
                inter_cpu = None
            bus_cpu = median(
                r["cpu"]["bus"] / r["replies"] * 1e6 if "bus" in r["cpu"] and r["replies"] else None for r in rs
            )
            per_call = median(
                r["trace_records"] / r["sent"]
                if "trace_records" in r and r["sent"]
                else (r["monitor"]["calls"] + r["monitor"]["returns"]) / r["sent"]
                if "monitor" in r and r["sent"]
                else None
                for r in rs
            )
            lines.append(
                f"| {cfg} | {median(cps):.0f} | {min(cps):.0f}-{max(cps):.0f} "
                f"| {fmt(median(ratio(results, r, 'cps') for r in rs), '.2f')} "
                f"| {fmt(median(r['p50_us'] for r in rs))} | {fmt(median(ratio(results, r, 'p50_us') for r in rs), '.2f')} "
                f"| {fmt(median(r['p99_us'] for r in rs))} | {fmt(median(ratio(results, r, 'p99_us') for r in rs), '.2f')} "
                f"| {fmt(inter_cpu)} | {fmt(bus_cpu)} | {fmt(per_call, '.2f')} |"
            )
    monitored = [r for r in results if "monitor" in r]
    if monitored:
        lines.append("\n#### ipcproxy monitor (libdbus client): completeness and backlog\n")
        lines.append(
            "| workload | calls sent / replies | Echo calls / returns in the trace | of which written by the "
            "client's end | drain after the client's end (s) |"
        )
        lines.append("|---|---|---|---|---|")
        for r in monitored:
            m = r["monitor"]
            lines.append(
                f"| c{r['conc']} {r['size']} B rep {r['rep']} | {r.get('sent', '-')} / {r.get('replies', '-')} "
                f"| {m['calls']} / {m['returns']} | {m['calls_at_end']} / {m['returns_at_end']} "
                f"| {r['monitor_drain_s']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def shared_proxy_cpu(raw_path: str, workloads: list[tuple[int, int]]) -> str:
    """The shared table leaves the ipcproxy row's own CPU blank; compute it from its raw results."""
    rows = [json.loads(line) for line in open(raw_path)]
    rows = [r for r in rows if r.get("cfg") == "ipcproxy" and "cps" in r]
    lines = ["\n#### sd-bus client: ipcproxy's own CPU (from the harness's raw results)\n"]
    lines.append("| workload | proxy CPU us/call (median) | min-max | bus CPU us/call |")
    lines.append("|---|---|---|---|")
    for conc, size in workloads:
        rs = [r for r in rows if r["conc"] == conc and r["size"] == size and r["replies"]]
        per = [r["cpu"]["proxy"] / r["replies"] * 1e6 for r in rs if r["cpu"].get("proxy") is not None]
        bus = median(r["cpu"]["daemon"] / r["replies"] * 1e6 for r in rs if r["cpu"].get("daemon") is not None)
        if per:
            lines.append(f"| c{conc} {size} B | {median(per):.0f} | {min(per):.0f}-{max(per):.0f} | {fmt(bus)} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- shared harness


def run_shared(args: argparse.Namespace, out_dir: str) -> str:
    configs = args.shared_configs.split(",")
    if "ipcproxy-mon" in configs and not monitor_available():
        log("`ipcproxy monitor` is not available yet: leaving out the ipcproxy-mon row")
        configs.remove("ipcproxy-mon")
    argv = [
        sys.executable,
        os.path.join(WORK, "bench.py"),
        "--reps",
        str(args.reps),
        "--window",
        str(args.window),
        "--warm",
        str(args.warm),
        "--configs",
        ",".join(configs),
        "--workloads",
        args.workloads,
        "--out",
        out_dir,
    ]
    log("shared harness: " + " ".join(argv[1:]))
    with open(os.path.join(out_dir, "harness.log"), "wb") as output:
        env = dict(os.environ, IPCPROXY=os.path.join(ROOT, "bench", "harness-ipcproxy"), IPCPROXY_REAL=IPCPROXY)
        proc = subprocess.Popen(argv, cwd=WORK, env=env, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        for line in proc.stdout:
            output.write(line)
            if line.startswith(b"{"):
                log(line.decode(errors="replace").rstrip())
        if proc.wait() != 0:
            raise RuntimeError(f"the shared harness failed (see {out_dir}/harness.log)")
    with open(os.path.join(out_dir, "summary.md")) as summary:
        text = summary.read()
    if "ipcproxy" in configs:
        text += shared_proxy_cpu(os.path.join(out_dir, "raw.jsonl"), args.workload_list)
    return text


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="longer and more repetitions (--reps 5 --window 4)")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--window", type=float)
    ap.add_argument("--warm", type=float, default=0.3)
    ap.add_argument("--workloads", default="1x64,1x65536,64x64,64x65536", help="CONCxBYTES,...")
    ap.add_argument("--only", choices=("all", "shared", "floor", "libdbus"), default="all")
    ap.add_argument("--shared-configs", default="direct,ipcproxy,ipcproxy-mon,mon-pcap,pyfwd-proto-uvloop")
    ap.add_argument("--floor-configs", default=",".join(FLOOR_CONFIGS), help="sd-bus rows run here (direct, cfwd)")
    ap.add_argument("--libdbus-configs", default=",".join(LIBDBUS_CONFIGS))
    ap.add_argument("--no-setup", action="store_true", help="reuse bench/out/harness and bench/out/build as they are")
    ap.add_argument("--out", help="result folder (default: bench/out/runs/<time>)")
    args = ap.parse_args(argv)
    if args.reps is None:
        args.reps = 5 if args.full else 2
    if args.window is None:
        args.window = 4.0 if args.full else 2.0
    args.workload_list = [tuple(int(x) for x in w.split("x")) for w in args.workloads.split(",")]
    out_dir = args.out or os.path.join(OUT, "runs", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out_dir, exist_ok=True)
    if not args.no_setup or not os.path.exists(LOADGEN):
        setup(os.path.join(out_dir, "setup.log"))
    build_cfwd()
    command = "bench/run.sh " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.strftime("%F %T")
    head = (
        f"Command: `{command.strip()}` ({started}; {os.cpu_count()} CPUs; load average at start "
        f"{open('/proc/loadavg').read().split()[0]}; reps {args.reps}, window {args.window:g} s)\n"
    )
    parts = [head]
    if args.only in ("all", "shared"):
        shared_dir = os.path.join(out_dir, "shared")
        os.makedirs(shared_dir, exist_ok=True)
        parts.append("\n### sd-bus client (shared harness, /work/shared/bench-dbus)\n" + run_shared(args, shared_dir))
    if args.only in ("all", "floor"):
        floor_dir = os.path.join(out_dir, "floor")
        os.makedirs(floor_dir, exist_ok=True)
        configs = args.floor_configs.split(",")
        results = run_stacks(args, floor_dir, configs, SDBUS_LOADGEN)
        parts.append(
            "\n### sd-bus client, floor (the harness's loadgen and echo_server, run by bench/bench.py)\n"
            + stack_table(results, configs, args.workload_list, "sd-bus")
            + "\ncfwd = bench/cfwd.c, a compiled epoll byte forwarder that parses nothing; x direct against "
            "the direct row of this set.\n"
        )
    if args.only in ("all", "libdbus"):
        libdbus_dir = os.path.join(out_dir, "libdbus")
        os.makedirs(libdbus_dir, exist_ok=True)
        configs = args.libdbus_configs.split(",")
        results = run_stacks(args, libdbus_dir, configs, LOADGEN)
        parts.append(
            "\n### libdbus client (bench/loadgen_libdbus.c)\n"
            + stack_table(results, configs, args.workload_list, "libdbus")
            + "\nx direct = median over repetitions of config / direct in the same repetition slot. "
            "strace = the client under `strace -f -qq --seccomp-bpf -e trace=sendmsg,recvmsg -o FILE`.\n"
        )
    text = "".join(parts)
    with open(os.path.join(out_dir, "summary.md"), "w") as summary:
        summary.write(text)
    print(text)
    log(f"results in {out_dir}")
    for row_set in ("floor", "libdbus"):
        shutil.rmtree(os.path.join(out_dir, row_set, "run"), ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
