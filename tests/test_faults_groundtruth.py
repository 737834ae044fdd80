"""Ground truth: small systems with known reactions to a fault, each classified as expected.

The services are in tests/groundtruth/gt_service.py; each campaign file there
describes one system and the faults whose outcome and propagation we know.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ipcproxy.faults.campaign import Runner
from ipcproxy.faults.plan import load_campaign

HERE = Path(__file__).resolve().parent / "groundtruth"

# campaign -> fault -> (outcome, propagation, nearest first)
EXPECTED: dict[str, dict[str, tuple[str, list[str]]]] = {
    "crashy": {
        "backend-error": ("crash", ["org.example.Crashy"]),
        "never-matches": ("not-activated", []),
    },
    "retrier": {
        "drop-backend-reply": ("behaviour-shift", ["org.example.Retrier"]),
        "slow-backend-reply": ("no-effect", []),
    },
    "waiter": {"drop-backend-reply": ("hang", ["org.example.Waiter"])},
    "cache": {"corrupt-backend-value": ("state-corruption", ["org.example.Cache"])},
    "chain": {
        "wrong-value-at-c": ("behaviour-shift", ["org.example.B", "org.example.A"]),
        "error-at-c": ("handled", ["org.example.B", "org.example.A"]),
    },
}


def run(name: str, out: Path) -> dict[str, dict[str, Any]]:
    results = Runner(load_campaign(str(HERE / f"{name}.yaml")), str(out), jobs=2).run()
    return {r["fault"]["name"]: r for r in results}


@pytest.mark.slow
@pytest.mark.parametrize("system", sorted(EXPECTED))
def test_ground_truth_is_classified_with_its_propagation(system: str, tmp_path: Path) -> None:
    got = run(system, tmp_path / system)
    table = {name: (r["outcome"], r["propagation"]) for name, r in got.items()}
    assert table == EXPECTED[system], json.dumps({n: r["detail"] for n, r in got.items()}, indent=1)
    if system == "crashy":
        r = got["backend-error"]
        assert r["injected"][0]["done"].startswith("reply replaced by org.example.Error.Broken")
        assert r["exit_status"] != 0
        result = json.loads((tmp_path / system / "logs" / "run-1" / "result.json").read_text())
        assert [s["returncode"] for s in result["services"]] == [None, -6]  # Crashy aborted
    if system == "retrier":
        r = got["drop-backend-reply"]
        assert r["exit_status"] == 0 and r["first_divergence"] is not None
        assert [d["kind"] for d in r["deviations"]] == ["added"]  # the retry; the backend only answered it
    if system == "cache":
        r = got["corrupt-backend-value"]
        (key,) = r["state_diff"]
        assert key.endswith("org.example.Cache/Entries/alpha")
        assert r["state_diff"][key] == {"golden": "value-of-alpha", "run": "corrupted"}
        out = (tmp_path / system / "logs" / "run-1" / "workload.out").read_text()
        assert out.count('s "corrupted"') == 2  # asked twice: the second answer came from the cache
    if system == "chain":
        out = (tmp_path / system / "logs" / "run-1" / "workload.out").read_text()
        assert out.strip() == "i 1002"  # C said 1000 instead of 10; B and A each added one
        golden = (tmp_path / system / "logs" / "golden-1" / "workload.out").read_text()
        assert golden.strip() == "i 12"
