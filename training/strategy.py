"""Densification as a strategy object: the training routine asks it, it does not contain it."""
from dataclasses import dataclass, field
from typing import Callable, Optional

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
    max_screen_size: int = 20             # screen_size_pruning: prune max radii above this (pixels)
    world_size_fraction: float = 0.1      # after the first reset, prune world scales above this x extent
    # Off as in the references: 3DGS / Mip-Splatting zero max_radii2D in densification_postfix (run by
    # every densify_and_clone) before their size test, so `max_radii2D > 20` never fires there.
    screen_size_pruning: bool = False
    white_background: bool = False        # also reset at densify_from_iter (3DGS, for Blender scenes)
    seed: int = 0                         # seeds the split samples
    _state: dict = field(default_factory=dict, repr=False)
    _generator: Optional[torch.Generator] = field(default=None, repr=False)
    _scratch: tuple = field(default=(), repr=False)  # per-iteration temporaries (not state)

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device="cpu").manual_seed(self.seed)
        return self._generator

    @classmethod
    def from_opt(cls, opt, white_background=False, seed=0):
        return cls(densify_from_iter=opt.densify_from_iter, densify_until_iter=opt.densify_until_iter,
                   densification_interval=opt.densification_interval,
                   opacity_reset_interval=opt.opacity_reset_interval,
                   grad_threshold=opt.densify_grad_threshold, percent_dense=opt.percent_dense,
                   min_opacity=opt.min_opacity, max_screen_size=opt.max_screen_size,
                   screen_size_pruning=opt.screen_size_pruning, white_background=white_background, seed=seed)

    def reset_state(self, n, device="cpu"):
        self._state = {k: torch.zeros(n, device=device) for k in ("grad_accum", "denom", "max_radii")}

    def _scratch_buffers(self, like):
        """Temporaries [N] and [N, 2] and a zero, like `like`, reused while N and the device stay."""
        if not self._scratch or self._scratch[0].shape != like.shape or self._scratch[0].device != like.device:
            self._scratch = (torch.empty_like(like), like.new_empty(like.shape[0], 2), like.new_zeros(()))
        return self._scratch

    def state_dict(self) -> dict:
        return {"stats": dict(self._state), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict, device=None):
        """`device`: where the statistics go (the model's device; a checkpoint may come from another)."""
        self._state = {k: (v.to(device) if device is not None else v) for k, v in state["stats"].items()}
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])

    def step_post_backward(self, iteration, gaussians, render_pkg, camera, scene_extent,
                           on_densified: Optional[Callable[[], None]] = None) -> bool:
        """Accumulate statistics and densify/prune/reset when due. Returns True if the set of
        Gaussians changed. on_densified() runs right after densify/prune, before an opacity reset of
        the same iteration (Mip-Splatting recomputes its 3D filter there, and the reset uses it)."""
        if iteration >= self.densify_until_iter:
            return False
        n = gaussians.num_points
        if not self._state or self._state["grad_accum"].shape[0] != n:
            self.reset_state(n, gaussians.get_xyz.device)
        st = self._state
        # masked updates with torch.where, not boolean indexing: no host sync per iteration on a GPU
        # (x + 0 and max(x, x) are exact, so the statistics equal the indexed version bit for bit);
        # in place through two reused scratch buffers, so no per-iteration [N] allocations
        vis = render_pkg["visibility_filter"]
        tmp, tmp2, zero = self._scratch_buffers(st["max_radii"])
        tmp.copy_(render_pkg["radii"])
        torch.maximum(st["max_radii"], tmp, out=tmp)
        torch.where(vis, tmp, st["max_radii"], out=st["max_radii"])
        grad = render_pkg["viewspace_points"].grad
        if grad is not None:
            torch.mul(grad[:, :2], grad.new_tensor([camera.width * 0.5, camera.height * 0.5]), out=tmp2)
            torch.linalg.vector_norm(tmp2, dim=-1, out=tmp)
            st["grad_accum"].add_(torch.where(vis, tmp, zero, out=tmp))
            st["denom"].add_(vis)

        changed = False
        if iteration > self.densify_from_iter and iteration % self.densification_interval == 0:
            # 3DGS prunes by size (world scale; nominally screen radius) only after the first opacity
            # reset; without resets (interval 0, which 3DGS cannot run) there is no size pruning
            resets = self.opacity_reset_interval > 0
            size_limit = self.max_screen_size if resets and iteration > self.opacity_reset_interval else None
            self.densify_and_prune(gaussians, scene_extent, size_limit)
            changed = True
            if on_densified is not None:
                on_densified()
        if (self.opacity_reset_interval > 0 and iteration % self.opacity_reset_interval == 0) or (
                self.white_background and iteration == self.densify_from_iter):
            densify_ops.reset_opacity(gaussians)
        return changed

    @torch.no_grad()
    def densify_and_prune(self, gaussians, scene_extent, size_limit):
        st = self._state
        grads = st["grad_accum"] / st["denom"]
        grads = torch.where(torch.isfinite(grads), grads, torch.zeros_like(grads))
        big = gaussians.get_scaling.max(dim=1).values > self.percent_dense * scene_extent
        hot = grads >= self.grad_threshold
        # Screen-size pruning looks at Gaussians that existed before this step only (new ones have
        # not been seen yet), so carry that flag through the clone and split.
        screen = size_limit is not None and self.screen_size_pruning
        too_big_on_screen = st["max_radii"] > size_limit if screen else torch.zeros_like(hot)

        n = gaussians.num_points
        densify_ops.duplicate(gaussians, hot & ~big)
        n_clones = gaussians.num_points - n
        # Clones were appended at the end; they are not split in the same step.
        no = lambda k: torch.zeros(k, dtype=torch.bool, device=hot.device)  # noqa: E731
        split_mask = torch.cat([hot & big, no(n_clones)])
        n_children = 2 * int(split_mask.sum())
        densify_ops.split(gaussians, split_mask, generator=self.generator)
        flag = torch.cat([too_big_on_screen, no(n_clones + n_children)])
        flag = flag[~torch.cat([split_mask, no(n_children)])]

        prune = gaussians.get_opacity.squeeze(1) < self.min_opacity
        if size_limit is not None:
            prune |= flag
            prune |= gaussians.get_scaling.max(dim=1).values > self.world_size_fraction * scene_extent
        densify_ops.remove(gaussians, prune)
        self.reset_state(gaussians.num_points, gaussians.get_xyz.device)
