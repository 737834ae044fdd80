"""`ipcproxy report TRACE`: the page's model from real traces, its self-containedness, and bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from conftest import IPCPROXY, ROOT, read_trace
from ipcproxy.report.model import KINDS, VERDICTS, ModelBuilder, build
from ipcproxy.report.page import LIBRARIES, render
from report_helpers import ipcproxy, make_trace, stats_names, trace_stats

VENDOR = ROOT / "src" / "ipcproxy" / "report" / "vendor"


def model_of(page: Path) -> dict[str, Any]:
    text = page.read_text()
    match = re.search(r'<script type="application/json" id="model">(.*?)</script>', text, re.S)
    assert match, "the page embeds its model"
    return dict(json.loads(match.group(1)))


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_trace(tmp_path_factory.mktemp("model"))


def test_the_model_counts_what_stats_counts(traced: Path, tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    r = ipcproxy("report", str(traced), "-o", str(page))
    model = model_of(page)
    stats = trace_stats(traced)
    assert len(model["messages"]["seq"]) == stats["messages"]
    assert set(model["lifelines"]) == stats_names(stats)
    assert f"{stats['messages']} messages" in r.stderr
    # every column has one value per message, and the indices point into the tables
    cols = model["messages"]
    assert {len(v) for v in cols.values()} == {stats["messages"]}
    assert all(0 <= i < len(model["lifelines"]) for i in cols["src"] + cols["dst"])
    assert all(-1 <= i < len(model["strings"]) for i in cols["member"] + cols["iface"])
    kinds = [KINDS[k] for k in cols["kind"]]
    assert kinds.count("error") == sum(c["errors"] for c in stats["components"])
    assert [VERDICTS[v] for v in cols["verdict"]].count("fault") == 1


def test_a_reply_points_at_its_call_and_keeps_the_callers_latency(traced: Path) -> None:
    records = read_trace(traced)
    builder = build(records)
    cols = builder.cols
    returns = [i for i, k in enumerate(cols["kind"]) if KINDS[k] == "method_return" and cols["reply"][i] >= 0]
    assert returns
    hellos = [i for i in returns if builder.records[cols["reply"][i]]["member"] == "Hello"]
    assert hellos  # answered before the caller had a name: matched by its connection
    for i in returns:
        call = cols["reply"][i]
        assert KINDS[cols["kind"][call]] == "method_call"
        assert builder.records[i]["reply_serial"] == builder.records[call]["serial"]
        assert cols["latency"][i] >= 0
    # of a message recorded on both sides, the larger latency (the one the caller waited)
    copies: dict[tuple[Any, Any], list[int]] = {}
    for rec in records:
        if rec.get("type") == "method_return" and isinstance(rec.get("latency_ns"), int):
            copies.setdefault((rec["sender"].get("bus_name"), rec["serial"]), []).append(rec["latency_ns"])
    for i in returns:
        rec = builder.records[i]
        if rec["sender"].get("bus_name") == "org.freedesktop.DBus":  # recorded once: its serials repeat
            assert cols["latency"][i] == rec["latency_ns"]
            continue
        assert cols["latency"][i] == max(copies[(rec["sender"].get("bus_name"), rec["serial"])])


def test_the_page_is_self_contained(traced: Path, tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    ipcproxy("report", str(traced), "-o", str(page))
    text = page.read_text()
    assert not re.search(r"<(script|link|img|iframe)[^>]*\s(src|href)=", text, re.I)
    assert "@import" not in text
    for name in LIBRARIES:  # the vendored libraries are inlined, whole
        assert (VENDOR / name).read_text().replace("</script", "<\\/script")[:2000] in text


def test_text_from_the_trace_cannot_end_a_script_block() -> None:
    rec = {
        "seq": 1,
        "ts": 1,
        "type": "method_call",
        "sender": {"bus_name": ":1.1", "names": []},
        "destination": {"bus_name": ":1.2", "names": []},
        "serial": 1,
        "member": "</script><b>__MODEL__",
        "signature": "s",
        "args": ["</script><script>alert(1)</script><!--"],
        "size": 10,
    }
    builder = build([rec])
    text = render(builder.to_json(), builder.details())
    blocks = ScriptBlocks()
    blocks.feed(text)
    # the two data blocks, the libraries and the page's script: no block was ended early or opened by the data
    assert len(blocks.found) == 2 + len(LIBRARIES) + 1
    model, details = (json.loads(body) for attrs, body in blocks.found if attrs.get("type") == "application/json")
    assert model["strings"] == ["</script><b>__MODEL__"]
    assert details[0]["args"] == rec["args"]


class ScriptBlocks(HTMLParser):
    """The script elements of a page, as a browser splits them."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[dict[str, str | None], str]] = []
        self._open: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self._open = dict(attrs)
            self.found.append((self._open, ""))

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            attrs, body = self.found[-1]
            self.found[-1] = (attrs, body + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._open = None


def test_pipe_data_is_an_arrow_from_writer_to_reader(tmp_path: Path) -> None:
    trace = tmp_path / "pipe.jsonl"
    r = subprocess.run(
        [*IPCPROXY, "trace", "-q", "-w", str(trace), "--", "sh", "-c", "seq 1000 | sort -rn > /dev/null"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    if r.returncode != 0 and "ptrace" in r.stderr:
        pytest.skip(f"ipcproxy trace cannot run here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    builder = build(read_trace(trace))
    model = builder.to_json()
    writes = [i for i, k in enumerate(model["messages"]["kind"]) if KINDS[k] == "data"]
    assert writes
    names = model["lifelines"]
    arrows = {(names[model["messages"]["src"][i]], names[model["messages"]["dst"][i]]) for i in writes}
    # seq's writes go to the process the tracer saw reading them: sort, or, when seq wrote before the shell
    # had handed the pipe's reading end to sort (a loaded machine), the shell that still held it
    assert {src for src, _ in arrows} == {"/usr/bin/seq"}
    assert {dst for _, dst in arrows} <= {"/usr/bin/sort", os.path.realpath("/bin/sh")}
    assert len(writes) == trace_stats(trace)["messages"]
    assert model["strings"][model["messages"]["iface"][writes[0]]] == "pipe"


def test_a_pcap_capture_is_reported_like_its_trace(traced: Path, tmp_path: Path) -> None:
    pcap = tmp_path / "t.pcap"
    ipcproxy("convert", str(traced), str(pcap))
    page = tmp_path / "p.html"
    ipcproxy("report", str(pcap), "-o", str(page))
    model = model_of(page)
    assert len(model["messages"]["seq"]) == trace_stats(pcap)["messages"]


def test_max_messages_cuts_and_says_so(traced: Path, tmp_path: Path) -> None:
    page = tmp_path / "cut.html"
    r = ipcproxy("report", str(traced), "-o", str(page), "--max-messages", "5")
    model = model_of(page)
    assert len(model["messages"]["seq"]) == 5 and model["truncated"] is True
    assert "only the first 5" in r.stderr


def test_builder_output_is_the_same_fed_at_once_or_in_pieces(traced: Path) -> None:
    records = read_trace(traced)
    whole = build(records).to_json()
    live = ModelBuilder()
    half = len(records) // 2
    live.add_all(records[:half])
    first = live.to_json()
    live.add_all(records[half:])
    rest = live.to_json(start=len(first["messages"]["seq"]))
    assert rest["lifelines"] == whole["lifelines"]
    for name, values in whole["messages"].items():
        if name not in ("src", "dst"):  # names of early rows may improve once a name is owned
            assert first["messages"][name] + rest["messages"][name] == values


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/t.jsonl"], "/nonexistent/t.jsonl"),
        (["{tmp}"], "is a directory"),
        (["{tmp}/bad.jsonl"], "bad.jsonl"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "bad.jsonl").write_text("this is not a trace\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = ipcproxy("report", *argv, "-o", str(tmp_path / "out.html"), check=False)
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out.html").exists()


def test_an_existing_page_is_replaced_only_with_force(traced: Path, tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    page.write_text("keep me")
    r = ipcproxy("report", str(traced), "-o", str(page), check=False)
    assert r.returncode == 2 and page.read_text() == "keep me"
    ipcproxy("report", str(traced), "-o", str(page), "--force")
    assert page.read_text().startswith("<!DOCTYPE html>")


def test_vendored_libraries_are_the_versions_the_lock_records() -> None:
    lock = json.loads((VENDOR / "package-lock.json").read_text())
    package = json.loads((VENDOR / "package.json").read_text())
    versions = {name: lock["packages"][f"node_modules/{name}"]["version"] for name in package["dependencies"]}
    assert versions == package["dependencies"]  # pinned exactly
    assert f'"{versions["cytoscape"]}"' in (VENDOR / "cytoscape.min.js").read_text()
    assert f"Chart.js v{versions['chart.js']}" in (VENDOR / "chart.umd.min.js").read_text()[:200]
    for licence in ("LICENSE.cytoscape", "LICENSE.chart.js", "LICENSE.kurkle-color"):
        assert (
            "MIT" in (VENDOR / licence).read_text() or "Permission is hereby granted" in (VENDOR / licence).read_text()
        )
