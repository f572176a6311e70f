"""Viewer server over real HTTP (urllib / http.client): archive facts, frames that are the decoder's
pixels, caching, prefetch, batching, bad requests refused with JSON, and the `view` verb."""

import concurrent.futures
import dataclasses
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image
from tests.stages.test_compress import make_run

from nervi_hpc.cli import main
from nervi_hpc.codec.archive import read_header
from nervi_hpc.errors import ConfigError
from nervi_hpc.stages.compress import compress
from nervi_hpc.stages.decode.decoder import Decoder
from nervi_hpc.viewer import Viewer, make_server, serve_in_thread
from nervi_hpc.viewer.archives import archive_ids
from nervi_hpc.viewer.frames import PLAY_AHEAD, Frame, FrameCache, FrameService, neighbours
from nervi_hpc.viewer.server import STATIC

GRID = {"t": [0.0], "theta": [30.0, 60.0, 90.0, 120.0], "phi": [0.0, 90.0, 180.0, 270.0]}  # make_run's store


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A briefly trained, compressed and evaluated archive of 16 images of 16² (disks that move)."""
    run = make_run(tmp_path_factory.mktemp("run"), epochs=25)
    return compress(run, device="cpu").archive


@pytest.fixture(scope="module")
def decoder(archive):
    return Decoder.open(archive, device="cpu")


@pytest.fixture
def serve(tmp_path):
    """serve(paths, **Viewer kwargs) → (viewer, base URL) of a fresh server, stopped after the test."""
    running = []

    def start(paths, **kw):
        viewer = Viewer(paths, device="cpu", **kw)
        server, base = serve_in_thread(viewer)
        running.append((server, viewer))
        return viewer, base

    yield start
    for server, viewer in running:
        server.shutdown()
        server.server_close()
        viewer.close()


def frame_url(base, archive_id="tiny", **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{base}/api/archives/{archive_id}/frame?{query}"


def get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read(), response.headers


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def test_archives_endpoint_gives_the_facts_of_each_archive(archive, serve, tmp_path):
    other = tmp_path / "elsewhere" / archive.name  # same name, no evaluation beside it
    other.parent.mkdir()
    shutil.copy(archive, other)
    _, base = serve([archive, other])
    body, headers = get(f"{base}/api/archives")
    assert headers["Content-Type"] == "application/json"
    first, second = json.loads(body)["archives"]
    assert (first["id"], second["id"]) == ("tiny", "tiny-2")
    size = archive.stat().st_size
    assert [first[k] for k in ("count", "height", "width", "bits", "bytes")] == [16, 16, 16, 9, size]
    assert first["compression_ratio"] == pytest.approx(16 * 16 * 16 * 3 / size)
    assert [(p["name"], p["grid"]) for p in first["parameters"]] == list(GRID.items())
    assert (first["parameters"][1]["low"], first["parameters"][1]["high"]) == (30.0, 120.0)
    summary = json.loads((archive.parent.parent / "eval" / "summary.json").read_text())
    assert (first["psnr_db"], first["psnr_from"]) == (summary["psnr_db"]["mean"], "evaluation")
    training_psnr = read_header(archive)["meta"]["training"]["psnr"]
    assert training_psnr is not None and training_psnr != first["psnr_db"]
    assert (second["psnr_db"], second["psnr_from"]) == (training_psnr, "training")


def test_an_evaluation_of_another_file_is_not_taken_for_this_ones(archive, tmp_path):
    run = tmp_path / "run"
    (run / "archive").mkdir(parents=True)
    (run / "eval").mkdir()
    shutil.copy(archive, run / "archive")
    summary = json.loads((archive.parent.parent / "eval" / "summary.json").read_text())
    summary["archive"]["bytes"] += 1  # the report of an earlier archive of the same name
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    viewer = Viewer([run / "archive" / archive.name], device="cpu", prefetch=False)
    try:
        assert viewer.archives["tiny"].facts()["psnr_from"] == "training"
    finally:
        viewer.close()


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_frames_are_the_decoders_pixels_and_unseen_values_are_flagged(decoder, archive, serve, fmt):
    viewer, base = serve([archive])
    rows = [(0.0, 30.0, 0.0), (0.0, 120.0, 270.0), (0.0, 75.0, 45.0)]  # the last is off the grid
    for row in rows:
        data, headers = get(frame_url(base, t=row[0], theta=row[1], phi=row[2], format=fmt))
        assert headers["Content-Type"] == f"image/{fmt}"
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == fmt.upper()
            shown = np.asarray(im.convert("RGB"))
        assert np.array_equal(shown, decoder.decode(np.array([row]))[0])
        assert headers["X-Unseen"] == ("true" if row == rows[-1] else "false")
        assert float(headers["X-Decode-Ms"]) > 0 and int(headers["X-Batch"]) >= 1


def test_a_frame_asked_for_again_comes_from_the_cache(archive, serve):
    viewer, base = serve([archive], prefetch=False)
    first, headers = get(frame_url(base, t=0, theta=60, phi=90))
    again, headers_again = get(frame_url(base, t=0, theta=60, phi=90))
    assert (headers["X-Cache"], headers_again["X-Cache"]) == ("miss", "hit")
    assert again == first
    assert headers_again["X-Decode-Ms"] == headers["X-Decode-Ms"]  # how long it took when made
    stats = json.loads(get(f"{base}/api/stats")[0])["tiny"]
    assert (stats["requests"], stats["hits"], stats["decoded"], stats["cached_frames"]) == (2, 1, 1, 1)


def test_neighbours_along_each_parameter_are_prefetched(archive, serve):
    viewer, base = serve([archive])
    get(frame_url(base, t=0, theta=60, phi=90, active="phi"))
    assert viewer.archives["tiny"].frames.wait_idle()
    for theta, phi in [(30, 90), (90, 90), (60, 0), (60, 180)]:  # one grid step away
        assert get(frame_url(base, t=0, theta=theta, phi=phi))[1]["X-Cache"] == "hit"
    assert get(frame_url(base, t=0, theta=120, phi=270))[1]["X-Cache"] == "miss"  # far away


def test_playing_prefetches_ahead_along_the_played_parameter_only(archive, serve):
    viewer, base = serve([archive])
    get(frame_url(base, t=0, theta=60, phi=180, play="phi"))
    assert viewer.archives["tiny"].frames.wait_idle()
    for phi in (270, 0, 90):  # ahead, wrapping round as the player does
        assert get(frame_url(base, t=0, theta=60, phi=phi, play="phi"))[1]["X-Cache"] == "hit"
    assert get(frame_url(base, t=0, theta=90, phi=180))[1]["X-Cache"] == "miss"


def test_neighbours_order_and_wrapping():
    grids = [(0.0,), (30.0, 60.0, 90.0), tuple(float(v) for v in range(0, 360, 30))]
    assert neighbours(grids, (0, 60, 0)) == [(0, 30, 0), (0, 90, 0), (0, 60, 30)]  # phi=0 has none below
    assert neighbours(grids, (0, 60, 0), active=2)[0] == (0, 60, 30)
    assert neighbours(grids, (0, 45, 0))[:2] == [(0, 30, 0), (0, 60, 0)]  # off grid: the values around it
    ahead = neighbours(grids, (0, 60, 300), play=2)
    assert [r[2] for r in ahead] == [330, 0, 30, 60, 90, 120][:PLAY_AHEAD]
    assert neighbours(grids, (0, 60, 0), play=1) == [(0, 90, 0), (0, 30, 0)]  # a short grid: each once


def test_a_grid_combination_missing_from_the_training_rows_is_unseen(decoder):
    """Archives of collections with holes (e.g. a Cinema database) list their training rows."""
    rows = decoder.grid()[1:]  # (0, 30, 0) was never rendered, though each value is on its grid
    meta = dataclasses.replace(decoder.meta, points=tuple(map(tuple, rows.tolist())), count=len(rows))
    service = FrameService(Decoder(decoder.model, meta, device="cpu"))
    try:
        assert service.unseen((0.0, 30.0, 0.0)) and not service.unseen((0.0, 30.0, 90.0))
    finally:
        service.close()


class GatedDecoder:
    """A decoder whose decode_with_masks() (what the frame service calls) waits for `gate`,
    recording the size of each batch."""

    def __init__(self, decoder):
        self.decoder, self.gate, self.batches = decoder, threading.Event(), []

    def __getattr__(self, name):
        return getattr(self.decoder, name)

    def decode_with_masks(self, params):
        self.batches.append(len(params))
        assert self.gate.wait(20)
        return self.decoder.decode_with_masks(params)


def test_requests_that_arrive_while_a_batch_decodes_are_decoded_together(decoder):
    gated = GatedDecoder(decoder)
    service = FrameService(gated)
    rows = [(0.0, theta, phi) for theta in GRID["theta"] for phi in GRID["phi"][:2]]
    try:
        with concurrent.futures.ThreadPoolExecutor(len(rows)) as pool:
            first = pool.submit(service.frame, rows[0])
            while not gated.batches:
                time.sleep(0.005)
            rest = [pool.submit(service.frame, row) for row in rows[1:]]
            while service.stats.requests < len(rows):
                time.sleep(0.005)
            gated.gate.set()
            frames = [first.result(20)] + [f.result(20) for f in rest]
        assert gated.batches == [1, len(rows) - 1]
        expected = decoder.decode(np.array(rows))
        for (frame, hit), image in zip(frames, expected):
            assert not hit and np.array_equal(pixels(frame.data), image)
        assert frames[-1][0].batch == len(rows) - 1
    finally:
        gated.gate.set()
        service.close()


def test_concurrent_http_requests_all_get_their_own_frame(decoder, archive, serve):
    viewer, base = serve([archive])
    rows = [(0.0, theta, phi) for theta in GRID["theta"] for phi in GRID["phi"]]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: get(frame_url(base, t=r[0], theta=r[1], phi=r[2]))[0], rows))
    for data, image in zip(answers, decoder.decode(np.array(rows))):
        assert np.array_equal(pixels(data), image)


def test_the_cache_drops_the_least_recently_used_frames_beyond_its_size():
    cache = FrameCache(max_bytes=25)
    frame = Frame(data=b"x" * 10, mime="image/png", decode_ms=1, encode_ms=1, batch=1, unseen=False)
    cache.put(((1.0,), "png"), frame)
    cache.put(((2.0,), "png"), frame)
    assert cache.get(((1.0,), "png")) is frame  # now the most recent
    cache.put(((3.0,), "png"), frame)
    assert ((2.0,), "png") not in cache and ((1.0,), "png") in cache and ((3.0,), "png") in cache
    assert (len(cache), cache.bytes) == (2, 20)


def raw_request(base, method, path):
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


FRAME = "/api/archives/tiny/frame?"
BAD_REQUESTS = [
    ("GET", "/api/archives/nope/frame?t=0&theta=30&phi=0", 404, "unknown archive 'nope'"),
    ("GET", FRAME + "t=0&theta=999&phi=0", 400, "theta=999 is outside the trained range [30, 120]"),
    ("GET", FRAME + "t=0&theta=30", 400, "missing parameter 'phi'"),
    ("GET", FRAME + "t=0&theta=30&phi=0&zeta=1", 400, "unknown parameter 'zeta'"),
    ("GET", FRAME + "t=0&theta=30&phi=abc", 400, "phi='abc' is not a number"),
    ("GET", FRAME + "t=0&theta=30&phi=nan", 400, "not a finite number"),
    ("GET", FRAME + "t=0&theta=30&phi=0&phi=90", 400, "given 2 times"),
    ("GET", FRAME + "t=0&theta=30&phi=0&format=gif", 400, "format='gif'"),
    ("GET", FRAME + "t=0&theta=30&phi=0&play=zeta", 400, "play='zeta' is not a parameter"),
    ("GET", FRAME + "t=0&&theta=30&phi=0", 400, "malformed query string"),
    ("GET", "/../../../etc/passwd", 404, "no such page"),
    ("GET", "/app.js/../../etc/passwd", 404, "no such page"),
    ("GET", "/static/..%2f..%2f..%2fetc%2fpasswd", 404, "no such page"),
    ("GET", "/api/archives/..%2F..%2Fetc%2Fpasswd/frame?t=0", 404, "unknown archive '../../etc/passwd'"),
    ("POST", "/api/archives", 405, "method POST not allowed"),
    ("DELETE", "/", 405, "method DELETE not allowed"),
]


def test_bad_requests_get_a_4xx_and_a_one_line_json_error(archive, serve):
    _, base = serve([archive])
    for method, path, status, message in BAD_REQUESTS:
        got, mime, body = raw_request(base, method, path)
        error = json.loads(body)["error"]
        assert (got, mime) == (status, "application/json"), (path, got, body)
        assert message in error and "\n" not in error, (path, error)
    assert raw_request(base, "GET", "/api/archives")[0] == 200  # still serving


def test_a_failure_inside_costs_one_request_not_the_server(archive, serve, capsys):
    viewer, base = serve([archive], prefetch=False)
    decoder = viewer.archives["tiny"].decoder
    real = decoder.decode_with_masks
    decoder.decode_with_masks = lambda params: (_ for _ in ()).throw(RuntimeError("out of memory"))
    status, _, body = raw_request(base, "GET", FRAME + "t=0&theta=30&phi=0")
    assert (status, json.loads(body)) == (500, {"error": "internal error: RuntimeError"})
    assert "out of memory" in capsys.readouterr().err
    decoder.decode_with_masks = real
    assert raw_request(base, "GET", FRAME + "t=0&theta=30&phi=0")[0] == 200


def test_the_page_is_served_and_needs_nothing_from_the_internet(archive, serve):
    _, base = serve([archive])
    page, headers = get(f"{base}/")
    assert headers["Content-Type"].startswith("text/html")
    assert b'src="/app.js"' in page and b'href="/style.css"' in page
    for name, mime in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        body, headers = get(f"{base}/{name}")
        assert headers["Content-Type"].startswith(mime) and len(body) > 1000
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_archive_ids_are_distinct_and_url_safe():
    assert archive_ids(["a/demo.nervi", "b/demo.nervi", "c/IR run #2.nervi", "d/..nervi"]) == [
        "demo", "demo-2", "IR-run-2", "archive"]


def test_a_busy_port_and_a_bad_port_are_one_line_errors(archive):
    viewer = Viewer([archive], device="cpu", prefetch=False)
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1:\d+ .*pick another --port"):
                make_server(viewer, "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(ConfigError, match="--port: 70000 is not a port number"):
            make_server(viewer, "127.0.0.1", 70000)
    finally:
        viewer.close()


def test_cli_view_refuses_a_missing_archive_in_one_line(tmp_path, capsys):
    assert main(["view", str(tmp_path / "missing.nervi")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("nervi-hpc view: error: ") and "missing.nervi" in err and "\n" not in err


def test_cli_view_serves_until_interrupted(archive):
    process = subprocess.Popen([sys.executable, "-m", "nervi_hpc.cli", "view", str(archive), "--port", "0",
                                "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})  # as the tests' own torch
    try:
        line = process.stdout.readline()
        assert line.startswith(f"viewing {archive.name} at http://127.0.0.1:"), line + process.stderr.read()
        base = line.split(" at ")[1].split("/ ")[0]
        assert json.loads(get(f"{base}/api/archives")[0])["archives"][0]["count"] == 16
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)  # drains the pipes: a full one would block the viewer
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
