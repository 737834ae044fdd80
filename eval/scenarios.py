"""The evaluation's system, its benign workload and its misuse scenarios.

Components (each its own unprivileged account, so bus policy can tell them apart):

  systemd-hostnamed, -timedated, -localed   real daemons from Debian's systemd package
  org.example.Thermostat, org.example.Journal   our own small services (services/)
  dashboard (busctl, gdbus)   reads host facts and the thermostat's target
  controller (clients/controller.py)   Unlock, SetTarget, SetMode, Lock, then logs a line

A benign run varies the controller's arguments by seed (how many changes,
which temperatures and modes, the log text); the dashboard's behaviour is its
role and does not vary. Misuse scenarios are what a compromised dashboard or
controller might do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from harness import Service, Step

HERE = Path(__file__).resolve().parent
PY = "/usr/bin/python3"  # Debian's python3, with dbus-python (the venv is not readable by other users)
CONTROLLER = str(HERE / "clients" / "controller.py")

HOST = "org.freedesktop.hostname1"
TIME = "org.freedesktop.timedate1"
LOCALE = "org.freedesktop.locale1"
THERMOSTAT = "org.example.Thermostat"
JOURNAL = "org.example.Journal"

# role -> the existing system account it runs as (Debian base-passwd accounts, nothing is created)
USERS = {
    "hostnamed": "daemon",
    "timedated": "bin",
    "localed": "sys",
    "journal": "mail",
    "thermostat": "uucp",
    "dashboard": "games",
    "controller": "news",
}

SERVICES = [
    Service(JOURNAL, USERS["journal"], (PY, str(HERE / "services" / "journal.py"))),
    Service(THERMOSTAT, USERS["thermostat"], (PY, str(HERE / "services" / "thermostat.py"))),
    Service(HOST, USERS["hostnamed"], ("/lib/systemd/systemd-hostnamed",)),
    Service(TIME, USERS["timedated"], ("/lib/systemd/systemd-timedated",)),
    Service(LOCALE, USERS["localed"], ("/lib/systemd/systemd-localed",)),
]

MODES = ("eco", "comfort", "away")


def busctl(*args: str) -> tuple[str, ...]:
    return ("busctl", "--system", *args)


def dashboard_steps() -> list[Step]:
    user = USERS["dashboard"]
    return [
        Step(user, busctl("get-property", HOST, "/org/freedesktop/hostname1", HOST, "Hostname",
                          "OperatingSystemPrettyName"), "dashboard: host facts"),
        Step(user, busctl("get-property", TIME, "/org/freedesktop/timedate1", TIME, "Timezone"), "dashboard: timezone"),
        Step(user, busctl("get-property", LOCALE, "/org/freedesktop/locale1", LOCALE, "Locale"), "dashboard: locale"),
        Step(user, ("gdbus", "call", "--system", "--dest", THERMOSTAT, "--object-path", "/org/example/Thermostat",
                    "--method", f"{THERMOSTAT}.GetTarget"), "dashboard: thermostat target"),
    ]  # fmt: skip


def controller_actions(seed: int) -> list[list[object]]:
    rng = random.Random(seed)
    changes = rng.randint(2, 3)
    actions: list[list[object]] = [["GetTarget"]]
    target, mode = 20.0, "eco"
    for _ in range(changes):
        target = round(rng.uniform(17.0, 24.0) * 2) / 2
        mode = rng.choice(MODES)
        actions += [["Unlock"], ["SetTarget", target], ["SetMode", mode], ["Lock"]]
    actions.append(["Log", f"run {seed}: {changes} changes, last {target:.1f} {mode}"])
    return actions


def controller(actions: list[list[object]], label: str) -> Step:
    import json

    return Step(USERS["controller"], (PY, CONTROLLER, json.dumps(actions)), label)


def benign_steps(seed: int) -> list[Step]:
    return [*dashboard_steps(), controller(controller_actions(seed), f"controller: run {seed}")]


@dataclass(frozen=True)
class Misuse:
    key: str
    what: str  # the kind of misuse, as the issue lists them
    text: str
    steps: tuple[Step, ...]
    actor: str  # role
    member: str  # the misusing call, to find it in the trace
    arg0: object = None  # when the member alone does not single it out


def misuses() -> list[Misuse]:
    dash = USERS["dashboard"]
    safe_prefix: list[list[object]] = [["GetTarget"], ["Unlock"]]
    return [
        Misuse("M1", "setter where it only read", "dashboard (gdbus) sets the thermostat it only ever read",
               (Step(dash, ("gdbus", "call", "--system", "--dest", THERMOSTAT, "--object-path",
                            "/org/example/Thermostat", "--method", f"{THERMOSTAT}.SetTarget", "30.0"), "M1"),),
               "dashboard", "SetTarget"),
        Misuse("M2", "setter where it only read", "dashboard (busctl) calls hostnamed's SetStaticHostname",
               (Step(dash, busctl("call", HOST, "/org/freedesktop/hostname1", HOST, "SetStaticHostname", "sb",
                                  "pwned", "false"), "M2"),),
               "dashboard", "SetStaticHostname"),
        Misuse("M3", "setter where it only read", "dashboard (busctl) calls timedated's SetTimezone",
               (Step(dash, busctl("call", TIME, "/org/freedesktop/timedate1", TIME, "SetTimezone", "sb",
                                  "America/New_York", "false"), "M3"),),
               "dashboard", "SetTimezone"),
        Misuse("M4", "out-of-profile arguments", "controller sets 95.0 degrees (seen: 17-24)",
               (controller([*safe_prefix, ["SetTarget", 95.0], ["Lock"]], "M4"),), "controller", "SetTarget"),
        Misuse("M5", "out-of-profile arguments", "controller sets mode 'service' (seen: eco, comfort, away)",
               (controller([*safe_prefix, ["SetTarget", 21.0], ["SetMode", "service"], ["Lock"]], "M5"),),
               "controller", "SetMode"),
        Misuse("M6", "out-of-profile arguments", "controller logs a shell-injection line",
               (controller([*safe_prefix, ["SetTarget", 21.0], ["SetMode", "eco"], ["Lock"],
                            ["Log", "$(reboot); DROP TABLE journal"]], "M6"),), "controller", "Log"),
        Misuse("M7", "call out of its usual order", "controller sets the target without Unlock first",
               (controller([["SetTarget", 21.0]], "M7"),), "controller", "SetTarget"),
        Misuse("M8", "a name it never owned", "controller tries to take over org.example.Thermostat",
               (controller([["RequestName", THERMOSTAT]], "M8"),), "controller", "RequestName", THERMOSTAT),
        Misuse("M9", "a peer it never talked to", "dashboard (busctl) writes to the journal",
               (Step(dash, busctl("call", JOURNAL, "/org/example/Journal", JOURNAL, "Log", "s", "hello"), "M9"),),
               "dashboard", "Log"),
    ]  # fmt: skip
