"""A local HTTP file server for download tests: 127.0.0.1 only, with scripted misbehaviour.

Each served path has a :class:`Route` that says how the server behaves: honour or ignore Range
requests (and If-Range), cut the connection after some bytes, answer error statuses first (with
a Retry-After header), send an ETag or Last-Modified date, or omit the Content-Length. Every
request is recorded, so tests can assert what the client asked for. The server listens on a
free port and runs in a thread of the test process; use it as a context manager so that it is
always stopped.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Route:
    """What one path serves and how the server misbehaves while serving it."""

    body: bytes
    honour_range: bool = True
    cut_after: int | None = None  # close the connection after this many body bytes ...
    cuts: int = 1  # ... in this many first responses
    fail_with: list[int] = field(default_factory=list)  # answer these statuses first, in order
    retry_after: str | None = None  # Retry-After header of those answers
    send_length: bool = True
    etag: str | None = None  # validators sent with the body (and compared with If-Range)
    last_modified: str | None = None
    honour_if_range: bool = True  # False: a Range request is served whatever its If-Range says


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]


class FileServer:
    """Threaded HTTP server on 127.0.0.1 serving :class:`Route` objects by path."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},  # how long stopping takes
            name="test-file-server",
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def serve(self, path: str, body: bytes, **behaviour) -> str:
        """Serve ``body`` at ``path`` (keywords: the fields of :class:`Route`); return its URL."""
        self.routes[path] = Route(body, **behaviour)
        return self.url + path

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def record(self, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(RecordedRequest(path, headers))

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _handler_for(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so a body without Content-Length ends at close.
        def do_GET(self) -> None:
            server.record(self.path, dict(self.headers))
            route = server.routes.get(self.path)
            if route is None:
                self._send_status(404)
            elif route.fail_with:
                self._send_status(route.fail_with.pop(0), route.retry_after)
            else:
                self._send_body(route)

        def _send_body(self, route: Route) -> None:
            size = len(route.body)
            start, end = 0, size - 1
            match = RANGE.match(self.headers.get("Range", ""))
            if_range = self.headers.get("If-Range")
            current = {route.etag, route.last_modified} - {None}
            if if_range is not None and route.honour_if_range and if_range not in current:
                match = None  # RFC 9110: a range only of the file the validator names
            if route.honour_range and match:
                start = int(match.group(1))
                end = min(int(match.group(2) or size - 1), size - 1)
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self._send_validators(route)
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                self.send_response(200)
            self._send_validators(route)
            payload = route.body[start : end + 1]
            if route.send_length:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if route.cut_after is not None and route.cuts > 0:
                route.cuts -= 1
                payload = payload[: route.cut_after]  # then the connection closes: a short body
            self.wfile.write(payload)

        def _send_validators(self, route: Route) -> None:
            if route.etag is not None:
                self.send_header("ETag", route.etag)
            if route.last_modified is not None:
                self.send_header("Last-Modified", route.last_modified)

        def _send_status(self, status: int, retry_after: str | None = None) -> None:
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args) -> None:  # keep test output quiet
            pass

    return Handler
