"""view.py in a real (headless) Chromium, driven over the DevTools protocol, on the embedded synthetic scene
(tools/make_scene.py; Gaussians on its points): the page loads and draws the splats, switching the model
changes the picture, snapping to a test view shows what render.py renders there, the camera the page
reports after a snap is the dataset camera, and the side-by-side comparison follows the browser camera.
Skips where Chromium is not installed (Debian: apt-get install chromium).

THREEDSR_SAVE_SCREENSHOT=1 also writes the side-by-side page to docs/viewer_side_by_side.jpg."""
import base64
import io
import json
import os
import shutil
import subprocess
import time
import urllib.request

import numpy as np
import pytest

from tests.test_viewer import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")
WINDOW = (800, 600)
SR_STAND_IN = "sr_iter20"  # an SR-run folder holding an early snapshot: a second model to switch to


def wait_for(predicate, timeout=60.0, step=0.2):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if isinstance(value, np.ndarray) or value:  # an array (a screenshot) counts as found
            return value
        time.sleep(step)
    return None


# ---- the embedded scene, trained briefly -------------------------------------------------------
@pytest.fixture(scope="module")
def scene_model(tmp_path_factory):
    """A model folder of the embedded scene without training (fast, and independent of train.py):
    iteration 100 = Gaussians on the scene's points, made opaque; an SR-run stand-in (sr/<name>) with
    the same Gaussians at 60% of the size; and render.py's test renders of iteration 100."""
    from argparse import Namespace

    import render
    import torch
    from arguments import write_cfg_args
    from scene.gaussian_model import GaussianModel
    from scene.scene import Scene
    from tools.make_scene import make_scene
    root = tmp_path_factory.mktemp("viewer_scene")
    scene, out = str(root / "scene"), str(root / "model")
    make_scene(scene, views=6, width=96, height=72, kind="llff", seed=4, num_points=3000, progress=False)
    cfg = Namespace(source_path=scene, model_path=out, images="images", resolution=1, eval=True, llffhold=8,
                    white_background=False, data_device="", sh_degree=0, kernel_size=0.1, filter_2d="mip")
    g = GaussianModel(0)
    Scene(cfg, g)  # writes cameras.json and puts Gaussians on the scene's points
    with torch.no_grad():
        g.params["opacity"].fill_(3.0)  # sigmoid 0.95
    g.save_ply(os.path.join(out, "point_cloud", "iteration_100", "point_cloud.ply"))
    write_cfg_args(out, cfg)
    run = os.path.join(out, "sr", SR_STAND_IN)
    with torch.no_grad():
        g.params["scaling"].add_(float(np.log(0.6)))
    g.save_ply(os.path.join(run, "point_cloud", "iteration_20", "point_cloud.ply"))
    write_cfg_args(run, Namespace(**{**vars(cfg), "model_path": run}))
    render.main(["-m", out, "--skip_train", "--quiet", "--device", "cpu"])
    return out


# ---- a minimal DevTools-protocol client ----------------------------------------------------------
class Browser:
    """Headless Chromium with software WebGL; CDP over its page's websocket (the `websockets` package
    viser already needs), so no playwright / selenium."""

    def __init__(self, url, profile):
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader",
             "--use-angle=swiftshader", "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._id = 0
        self.ws = None
        try:
            port_file = os.path.join(profile, "DevToolsActivePort")
            assert wait_for(lambda: os.path.isfile(port_file) and open(port_file).read().strip(), 30), \
                "Chromium did not open its DevTools port"
            port = int(open(port_file).read().split()[0])

            def page():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    return next((t for t in json.load(r) if t.get("type") == "page"), None)
            target = wait_for(page, 30)
            from websockets.sync.client import connect
            self.ws = connect(target["webSocketDebuggerUrl"], max_size=64 << 20, open_timeout=10)
        except BaseException:
            self.close()
            raise

    def call(self, method, timeout=30, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        end = time.time() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, end - time.time())))
            if msg.get("id") == self._id:  # events in between are not needed
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def screenshot(self, clip=None):
        """The page (or `clip` = (x, y, w, h) of it, CSS pixels) as an HxWx3 uint8 array."""
        from PIL import Image
        params = {"format": "png"}
        if clip is not None:
            params["clip"] = {"x": clip[0], "y": clip[1], "width": clip[2], "height": clip[3], "scale": 1}
        data = base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def canvas_rect(self):
        """(x, y, w, h) of the largest canvas: the 3D view."""
        return self.eval("""(() => { let best = null;
            for (const c of document.querySelectorAll('canvas')) { const r = c.getBoundingClientRect();
              if (!best || r.width * r.height > best[2] * best[3]) best = [r.x, r.y, r.width, r.height]; }
            return best; })()""")

    def close(self):
        if self.ws is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---- pictures ------------------------------------------------------------------------------------
