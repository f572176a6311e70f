"""The viewer page in a real headless Chromium, driven over the DevTools protocol on a pipe
(--remote-debugging-pipe: no websocket client, no extra package). It loads the page, moves a
slider with the mouse, steps with the arrow keys, plays, checks that what is drawn is the
decoder's pixels, and saves a screenshot. Skips only where no Chromium is installed
(CI installs Debian's with .ci/install-chromium.sh)."""

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from tests.stages.test_compress import make_run

from nervi_hpc.stages.compress import compress
from nervi_hpc.stages.decode.decoder import Decoder
from nervi_hpc.viewer import Viewer, serve_in_thread

pytestmark = pytest.mark.browser

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio", "--remote-debugging-pipe"]


def find_chromium() -> str | None:
    """$NERVI_CHROMIUM, else Debian's chromium (or another Chromium/Chrome on PATH)."""
    candidates = [os.environ.get("NERVI_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                  shutil.which("chromium-browser"), shutil.which("google-chrome")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


class Chromium:
    """A headless Chromium with one page, spoken to in DevTools-protocol JSON over two pipes
    (the browser reads commands on its fd 3 and writes answers and events on fd 4, each
    message ending in a NUL byte)."""

    def __init__(self, executable: str, profile: Path, width: int = 1280, height: int = 800):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # copies numbered ≥ 10 so that placing them on 3 and 4 in the child cannot clobber one another
        child_in = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD_CLOEXEC, 10)

        def wire_pipes():
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.log = profile / "chromium.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                            preexec_fn=wire_pipes, close_fds=False, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)
        for fd in (to_browser_read, from_browser_write, child_in, child_out):
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.errors: list[str] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page.enable", "Runtime.enable"):
            self.page(domain)
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params):
        """Send a command and return its result; events that arrive meanwhile are noted."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline - time.monotonic())
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self._note(reply)

    def page(self, method: str, **params):
        return self.call(method, session=self.session, **params)

    def _receive(self, timeout: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], max(timeout, 0))
            chunk = os.read(self._from_browser, 1 << 16) if ready else b""
            if not chunk:
                raise RuntimeError(f"Chromium did not answer (see {self.log})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _note(self, event: dict) -> None:
        params = event.get("params", {})
        if event.get("method") == "Runtime.exceptionThrown":
            self.errors.append(params["exceptionDetails"].get("exception", {}).get("description", "exception"))
        elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}…: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20):
        """Poll until the expression is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expression}")

    def click(self, x: float, y: float) -> None:
        self.page("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def press(self, key: str, code: int) -> None:
        """A key press as a keyboard makes it (a printable key also types its text)."""
        text = {"text": key} if len(key) == 1 else {}
        self.page("Input.dispatchKeyEvent", type="keyDown", key=key, windowsVirtualKeyCode=code, **text)
        self.page("Input.dispatchKeyEvent", type="keyUp", key=key, windowsVirtualKeyCode=code)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, OSError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("run"), epochs=25)
    return compress(run, device="cpu").archive


@pytest.fixture
def browser(tmp_path):
    executable = find_chromium()
    if executable is None:
        pytest.skip("no headless Chromium here (looked for $NERVI_CHROMIUM, /usr/bin/chromium and chromium "
                    "on PATH); install Debian's with .ci/install-chromium.sh")
    profile = tmp_path / "profile"
    profile.mkdir()
    chromium = Chromium(executable, profile)
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser, archive, request):
    """The viewer page of `archive` (with its store as ground truth when the test is marked
    `truth`), loaded and showing its first frame."""
    store = archive.parent.parent / "renders.zarr" if request.node.get_closest_marker("truth") else None
    viewer = Viewer([archive], device="cpu", store=store)
    server, base = serve_in_thread(viewer)
    browser.page("Page.navigate", url=f"{base}/")
    browser.wait_for(f"{FRAMES_SHOWN} >= 1")
    yield browser, viewer
    server.shutdown()
    server.server_close()
    viewer.close()


