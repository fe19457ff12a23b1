"""The viser web viewer of a model folder (python view.py -m OUT)."""
import os
import threading
import time
import traceback
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from utils.errors import ModelNotFoundError
from viewer import compare as C
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


def _camera_ready(camera):
    """A viser camera handle that has reported its state (its properties assert otherwise)."""
    try:
        return camera.update_timestamp > 0 and camera.image_height > 0
    except AssertionError:
        return False


def _at_pose(camera, pose, tol=1e-3):
    """Whether a camera handle is at a snap_pose (position and viewing direction)."""
    C0 = np.asarray(pose["position"], dtype=np.float64)
    if not np.allclose(np.asarray(camera.position, dtype=np.float64), C0, atol=tol * max(1.0, np.linalg.norm(C0))):
        return False
    from viewer.splats import quat_to_rotmat
    z = quat_to_rotmat(np.asarray(camera.wxyz, dtype=np.float64)[None])[0][:, 2]
    want = np.asarray(pose["look_at"], dtype=np.float64) - C0
    return float(z @ want / np.linalg.norm(want)) > 1 - tol


class ViewerApp:
    """Loads the model folder's iterations, serves them with viser, renders views on demand.

    Work that takes time (reading a PLY, building splat buffers, rendering) runs on one background
    worker, so the server's callbacks return at once. The side-by-side comparison renders on its own
    latest-request-wins thread (viewer/compare.py), so dragging the camera never queues renders."""

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
        self._gaussians = OrderedDict()  # iteration -> GaussianModel (the last three used: shown, left, right)
        self._load_lock = threading.Lock()  # two workers asking for one PLY read it once
        self._handles = {}  # iteration -> splat scene node (sent once)
        self._notes = {}
        self._lock = threading.RLock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="viewer")
        self.current = self.iterations[0]
        self.previous = None
        self.view = None  # the snapped cameras.json entry, or None
        self.server = None
        self.last_render = None  # (path, image) of the latest finished render
        self.render_settings = S.render_settings(self.model_path)  # (kernel_size, white background)
        self.compare_on = False
        self.compare_pair = C.default_pair(self.iterations)  # (left, right)
        self.compare_side_width = 320
        self.compare_camera = None  # the latest camera handle that moved (None: snapped view / first camera)
        self.last_compare = None  # dict of the latest finished comparison (left, right, entry, images)
        self._compare_worker = C.LatestWorker(self._compare, min_interval=0.1, log=self._log)
        # a folder whose first PLY does not load is an error at start, not a blank page
        self.gaussians(self.current)

    # ---- data --------------------------------------------------------------------------------
    def gaussians(self, iteration):
        with self._lock:
            if iteration in self._gaussians:
                self._gaussians.move_to_end(iteration)
                return self._gaussians[iteration]
        with self._load_lock:
            with self._lock:
                if iteration in self._gaussians:
                    return self._gaussians[iteration]
            g = S.load_gaussians(self.model_path, iteration, self.device)
            with self._lock:
                self._gaussians[iteration] = g
                while len(self._gaussians) > 3:
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
        self._compare_worker.stop()

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

        self._build_compare_gui()

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

    def _build_compare_gui(self):
        gui = self.server.gui
        left, right = self.compare_pair
        with gui.add_folder("Compare side by side"):
            self.gui_compare_on = gui.add_checkbox(
                "Side by side", False, hint="Render the browser's camera for two models, left | right "
                                            "(our renderer, full SH, all splats); follows the camera")
            self.gui_left = gui.add_dropdown("Left", tuple(self.labels), initial_value=S.iteration_label(left))
            self.gui_right = gui.add_dropdown("Right", tuple(self.labels), initial_value=S.iteration_label(right))
            self.gui_swap = gui.add_button("Swap left / right")
            self.gui_side = gui.add_dropdown("Width of each side (px)", C.SIDE_WIDTHS,
                                             initial_value=str(self.compare_side_width))
            self.gui_compare_status = gui.add_markdown("")
        blank = np.zeros((8, 8, 3), np.uint8)
        # A floating panel of its own: the control panel is too narrow for two images side by side.
        self.compare_panel = gui.add_panel(visible=False)
        with self.compare_panel.add_tab("Side by side"):
            self.gui_compare_image = gui.add_image(blank, label=self._compare_label())
        self.compare_panel.float(x=12, y=12, width=self._compare_panel_width())  # top-left: grows downwards, stays on screen

        @self.gui_compare_on.on_update
        def _(_event):
            self.set_compare(enabled=self.gui_compare_on.value)

        @self.gui_left.on_update
        def _(_event):
            self.set_compare(left=self.labels[self.gui_left.value])

        @self.gui_right.on_update
        def _(_event):
            self.set_compare(right=self.labels[self.gui_right.value])

        @self.gui_swap.on_click
        def _(_event):
            self.set_compare(left=self.compare_pair[1], right=self.compare_pair[0])

        @self.gui_side.on_update
        def _(_event):
            self.set_compare(side_width=int(self.gui_side.value))

    def _compare_panel_width(self):
        return 2 * self.compare_side_width + 40

    def _compare_label(self):
        left, right = self.compare_pair
        return f"left: {S.iteration_label(left)} | right: {S.iteration_label(right)}"

    def _on_connect(self, client):
        if self.view is not None:
            S.apply_pose(client.camera, S.snap_pose(self.view))

        @client.camera.on_update
        def _(camera):
            self.compare_camera = camera
            if self.compare_on:
                self.request_compare()

    # ---- side by side ------------------------------------------------------------------------
    def set_compare(self, left=None, right=None, enabled=None, side_width=None):
        """Choose the compared models (iteration names) / switch the comparison on or off; re-renders.
        An iteration the folder does not have raises ModelNotFoundError (the GUI only offers real ones)."""
        for it in (left, right):
            if it is not None and it not in self.iterations:
                raise ModelNotFoundError(f"iteration {it} not found in {self.model_path}; the viewer offers: "
                                         f"{', '.join(self.iterations)}")
        self.compare_pair = (left or self.compare_pair[0], right or self.compare_pair[1])
        if enabled is not None:
            self.compare_on = bool(enabled)
        if side_width is not None:
            self.compare_side_width = int(side_width)
        if self.server is not None:  # keep the GUI in step when called from code (no-ops when equal)
            for handle, value in ((self.gui_left, S.iteration_label(self.compare_pair[0])),
                                  (self.gui_right, S.iteration_label(self.compare_pair[1])),
                                  (self.gui_compare_on, self.compare_on),
                                  (self.gui_side, str(self.compare_side_width))):
                if handle.value != value:
                    handle.value = value
            self.compare_panel.set_width(self._compare_panel_width())
            self.compare_panel.visible = self.compare_on
            if not self.compare_on:
                self.gui_compare_status.content = ""
        if self.compare_on:
            self.request_compare()

    def compare_view(self, camera=None):
        """(entry, factor): the camera both sides render. The snapped view (its exact intrinsics, scaled to
        the side width) while the browser camera is still there; else the browser camera itself (pose,
        vertical fov, canvas aspect); with no browser, the snapped view or the first dataset camera."""
        camera = camera if camera is not None else self.compare_camera
        free = camera is not None and _camera_ready(camera)
        if self.view is not None and (not free or _at_pose(camera, S.snap_pose(self.view))):
            return self.view, self.compare_side_width / float(self.view["width"])
        if free:
            w, h = C.compare_size(self.compare_side_width, camera.image_width / max(camera.image_height, 1))
            return entry_from_camera(camera, w, h, name="browser camera"), 1.0
        if self.cameras:
            return self.cameras[0], self.compare_side_width / float(self.cameras[0]["width"])
        return None, 1.0

    def request_compare(self, camera=None):
        """Queue a side-by-side render of the current camera (returns at once; the newest request wins)."""
        entry, factor = self.compare_view(camera)
        if entry is None:
            self.gui_compare_status.content = "no camera yet: open the page or snap to a view"
            return
        left, right = self.compare_pair
        self._compare_worker.submit({"left": left, "right": right, "entry": entry, "factor": factor})

    def wait_compare(self, timeout=None):
        """Block until the comparison worker is idle (tests, scripts). True when it is."""
        return self._compare_worker.wait_idle(timeout)

    def _compare(self, req):
        left, right, entry, factor = req["left"], req["right"], req["entry"], req["factor"]
        try:
            t0 = time.time()
            kernel_size, white = self.render_settings
            images = {}
            for it in (left, right):  # one camera for both sides: this is the synchronisation
                if it not in images:
                    images[it] = S.to_uint8(S.render_view(self.gaussians(it), entry, factor, kernel_size, white,
                                                          self.backend))
            composite = C.side_by_side(images[left], images[right], C.short_label(left), C.short_label(right))
            self.last_compare = {"left": left, "right": right, "entry": entry, "factor": factor,
                                 "left_image": images[left], "right_image": images[right], "image": composite}
            if (left, right) != self.compare_pair or not self.compare_on:
                return  # the choice changed meanwhile; its own request follows
            h, w = images[left].shape[:2]
            self.gui_compare_image.image = composite
            self.gui_compare_image.label = self._compare_label()
            self.gui_compare_status.content = (f"left: **{S.iteration_label(left)}**, right: "
                                               f"**{S.iteration_label(right)}**; {entry['img_name']}, "
                                               f"{w}x{h} each, {time.time() - t0:.2f}s")
        except Exception as exc:  # shown in the page; the server keeps running
            self.last_compare = {"left": left, "right": right, "entry": entry, "error": str(exc)}
            self.gui_compare_status.content = f"**compare failed**: {exc}"
            self._log(f"compare failed: {exc}")

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
            if self.compare_on:
                self.request_compare()
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
        if self.compare_on:
            self.request_compare()

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