def resized(img, size):
    from PIL import Image
    return np.asarray(Image.fromarray(np.asarray(img, np.uint8)).resize(size, Image.BILINEAR), np.float64)


def correlation(a, b, size=(64, 48)):
    """Pearson correlation of two RGB pictures' values after resizing both to `size`."""
    ga, gb = resized(a, size).ravel(), resized(b, size).ravel()
    ga, gb = ga - ga.mean(), gb - gb.mean()
    return float(ga @ gb / (np.linalg.norm(ga) * np.linalg.norm(gb) + 1e-12))


@pytest.fixture(scope="module")
def page(scene_model, tmp_path_factory):
    from viewer.app import ViewerApp
    app = ViewerApp(scene_model, host="127.0.0.1", port=free_port(), verbose=False)
    app.start()
    browser = None
    try:
        browser = Browser(f"http://127.0.0.1:{app.port}/", str(tmp_path_factory.mktemp("chromium")))
        browser.call("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1], deviceScaleFactor=1,
                     mobile=False)

        def client_ready():
            clients = list(app.server.get_clients().values())
            return clients[0] if clients and clients[0].camera._state.update_timestamp != 0.0 else None
        client = wait_for(client_ready)
        assert client is not None, "the page did not connect and report its camera within 60 s"
        # the "software WebGL" notice covers part of the view
        wait_for(lambda: browser.eval("document.querySelectorAll('.mantine-Notification-closeButton').length"), 10)
        browser.eval("document.querySelectorAll('.mantine-Notification-closeButton').forEach(b => b.click())")
        yield app, browser, client
    finally:
        if browser is not None:
            browser.close()
        app.stop()


def canvas_shot(browser):
    return browser.screenshot(clip=browser.canvas_rect())


def changed_from(browser, before, min_diff=3.0, timeout=15):
    """The next canvas screenshot that differs from `before` (mean abs difference), or None."""
    def shot():
        img = canvas_shot(browser)
        return img if np.abs(img.astype(float) - before).mean() > min_diff else None
    return wait_for(shot, timeout, step=0.3)


def test_page_draws_switches_and_snaps(page, scene_model):
    from utils.image_utils import load_image
    from viewer import splats as S
    app, browser, client = page
    app.server.gui.main_panel.minimize()  # the control panel would cover part of the view
    try:
        # the splats are drawn: the canvas is not one flat colour
        drawn = wait_for(lambda: (lambda im: im if im.std() > 10 else None)(canvas_shot(browser)), 30)
        assert drawn is not None, "the canvas stayed blank"

        # snapping to the test view shows what render.py rendered for it
        test_dir = os.path.join(scene_model, "test", "ours_100")
        with open(os.path.join(test_dir, "cameras.json")) as f:
            rec = json.load(f)[0]
        entry = app.views[next(k for k in app.views if k.startswith("test ") and rec["img_name"] in k)]
        app.snap(entry)
        R, C = np.asarray(entry["rotation"]), np.asarray(entry["position"])
        assert wait_for(lambda: np.allclose(client.camera.position, C, atol=1e-3), 20), \
            f"browser camera at {client.camera.position}, want {C}"
        look = np.asarray(client.camera.look_at) - np.asarray(client.camera.position)
        np.testing.assert_allclose(look / np.linalg.norm(look), R[:, 2], atol=1e-3)
        import viser.transforms as tf
        np.testing.assert_allclose(tf.SO3(np.asarray(client.camera.wxyz)).as_matrix()[:, 2], R[:, 2], atol=1e-3)
        assert client.camera.fov == pytest.approx(S.snap_pose(entry)["fov"], abs=1e-3)
        ours = np.round(load_image(os.path.join(test_dir, "renders", rec["render"]))[..., :3] * 255)
        # the view has the canvas's aspect (4:3) and the same vertical fov, so it fills the canvas; the
        # top band holds the minimised control panel
        time.sleep(1.0)
        shot = canvas_shot(browser)
        band = shot.shape[0] // 10
        corr = correlation(shot[band:], ours[int(round(band * ours.shape[0] / shot.shape[0])):])
        print(f"\ncorrelation of the browser's view with render.py's: {corr:.3f}")
        # viser's preview rasterises the splats its own way (SH degree 0, its own footprint and blending),
        # so this is a likeness test, not equality: measured 0.44 here, vs ~0 for a wrong pose
        assert corr > 0.3, f"the browser's picture of the test view does not match render.py's (r = {corr:.3f})"

        # switching the model changes the picture
        app.show(SR_STAND_IN, wait=True)
        switched = changed_from(browser, shot.astype(float))
        assert switched is not None, "switching to the other model did not change the canvas"
        print(f"mean abs change on switching: {np.abs(switched.astype(float) - shot).mean():.1f}")
        app.show(app.iterations[0], wait=True)
    finally:
        app.server.gui.main_panel.expand()


