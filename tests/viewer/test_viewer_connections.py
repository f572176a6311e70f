"""The viewer under a flood of connections (issue 16): idle connections cost no thread and are
closed after the idle timeout, a stalled request after the request timeout, and the viewer
serves correctly meanwhile."""

import json
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image
from tests.codec.test_untrusted import base  # noqa: F401 (the fixture: a small valid archive)

from nervi_hpc.viewer import Viewer, serve_in_thread
from nervi_hpc.viewer.server import MAX_WORKERS


@pytest.fixture
def served(base):  # noqa: F811
    viewer = Viewer([base], device="cpu", prefetch=False)
    server, url = serve_in_thread(viewer, idle_timeout=2.0, request_timeout=1.0)
    yield viewer, server, url
    server.shutdown()
    server.server_close()
    viewer.close()


def closed_by_server(connection: socket.socket) -> bool:
    connection.settimeout(5)
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


def test_300_idle_connections_cost_no_thread_and_close_after_the_timeout(served):
    viewer, server, url = served
    threads = threading.active_count()
    port = server.server_address[1]
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    try:
        time.sleep(0.3)
        with urllib.request.urlopen(f"{url}/api/archives", timeout=5) as response:
            assert [a["id"] for a in json.load(response)["archives"]] == ["base"]
        with urllib.request.urlopen(f"{url}/api/archives/base/frame?t=1&theta=60&phi=90", timeout=5) as response:
            with Image.open(response) as im:
                frame = np.asarray(im)
        assert np.array_equal(frame, viewer.archives["base"].decoder.decode(np.array([[1.0, 60.0, 90.0]]))[0])
        assert threading.active_count() <= threads + MAX_WORKERS
        started = time.monotonic()
        assert all(closed_by_server(c) for c in idle)
        assert 1.5 < time.monotonic() - started < 4
    finally:
        for connection in idle:
            connection.close()


def test_a_stalled_request_is_closed_after_the_request_timeout_and_keep_alive_still_works(served):
    _, server, url = served
    stalled = socket.create_connection(("127.0.0.1", server.server_address[1]))
    stalled.sendall(b"GET /api/archives HT")  # and nothing more
    started = time.monotonic()
    assert closed_by_server(stalled)
    assert time.monotonic() - started < 2
    stalled.close()
    kept = socket.create_connection(("127.0.0.1", server.server_address[1]))
    for _ in range(3):  # one connection, three requests: it waits between them, then serves again
        kept.sendall(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            reply += kept.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200")
        time.sleep(0.2)
    kept.close()
