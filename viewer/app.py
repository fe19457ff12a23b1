"""The viser web viewer of a model folder (python view.py -m OUT)."""
import os
import threading
import time
import traceback
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from viewer import splats as S

FREE = "(free camera)"
FACTORS = ("1", "2", "4", "8")


def view_label(entry, split):
    tag = f"{split} " if split else ""
    return f"{tag}#{entry.get('id', '?')}: {entry['img_name']}"


def entry_from_camera(camera, width, height, name="free"):
    """A cameras.json-like entry of a viser camera handle (OpenCV axes, vertical fov) at width x height."""
    from viewer.splats import quat_to_rotmat
    R = quat_to_rotmat(np.asarray(camera.wxyz, dtype=np.float64)[None])[0]
    fy = height / (2.0 * np.tan(float(camera.fov) / 2.0))
    return {"id": -1, "img_name": name, "width": int(width), "height": int(height),
            "position": np.asarray(camera.position, dtype=np.float64).tolist(), "rotation": R.tolist(),
            "fx": fy, "fy": fy}


class ViewerApp:
    """Loads the model folder's iterations, serves them with viser, renders views on demand.

    Work that takes time (reading a PLY, building splat buffers, rendering) runs on one background
    worker, so the server's callbacks return at once."""

    def __init__(self, model_path, host="0.0.0.0", port=8080, max_splats=S.DEFAULT_MAX_SPLATS,
                 backend="auto", device="cpu", verbose=True):
        self.model_path = os.path.abspath(model_path)
        self.host, self.port, self.max_splats = host, int(port), int(max_splats)
        self.backend, self.device, self.verbose = backend, device, verbose
        self.iterations = S.viewer_iterations(self.model_path)  # errors for a non-model folder
        self.labels = OrderedDict((S.iteration_label(it), it) for it in self.iterations)
        self.cameras = S.read_cameras(self.model_path)
        splits = S.camera_split(self.model_path, self.cameras)
        self.views = OrderedDict((view_label(e, splits.get(e["img_name"], "")), e) for e in self.cameras)
        self._gaussians = OrderedDict()  # iteration -> GaussianModel (the last two used)
        self._handles = {}  # iteration -> splat scene node (sent once)
        self._notes = {}
        self._lock = threading.RLock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="viewer")
        self.current = self.iterations[0]
        self.previous = None
        self.view = None  # the snapped cameras.json entry, or None
        self.server = None
        self.last_render = None  # (path, image) of the latest finished render
        # a folder whose first PLY does not load is an error at start, not a blank page
        self.gaussians(self.current)

    # ---- data --------------------------------------------------------------------------------
    def gaussians(self, iteration):
        with self._lock:
            if iteration in self._gaussians:
                self._gaussians.move_to_end(iteration)
                return self._gaussians[iteration]
        g = S.load_gaussians(self.model_path, iteration, self.device)
        with self._lock:
            self._gaussians[iteration] = g
            while len(self._gaussians) > 2:
                self._gaussians.popitem(last=False)
        return g

    def _log(self, msg):
        if self.verbose:
            print(f"[view] {msg}", flush=True)

    # ---- server ------------------------------------------------------------------------------
    def start(self):
        import viser
        self.server = viser.ViserServer(host=self.host, port=self.port, verbose=False)
        self.port = self.server.get_port()
        up = S.scene_up(self.cameras)
        if up is not None:
            self.server.scene.set_up_direction(tuple(float(x) for x in up))
        if self.cameras:
            pose = S.snap_pose(self.cameras[0])
            ic = self.server.initial_camera
            ic.position, ic.look_at, ic.fov = pose["position"], pose["look_at"], pose["fov"]
            if up is not None:
                ic.up = up
        self._build_gui()
        self.server.on_client_connect(self._on_connect)
        self.show(self.current, wait=True)
        self._log(f"serving {self.model_path} at http://{'localhost' if self.host in ('0.0.0.0', '') else self.host}:{self.port}")
        return self

    def stop(self):
        if self.server is not None:
            self.server.stop()
            self.server = None
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _build_gui(self):
        gui = self.server.gui
        gui.add_markdown(f"**3dsr viewer** — `{self.model_path}`")
        self.gui_model = gui.add_dropdown("Model", tuple(self.labels), initial_value=S.iteration_label(self.current),
                                          hint="The LR model's latest iteration and every SR run")
        self.gui_toggle = gui.add_button("Toggle with previous model", hint="A/B: switch to the last model shown")
        self.gui_note = gui.add_markdown("loading splats…")
        views = (FREE,) + tuple(self.views)
        self.gui_view = gui.add_dropdown("Snap to view", views, initial_value=FREE,
                                         hint="Train and test cameras of cameras.json")
        if not self.cameras:
            self.gui_view.disabled = True
        self.gui_gt = gui.add_image(np.zeros((8, 8, 3), np.uint8), label="ground truth", visible=False)
        self.gui_metrics = gui.add_markdown("", visible=False)
        self.gui_factor = gui.add_dropdown("Render factor N", FACTORS, initial_value="4")
        self.gui_render = gui.add_button("Render this view at Nx",
                                         hint="Our renderer, full SH; writes OUT/view_renders/<iteration>_<view>_x<N>.png")
        self.gui_status = gui.add_markdown("")
        self.gui_image = gui.add_image(np.zeros((8, 8, 3), np.uint8), label="render", visible=False)

        @self.gui_model.on_update
        def _(_event):
            self.show(self.labels[self.gui_model.value])

        @self.gui_toggle.on_click
        def _(_event):
            if self.previous is not None:
                self.gui_model.value = S.iteration_label(self.previous)  # fires on_update -> show

        @self.gui_view.on_update
        def _(_event):
            value = self.gui_view.value
            self.snap(None if value == FREE else self.views[value])

        @self.gui_render.on_click
        def _(event):
            self.request_render(float(self.gui_factor.value), client=getattr(event, "client", None))

    def _on_connect(self, client):
        if self.view is not None:
            S.apply_pose(client.camera, S.snap_pose(self.view))

    # ---- actions -----------------------------------------------------------------------------
    def show(self, iteration, wait=False):
        """Show one iteration's splats (sent once, then toggled), hiding the others."""
        if iteration != self.current:
            self.previous = self.current
        self.current = iteration
        fut = self._worker.submit(self._show, iteration)
        if wait:
            fut.result()
        return fut

    def _show(self, iteration):
        try:
            with self._lock:
                handle = self._handles.get(iteration)
            if handle is None:
                self.gui_note.content = f"loading {S.iteration_label(iteration)}…"
                t0 = time.time()
                buffers = S.splat_buffers(self.gaussians(iteration), self.max_splats)
                name = "/splats/" + "".join(c if c.isalnum() or c in "_-" else "_" for c in iteration)
                handle = self.server.scene.add_gaussian_splats(
                    name, centers=buffers["centers"], covariances=buffers["covariances"],
                    rgbs=buffers["rgbs"], opacities=buffers["opacities"], visible=False)
                with self._lock:
                    self._handles[iteration] = handle
                    self._notes[iteration] = S.splat_note(buffers)
                self._log(f"{iteration}: sent {buffers['shown']} of {buffers['total']} splats in {time.time() - t0:.1f}s")
            if self.current != iteration:  # another choice came in meanwhile
                return
            with self._lock:
                for it, h in self._handles.items():
                    h.visible = it == iteration
                self.gui_note.content = f"{S.iteration_label(iteration)}: {self._notes[iteration]}"
        except Exception as exc:  # shown in the page; the server keeps running
            self.gui_note.content = f"**error** loading {iteration}: {exc}"
            self._log(f"error loading {iteration}: {exc}")

    def snap(self, entry):
        """Snap every client's camera to a cameras.json entry; show its ground truth and metrics."""
        self.view = entry
        if entry is None:
            self.gui_gt.visible = False
            self.gui_metrics.visible = False
            return
        pose = S.snap_pose(entry)
        for client in self.server.get_clients().values():
            with client.atomic():
                S.apply_pose(client.camera, pose)
        gt = S.ground_truth_path(self.model_path, entry["img_name"])
        if gt:
            from utils.image_utils import load_image
            img = load_image(gt)[..., :3]
            self.gui_gt.image = np.round(img * 255).clip(0, 255).astype(np.uint8)
            self.gui_gt.label = f"ground truth ({os.path.relpath(gt, self.model_path) if gt.startswith(self.model_path) else gt})"
            self.gui_gt.visible = True
        else:
            self.gui_gt.visible = False
        self.gui_metrics.content = S.format_metrics(S.view_metrics(self.model_path, entry["img_name"]))
        self.gui_metrics.visible = True

    def request_render(self, factor, client=None):
        """Queue a render of the snapped view (or `client`'s free camera) at `factor` x."""
        iteration, entry = self.current, self.view
        if entry is None:
            if client is None:
                self.gui_status.content = "snap to a view first (or connect a browser for the free camera)"
                return None
            base = self.cameras[0] if self.cameras else {"width": 800, "height": 600}
            entry = entry_from_camera(client.camera, base["width"], base["height"])
        self.gui_status.content = f"rendering {entry['img_name']} of {iteration} at x{factor:g}…"
        self.gui_render.disabled = True
        return self._worker.submit(self._render, iteration, entry, factor)

    def _render(self, iteration, entry, factor):
        try:
            t0 = time.time()
            img, path = S.render_entry(self.model_path, iteration, self.gaussians(iteration), entry, factor,
                                       backend=self.backend)
            self.last_render = (path, img)
            self.gui_image.image = img
            self.gui_image.label = f"{iteration} {entry['img_name']} x{factor:g} ({img.shape[1]}x{img.shape[0]})"
            self.gui_image.visible = True
            self.gui_status.content = f"wrote `{path}` in {time.time() - t0:.1f}s"
            self._log(f"wrote {path}")
            return path
        except Exception as exc:
            self.gui_status.content = f"**render failed**: {exc}"
            self._log("render failed:\n" + traceback.format_exc())
            return None
        finally:
            self.gui_render.disabled = False

    def wait_forever(self):
        try:
            while True:
                time.sleep(3600)
        finally:
            self.stop()
