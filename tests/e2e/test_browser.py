"""The projector as a user sees it: headless Chromium on a live TensorBoard,
and on the standalone export served as static files.

Chromium is Debian's ``chromium`` (``make test`` installs it), driven over the
DevTools protocol with the ``websockets`` client: no chromedriver, no browser
download. Every host name except 127.0.0.1 resolves to nothing, and background
networking, sync and component updates are off, so the browser makes no
outside connection. Screenshots are kept under ``test-artifacts/``.
"""
import base64
import contextlib
import functools
import http.server
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import support

ARTIFACTS = Path(support.REPO_ROOT) / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
WINDOW = (1400, 900)
N_IMAGES, TILE = 40, 48
# Swiftshader renders WebGL on the CPU: the projector can take a while on a
# busy 2-core machine. Generous, but bounded.
LOAD_TIMEOUT = 240
# Distinct colours in the plot area that only drawn photo thumbnails reach.
SPRITE_COLOURS = 2000

# Collects the visible text of the page, piercing shadow roots and
# same-origin iframes (TensorBoard shows the projector in an iframe), and the
# page position of the largest canvas: the projector's WebGL plot.
PROBE_JS = r"""
(() => {
  const texts = [];
  let plot = null;
  const walk = (node, ox, oy) => {
    if (node.shadowRoot) walk(node.shadowRoot, ox, oy);
    if (node.tagName === 'IFRAME' && node.contentDocument) {
      const r = node.getBoundingClientRect();
      walk(node.contentDocument, ox + r.left, oy + r.top);
    }
    if (node.tagName === 'CANVAS') {
      const r = node.getBoundingClientRect();
      if (!plot || r.width * r.height > plot[2] * plot[3]) plot = [ox + r.left, oy + r.top, r.width, r.height];
    }
    if (node.tagName === 'STYLE' || node.tagName === 'SCRIPT') return;
    for (const ch of node.childNodes) {
      if (ch.nodeType === 3) { const t = ch.textContent.trim(); if (t) texts.push(t); }
      else walk(ch, ox, oy);
    }
  };
  walk(document, 0, 0);
  return {text: texts.join(' | '), plot: plot, dpr: window.devicePixelRatio};
})()
"""
POINTS_RE = re.compile(r"Points:[\s|]*(\d+)[\s|]*Dimension:[\s|]*(\d+)")
PCA_DONE_RE = re.compile(r"Total variance described:[\s|]*[\d.]+%")


class Page:
    """One Chromium tab over the DevTools protocol (a few calls are all we need)."""

    def __init__(self, ws_url):
        from websockets.sync.client import connect

        self._ws = connect(ws_url, max_size=None, open_timeout=60)
        self._ids = itertools.count(1)

    def call(self, method, **params):
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # skip events until our answer arrives
            msg = json.loads(self._ws.recv(timeout=120))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    def screenshot(self) -> Image.Image:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def close(self):
        self._ws.close()


