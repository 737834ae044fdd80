"""`ipcproxy serve`: the report's page on localhost, fed live from a trace that is still being written.

One thread follows the trace (``trace.reader.iter_trace(follow=True)``, as
`show --follow` does) into a ``ModelBuilder``; the HTTP server (the standard
library's, one thread per client) serves the page and a Server-Sent Events
stream, ``/events``, that sends each client the rows it has not seen yet.
When names change what earlier rows are called (a service took its name
after Hello), or the file is written again from the start, the client gets
the whole model again instead.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec

from ..trace.reader import TraceError, iter_trace
from .model import ModelBuilder
from .page import render

PUSH_INTERVAL = 0.2  # seconds between looks for new rows, per client
WAIT_FOR_FILE = 0.1  # seconds between looks for a trace not created yet
KEEPALIVE = 15.0  # seconds of silence after which a comment line keeps proxies and the browser's timer quiet

_encoder = msgspec.json.Encoder()


class Feed:
    """The model of the followed trace, shared by the follower thread and the clients' threads."""

    def __init__(self, path: str, title: str) -> None:
        self.path = path
        self.title = title
        self.lock = threading.Lock()
        self.builder = ModelBuilder(title)
        self.generation = 0  # bumped when the file is written again from the start
        self.error: str | None = None
        self.done = threading.Event()

    def _header(self, head: dict[str, Any]) -> None:
        with self.lock:
            if self.builder.records or self.builder.events:
                self.generation += 1
            self.builder = ModelBuilder(self.title, dict(head))

    def follow(self, stop: threading.Event) -> None:
        """Read the trace until ``stop`` (the generator is abandoned between records).

        A trace not written yet is waited for: `serve` may start before the capture does.
        """
        while not os.path.lexists(self.path):
            if stop.wait(WAIT_FOR_FILE):
                self.done.set()
                return
        try:
            for rec in iter_trace(self.path, follow=True, on_header=self._header, warn=lambda _text: None):
                with self.lock:
                    self.builder.add(rec)
                if stop.is_set():
                    return
        except TraceError as exc:
            self.error = str(exc)
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
        finally:
            self.done.set()

    def update(self, seen: tuple[int, int, int] | None) -> tuple[tuple[int, int, int], bytes | None]:
        """What a client that has ``seen`` (generation, relabels, rows) needs next: new rows, all rows, or nothing."""
        with self.lock:
            b = self.builder
            now = (self.generation, b.relabels, len(b.records))
            if seen == now:
                return now, None
            start = seen[2] if seen is not None and seen[:2] == now[:2] and seen[2] <= now[2] else 0
            payload = {"model": b.to_json(start), "details": b.details(start)}
        return now, _encoder.encode(payload)


def make_handler(feed: Feed, stopping: threading.Event) -> type[BaseHTTPRequestHandler]:
    page = render(ModelBuilder(feed.title).to_json(), [], live=True).encode("utf-8")

    class Handler(BaseHTTPRequestHandler):
        server_version = "ipcproxy-serve"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            return  # the page's requests are not the user's business

        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            if self.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", page)
            elif self.path == "/events":
                self._events()
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")

        def _send(self, status: HTTPStatus, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _events(self) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen: tuple[int, int, int] | None = None
            quiet_since = time.monotonic()
            try:
                while not stopping.is_set():
                    seen, payload = feed.update(seen)
                    if payload is not None:
                        self.wfile.write(b"event: rows\ndata: " + payload + b"\n\n")
                        self.wfile.flush()
                        quiet_since = time.monotonic()
                    elif feed.error is not None:
                        self.wfile.write(b"event: failed\ndata: " + _encoder.encode(feed.error) + b"\n\n")
                        self.wfile.flush()
                        return
                    elif time.monotonic() - quiet_since > KEEPALIVE:
                        self.wfile.write(b": still here\n\n")
                        self.wfile.flush()
                        quiet_since = time.monotonic()
                    stopping.wait(PUSH_INTERVAL)
            except (BrokenPipeError, ConnectionResetError):
                return  # the page was closed

    return Handler


class LiveServer:
    """The follower thread and the HTTP server, started and stopped together."""

    def __init__(self, path: str, title: str, host: str, port: int) -> None:
        self.feed = Feed(path, title)
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer((host, port), make_handler(self.feed, self.stopping))
        self.httpd.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> None:
        for target in (lambda: self.feed.follow(self.stopping), self.httpd.serve_forever):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait(self, stop: Callable[[], bool]) -> None:
        """Until ``stop()`` says so (a signal) or the trace cannot be read any more."""
        while not stop():
            if self.feed.error is not None:
                return
            time.sleep(0.1)

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
