"""The tiny StableSR oracle's weights, rebuilt from its manifest (tests/fixtures/stablesr-tiny/README.md),
and helpers to write them as the released files' layout for loader tests and end-to-end runs."""
import json
import os
import zlib
from typing import Dict, Tuple

import numpy as np
import torch

from sr.stablesr.config import TINY
from sr.stablesr.schedule import linear_alphas_cumprod

MASTER_SEED = 0x3D5E


def fixture_value(key: str, shape) -> np.ndarray:
    """The oracle's deterministic parameter value for `key` (README recipe), float32."""
    seed = (zlib.crc32(key.encode("utf-8")) ^ MASTER_SEED) & 0xFFFFFFFF
    n = np.random.RandomState(seed).standard_normal(size=tuple(shape))
    if len(shape) >= 2:
        value = n / np.sqrt(np.prod(shape[1:]))
    elif key.endswith(".weight"):
        value = 1 + 0.1 * n
    else:
        value = 0.1 * n
    return value.astype(np.float16).astype(np.float32)


def schedule_buffers(num_steps=1000, linear_start=0.00085, linear_end=0.012) -> Dict[str, np.ndarray]:
    """The 12 buffers latent-diffusion registers for the linear schedule (float32)."""
    betas = np.linspace(linear_start ** 0.5, linear_end ** 0.5, num_steps, dtype=np.float64) ** 2
    ac = linear_alphas_cumprod(num_steps, linear_start, linear_end)
    ac_prev = np.append(1.0, ac[:-1])
    var = betas * (1 - ac_prev) / (1 - ac)
    out = dict(betas=betas, alphas_cumprod=ac, alphas_cumprod_prev=ac_prev, sqrt_alphas_cumprod=np.sqrt(ac),
               sqrt_one_minus_alphas_cumprod=np.sqrt(1 - ac), log_one_minus_alphas_cumprod=np.log(1 - ac),
               sqrt_recip_alphas_cumprod=np.sqrt(1 / ac), sqrt_recipm1_alphas_cumprod=np.sqrt(1 / ac - 1),
               posterior_variance=var, posterior_log_variance_clipped=np.log(np.maximum(var, 1e-20)),
               posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1 - ac),
               posterior_mean_coef2=(1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac))
    return {k: v.astype(np.float32) for k, v in out.items()}


def rebuild_fixture_state_dicts(manifest_path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(stablesr state dict, cfw state dict) in the original key layout, as the oracle had them."""
    with open(manifest_path) as f:
        manifest = json.load(f)["state_dicts"]
    buffers = schedule_buffers()
    out = []
    for name in ("stablesr_tiny", "cfw_tiny"):
        sd = {}
        for item in manifest[name]:
            key, shape = item["key"], item["shape"]
            value = buffers[key] if item["kind"] == "buffer" else fixture_value(key, shape)
            sd[key] = torch.from_numpy(np.ascontiguousarray(value)).reshape(shape)
        out.append(sd)
    return out[0], out[1]


def save_tiny_weights(folder: str, manifest_path: str, context: torch.Tensor = None,
                      safetensors: bool = False) -> str:
    """Write the oracle weights as a `--sr_weights` folder: stablesr_turbo + vqgan_cfw_00011 files
    (Lightning `{"state_dict": ...}` .ckpt, or .safetensors), the tiny `stablesr_config.json` and the
    oracle's fixed empty-prompt context."""
    os.makedirs(folder, exist_ok=True)
    sd, cfw = rebuild_fixture_state_dicts(manifest_path)
    if safetensors:
        from safetensors.torch import save_file
        save_file(sd, os.path.join(folder, "stablesr_turbo.safetensors"))
        save_file(cfw, os.path.join(folder, "vqgan_cfw_00011.safetensors"))
    else:
        torch.save({"state_dict": sd, "global_step": 0}, os.path.join(folder, "stablesr_turbo.ckpt"))
        torch.save({"state_dict": {**cfw, "loss.logvar": torch.zeros(())}}, os.path.join(folder, "vqgan_cfw_00011.ckpt"))
    TINY.save(folder)
    if context is not None:
        from safetensors.torch import save_file
        save_file({"context": context.float().contiguous()}, os.path.join(folder, "empty_prompt_embedding.safetensors"))
    return folder
