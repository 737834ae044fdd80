"""The HTML report on a large real trace: time to first paint, scrolling, filtering, against a small one.

    .venv/bin/python bench/report_speed.py [--messages 100000] [--tile 1000000] [--reps 2]

Makes a real trace first: `ipcproxy run` with a python-dbusmock service and a
dbus-python client calling it (Peer.Ping, a Properties.Get that fails,
Properties.GetAll) until the trace holds --messages messages. Reports are
built of its first 1,000 messages (the baseline) and of all of it; with
--tile N, also of the same records repeated (seq, time and serials shifted)
up to N messages, to find where the page stops being smooth. Each page is
opened in headless Chromium (Debian's chromium and chromedriver, as the
browser tests) and measured:

- build: `ipcproxy report` wall time, and the page's size;
- first paint: from navigation start to the first drawn frame of the sequence diagram;
- scroll: 120 jumps spread over the whole diagram, one per animation frame:
  the draw time of each frame (p50, p99) and the interval between frames (p99);
- filter: a member filter typed into the page, until every view's data is recomputed;
- first detail: the first click on a message (parses the full records).

Ratios are against the 1,000-message page of the same run. Nothing here is
asserted; the numbers go into docs/report.md's Limits by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the browser tests' Chromium launcher

from browser import chromium, wait_js  # noqa: E402

IPCPROXY = [sys.executable, "-m", "ipcproxy"]
MOCK = "/usr/bin/python3 -m dbusmock org.example.Mock /org/example/Mock org.example.Mock"
CLIENT = """
import dbus, sys
bus = dbus.SessionBus()
obj = bus.get_object("org.example.Mock", "/org/example/Mock")
peer = dbus.Interface(obj, "org.freedesktop.DBus.Peer")
props = dbus.Interface(obj, "org.freedesktop.DBus.Properties")
for i in range(int(sys.argv[1])):
    k = i % 3
    if k == 0:
        peer.Ping()
    elif k == 1:
        try:
            props.Get("org.example.Mock", "Missing%d" % (i % 50))
        except dbus.DBusException:
            pass
    else:
        props.GetAll("org.example.Mock")
"""

SCROLL = """
const done = arguments[arguments.length - 1];
const seq = ipcReport.app.seq, box = seq.scroll, steps = 120, draw = [], gaps = [];
const span = box.scrollHeight - box.clientHeight;
let k = 0, last = performance.now();
function frame(now) {
  gaps.push(now - last); last = now;
  const t = performance.now();
  box.scrollTop = span * ((k * 37) % steps) / steps;
  seq.render();
  draw.push(performance.now() - t);
  if (++k < steps) requestAnimationFrame(frame); else done([draw, gaps.slice(1)]);
}
requestAnimationFrame(frame);
"""

FILTER = """
const input = document.getElementById('f-member');
const t = performance.now();
input.value = 'Get'; input.dispatchEvent(new Event('input'));
const app = ipcReport.app;
app.renderGraph(); app.renderStats();
const spent = performance.now() - t;
input.value = ''; input.dispatchEvent(new Event('input'));
return spent;
"""

DETAIL = """
const t = performance.now();
ipcReport.app.select(ipcReport.app.rows[Math.floor(ipcReport.app.rows.length / 2)], true);
return performance.now() - t;
"""


def make_trace(folder: Path, messages: int) -> Path:
    trace = folder / "big.jsonl"
    calls = messages // 2 + 50
    subprocess.run(
        [*IPCPROXY, "run", "-q", "-w", str(trace), "--service", MOCK, "--wait-for", "org.example.Mock", "--",
         "/usr/bin/python3", "-c", CLIENT, str(calls)],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,  # the mock logs every call it answers
    )  # fmt: skip
    return trace


def tiled_page(trace: Path, target: int, out: Path) -> float:
    """A page of the trace's records repeated up to ``target`` messages (built in-process)."""
    from ipcproxy.report.model import ModelBuilder
    from ipcproxy.report.page import render
    from ipcproxy.trace.reader import iter_trace

    records = list(iter_trace(str(trace)))
    start = time.perf_counter()
    builder = ModelBuilder(f"{trace.name} x{target}", {}, target)
    span = records[-1]["ts"] - records[0]["ts"] + 1_000_000
    copy = 0
    while not builder.truncated:
        for rec in records:
            rec = dict(rec, seq=rec["seq"] + copy * len(records), ts=rec["ts"] + copy * span)
            for key in ("serial", "reply_serial"):
                if isinstance(rec.get(key), int):
                    rec[key] += copy * 1_000_000
            builder.add(rec)
        copy += 1
    out.write_text(render(builder.to_json(), builder.details()))
    return time.perf_counter() - start


