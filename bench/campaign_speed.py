"""Campaign speed: runs per minute for small workloads, and where each run's time goes.

Two systems: systemd-hostnamed read by busctl (a C daemon and a C client), and
the ground-truth Backend+Retrier pair (two Python services). For each, a
campaign of N runs is timed with -j 1 and -j 2, and the per-run share of
setup (fresh bus, proxy, services up and named), workload, state probes and
teardown is printed. The baseline, in the same invocation, is what a campaign
would cost without reusing anything: one `ipcproxy run` process per run
(a new interpreter, bus and proxy each time), for the same workload.

    .venv/bin/python bench/campaign_speed.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ipcproxy.faults.campaign import Runner
from ipcproxy.faults.plan import parse_campaign

ROOT = Path(__file__).resolve().parent.parent
GT = ROOT / "tests" / "groundtruth"

HOSTNAMED = """\
version: 1
seed: 1
setup: ["/lib/systemd/systemd-hostnamed"]
wait_for: [org.freedesktop.hostname1]
workload: "busctl get-property org.freedesktop.hostname1 /org/freedesktop/hostname1 org.freedesktop.hostname1 Hostname"
golden_runs: 2
timeout_s: 10
state:
  - {{service: org.freedesktop.hostname1, path: /org/freedesktop/hostname1}}
faults:
{faults}
"""

RETRIER = """\
version: 1
seed: 1
setup: ["$PYTHON gt_service.py backend", "$PYTHON gt_service.py retrier"]
wait_for: [org.example.Backend, org.example.Retrier]
workload: "busctl call org.example.Retrier /org/example/Retrier org.example.Retrier Get s alpha"
golden_runs: 2
timeout_s: 20
faults:
{faults}
"""

FAULT = "  - {{name: f{i}, match: {{type: method_return}}, when: {{nth: {n}}}, action: {{delay: {{ms: 1}}}}}}"


def campaign_text(template: str, runs: int) -> str:
    return template.format(faults="\n".join(FAULT.format(i=i, n=1 + i % 3) for i in range(runs)))


def timed_campaign(text: str, where: Path, jobs: int) -> tuple[float, list[dict[str, float]]]:
    plan = where / "campaign.yaml"
    plan.write_text(text)
    campaign = parse_campaign(text, str(plan))
    start = time.monotonic()
    results = Runner(campaign, str(where / f"out-j{jobs}"), jobs=jobs).run()
    elapsed = time.monotonic() - start
    return elapsed, [r["timings"] for r in results]


def baseline(runs: int, where: Path) -> float:
    """One `ipcproxy run` per run: fresh interpreter, bus, proxy and service each time."""
    argv = [
        sys.executable,
        "-m",
        "ipcproxy",
        "run",
        "-q",
        "--system-too",
        "--service",
        "/lib/systemd/systemd-hostnamed",
        "--wait-for",
        "org.freedesktop.hostname1",
        "-w",
        str(where / "baseline.jsonl"),
        "--",
        "busctl",
        "get-property",
        "org.freedesktop.hostname1",
        "/org/freedesktop/hostname1",
        "org.freedesktop.hostname1",
        "Hostname",
    ]
    start = time.monotonic()
    for _ in range(runs):
        subprocess.run(argv, check=True, capture_output=True, cwd=ROOT)
    return time.monotonic() - start


def shares(timings: list[dict[str, float]]) -> str:
    total = sum(t["total"] for t in timings)
    parts = []
    for key in ("setup", "workload", "probe", "teardown"):
        part = sum(t.get(key, 0.0) for t in timings)
        parts.append(f"{key} {100 * part / total:4.1f}%")
    median = statistics.median(t["total"] for t in timings)
    return f"median run {median * 1000:6.1f} ms  (" + ", ".join(parts) + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    n = args.runs
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for label, template, cwd in (("hostnamed+busctl", HOSTNAMED, base), ("python backend+retrier", RETRIER, GT)):
            print(f"== {label}: {n} fault runs (+2 golden runs)")
            for jobs in (1, 2):
                where = Path(tempfile.mkdtemp(dir=tmp))
                text = campaign_text(template, n)
                if cwd is GT:  # the services are found relative to the campaign file
                    where_plan = GT / f".bench-{jobs}.yaml"
                    where_plan.write_text(text)
                    try:
                        campaign = parse_campaign(text, str(where_plan))
                        start = time.monotonic()
                        results = Runner(campaign, str(where / "out"), jobs=jobs).run()
                        elapsed = time.monotonic() - start
                        timings = [r["timings"] for r in results]
                    finally:
                        where_plan.unlink()
                else:
                    elapsed, timings = timed_campaign(text, where, jobs)
                rate = (n + 2) / elapsed * 60
                print(f"  -j {jobs}: {rate:6.0f} runs/min  {shares(timings)}")
            if template is HOSTNAMED:
                b = baseline(n, base)
                per = b / n
                print(f"  baseline, one `ipcproxy run` per run: {60 / per:6.0f} runs/min ({per * 1000:.0f} ms a run)")


if __name__ == "__main__":
    main()