def test_side_by_side_follows_the_browser_camera(page, scene_model):
    from utils.image_utils import load_image
    from viewer import compare as Cmp
    app, browser, client = page
    test_dir = os.path.join(scene_model, "test", "ours_100")
    with open(os.path.join(test_dir, "cameras.json")) as f:
        rec = json.load(f)[0]
    entry = app.views[next(k for k in app.views if k.startswith("test ") and rec["img_name"] in k)]
    app.snap(entry)
    assert wait_for(lambda: np.allclose(client.camera.position, entry["position"], atol=1e-3), 20)
    app.set_compare(left=app.iterations[0], right=SR_STAND_IN, enabled=True, side_width=240)
    assert app.wait_compare(60)
    last = app.last_compare
    assert "error" not in last, last
    assert (last["left"], last["right"]) == (app.iterations[0], SR_STAND_IN)
    assert last["entry"] is entry  # the snapped view, exactly
    ours = load_image(os.path.join(test_dir, "renders", rec["render"]))[..., :3] * 255
    assert correlation(last["left_image"], ours) > 0.95  # our renderer on both: the same picture
    assert app.gui_compare_image.label == f"left: LR 3DGS (iteration 100) | right: SR run '{SR_STAND_IN}'"

    # the panel shows the two images in the page (the only image wider than 2:1)
    def panel_image():
        return browser.eval("""(() => { let best = null;
            for (const im of document.querySelectorAll('img')) { const r = im.getBoundingClientRect();
              if (r.height > 0 && r.width / r.height > 2) best = [r.x, r.y, r.width, r.height]; }
            return best; })()""")
    rect = wait_for(panel_image, 20)
    assert rect is not None, "the side-by-side panel did not appear"
    x, y, w, h = rect
    seen = min(h, WINDOW[1] - y)  # the part inside the window
    want = last["image"][:max(1, int(round(seen / h * last["image"].shape[0])))]
    on_page = wait_for(lambda: (lambda im: im if correlation(im, want) > 0.8 else None)(
        browser.screenshot(clip=(x, y, w, seen))), 20)
    assert on_page is not None, "the page does not show the side-by-side image"

    # orbit the browser camera: both sides follow it, with the browser's pose and aspect
    before = app._compare_worker.runs
    client.camera.position = np.asarray(entry["position"]) + np.array([0.4, 0.1, 0.0])
    assert wait_for(lambda: app._compare_worker.runs > before and app.wait_compare(1)
                    and app.last_compare["entry"]["img_name"] == "browser camera", 30)
    moved = app.last_compare["entry"]
    np.testing.assert_allclose(moved["position"], client.camera.position, atol=1e-4)
    import viser.transforms as tf
    np.testing.assert_allclose(moved["rotation"], tf.SO3(np.asarray(client.camera.wxyz)).as_matrix(), atol=1e-4)
    assert moved["width"] == 240 and moved["height"] == round(240 / client.camera.aspect)
    left, right = Cmp.split_side_by_side(app.last_compare["image"])
    assert left.shape == right.shape == (moved["height"], 240, 3)

    if os.environ.get("THREEDSR_SAVE_SCREENSHOT") == "1":
        save_side_by_side(app, browser)
    app.set_compare(enabled=False)


def save_side_by_side(app, browser):
    """docs/viewer_side_by_side.jpg: the page at 1280x720 with the comparison at 320 px a side."""
    from PIL import Image
    browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=720, deviceScaleFactor=1, mobile=False)
    app.set_compare(side_width=320)
    app.wait_compare(60)
    time.sleep(3.0)
    img = Image.fromarray(browser.screenshot())
    path = os.path.join(ROOT, "docs", "viewer_side_by_side.jpg")
    for quality in (85, 75, 65, 50):
        img.save(path, quality=quality, optimize=True)
        if os.path.getsize(path) < 150_000:
            break
    print(f"wrote {path} ({os.path.getsize(path) // 1024} KB)")
    browser.call("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1], deviceScaleFactor=1,
                 mobile=False)
