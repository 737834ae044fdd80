"""The policy evaluation of issue 3: learn from benign runs, then enforce on held-out and misuse runs.

    sudo .venv/bin/python eval/run_eval.py

1. Six benign runs of the system (scenarios.py) through a recording proxy: the training traces.
2. ``learn`` a least-privilege policy and the coarse destination-only baseline from them;
   export the learned one to dbus-daemon XML.
3. Four held-out benign runs (other seeds, so other argument values) and nine misuse
   scenarios, each once through ipcproxy enforcing the learned policy, once through
   ipcproxy enforcing the coarse one, and once through a dbus-daemon that includes the
   exported XML (the proxy in front only records).
4. Print the tables, write eval/results.json and put the tables into docs/policy.md.

Every run is a fresh bus with fresh services, and every component runs as its own
unprivileged account (so the real daemons cannot change the host, and so the per-user
XML can tell components apart).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from classify import Outcome, bus_denials, enforcer_denials, outcome  # noqa: E402
from harness import RunResult, run_system  # noqa: E402
from scenarios import PY, SERVICES, USERS, Misuse, benign_steps, misuses  # noqa: E402

from ipcproxy.policy.dump import dump_policy  # noqa: E402
from ipcproxy.policy.export_dbus import export_dbus  # noqa: E402
from ipcproxy.policy.learn import Learner  # noqa: E402
from ipcproxy.policy.loader import load_policy  # noqa: E402
from ipcproxy.trace.replay import replay  # noqa: E402

TRAIN = range(1, 7)
HELD_OUT = range(7, 11)
DOCS = HERE.parent / "docs" / "policy.md"
BEGIN, END = "<!-- eval-results:begin -->", "<!-- eval-results:end -->"
CONFIGS = ("learned", "coarse", "xml", "broker")
BUSES = {"xml": "dbus-daemon", "broker": "dbus-broker"}
EXPRESSIBLE_KINDS = {"no-rule", "own", "no-profile"}  # what a bus policy can say: member-level rules, owning names


def prerequisites() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (components run as their own accounts)")
    for tool in ("setpriv", "busctl", "gdbus", "dbus-daemon", "dbus-broker-launch", PY):
        if not shutil.which(tool) and not os.path.exists(tool):
            problems.append(f"{tool} is missing")
    for service in SERVICES:
        if service.argv[0].startswith("/lib/") and not os.path.exists(service.argv[0]):
            problems.append(f"{service.argv[0]} is missing (Debian package systemd)")
    for user in USERS.values():
        try:
            pwd.getpwnam(user)
        except KeyError:
            problems.append(f"no account {user!r}")
    if problems:
        print("eval: cannot run: " + "; ".join(problems), file=sys.stderr)
        raise SystemExit(2)


def client_failures(run: RunResult) -> int:
    failures = 0
    for _step, done in run.outputs:
        if done.returncode != 0:
            failures += 1
        failures += sum(1 for line in done.stdout.splitlines() if line.startswith("{") and '"ok": false' in line)
    return failures


def learn(traces: list[Path], out: Path) -> tuple[Path, Path]:
    paths = []
    for coarse, name in ((False, "learned"), (True, "coarse")):
        learner = Learner(threshold=5, ngram=2, coarse=coarse)
        for item in replay([str(t) for t in traces]):
            learner.feed(item)
        path = out / f"{name}.yaml"
        path.write_text(dump_policy(learner.policy(), [f"{name} policy of the evaluation, from {len(traces)} runs"]))
        paths.append(path)
    return paths[0], paths[1]


def run_config(config: str, paths: dict[str, Path], label: str, steps: list[Any], out: Path) -> RunResult:
    if config in BUSES:
        return run_system(label, out, SERVICES, steps, bus_policy_xml=paths["xml"], broker=config == "broker")
    return run_system(label, out, SERVICES, steps, policy=paths[config])


def sizes(paths: dict[str, Path]) -> dict[str, dict[str, int]]:
    out = {}
    for name in ("learned", "coarse"):
        policy = load_policy(str(paths[name]))
        out[name] = {
            "components": len(policy.subjects),
            "rules": policy.rule_count(),
            "own": sum(len(s.own) for s in policy.subjects),
            "ngrams": sum(len(s.order or ()) for s in policy.subjects),
            "total": policy.size(),
        }
    root = ET.fromstring(paths["xml"].read_text().split("\n", 3)[3])
    elements = [e for p in root.findall("policy") for e in p if e.tag in ("allow", "deny")]
    out["xml"] = {"policies": len(root.findall("policy")), "elements": len(elements), "total": len(elements)}
    return out


def evaluate(out: Path) -> dict[str, Any]:
    runs = out / "runs"
    train = [run_system(f"train-{seed}", runs, SERVICES, benign_steps(seed)) for seed in TRAIN]
    broken = [(r.label, client_failures(r)) for r in train if client_failures(r)]
    if broken:
        raise SystemExit(f"eval: training runs failed: {broken}")
    learned, coarse = learn([r.trace for r in train], out)
    xml = out / "learned-busconfig.xml"
    xml.write_text(export_dbus(load_policy(str(learned)), "system"))
    paths = {"learned": learned, "coarse": coarse, "xml": xml}
    results: dict[str, Any] = {"train_runs": list(TRAIN), "held_out_runs": list(HELD_OUT), "sizes": sizes(paths)}
    benign: dict[str, Any] = {}
    for config in CONFIGS:
        denied = failures = runs_with = 0
        examples: list[str] = []
        for seed in HELD_OUT:
            run = run_config(config, paths, f"{config}-heldout-{seed}", benign_steps(seed), runs)
            records = run.records()
            found = enforcer_denials(records) + bus_denials(records)
            denied += len(found)
            runs_with += bool(found)
            failures += client_failures(run)
            examples += [_describe(r) for r in found[:3]]
        benign[config] = {"denied": denied, "runs_with_denials": runs_with, "client_failures": failures,
                          "examples": examples[:5]}  # fmt: skip
    results["benign"] = benign
    rows = []
    for misuse in misuses():
        row: dict[str, Any] = {"key": misuse.key, "what": misuse.what, "text": misuse.text}
        for config in CONFIGS:
            run = run_config(config, paths, f"{config}-{misuse.key}", list(misuse.steps), runs)
            row[config] = _outcome(run, misuse).__dict__
        kind = row["learned"]["kind"]
        row["xml_expressible"] = kind in EXPRESSIBLE_KINDS
        row["agree"] = all(row["learned"]["blocked"] == row[bus]["blocked"] for bus in BUSES)
        rows.append(row)
    results["misuse"] = rows
    return results


def _outcome(run: RunResult, misuse: Misuse) -> Outcome:
    uid = pwd.getpwnam(USERS[misuse.actor]).pw_uid
    return outcome(run.records(), misuse.member, uid, misuse.arg0)


def _describe(record: dict[str, Any]) -> str:
    sender = (record.get("sender") or {}).get("exe") or (record.get("sender") or {}).get("bus_name")
    verdict = record.get("verdict")
    reason = verdict.get("reason") if isinstance(verdict, dict) else (record.get("args") or [""])[0]
    return f"{record.get('type')} {record.get('member') or ''} from {sender}: {reason}"


def tables(results: dict[str, Any]) -> str:
    s = results["sizes"]
    n_misuse = len(results["misuse"])
    blocked = {c: sum(1 for r in results["misuse"] if r[c]["blocked"]) for c in CONFIGS}
    held = len(results["held_out_runs"])

    def benign_cell(config: str) -> str:
        b = results["benign"][config]
        return f"{b['denied']} messages ({b['runs_with_denials']} of {held} runs); {b['client_failures']} failed calls"

    lines = [
        f"Trained on {len(results['train_runs'])} benign runs (seeds {_span(results['train_runs'])}), "
        f"tested on {held} held-out benign runs (seeds {_span(results['held_out_runs'])}) and "
        f"{n_misuse} misuse scenarios; every run is a fresh bus with fresh services.",
        "",
        "| policy | enforced by | size | false denials, held-out benign runs | misuse blocked |",
        "|---|---|---|---|---|",
        f"| learned | ipcproxy | {s['learned']['rules']} rules, {s['learned']['own']} owned names, "
        f"{s['learned']['ngrams']} order 2-grams ({s['learned']['components']} components) | "
        f"{benign_cell('learned')} | {blocked['learned']} / {n_misuse} |",
        f"| coarse (destination only) | ipcproxy | {s['coarse']['rules']} rules, {s['coarse']['own']} owned names "
        f"| {benign_cell('coarse')} | {blocked['coarse']} / {n_misuse} |",
        f"| learned, exported to XML | dbus-daemon | {s['xml']['elements']} allow/deny elements in "
        f"{s['xml']['policies']} per-user policies | {benign_cell('xml')} | {blocked['xml']} / {n_misuse} |",
        f"| learned, exported to XML | dbus-broker | the same file | {benign_cell('broker')} "
        f"| {blocked['broker']} / {n_misuse} |",
        "",
        "| # | misuse | scenario | learned (ipcproxy) | coarse (ipcproxy) | exported XML (dbus-daemon) "
        "| exported XML (dbus-broker) | XML can express it | ipcproxy and both buses agree |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["misuse"]:
        cells = [Outcome(**r[c]).cell() for c in CONFIGS]
        if r["agree"]:
            agree_cell = "yes"
        elif r["xml_expressible"]:
            agree_cell = "**NO**"
        else:
            agree_cell = "no, as the export says (not expressible)"
        lines.append(
            f"| {r['key']} | {r['what']} | {r['text']} | {' | '.join(cells)} | "
            f"{'yes' if r['xml_expressible'] else 'no (' + str(r['learned']['kind']) + ')'} | {agree_cell} |"
        )
    expressible = [r for r in results["misuse"] if r["xml_expressible"]]
    agree = sum(1 for r in expressible if r["agree"])
    benign_agree = all(results["benign"][c]["denied"] == 0 for c in ("learned", *BUSES))
    lines += [
        "",
        f"Cross-check: where the XML can express the rule, ipcproxy, dbus-daemon and dbus-broker agree on {agree} "
        f"of {len(expressible)} misuse scenarios"
        + (", and all three let all held-out benign traffic through." if benign_agree else ".")
        + " Where it cannot (argument constraints, order), the buses let the misuse through, as the"
        " export's comments say they will.",
    ]
    return "\n".join(lines)


def _span(seeds: list[int]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ", ".join(map(str, seeds))


def write_docs(table: str) -> None:
    if not DOCS.exists():
        return
    text = DOCS.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _old, tail = rest.split(END, 1)
        DOCS.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main() -> int:
    prerequisites()
    out = HERE / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    results = evaluate(out)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = tables(results)
    print(table)
    write_docs(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
