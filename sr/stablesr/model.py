"""`StableSRModel`: the networks of StableSR-Turbo (UNet + SFT, structure encoder, SD VAE, CFW autoencoder,
schedule, empty-prompt context) built from the two released checkpoints, and the steps of its sampler.

Latents follow the original: `scale_factor` (0.18215) x VAE latents. Images are in [-1, 1] here; the
DiffusionSR adapter (sr.stablesr.adapter) converts from/to [0, 1].
"""
import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from sr.stablesr import convert
from sr.stablesr.autoencoder import CFWAutoencoder, build_sd_vae, gaussian_sample
from sr.stablesr.config import REAL, StableSRConfig
from sr.stablesr.schedule import RespacedSchedule, linear_alphas_cumprod
from sr.stablesr.tiler import batched, blend_tiles, gaussian_tile_weights, tile_grid
from utils.errors import ModelNotFoundError


class StableSRModel(nn.Module):
    def __init__(self, cfg: StableSRConfig = REAL, context: Optional[torch.Tensor] = None, num_steps: int = 4):
        super().__init__()
        from sr.stablesr.unet import StableSRUNet, StructureEncoder
        self.config = cfg
        self.unet = StableSRUNet(cfg.unet)
        self.struct = StructureEncoder(cfg.struct)
        self.vae = build_sd_vae(cfg.vae, cfg.scale_factor)
        self.cfw = CFWAutoencoder(cfg.cfw)
        self.schedule = RespacedSchedule.create(num_steps, cfg.num_train_timesteps, cfg.linear_start, cfg.linear_end)
        ctx = context if context is not None else torch.zeros(1, cfg.context_tokens, cfg.unet.context_dim)
        self.register_buffer("context", ctx.float().reshape(1, -1, cfg.unet.context_dim), persistent=False)

    # ---- loading ------------------------------------------------------------------------------
    def set_context(self, context: torch.Tensor):
        """Replace the empty-prompt embedding ([1, tokens, context_dim]; zeros until set)."""
        self.context = context.float().reshape(1, -1, self.config.unet.context_dim).to(self.context.device)

    def load_stablesr_state_dict(self, sd: Dict[str, torch.Tensor], source: str = "stablesr checkpoint",
                                 qkv_order: str = "legacy"):
        """Fill UNet, structure encoder and SD VAE from the original `stablesr_turbo.ckpt` layout."""
        cfg = self.config
        heads = cfg.struct.num_heads
        parts = [("UNet", self.unet, convert.unet_key_map(cfg.unet)),
                 ("structure encoder", self.struct, convert.struct_key_map(cfg.struct)),
                 ("VAE", self.vae, convert.vae_key_map(cfg.vae, prefix="first_stage_model."))]
        leftovers = set(sd)
        for what, module, km in parts:
            converted, unmatched = convert.convert_state_dict(sd, km, legacy_heads=lambda _: heads,
                                                              qkv_order=qkv_order)
            convert.load_into(module, converted, what, source)
            leftovers &= set(unmatched)
        convert.check_unknown(sorted(leftovers), convert.STABLESR_IGNORED_PREFIXES, source,
                              allowed=convert.SCHEDULE_BUFFERS)
        self._check_schedule(sd, source)

    def load_cfw_state_dict(self, sd: Dict[str, torch.Tensor], source: str = "CFW checkpoint"):
        """Fill the CFW autoencoder from the original `vqgan_cfw_00011.ckpt` layout."""
        converted, unmatched = convert.convert_state_dict(sd, convert.vae_key_map(self.config.cfw, cfw=True))
        convert.load_into(self.cfw, converted, "CFW autoencoder", source)
        convert.check_unknown(unmatched, convert.CFW_IGNORED_PREFIXES, source)

    def _check_schedule(self, sd, source):
        if "alphas_cumprod" not in sd:
            return
        got = sd["alphas_cumprod"].double().cpu()
        want = torch.from_numpy(linear_alphas_cumprod(self.config.num_train_timesteps, self.config.linear_start,
                                                      self.config.linear_end))
        if got.shape != want.shape or not torch.allclose(got, want, atol=1e-6):
            raise ModelNotFoundError(f"{source}: its noise schedule (alphas_cumprod) is not the linear "
                                     f"{self.config.linear_start}..{self.config.linear_end} one StableSR uses")

    # ---- networks -----------------------------------------------------------------------------
    @property
    def dtype(self):
        return next(self.unet.parameters()).dtype

    def encode_moments(self, images: torch.Tensor) -> torch.Tensor:
        """SD VAE posterior moments [B, 8, H/8, W/8] of images in [-1, 1]."""
        return self.vae.quant_conv(self.vae.encoder(images))

    def encode_sample(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """scale_factor x a posterior sample (the original's get_first_stage_encoding)."""
        return self.config.scale_factor * gaussian_sample(self.encode_moments(images), noise)

    def encode_mean(self, images: torch.Tensor) -> torch.Tensor:
        return self.config.scale_factor * self.encode_moments(images).chunk(2, dim=1)[0]

    def eps(self, x: torch.Tensor, t_ori: int, struct_latent: torch.Tensor, context=None) -> torch.Tensor:
        """UNet noise estimate for latents x [B, 4, h, w] at original timestep t_ori; the structure
        encoder reads `struct_latent` (the LR image's latent, same size) at the same timestep."""
        t = torch.full((x.shape[0],), int(t_ori), dtype=torch.long, device=x.device)
        ctx = (self.context if context is None else context).to(x.device, x.dtype)
        ctx = ctx.expand(x.shape[0], -1, -1) if ctx.shape[0] == 1 else ctx
        return self.unet(x, t, ctx, self.struct(struct_latent, t))

    def eps_tiled(self, x: torch.Tensor, t_ori: int, struct_latent: torch.Tensor, tile: int, overlap: int,
                  tile_batch: int = 1, symmetric_weights: bool = False) -> torch.Tensor:
        """`eps` on overlapping tiles blended with the original's Gaussian weights (one image at a time;
        `tile_batch` tiles per network call). Falls back to `eps` when the latent fits one tile."""
        h, w = x.shape[-2:]
        if h < tile or w < tile:
            return self.eps(x, t_ori, struct_latent)
        weights = gaussian_tile_weights(tile, symmetric_weights)
        grid = tile_grid(h, w, tile, overlap)
        out = []
        for b in range(x.shape[0]):
            preds = []
            for group in batched(grid, tile_batch):
                xs = torch.cat([x[b:b + 1, :, y:y + tile, x0:x0 + tile] for y, x0 in group])
                ss = torch.cat([struct_latent[b:b + 1, :, y:y + tile, x0:x0 + tile] for y, x0 in group])
                preds.extend(self.eps(xs, t_ori, ss).float().split(1))
            out.append(blend_tiles((1,) + tuple(x.shape[1:]), grid, preds, tile, weights))
        return torch.cat(out)

    def decode(self, x0: torch.Tensor, lr_images: torch.Tensor, fusion_w: float = 0.5,
               enc_feats: Optional[Dict[int, torch.Tensor]] = None) -> torch.Tensor:
        """CFW decode of latents x0 (scaled) guided by the LR images [-1, 1] at output size -> [-1, 1]-ish."""
        if enc_feats is None:
            enc_feats = self.cfw.encode_features(lr_images)
        return self.cfw.decode(x0 / self.config.scale_factor, enc_feats, fusion_w)


def build_from_state_dicts(stablesr_sd: Dict[str, torch.Tensor], cfw_sd: Dict[str, torch.Tensor],
                           cfg: StableSRConfig = REAL, context: Optional[torch.Tensor] = None,
                           qkv_order: str = "legacy", sources: Tuple[str, str] = ("stablesr", "cfw"),
                           device="cpu") -> StableSRModel:
    """The model built on `device` explicitly (not torch's default device; on CUDA the random init the
    weights then replace runs on the GPU), filled strictly from the two state dicts."""
    with torch.device(device):
        model = StableSRModel(cfg, context)
    model.load_stablesr_state_dict(stablesr_sd, sources[0], qkv_order=qkv_order)
    model.load_cfw_state_dict(cfw_sd, sources[1])
    return model.eval().requires_grad_(False)


STABLESR_FILES = ("stablesr_turbo.ckpt", "stablesr_turbo.safetensors")
CFW_FILES = ("vqgan_cfw_00011.ckpt", "vqgan_cfw_00011.safetensors")
CONTEXT_FILE = "empty_prompt_embedding.safetensors"


def find_weight_files(folder: str) -> Tuple[str, str]:
    """(stablesr path, cfw path) in `folder`, or ModelNotFoundError saying what is missing."""
    if not os.path.isdir(folder):
        raise ModelNotFoundError(f"StableSR weights folder '{folder}' does not exist; pass --sr_weights DIR "
                                 f"holding {STABLESR_FILES[0]} and {CFW_FILES[0]} (see README, StableSR-Turbo)")
    found = []
    for names in (STABLESR_FILES, CFW_FILES):
        path = next((os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))), None)
        if path is None:
            raise ModelNotFoundError(f"StableSR weights folder '{folder}' has no {' or '.join(names)}; download "
                                     "it from the StableSR authors' release (see README, StableSR-Turbo)")
        found.append(path)
    return found[0], found[1]