def report(trace: Path, out: Path, limit: int | None) -> float:
    argv = [*IPCPROXY, "report", str(trace), "-o", str(out), "--force"]
    if limit:
        argv += ["--max-messages", str(limit)]
    start = time.perf_counter()
    subprocess.run(argv, check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - start


def measure(page: Path) -> dict[str, Any]:
    with chromium() as driver:
        driver.get(page.as_uri())
        wait_js(driver, "window.ipcFirstPaint !== undefined", timeout=300)
        first = driver.execute_script("return window.ipcFirstPaint")
        count = driver.execute_script("return ipcReport.counts().messages")
        draw, gaps = driver.execute_async_script(SCROLL)
        filtering = driver.execute_script(FILTER)
        detail = driver.execute_script(DETAIL)
    q = statistics.quantiles
    return {
        "messages": count,
        "first_paint_ms": first,
        "draw_p50_ms": statistics.median(draw),
        "draw_p99_ms": q(draw, n=100)[98],
        "frame_gap_p99_ms": q(gaps, n=100)[98],
        "filter_ms": filtering,
        "first_detail_ms": detail,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--tile", type=int, default=0, help="also a page of the records repeated up to N messages")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="report-speed-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        trace = make_trace(folder, args.messages)
        print(f"trace: {trace.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        pages: dict[str, tuple[Path, float]] = {}
        sizes: dict[str, float] = {}
        small, big = folder / "small.html", folder / "big.html"
        pages["1,000 messages (baseline)"] = (small, report(trace, small, 1000))
        pages[f"{args.messages:,} messages"] = (big, report(trace, big, args.messages))
        if args.tile:
            tiled = folder / "tiled.html"
            pages[f"{args.tile:,} messages (tiled)"] = (tiled, tiled_page(trace, args.tile, tiled))
        sizes = {name: page.stat().st_size / 1e6 for name, (page, _) in pages.items()}
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in pages}
        for rep in range(args.reps):
            order = list(pages)[rep % len(pages) :] + list(pages)[: rep % len(pages)]  # rotated: no slot is favoured
            for name in order:
                rows[name].append(measure(pages[name][0]))
    keys = ["first_paint_ms", "draw_p50_ms", "draw_p99_ms", "frame_gap_p99_ms", "filter_ms", "first_detail_ms"]
    base = {k: statistics.median(r[k] for r in rows["1,000 messages (baseline)"]) for k in keys}
    print(f"{'page':28} {'drawn':>9} {'size MB':>8} {'build s':>8} " + " ".join(f"{k:>22}" for k in keys))
    for name, (_, build_s) in pages.items():
        med = {k: statistics.median(r[k] for r in rows[name]) for k in keys}
        cells = [f"{med[k]:9.1f} ({med[k] / base[k] if base[k] else 0:5.1f}x)" for k in keys]
        print(
            f"{name:28} {rows[name][0]['messages']:>9} {sizes[name]:8.1f} "
            f"{build_s:8.1f} " + " ".join(f"{c:>22}" for c in cells)
        )
    print(json.dumps({"median_ms": {n: {k: statistics.median(r[k] for r in rows[n]) for k in keys} for n in rows}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
