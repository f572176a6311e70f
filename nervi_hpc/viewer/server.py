"""The viewer's HTTP server (standard library): the static page and a small JSON + image API.

Routes (GET only):
    /  /app.js  /style.css              the page (fixed files: no path from a request touches disk)
    /api/archives                       {"archives": [facts, …]} (see ViewedArchive.facts)
    /api/archives/<id>/frame?<name>=<value>…[&format=png|webp][&layer=image|mask|truth|delta][&play=<name>][&active=<name>]
                                        one decoded frame or its mask (play/active: which neighbours to
                                        prefetch, see frames.neighbours); headers X-Decode-Ms, X-Encode-Ms,
                                        X-Batch, X-Cache (hit|miss), X-Unseen (true|false)
    /api/stats                          per-archive counters of the frame services
Every bad request gets a 4xx status and a JSON body {"error": "<one line>"}; an unexpected
failure gets 500 with the same shape, and the server goes on.

Connections are untrusted too: between requests a kept-alive connection waits in one selector,
costing no thread, and is closed after `idle_timeout`; a bounded pool of threads serves the
requests that arrive, each socket call of a request bounded by `request_timeout`.
"""

from __future__ import annotations

import json
import os
import queue
import selectors
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

from ..data.store import RenderStore
from ..errors import ArchiveError, ConfigError, ParameterError, RequestError
from .archives import ViewedArchive, archive_ids
from .frames import DEFAULT_CACHE_BYTES, Frame, neighbours

STATIC = Path(__file__).parent / "static"
PAGES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/style.css": ("style.css", "text/css; charset=utf-8")}
MAX_QUERY_FIELDS = 80
DEFAULT_PORT = 8765
IDLE_TIMEOUT = 30.0      # seconds a kept-alive connection may wait for its next request
REQUEST_TIMEOUT = 10.0   # seconds each socket read or write of a request may take
MAX_WORKERS = 16         # requests served at once (the frame service batches concurrent ones)
MAX_CONNECTIONS = 512    # connections waiting between requests; beyond it a new one is closed at once


class Viewer:
    """The archives being viewed (each opened once) and the page; `close()` stops their workers."""

    def __init__(self, paths: Sequence[str | os.PathLike], *, device=None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, prefetch: bool = True, store: str | os.PathLike | None = None):
        if not paths:
            raise ConfigError("view: give at least one .nervi archive")
        if cache_bytes < 0:
            raise ConfigError(f"--cache-mb: must be 0 or more, got {cache_bytes >> 20}")
        self.prefetch = prefetch
        self.archives: dict[str, ViewedArchive] = {}
        truth = None if store is None else RenderStore.open(store)
        try:
            for archive_id, path in zip(archive_ids(paths), paths):
                self.archives[archive_id] = ViewedArchive.open(archive_id, path, device=device,
                                                               cache_bytes=cache_bytes, truth=truth)
        except BaseException:
            self.close()
            raise
        if truth is not None and not any(a.frames.truth for a in self.archives.values()):
            self.close()
            raise ConfigError(f"--store {store}: its images ({truth.width}×{truth.height} of "
                              f"{', '.join(truth.param_names)}) are not what the archives encode")
        self.pages = {route: ((STATIC / name).read_bytes(), mime) for route, (name, mime) in PAGES.items()}

    def close(self) -> None:
        for archive in self.archives.values():
            archive.close()

    def archive(self, archive_id: str) -> ViewedArchive:
        found = self.archives.get(archive_id)
        if found is None:
            raise RequestError(HTTPStatus.NOT_FOUND, f"unknown archive {archive_id[:60]!r} "
                                                     f"(served: {', '.join(self.archives)})")
        return found

    def frame(self, archive_id: str, query: dict[str, list[str]]) -> tuple[Frame, bool]:
        """(frame, cache hit) for a frame request; queues the neighbours' prefetch."""
        archive = self.archive(archive_id)
        fmt = _single(query.pop("format", ["png"]), "format")
        layer = _single(query.pop("layer", ["image"]), "layer")
        play, active = (_axis(archive, key, _single(query.pop(key, [""]), key)) for key in ("play", "active"))
        row = archive.row(query)
        frame, hit = archive.frames.frame(row, fmt, layer)
        if self.prefetch:
            archive.frames.prefetch(neighbours(archive.grids, row, play=play, active=active), fmt, layer)
        return frame, hit

    def stats(self) -> dict[str, Any]:
        return {archive_id: {**asdict(a.frames.stats), "cached_frames": len(a.frames.cache),
                             "cached_bytes": a.frames.cache.bytes}
                for archive_id, a in self.archives.items()}


