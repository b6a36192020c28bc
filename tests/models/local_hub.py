"""A model hub on 127.0.0.1 for offline tests of the real download code (huggingface_hub, gdown).

It answers what huggingface_hub asks of ``HF_ENDPOINT`` for one file: ``HEAD`` and ``GET``
``/{repo_id}/resolve/{revision}/{filename}``, with the headers the real hub sends for an LFS file
(``X-Repo-Commit``, ``X-Linked-Etag`` = the file's sha256, ``X-Linked-Size``), and plain ``GET``s of
any other path (a stand-in for Google Drive's ``/uc?id=...``), and the hub's agent registry that
huggingface_hub fetches once a day (``/api/agent-harnesses``, cached in ``HF_HOME``). Each file can
misbehave the ways real downloads do: drop the connection halfway (refusing the client's resume), send
an HTML page (what Drive serves for quota errors), or send a body without announcing its size. Every
request is recorded.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import unquote

MODES = ("ok", "drop", "unsized_drop", "html")


@dataclass
class Served:
    body: bytes
    mode: str = "ok"  # one of MODES
    commit: str | None = None  # set for hub files: the X-Repo-Commit header
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.sha256 = hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None


class LocalHub:
    """``with LocalHub() as hub: hub.add_hf_file(...)``; ``hub.url`` is the endpoint, ``hub.requests`` the log."""

    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_hf_file(self, repo_id: str, filename: str, body: bytes, *, mode: str = "ok") -> str:
        """Serve ``body`` as ``filename`` of model repo ``repo_id`` at revision main; returns its sha256."""
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        served = Served(body, mode, commit=commit)
        self.files[f"/{repo_id}/resolve/main/{filename}"] = served
        return served.sha256

    def add(self, path: str, body: bytes, *, mode: str = "ok") -> str:
        """Serve ``body`` at ``path`` (path and query, e.g. ``/uc?id=X``); returns the full URL."""
        self.files[path] = Served(body, mode)
        return self.url + path

    def requests_for(self, path_part: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if path_part in r.path]

    def __enter__(self) -> LocalHub:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass  # the request log is hub.requests

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(body=True)

        def _answer(self, *, body: bool) -> None:
            with hub._lock:
                hub.requests.append(Request(self.command, unquote(self.path), self.headers.get("Range")))
            if self.path == "/api/agent-harnesses":  # huggingface_hub fetches the hub's agent registry once a day
                self._plain(200, b'{"standardEnvVars": [], "harnesses": {}}', "application/json")
                return
            served = hub.files.get(unquote(self.path))
            if served is None:
                self._plain(404, b"not found")
                return
            if self.headers.get("Range"):  # a client resuming after a drop: this server cannot
                self._plain(503, b"cannot resume")
                return
            data = served.body
            if served.mode == "html":
                data = (
                    b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
                    b"<p class=\"uc-warning-caption\">Too many users have viewed or downloaded this file recently."
                    b"</p></body></html>"
                )
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8" if served.mode == "html" else
                             "application/octet-stream")
            if served.commit:
                self.send_header("X-Repo-Commit", served.commit)
                self.send_header("ETag", f'"{served.sha256}"')
                self.send_header("X-Linked-Etag", f'"{served.sha256}"')
                self.send_header("X-Linked-Size", str(len(data)))
            if served.mode == "unsized_drop":
                self.send_header("Connection", "close")  # the body ends when the connection does
            else:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not body:
                return
            if served.mode in ("drop", "unsized_drop"):
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # midway: the rest never comes
                return
            self.wfile.write(data)

        def _plain(self, status: int, text: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(text)

    return Handler