@contextlib.contextmanager
def chromium(url):
    """Headless Chromium showing ``url``, with a fresh profile; yields a Page."""
    assert os.path.exists(CHROMIUM), (
        f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--use-angle=swiftshader",
         "--enable-unsafe-swiftshader", f"--user-data-dir={profile}",
         "--disable-background-networking", "--disable-sync", "--disable-component-update",
         "--no-first-run", "--no-default-browser-check", "--disable-default-apps",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         f"--window-size={WINDOW[0]},{WINDOW[1]}", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    page = None
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited: {proc.stderr.read().decode()[-2000:]}")
            assert time.time() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        page = Page(target["webSocketDebuggerUrl"])
        page.call("Page.enable")
        page.call("Page.navigate", url=url)
        yield page
    finally:
        if page is not None:
            page.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for_projector(page, timeout=LOAD_TIMEOUT):
    """Poll until the projector shows its point count and has run PCA.

    Returns (points, dimension, plot rectangle in screenshot pixels).
    """
    deadline = time.time() + timeout
    state = {}
    while time.time() < deadline:
        state = page.evaluate(PROBE_JS) or {}
        text = state.get("text", "")
        m = POINTS_RE.search(text)
        if m and PCA_DONE_RE.search(text) and state.get("plot"):
            dpr = state.get("dpr") or 1
            x, y, w, h = (round(v * dpr) for v in state["plot"])
            return int(m.group(1)), int(m.group(2)), (x, y, x + w, y + h)
        time.sleep(1)
    raise AssertionError(f"projector did not finish loading in {timeout}s; "
                         f"page text: {state.get('text', '')[:1500]}")


def distinct_colours(image: Image.Image, box) -> int:
    a = np.asarray(image.crop(box), dtype=np.uint32)
    return len(np.unique((a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]))


def best_screenshot(page, box, enough=None, shots=3, timeout=60):
    """(screenshot, colours in ``box``) of the most colourful of several frames.

    With ``enough``, stop as soon as a frame holds that many colours (the
    sprite texture can arrive a moment after the text); the projector keeps
    animating, so without it, take ``shots`` frames a second apart.
    """
    deadline = time.time() + timeout
    best, best_count, taken = None, -1, 0
    while True:
        shot = page.screenshot()
        count = distinct_colours(shot, box)
        taken += 1
        if count > best_count:
            best, best_count = shot, count
        if enough is not None and best_count >= enough:
            break
        if (enough is None and taken >= shots) or time.time() > deadline:
            break
        time.sleep(1)
    return best, best_count


def save_artifact(image, name):
    ARTIFACTS.mkdir(exist_ok=True)
    image.save(ARTIFACTS / name)


# --- data: colourful photo crops, so drawn sprites are unmistakable --------

@pytest.fixture(scope="module")
def photo_crops(tmp_path_factory):
    """N_IMAGES 64x64 crops of scikit-learn's two bundled photos + a CSV."""
    from sklearn.datasets import load_sample_images

    folder = tmp_path_factory.mktemp("photos")
    (folder / "images").mkdir()
    photos = load_sample_images()
    rng = np.random.default_rng(7)
    rows = ["path,label"]
    for i in range(N_IMAGES):
        which = i % 2
        img = photos.images[which]
        y = int(rng.integers(0, img.shape[0] - 64))
        x = int(rng.integers(0, img.shape[1] - 64))
        name = f"images/crop_{i:03d}.png"
        Image.fromarray(img[y:y + 64, x:x + 64]).save(folder / name)
        rows.append(f"{name},{('china', 'flower')[which]}")
    (folder / "images.csv").write_text("\n".join(rows) + "\n")
    return folder / "images.csv"


@pytest.fixture(scope="module")
def logdir(photo_crops, model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("browser") / "logdir"
    summary = support.run_pipeline("--standalone", input=photo_crops, model=model_path,
                                   embedding_layer="embedding", output=out,
                                   max_items=N_IMAGES, tile_size=TILE)
    assert summary["written"] == N_IMAGES
    return out


def without_sprite(logdir, dest):
    """A copy of ``logdir`` whose config drops the sprite: plain points."""
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    shutil.copytree(logdir, dest)
    cfg_path = Path(dest) / "projector_config.pbtxt"
    config = text_format.Parse(cfg_path.read_text(), ProjectorConfig())
    for emb in config.embeddings:
        emb.ClearField("sprite")
    cfg_path.write_text(text_format.MessageToString(config))
    return dest


def tensorboard_projector(logdir, enough=None):
    """(points, dimension, screenshot, colours in the plot) from a live TensorBoard."""
    with support.tensorboard(logdir) as get:
        with chromium(get.base + "/#projector") as page:
            n, d, box = wait_for_projector(page)
            shot, colours = best_screenshot(page, box, enough)
    return n, d, shot, colours


# --- the tests -------------------------------------------------------------

def test_tensorboard_projector_draws_every_point_as_its_thumbnail(logdir, tmp_path):
    # The same points without a sprite first: what plain points look like here.
    plain = without_sprite(logdir, tmp_path / "plain")
    n, d, plain_shot, plain_colours = tensorboard_projector(plain)
    save_artifact(plain_shot, "tensorboard_projector_plain_points.png")
    assert (n, d) == (N_IMAGES, 8)
    wanted = max(SPRITE_COLOURS, 4 * plain_colours)
    n, d, shot, colours = tensorboard_projector(logdir, enough=wanted)
    save_artifact(shot, "tensorboard_projector.png")
    print(f"plot colours: {colours} with the sprite, {plain_colours} with plain points")
    assert (n, d) == (N_IMAGES, 8)
    assert colours >= wanted, (colours, plain_colours)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def static_server(folder):
    """The folder as plain static files on 127.0.0.1, like any web host."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_standalone_export_opens_as_static_files(logdir):
    config = json.loads((logdir / "projector_config.json").read_text())
    (emb,) = config["embeddings"]
    assert emb["tensorShape"] == [N_IMAGES, 8]
    with static_server(logdir) as base:
        with chromium(base + "/index.html") as page:
            n, d, box = wait_for_projector(page)
            shot, colours = best_screenshot(page, box, enough=SPRITE_COLOURS)
    save_artifact(shot, "standalone_projector.png")
    print(f"standalone plot colours: {colours}")
    assert (n, d) == (N_IMAGES, 8)
    assert colours >= 2000, colours


# --- issue 15: the neighbour columns in the projector's "Color by" ---------

# The names in the data panel's "Color by" menu (its Polymer property), found
# through shadow roots and TensorBoard's iframe.
COLOR_OPTIONS_JS = r"""
(() => {
  let found = null;
  const walk = (node) => {
    if (found) return;
    if (node.tagName === 'VZ-PROJECTOR-DATA-PANEL') { found = node; return; }
    if (node.shadowRoot) walk(node.shadowRoot);
    if (node.tagName === 'IFRAME' && node.contentDocument) walk(node.contentDocument);
    for (const ch of node.children || []) walk(ch);
  };
  walk(document);
  return found && found.colorOptions ? found.colorOptions.map(o => o.name) : null;
})()
"""
NEIGHBOR_COLOURABLE = ("nn_label_agreement", "nn_label_agreement_bin", "nn_majority_label",
                       "nn_distance", "nn_distance_bin", "duplicate", "cluster", "suspect")


def color_by_options(page, wanted, timeout=60):
    deadline = time.time() + timeout
    options = None
    while time.time() < deadline:
        options = page.evaluate(COLOR_OPTIONS_JS)
        if options and all(w in options for w in wanted):
            break
        time.sleep(1)
    return options or []


def test_neighbor_columns_are_offered_in_color_by(digits, model_path, tmp_path):
    """60 digits: more than the 50 distinct values the projector colours by,
    so the path column must be missing from "Color by" while every neighbour
    column (buckets, and nn_distance as a numeric gradient) is there."""
    csv_path, rows = digits
    out = tmp_path / "logdir"
    support.run_pipeline(input=csv_path, model=model_path, embedding_layer="embedding",
                         output=out, max_items=len(rows), tile_size=16, layout="umap")
    with support.tensorboard(out) as get:
        with chromium(get.base + "/#projector") as page:
            wait_for_projector(page)
            options = color_by_options(page, NEIGHBOR_COLOURABLE)
    print("Color by:", options)
    assert "label" in options
    assert "path" not in options          # 60 distinct strings: dropped by the projector
    for name in NEIGHBOR_COLOURABLE:
        assert name in options, (name, options)


# --- issue 27: the bookmarks, in TensorBoard and in the standalone export ---

# The projector element (found through shadow roots and TensorBoard's iframe)
# as window.P, for the checks below.
FIND_PROJECTOR_JS = r"""
(() => {
  const walk = (node) => {
    if (!node) return null;
    if (node.tagName === 'VZ-PROJECTOR') return node;
    if (node.shadowRoot) { const f = walk(node.shadowRoot); if (f) return f; }
    if (node.tagName === 'IFRAME' && node.contentDocument) {
      const f = walk(node.contentDocument); if (f) return f; }
    for (const ch of node.children || []) { const f = walk(ch); if (f) return f; }
    return null;
  };
  window.P = walk(document);
  const bp = window.P && window.P.bookmarkPanel;
  return bp && bp.savedStates ? bp.savedStates.map(s => s.label) : null;
})()
"""

# Restores saved view i as a click on it does, then reads back what the
# projector holds: its projection, every point's umap coordinates, the drawn
# positions (world space, after the projector's per-axis scaling), the
# selection and the colour-by in effect.
RESTORE_JS = r"""
(() => {
  P.bookmarkPanel.loadSavedState(%d);
  const pos = P.projectorScatterPlotAdapter.scatterPlot.worldSpacePointPositions;
  const pr = P.projection;
  return {type: pr && pr.projectionType,
          coords: P.dataSet.points.map(p => [p.projections['umap-0'], p.projections['umap-1']]),
          drawn: Array.from(pos || []),
          selected: Array.from(P.selectedPointIndices || []),
          colorBy: P.dataPanel.selectedColorOptionName,
          colorDesc: (P.dataPanel.colorOptions.find(
              c => c.name === P.dataPanel.selectedColorOptionName) || {}).desc};
})()
"""
GRADIENT_JS = r"""
(() => Object.fromEntries(P.dataPanel.colorOptions.filter(o => o.name).map(o => [o.name, o.desc])))()
"""
BOOKMARK_DIGITS = 400


def saved_views(page, timeout=LOAD_TIMEOUT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        labels = page.evaluate(FIND_PROJECTOR_JS)
        if labels:
            return labels
        time.sleep(1)
    raise AssertionError("the Bookmarks panel listed no saved view")


def check_restored_layout(state, written):
    """The projector holds the written coordinates, and draws every point
    where they say: its positions are a per-axis scaling of them."""
    coords = np.array(state["coords"], dtype=np.float64)
    want = np.array([[p["umap-0"], p["umap-1"]] for p in written["projections"]])
    assert state["type"] == "umap"
    assert coords.shape == want.shape and np.abs(coords - want).max() == 0
    drawn = np.array(state["drawn"]).reshape(-1, 3)[:, :2]
    assert len(drawn) == len(want)
    for axis in range(2):
        a, b = np.polyfit(want[:, axis], drawn[:, axis], 1)
        residual = np.abs(a * want[:, axis] + b - drawn[:, axis]).max()
        assert a > 0 and residual <= 1e-3 * np.ptp(drawn[:, axis]), (axis, a, residual)


@pytest.fixture(scope="module")
def bookmarked(model_path, tmp_path_factory):
    """400 digits through the CLI, with the standalone export too."""
    folder = tmp_path_factory.mktemp("bookmarked")
    csv_path, _ = support.write_digits(str(folder), count=BOOKMARK_DIGITS)
    out = folder / "logdir"
    support.run_pipeline("--standalone", input=csv_path, model=model_path,
                         embedding_layer="embedding", output=out,
                         max_items=BOOKMARK_DIGITS, tile_size=16, layout="umap")
    (marks,) = out.glob("data-*/bookmarks.json")
    return out, json.loads(marks.read_text())


def test_bookmarks_restore_the_offline_layout_in_tensorboard(bookmarked):
    """The Bookmarks panel lists the written views; restoring the layout view
    draws every point at its written coordinates; a case view selects its
    points; nn_label_agreement (rank-weighted, > 50 values) is a gradient."""
    out, states = bookmarked
    with support.tensorboard(out) as get:
        with chromium(get.base + "/#projector") as page:
            wait_for_projector(page)
            labels = saved_views(page)
            layout = page.evaluate(RESTORE_JS % 0)
            time.sleep(2)
            shot = page.screenshot()
            views = [page.evaluate(RESTORE_JS % i) for i in range(1, len(states))]
            colours = page.evaluate(GRADIENT_JS)
    save_artifact(shot, "bookmark_layout.png")
    print("bookmarks:", labels)
    assert labels == [s["label"] for s in states]
    assert labels[0] == f"Layout of all {BOOKMARK_DIGITS} points (UMAP, computed offline)"
    check_restored_layout(layout, states[0])
    assert layout["colorBy"] == states[0]["selectedColorOptionName"] == "label"
    for state, view in zip(states[1:], views):
        assert view["type"] == "umap"
        assert view["selected"] == state["selectedPoints"] and view["selected"]
        assert view["colorBy"] == "suspect"
    assert colours["nn_label_agreement"] == "gradient"
    assert colours["nn_distance"] == "gradient"
    assert colours["suspect"] != "gradient" and "cluster" in colours


def test_bookmarks_restore_in_the_standalone_export(bookmarked):
    out, states = bookmarked
    (emb,) = json.loads((out / "projector_config.json").read_text())["embeddings"]
    assert emb["bookmarksPath"].endswith("/bookmarks.json")
    with static_server(out) as base:
        with chromium(base + "/index.html") as page:
            wait_for_projector(page)
            labels = saved_views(page)
            layout = page.evaluate(RESTORE_JS % 0)
    assert labels == [s["label"] for s in states]
    check_restored_layout(layout, states[0])