def _single(values: list[str], name: str) -> str:
    if len(values) != 1:
        raise ParameterError(f"{name} given {len(values)} times")
    return values[0]


def _axis(archive: ViewedArchive, key: str, name: str) -> int | None:
    """The index of parameter `name` (None for ""), from the prefetch hints play= and active=."""
    if not name:
        return None
    if name not in archive.decoder.names:
        raise ParameterError(f"{key}={name[:40]!r} is not a parameter of this archive "
                             f"({', '.join(archive.decoder.names)})")
    return archive.decoder.names.index(name)


class Handler(BaseHTTPRequestHandler):
    """Routes GET requests to the viewer; everything else is refused with JSON."""

    viewer: Viewer  # set on the subclass made by make_server
    server_version = "nervi-hpc-viewer"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once: no 40 ms delayed-ACK stall on keep-alive
    rbufsize = 0  # unbuffered: nothing of a next request is read ahead (and lost) when the connection waits
    timeout = REQUEST_TIMEOUT

    def handle(self) -> None:
        """One request: ViewerServer keeps the connection waiting for the next one."""
        self.close_connection = True
        self.handle_one_request()

    def do_GET(self) -> None:
        try:
            self._route()
        except RequestError as e:
            self._error(e.status, str(e))
        except ParameterError as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        except ArchiveError as e:  # e.g. forged weights whose frame would be non-finite
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(e))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug must cost one request, never the server
            print(f"nervi-hpc view: error serving {self.path[:200]}: {e!r}", file=sys.stderr)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}")

    def _route(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path in self.viewer.pages:
            body, mime = self.viewer.pages[path]
            return self._send(HTTPStatus.OK, body, mime)
        if path == "/api/archives":
            facts = [a.facts() for a in self.viewer.archives.values()]
            return self._json(HTTPStatus.OK, {"archives": facts})
        if path == "/api/stats":
            return self._json(HTTPStatus.OK, self.viewer.stats())
        parts = path.split("/")
        if len(parts) == 5 and parts[:3] == ["", "api", "archives"] and parts[4] == "frame":
            frame, hit = self.viewer.frame(unquote(parts[3]), _parse_query(url.query))
            return self._send(HTTPStatus.OK, frame.data, frame.mime, {
                "X-Decode-Ms": f"{frame.decode_ms:.2f}", "X-Encode-Ms": f"{frame.encode_ms:.2f}",
                "X-Batch": str(frame.batch), "X-Cache": "hit" if hit else "miss",
                "X-Unseen": "true" if frame.unseen else "false"})
        raise RequestError(HTTPStatus.NOT_FOUND, f"no such page: {path[:100]}")

    def _json(self, status: HTTPStatus, obj: Any) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    def _send(self, status: HTTPStatus, body: bytes, mime: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", mime)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (malformed request line, unknown method, …) as JSON."""
        if code == HTTPStatus.NOT_IMPLEMENTED:  # a method without a do_ handler
            code, message = HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command} not allowed; use GET"
        self.close_connection = True
        try:
            self._error(HTTPStatus(code), message or HTTPStatus(code).phrase)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args) -> None:
        """Quiet: a frame per keystroke would flood the terminal."""


def _parse_query(query: str) -> dict[str, list[str]]:
    try:
        return parse_qs(query, keep_blank_values=True, strict_parsing=bool(query),
                        max_num_fields=MAX_QUERY_FIELDS)
    except ValueError as e:
        raise ParameterError(f"malformed query string ({e})") from None


