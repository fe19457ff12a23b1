"""Densification as a strategy object: the training routine asks it, it does not contain it."""
from dataclasses import dataclass, field
from typing import Optional

import torch

from training import densify_ops


@dataclass
class DensifyStrategy:
    """Adaptive density control of 3DGS (Kerbl et al. 2023, sec. 5.2); defaults are the paper's.

    Screen-space gradients are measured in NDC units (pixel gradient x W/2, H/2), the quantity the
    3DGS threshold 0.0002 was tuned for, whichever backend rendered the view.
    """
    densify_from_iter: int = 500          # start after a warm-up
    densify_until_iter: int = 15_000      # stop densifying (pruning by opacity stops too)
    densification_interval: int = 100     # densify every N iterations
    opacity_reset_interval: int = 3000    # cap opacities every N iterations (0: never)
    grad_threshold: float = 0.0002        # mean NDC gradient norm that marks under-reconstruction
    percent_dense: float = 0.01           # clone if max scale <= this x scene extent, else split
    min_opacity: float = 0.005            # prune below this opacity
    max_screen_size: int = 20             # prune radii above this (pixels) after the first reset
    world_size_fraction: float = 0.1      # ... and world scales above this x scene extent
    white_background: bool = False        # also reset at densify_from_iter (3DGS, for Blender scenes)
    seed: int = 0                         # seeds the split samples
    _state: dict = field(default_factory=dict, repr=False)
    _generator: Optional[torch.Generator] = field(default=None, repr=False)

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    @classmethod
    def from_opt(cls, opt, white_background=False, seed=0):
        return cls(densify_from_iter=opt.densify_from_iter, densify_until_iter=opt.densify_until_iter,
                   densification_interval=opt.densification_interval,
                   opacity_reset_interval=opt.opacity_reset_interval,
                   grad_threshold=opt.densify_grad_threshold, percent_dense=opt.percent_dense,
                   min_opacity=opt.min_opacity, max_screen_size=opt.max_screen_size,
                   white_background=white_background, seed=seed)

    def reset_state(self, n):
        self._state = {"grad_accum": torch.zeros(n), "denom": torch.zeros(n), "max_radii": torch.zeros(n)}

    def state_dict(self) -> dict:
        return {"stats": dict(self._state), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict):
        self._state = dict(state["stats"])
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])

    def step_post_backward(self, iteration, gaussians, render_pkg, camera, scene_extent) -> bool:
        """Accumulate statistics and densify/prune/reset when due. Returns True if the set of
        Gaussians changed (so callers refresh anything sized by N, e.g. the 3D filter)."""
        if iteration >= self.densify_until_iter:
            return False
        n = gaussians.num_points
        if not self._state or self._state["grad_accum"].shape[0] != n:
            self.reset_state(n)
        st = self._state
        vis = render_pkg["visibility_filter"]
        radii = render_pkg["radii"].to(st["max_radii"].dtype)
        st["max_radii"][vis] = torch.maximum(st["max_radii"][vis], radii[vis])
        grad = render_pkg["viewspace_points"].grad
        if grad is not None:
            ndc = grad[vis, :2] * torch.tensor([camera.width * 0.5, camera.height * 0.5])
            st["grad_accum"][vis] += ndc.norm(dim=-1)
            st["denom"][vis] += 1

        changed = False
        if iteration > self.densify_from_iter and iteration % self.densification_interval == 0:
            # 3DGS prunes big-on-screen Gaussians only after the first opacity reset; no resets, no such pruning
            resets = self.opacity_reset_interval > 0
            size_limit = self.max_screen_size if resets and iteration > self.opacity_reset_interval else None
            self.densify_and_prune(gaussians, scene_extent, size_limit)
            changed = True
        if (self.opacity_reset_interval > 0 and iteration % self.opacity_reset_interval == 0) or (
                self.white_background and iteration == self.densify_from_iter):
            densify_ops.reset_opacity(gaussians)
        return changed

    @torch.no_grad()
    def densify_and_prune(self, gaussians, scene_extent, size_limit):
        st = self._state
        grads = st["grad_accum"] / st["denom"]
        grads[~torch.isfinite(grads)] = 0.0
        big = gaussians.get_scaling.max(dim=1).values > self.percent_dense * scene_extent
        hot = grads >= self.grad_threshold
        # Screen-size pruning looks at Gaussians that existed before this step only (new ones have
        # not been seen yet), so carry that flag through the clone and split.
        too_big_on_screen = st["max_radii"] > size_limit if size_limit is not None else torch.zeros_like(hot)

        n = gaussians.num_points
        densify_ops.duplicate(gaussians, hot & ~big)
        n_clones = gaussians.num_points - n
        # Clones were appended at the end; they are not split in the same step.
        split_mask = torch.cat([hot & big, torch.zeros(n_clones, dtype=torch.bool)])
        n_children = 2 * int(split_mask.sum())
        densify_ops.split(gaussians, split_mask, generator=self.generator)
        flag = torch.cat([too_big_on_screen, torch.zeros(n_clones + n_children, dtype=torch.bool)])
        flag = flag[~torch.cat([split_mask, torch.zeros(n_children, dtype=torch.bool)])]

        prune = gaussians.get_opacity.squeeze(1) < self.min_opacity
        if size_limit is not None:
            prune |= flag
            prune |= gaussians.get_scaling.max(dim=1).values > self.world_size_fraction * scene_extent
        densify_ops.remove(gaussians, prune)
        self.reset_state(gaussians.num_points)
