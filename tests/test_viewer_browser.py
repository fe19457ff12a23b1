"""view.py in a real (headless) Chromium: the page connects, and snapping to a dataset view moves the
browser's camera there (the pose the browser reports back equals the camera of cameras.json).
Skips where Chromium is not installed (Debian: apt-get install chromium)."""
import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from tests.test_viewer import free_port, model  # noqa: F401  (fixture)

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")


def wait_for(predicate, timeout=60.0, step=0.2):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def test_browser_connects_and_snaps(model, tmp_path):  # noqa: F811
    from viewer.app import ViewerApp
    from viewer import splats as S
    app = ViewerApp(model, host="127.0.0.1", port=free_port(), max_splats=40, verbose=False)
    app.start()
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                             "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--window-size=800,600",
                             f"--user-data-dir={tmp_path / 'profile'}", f"http://127.0.0.1:{app.port}/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def client_ready():
            clients = list(app.server.get_clients().values())
            return clients[0] if clients and clients[0].camera._state.update_timestamp != 0.0 else None
        client = wait_for(client_ready)
        assert client is not None, "the page did not connect and report its camera within 60 s"
        entry = app.views[next(k for k in app.views if "view_02" in k)]
        app.snap(entry)
        R, C = np.asarray(entry["rotation"]), np.asarray(entry["position"])

        def snapped():
            cam = client.camera
            return np.allclose(cam.position, C, atol=1e-3) and cam.update_timestamp > 0
        assert wait_for(snapped, timeout=20), f"browser camera at {client.camera.position}, want {C}"
        look = np.asarray(client.camera.look_at) - np.asarray(client.camera.position)
        np.testing.assert_allclose(look / np.linalg.norm(look), R[:, 2], atol=1e-3)
        import viser.transforms as tf
        np.testing.assert_allclose(tf.SO3(np.asarray(client.camera.wxyz)).as_matrix()[:, 2], R[:, 2], atol=1e-3)
        assert client.camera.fov == pytest.approx(S.snap_pose(entry)["fov"], abs=1e-3)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        app.stop()
