"""A stop rule for one SR fit: end it when the renders stop getting closer to the targets they are fitted to.

The agreement of a window is the PSNR of its mean squared error between each iteration's render and its
target (the view's diffusion proposal in 3DSR), so it costs no extra render. A window is a whole number
of epochs, so every view counts equally in it. After each window from the second on, the fit stops when
the agreement rose by less than `min_gain_db` over the window before: the consistent structure is in,
and further iterations mostly fit each view's own hallucinations.
"""
import math
from typing import List, Optional

import torch

from utils.image_utils import mse


def window_iterations(num_views: int, min_iterations: int) -> int:
    """The window: the fewest whole epochs (num_views iterations each) that reach min_iterations."""
    v = max(1, int(num_views))
    return v * max(1, math.ceil(int(min_iterations) / v))


def mse_psnr(mse: float) -> float:
    """PSNR (dB, images in [0, 1]) of a mean squared error."""
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


class AgreementStop:
    """Feed it every iteration's (render, target); `update` answers whether the fit should stop now."""

    def __init__(self, num_views: int, min_gain_db: float, window: int = 100):
        if min_gain_db <= 0:
            raise ValueError(f"min_gain_db must be positive, got {min_gain_db}")
        self.window = window_iterations(num_views, window)
        self.min_gain_db = float(min_gain_db)
        self.agreement: List[float] = []  # per completed window, dB
        self._sum: Optional[torch.Tensor] = None  # device-side sum of this window's MSEs: one sync per window
        self._count = 0

    def update(self, render: torch.Tensor, target: torch.Tensor) -> bool:
        with torch.no_grad():
            err = mse(render.detach().clamp(0, 1), target.to(render.device))
        self._sum = err if self._sum is None else self._sum + err
        self._count += 1
        if self._count < self.window:
            return False
        self.agreement.append(mse_psnr(float(self._sum) / self._count))
        self._sum, self._count = None, 0
        return len(self.agreement) >= 2 and self.agreement[-1] - self.agreement[-2] < self.min_gain_db

    @property
    def last_gain_db(self) -> Optional[float]:
        return self.agreement[-1] - self.agreement[-2] if len(self.agreement) >= 2 else None