class ViewerServer(HTTPServer):
    """An HTTP server whose idle connections cost no thread (see the module docstring): one
    watcher thread holds every connection between requests in a selector, hands the ones with
    a request to a pool of `workers` threads and closes those idle for `idle_timeout` seconds."""

    request_queue_size = socket.SOMAXCONN  # the listen backlog: a burst of connections is not refused

    def __init__(self, address, handler, *, idle_timeout: float = IDLE_TIMEOUT, workers: int = MAX_WORKERS):
        self.idle_timeout = idle_timeout
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="viewer-request")
        self._arrivals: queue.SimpleQueue = queue.SimpleQueue()  # (socket, address); None: stop
        self._wake, self._waker = socket.socketpair()
        self._closing = False
        self._watcher = threading.Thread(target=self._watch, name="viewer-connections", daemon=True)
        super().__init__(address, handler)  # binds, or calls server_close and raises
        self._watcher.start()

    def process_request(self, request, client_address) -> None:
        self._wait(request, client_address)

    def _wait(self, request, client_address) -> None:
        """Hand a connection to the watcher until its next request (or its idle timeout)."""
        if self._closing:
            self.shutdown_request(request)
            return
        self._arrivals.put((request, client_address))
        self._waker.send(b"\0")

    def _serve(self, request, client_address) -> None:
        """Serve one request of a connection in a pool thread, then let it wait for the next."""
        try:
            handler = self.RequestHandlerClass(request, client_address, self)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
            return
        if handler.close_connection:
            self.shutdown_request(request)
        else:
            self._wait(request, client_address)

    def _watch(self) -> None:
        waiting: dict[socket.socket, tuple[Any, float]] = {}  # connection → (address, deadline)
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select(timeout=1.0 if not waiting else
                                              max(0.0, min(d for _, d in waiting.values()) - time.monotonic())):
                    if key.fileobj is self._wake:
                        self._wake.recv(4096)
                        continue
                    selector.unregister(key.fileobj)
                    self._pool.submit(self._serve, key.fileobj, waiting.pop(key.fileobj)[0])
                while not self._arrivals.empty():
                    arrival = self._arrivals.get()
                    if arrival is None:
                        for request in waiting:
                            self.shutdown_request(request)
                        return
                    if len(waiting) >= MAX_CONNECTIONS:
                        self.shutdown_request(arrival[0])
                        continue
                    try:
                        selector.register(arrival[0], selectors.EVENT_READ)
                    except (OSError, ValueError):  # closed meanwhile: nothing left to wait for
                        self.shutdown_request(arrival[0])
                        continue
                    waiting[arrival[0]] = (arrival[1], time.monotonic() + self.idle_timeout)
                now = time.monotonic()
                for request in [r for r, (_, deadline) in waiting.items() if deadline <= now]:
                    selector.unregister(request)
                    del waiting[request]
                    self.shutdown_request(request)

    def server_close(self) -> None:
        """Close the listening socket, every waiting connection and the pool."""
        self._closing = True
        if self._watcher.is_alive():
            self._arrivals.put(None)
            self._waker.send(b"\0")
            self._watcher.join()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._wake.close()
        self._waker.close()
        super().server_close()


def make_server(viewer: Viewer, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                idle_timeout: float = IDLE_TIMEOUT, request_timeout: float = REQUEST_TIMEOUT) -> ViewerServer:
    """An HTTP server for `viewer` bound to host:port (port 0: any free port); ConfigError when
    the address cannot be bound."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: {port} is not a port number (0..65535; 0 picks a free one)")
    handler = type("ViewerHandler", (Handler,), {"viewer": viewer, "timeout": request_timeout})
    try:
        return ViewerServer((host, port), handler, idle_timeout=idle_timeout)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from None


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(paths: Sequence[str | os.PathLike], *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          device=None, cache_bytes: int = DEFAULT_CACHE_BYTES, store: str | os.PathLike | None = None) -> None:
    """Open the archives and serve the viewer until interrupted (Ctrl-C, SIGTERM); prints the address
    once the server listens."""
    viewer = Viewer(paths, device=device, cache_bytes=cache_bytes, store=store)
    for stop in (signal.SIGINT, signal.SIGTERM):  # also when started where SIGINT is ignored
        signal.signal(stop, _interrupt)           # (a background job of a script), and on kill
    try:
        server = make_server(viewer, host, port)
        with server:
            bound_host, bound_port = server.server_address[:2]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            names = ", ".join(a.path.name for a in viewer.archives.values())
            print(f"viewing {names} at http://{shown}:{bound_port}/ (Ctrl-C to stop)", flush=True)
            if host not in ("127.0.0.1", "localhost", "::1"):
                print(f"note: listening on {host}, not only this machine; the viewer has no login", flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
    finally:
        viewer.close()


def serve_in_thread(viewer: Viewer, host: str = "127.0.0.1", port: int = 0,
                    **timeouts: float) -> tuple[ViewerServer, str]:
    """A server for `viewer` running in a daemon thread and its base URL (tests, benchmarks);
    `timeouts` go to make_server. Stop it with `server.shutdown(); server.server_close()`."""
    server = make_server(viewer, host, port, **timeouts)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="viewer-http",
                     daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"