FRAMES_SHOWN = "Number(document.getElementById('frame')?.dataset.count ?? 0)"
SHOWN_PIXELS = """(() => {
  const img = document.getElementById('frame');
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const g = canvas.getContext('2d');
  g.drawImage(img, 0, 0);
  return [img.dataset.key, Array.from(g.getImageData(0, 0, canvas.width, canvas.height).data)];
})()"""


def shown(browser, element: str = "frame") -> tuple[tuple[float, ...], np.ndarray]:
    """(parameter row, RGB pixels) of the frame on screen (or of the image beside it)."""
    key, rgba = browser.evaluate(SHOWN_PIXELS.replace("'frame'", repr(element)))
    row = tuple(float(v) for v in key.split("|")[1].split(","))
    image = np.array(rgba, dtype=np.uint8).reshape(16, 16, 4)
    return row, image[..., :3]


def assert_decoder_pixels(browser, decoder) -> tuple[float, ...]:
    row, image = shown(browser)
    assert np.array_equal(image, decoder.decode(np.array([row]))[0]), row
    return row


def test_slider_keys_and_play_change_the_decoded_image(page, archive, tmp_path):
    browser, viewer = page
    decoder = Decoder.open(archive, device="cpu")
    start = assert_decoder_pixels(browser, decoder)
    assert start == (0.0, 60.0, 90.0)  # mid-grid start
    assert browser.evaluate("document.getElementById('sliders').querySelectorAll('input').length") == 3
    assert "9 bits" in browser.evaluate("document.getElementById('facts').innerText")

    # drag theta's slider to its right end with the mouse: the image changes to theta = 120
    x, y, width, height = browser.evaluate(
        "(() => { const r = document.querySelector('input[data-param=\"1\"]').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()")
    before = shown(browser)[1]
    browser.click(x + width - 2, y + height / 2)
    browser.wait_for("document.getElementById('frame').dataset.key.endsWith(',120,90')")
    assert assert_decoder_pixels(browser, decoder) == (0.0, 120.0, 90.0)
    assert not np.array_equal(shown(browser)[1], before)
    assert "theta 120" in browser.evaluate("document.getElementById('frame-params').innerText")
    assert "decode" in browser.evaluate("document.getElementById('frame-timing').innerText")

    # arrow keys: ↓ moves to phi, → steps it one grid value
    browser.press("ArrowDown", 40)
    browser.press("ArrowRight", 39)
    browser.wait_for("document.getElementById('frame').dataset.key.endsWith(',120,180')")
    assert_decoder_pixels(browser, decoder)

    # off-grid values are allowed only after the toggle, and are flagged
    browser.click(*browser.evaluate(
        "(() => { const r = document.getElementById('free').getBoundingClientRect();"
        " return [r.left + r.width / 2, r.top + r.height / 2]; })()"))
    browser.evaluate("(() => { const s = document.querySelector('input[data-param=\"1\"]');"
                     " s.value = '75'; s.dispatchEvent(new Event('input')); })()")
    browser.wait_for("document.getElementById('frame').dataset.key.endsWith(',75,180')")
    assert browser.evaluate("!document.getElementById('unseen-badge').hidden")
    assert_decoder_pixels(browser, decoder)

    # play animates phi through its grid, and pause stops it
    count = browser.evaluate(FRAMES_SHOWN)
    browser.press(" ", 32)
    browser.wait_for(f"{FRAMES_SHOWN} >= {count + 4}")
    browser.press(" ", 32)
    assert browser.evaluate("document.getElementById('play').getAttribute('aria-pressed')") == "false"
    assert browser.evaluate("document.getElementById('free').checked")  # space did not toggle it too
    browser.screenshot(tmp_path / "viewer.png")
    assert (tmp_path / "viewer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert viewer.archives["tiny"].frames.stats.hits > 0  # playing hit prefetched frames
    assert browser.errors == []


def drag(browser, dx: float, dy: float) -> None:
    """Press on the middle of the image, move by (dx, dy) in a few moves, release."""
    x, y = browser.evaluate("(() => { const r = document.getElementById('canvas').getBoundingClientRect();"
                            " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
    browser.page("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    browser.page("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)
    for k in range(1, 5):
        browser.page("Input.dispatchMouseEvent", type="mouseMoved", x=x + dx * k / 4, y=y + dy * k / 4,
                     button="left", buttons=1)
    browser.page("Input.dispatchMouseEvent", type="mouseReleased", x=x + dx, y=y + dy, button="left", clickCount=1)


KEY = "document.getElementById('frame').dataset.key"


def test_orbit_by_drag_phi_wraps_mask_save_and_a_shareable_view(page, archive):
    browser, _ = page
    decoder = Decoder.open(archive, device="cpu")
    assert browser.evaluate(KEY).endswith(",60,90")
    drag(browser, 48, 0)  # two grid steps of phi (24 px each)
    browser.wait_for(f"{KEY}.endsWith(',60,270')")
    drag(browser, 48, 24)  # round the orbit: 270 → 0 → 90; and theta one step down
    browser.wait_for(f"{KEY}.endsWith(',90,90')")
    assert_decoder_pixels(browser, decoder)

    browser.press("ArrowDown", 40)  # t → theta → phi: the arrow keys on phi wrap round too
    browser.press("ArrowDown", 40)
    browser.press("ArrowLeft", 37)
    browser.press("ArrowLeft", 37)
    browser.wait_for(f"{KEY}.endsWith(',90,270')")

    browser.click(*browser.evaluate("(() => { const r = document.getElementById('mask').getBoundingClientRect();"
                                    " return [r.left + r.width / 2, r.top + r.height / 2]; })()"))
    browser.wait_for(f"{KEY}.endsWith(',90,270|mask')")
    _, image = shown(browser)
    _, masks = decoder.decode_with_masks(np.array([[0.0, 90.0, 270.0]]))
    assert np.array_equal(image[..., 0], masks[0] * 255)

    save = browser.evaluate("(() => { const a = document.getElementById('save'); return [a.download, a.href]; })()")
    assert save[0] == "tiny_t0_theta90_phi270_mask.png" and save[1].startswith("blob:")
    assert browser.evaluate("location.hash") == "#archive=tiny&t=0&theta=90&phi=270&mask=1"

    shared = browser.evaluate("location.origin") + "/#archive=tiny&t=0&theta=120&phi=180"
    browser.page("Page.navigate", url="about:blank")
    browser.page("Page.navigate", url=shared)
    browser.wait_for(f"document.getElementById('frame')?.dataset.key?.endsWith(',120,180')")
    assert not browser.evaluate("document.getElementById('mask').checked")
    assert browser.errors == []


def test_quick_play_pause_play_plays_at_the_chosen_rate(page):
    browser, _ = page
    browser.evaluate("document.getElementById('fps').value = '2'")
    before = browser.evaluate(FRAMES_SHOWN)
    browser.evaluate("(() => { const b = document.getElementById('play'); b.click(); b.click(); b.click(); })()")
    time.sleep(3)
    played = browser.evaluate(FRAMES_SHOWN) - before
    browser.evaluate("document.getElementById('play').click()")
    assert 4 <= played <= 8, played  # 2 frames/s for 3 s (one loop, not two)
    assert browser.errors == []


@pytest.mark.truth
def test_ground_truth_and_delta_e_beside_the_decoded_view(page, archive):
    from nervi_hpc.data.store import RenderStore
    from nervi_hpc.stages.evaluate.colour import DELTA_E_SCALE, colour_map, delta_e_uv

    browser, viewer = page
    decoder = Decoder.open(archive, device="cpu")
    store = RenderStore.open(archive.parent.parent / "renders.zarr")
    row = assert_decoder_pixels(browser, decoder)
    truth = store.read([store.params.tolist().index(list(row))])[0][0]
    assert not browser.evaluate("document.getElementById('compare').hidden")
    for layer, expected in (("truth", truth),
                            ("delta", colour_map(delta_e_uv(truth, decoder.decode(np.array([row]))[0]) / DELTA_E_SCALE))):
        browser.evaluate(f"(() => {{ const s = document.getElementById('compare'); s.value = '{layer}';"
                         " s.dispatchEvent(new Event('change')); })()")
        browser.wait_for(f"document.getElementById('compared').dataset.key?.endsWith('|{layer}')"
                         " && !document.getElementById('compared').hidden")
        assert np.array_equal(shown(browser, "compared")[1], expected), layer
    assert browser.errors == []
