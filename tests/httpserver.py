"""A real HTTP file server on 127.0.0.1 for download tests.

``serve(root)`` serves the files under ``root`` with Range support, records every
request, and can inject the failures downloaders must survive: the first N
requests for a path answered 500, the first response for a path cut after K bytes,
or Range headers ignored (always 200 with the whole file). With ``basic_auth=(user, password)``
every request without those HTTP basic credentials is answered 401.

``routes`` maps a request to a file: a dict from path (``"/watch?v=abc"``, query
included) to a file name under root, or a callable ``(path, query) -> name | None``.
A route to ``None`` answers 404. Without a route, the query string is ignored and
the path is looked up under root, so ``/audio.zip?download=1`` works.
"""

from __future__ import annotations

import re
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


Route = Callable[[str, dict[str, list[str]]], "str | None"]
_MISSING = object()


@dataclass
class Server:
    url: str
    root: Path
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def requests_for(self, path: str) -> list[dict[str, str]]:
        """Headers of the requests for ``path`` (query string ignored)."""
        return [h for p, h in self.requests if p.split("?", 1)[0] == path]


@contextmanager
def serve(
    root: Path,
    *,
    fail_first: dict[str, int] | None = None,
    truncate_first: dict[str, int] | None = None,
    ignore_range: bool = False,
    routes: dict[str, str | None] | Route | None = None,
    content_types: dict[str, str] | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> Iterator[Server]:
    root = Path(root)
    fail_left = dict(fail_first or {})
    cut_left = {p: [k] for p, k in (truncate_first or {}).items()}
    lock = threading.Lock()
    server_info: Server | None = None
    types = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".flac": "audio/flac", ".csv": "text/csv",
             ".zip": "application/zip", ".json": "application/json", **(content_types or {})}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002, ANN001 - keep test output quiet
            pass

        def _resolve(self) -> Path | None:
            parsed = urllib.parse.urlsplit(self.path)
            name: object = _MISSING
            if callable(routes):
                name = routes(parsed.path, urllib.parse.parse_qs(parsed.query))
                if name is None:
                    return None
            elif routes is not None:
                name = routes.get(self.path, routes.get(parsed.path, _MISSING))
                if name is None:
                    return None
            rel = urllib.parse.unquote(parsed.path).lstrip("/") if name is _MISSING else str(name)
            path = (root / rel).resolve()
            if root.resolve() not in path.parents or not path.is_file():
                return None
            return path

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(head=False)

        def _plain(self, code: int, extra: dict[str, str] | None = None) -> None:
            body = f"{code}\n".encode()
            self.send_response(code)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self, head: bool) -> None:
            key = urllib.parse.urlsplit(self.path).path
            with lock:
                server_info.requests.append((self.path, dict(self.headers.items())))
                failing = fail_left.get(key, 0) > 0
                if failing:
                    fail_left[key] -= 1
            if failing:
                self._plain(500)
                return
            if basic_auth is not None:
                import base64

                want = "Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
                if self.headers.get("Authorization") != want:
                    self._plain(401, {"WWW-Authenticate": 'Basic realm="mirror"'})
                    return
            path = self._resolve()
            if path is None:
                self._plain(404)
                return
            data = path.read_bytes()
            size = len(data)
            start, end, status = 0, size - 1, 200
            rng = self.headers.get("Range")
            if rng and not ignore_range:
                m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
                if m and m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                elif m and m.group(2):  # suffix range: the last N bytes
                    start, end = max(0, size - int(m.group(2))), size - 1
                if not m or start >= size or start > end:
                    self._plain(416, {"Content-Range": f"bytes */{size}"})
                    return
                status = 206
            body = data[start:end + 1]
            self.send_response(status)
            self.send_header("Content-Type", types.get(path.suffix.lower(), "application/octet-stream"))
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "none" if ignore_range else "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if head:
                return
            with lock:
                cut = cut_left.get(key)
                limit = cut.pop() if cut else None
            if limit is not None and limit < len(body):
                # Simulate a dropped connection mid-transfer: send K bytes, then hang up.
                self.wfile.write(body[:limit])
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return
            try:
                self.wfile.write(body)
            except ConnectionError:
                self.close_connection = True

    class QuietServer(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):  # noqa: ANN001
            # Clients hanging up early (yt-dlp probing a URL, a downloader giving up) are expected here.
            if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                super().handle_error(request, client_address)

    httpd = QuietServer(("127.0.0.1", 0), Handler)
    server_info = Server(url=f"http://127.0.0.1:{httpd.server_address[1]}", root=root)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server_info
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def mtx_runner(state_dir: Path):
    """Invoke `mtx` in-process like the shared ``cli`` fixture: cli("download", "fma", ...) -> click Result."""
    from typer.testing import CliRunner

    from musiccli.cli.app import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, ["--state-dir", str(state_dir), *args], catch_exceptions=False)

    return invoke
