"""One self-contained HTML page: the template, its style and script, the vendored libraries, the model.

Everything is inlined, so the file opens from disk with no network. JSON goes
into ``<script type="application/json">`` blocks with ``</`` escaped (a
payload holding ``</script>`` cannot end the block early); the full records
sit in a block of their own that the page parses only when a message is
first clicked, so a large trace paints without waiting for it.
"""

from __future__ import annotations

import html
import re
from functools import cache
from importlib import resources
from typing import Any

import msgspec

# the libraries, in load order (scripts/vendor-js.sh copies them from npm; versions in vendor/package-lock.json)
LIBRARIES = ("cytoscape.min.js", "chart.umd.min.js")
SCRIPTS = ("app.js", "campaign.js", "policy.js", "live.js")

_encoder = msgspec.json.Encoder()


@cache
def _asset(folder: str, name: str) -> str:
    return resources.files(__package__).joinpath(folder, name).read_text(encoding="utf-8")


def embed_json(data: Any) -> str:
    """JSON safe inside a script block: ``</`` and the HTML comment openers escaped."""
    text = _encoder.encode(data).decode()
    return text.replace("</", "<\\/").replace("<!--", "<\\u0021--")


def _script(text: str) -> str:
    return "<script>\n" + text.replace("</script", "<\\/script") + "\n</script>"


def render(model: dict[str, Any], details: list[Any] | None = None, live: bool = False) -> str:
    """The page for ``model``: ``details`` are the full records of its rows (per trace, for a campaign); ``live``: streamed."""
    libs = "\n".join(_script(_asset("vendor", name)) for name in LIBRARIES)
    app = "\n".join(_asset("static", name) for name in SCRIPTS)
    if live:
        app = "window.ipcLiveMode = true;\n" + app
    parts = {
        "__TITLE__": html.escape(str(model.get("title") or "ipcproxy report")),
        "__STYLE__": _asset("static", "app.css"),
        "__LIBS__": libs,
        "__APP__": app.replace("</script", "<\\/script"),
        "__MODEL__": embed_json(model),
        "__DETAILS__": embed_json(details) if details is not None else "",
    }
    # one pass over the template: nothing inserted (a record's text) is ever taken for a placeholder
    return _PLACEHOLDER.sub(lambda m: parts[m.group(0)], _asset("static", "page.html"))


_PLACEHOLDER = re.compile(r"__(?:TITLE|STYLE|LIBS|APP|MODEL|DETAILS)__")
