"""Side-by-side comparison of two iterations / SR runs from one camera (no viser here: testable alone).

The viewer renders the browser's current camera with our renderer for the left and the right model and
shows the two images next to each other; `LatestWorker` keeps that off the server's threads and drops
stale cameras while the user drags."""
import threading
import time
import traceback

import numpy as np

SIDE_WIDTHS = ("240", "320", "480", "640")
MAX_ASPECT = 4.0  # a very wide/tall browser window would give a degenerate image


def default_pair(iterations, current=None):
    """(left, right) to compare first: the LR model on the left, the first SR run (else the current
    model, else the LR model again) on the right."""
    left = iterations[0]
    others = [it for it in iterations if it != left]
    right = others[0] if others else left
    if current is not None and current != left:
        right = current
    return left, right


def compare_size(side_width, aspect):
    """(width, height) of one side: `side_width` wide at the browser's aspect (width / height)."""
    aspect = float(np.clip(aspect if aspect and aspect > 0 else 4 / 3, 1 / MAX_ASPECT, MAX_ASPECT))
    w = max(16, int(side_width))
    return w, max(16, int(round(w / aspect)))


def short_label(iteration):
    return f"LR 3DGS {iteration}" if str(iteration).isdigit() else f"SR {iteration}"


def _put_label(img, text):
    import cv2
    scale = max(0.35, img.shape[1] / 640)
    thick = 1 if scale < 0.8 else 2
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = 3
    cv2.rectangle(img, (0, 0), (min(img.shape[1] - 1, tw + 2 * pad), th + base + 2 * pad), (0, 0, 0), -1)
    cv2.putText(img, text, (pad, th + pad), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)


def side_by_side(left, right, left_text=None, right_text=None, gap=4):
    """[left | gap | right] as one uint8 HxWx3 image; each side's label is drawn in its top-left corner
    so a screenshot still says which model is which."""
    left, right = np.asarray(left, np.uint8), np.asarray(right, np.uint8)
    h = max(left.shape[0], right.shape[0])

    def pad(img):
        out = np.zeros((h, img.shape[1], 3), np.uint8)
        out[:img.shape[0]] = img[..., :3]
        return out
    left, right = pad(left), pad(right)
    if left_text:
        _put_label(left, left_text)
    if right_text:
        _put_label(right, right_text)
    sep = np.full((h, gap, 3), 255, np.uint8)
    return np.concatenate([left, sep, right], axis=1)


def split_side_by_side(image, gap=4):
    """The (left, right) halves of a side_by_side image (labels included)."""
    w = (image.shape[1] - gap) // 2
    return image[:, :w], image[:, w + gap:]


class LatestWorker:
    """One daemon thread that runs fn(request) for the newest request only.

    Requests that arrive while it works replace each other (latest wins), so a camera being dragged
    never queues up renders, and callers (the server's callbacks) never wait. At most one run starts
    per `min_interval` seconds."""

    def __init__(self, fn, min_interval=0.0, name="viewer-compare", log=None):
        self._fn, self._min_interval, self._log = fn, float(min_interval), log
        self._cond = threading.Condition()
        self._pending, self._has_pending, self._busy, self._stopped = None, False, False, False
        self.runs = 0  # requests actually run (the rest were superseded)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, request):
        with self._cond:
            self._pending, self._has_pending = request, True
            self._cond.notify_all()

    def _loop(self):
        last = -float("inf")
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._has_pending or self._stopped)
                if self._stopped:
                    return
            delay = last + self._min_interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # more requests may land meanwhile; only the newest runs
            with self._cond:
                if self._stopped:
                    return
                request, self._pending, self._has_pending, self._busy = self._pending, None, False, True
            try:
                self._fn(request)
            except Exception:  # fn reports its own errors; this keeps the thread alive regardless
                if self._log:
                    self._log("compare worker:\n" + traceback.format_exc())
            finally:
                last = time.monotonic()
                with self._cond:
                    self.runs += 1
                    self._busy = False
                    self._cond.notify_all()

    def wait_idle(self, timeout=None):
        """True once nothing is pending or running (False after `timeout` seconds)."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._has_pending or self._busy) or self._stopped, timeout)

    def stop(self):
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
