"""Checkpoint conversion: the released StableSR files (original latent-diffusion key layout) -> our modules.

    stablesr_turbo.ckpt     model.diffusion_model.*   -> StableSRUNet      (`unet.`)
                            structcond_stage_model.*  -> StructureEncoder
                            first_stage_model.*       -> SD VAE (AutoencoderKL)
                            betas, alphas_cumprod, ... (schedule buffers: recomputed, checked if present)
                            cond_stage_model.*        (OpenCLIP text encoder: ignored)
    vqgan_cfw_00011.ckpt    encoder.*, decoder.*, quant_conv.*, post_quant_conv.* -> CFWAutoencoder
                            loss.*                    (training loss: ignored)

Loading is strict: every parameter our modules expect must be present with its shape (1x1 convs of the
original may fill linear layers of the same size), unknown keys are tolerated only under the ignored
prefixes above, and anything else raises ModelNotFoundError naming the first offending keys.
`.ckpt` (a Lightning `{"state_dict": ...}` or a bare state dict) and `.safetensors` are read.
"""
import math
import os
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from sr.stablesr.config import StructEncoderConfig, UNetConfig, VAEConfig
from utils.errors import ModelNotFoundError

SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")
STABLESR_IGNORED_PREFIXES = ("cond_stage_model.", "model_ema.", "lvlb_weights", "logvar")
CFW_IGNORED_PREFIXES = ("loss.",)
QKV_ORDERS = ("legacy", "chunk")

# ---- leaf renames per module kind ----------------------------------------------------------------
_OPENAI_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                  "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
                  "spade.param_free_norm": "sft.norm", "spade.mlp_shared.0": "sft.shared",
                  "spade.mlp_gamma": "sft.gamma", "spade.mlp_beta": "sft.beta"}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "nin_shortcut": "conv_shortcut"}
_FUSE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_out": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_LEGACY_ATTN = {"norm": "group_norm", "proj_out": "to_out.0"}  # qkv is split separately


def _rename_leaf(leaf: str, table: dict) -> Optional[str]:
    """'in_layers.0.weight' -> 'norm1.weight' using the longest module-path match in `table`."""
    module, _, param = leaf.rpartition(".")
    if module in table:
        return f"{table[module]}.{param}"
    return None


class KeyMap:
    """ldm prefix -> (our prefix, kind); kind says how the leaf names below the prefix change."""

    def __init__(self):
        self.entries: List[Tuple[str, str, str]] = []

    def add(self, src: str, dst: str, kind: str):
        self.entries.append((src, dst, kind))

    def lookup(self, key: str) -> Optional[Tuple[str, str, str, str]]:
        best = None
        for src, dst, kind in self.entries:
            if key.startswith(src) and (best is None or len(src) > len(best[0])):
                best = (src, dst, kind)
        if best is None:
            return None
        src, dst, kind = best
        return src, dst, kind, key[len(src):]


def unet_key_map(cfg: UNetConfig, prefix: str = "model.diffusion_model.", dst: str = "unet.") -> KeyMap:
    """ldm UNetModelDualcondV2 block indices -> diffusers UNet2DConditionModel names."""
    km = KeyMap()
    km.add(prefix + "time_embed.0.", dst + "time_embedding.linear_1.", "same")
    km.add(prefix + "time_embed.2.", dst + "time_embedding.linear_2.", "same")
    km.add(prefix + "input_blocks.0.0.", dst + "conv_in.", "same")
    n, nrb, attn = len(cfg.channel_mult), cfg.num_res_blocks, set(cfg.attention_levels)
    idx = 1
    for lv in range(n):
        for j in range(nrb):
            km.add(f"{prefix}input_blocks.{idx}.0.", f"{dst}down_blocks.{lv}.resnets.{j}.", "openai_resnet")
            if lv in attn:
                km.add(f"{prefix}input_blocks.{idx}.1.", f"{dst}down_blocks.{lv}.attentions.{j}.", "same")
            idx += 1
        if lv != n - 1:
            km.add(f"{prefix}input_blocks.{idx}.0.op.", f"{dst}down_blocks.{lv}.downsamplers.0.conv.", "same")
            idx += 1
    km.add(prefix + "middle_block.0.", dst + "mid_block.resnets.0.", "openai_resnet")
    km.add(prefix + "middle_block.1.", dst + "mid_block.attentions.0.", "same")
    km.add(prefix + "middle_block.2.", dst + "mid_block.resnets.1.", "openai_resnet")
    idx = 0
    for u, lv in enumerate(reversed(range(n))):
        for j in range(nrb + 1):
            km.add(f"{prefix}output_blocks.{idx}.0.", f"{dst}up_blocks.{u}.resnets.{j}.", "openai_resnet")
            if lv in attn:
                km.add(f"{prefix}output_blocks.{idx}.1.", f"{dst}up_blocks.{u}.attentions.{j}.", "same")
            if j == nrb and lv != 0:
                k = 2 if lv in attn else 1
                km.add(f"{prefix}output_blocks.{idx}.{k}.conv.", f"{dst}up_blocks.{u}.upsamplers.0.conv.", "same")
            idx += 1
    km.add(prefix + "out.0.", dst + "conv_norm_out.", "same")
    km.add(prefix + "out.2.", dst + "conv_out.", "same")
    return km


def struct_key_map(cfg: StructEncoderConfig, prefix: str = "structcond_stage_model.", dst: str = "") -> KeyMap:
    """ldm EncoderUNetModelWT -> StructureEncoder."""
    km = KeyMap()
    km.add(prefix + "time_embed.0.", dst + "time_embedding.linear_1.", "same")
    km.add(prefix + "time_embed.2.", dst + "time_embedding.linear_2.", "same")
    km.add(prefix + "input_blocks.0.0.", dst + "conv_in.", "same")
    n, nrb = len(cfg.channel_mult), cfg.num_res_blocks
    idx, taps = 1, 0
    for lv in range(n):
        for j in range(nrb):
            km.add(f"{prefix}input_blocks.{idx}.0.", f"{dst}levels.{lv}.resnets.{j}.", "openai_resnet")
            if lv in cfg.attention_levels:
                km.add(f"{prefix}input_blocks.{idx}.1.", f"{dst}levels.{lv}.attentions.{j}.", "legacy_attn")
            idx += 1
        if lv != n - 1:
            km.add(f"{prefix}input_blocks.{idx}.0.op.", f"{dst}levels.{lv}.downsampler.conv.", "same")
            idx += 1
            taps += 1
    km.add(prefix + "middle_block.0.", dst + "mid.resnets.0.", "openai_resnet")
    km.add(prefix + "middle_block.1.", dst + "mid.attentions.0.", "legacy_attn")
    km.add(prefix + "middle_block.2.", dst + "mid.resnets.1.", "openai_resnet")
    for i in range(taps + 1):
        km.add(f"{prefix}fea_tran.{i}.", f"{dst}fea_tran.{i}.", "openai_resnet")
    return km


def vae_key_map(cfg: VAEConfig, prefix: str = "", dst: str = "", cfw: bool = False) -> KeyMap:
    """ldm AutoencoderKL (Encoder/Decoder or Decoder_Mix) -> diffusers AutoencoderKL (+ CFW fusion)."""
    km = KeyMap()
    n, nrb = len(cfg.ch_mult), cfg.num_res_blocks
    vae = dst + ("vae." if cfw else "")
    for part in ("encoder", "decoder"):
        p, d = f"{prefix}{part}.", f"{vae}{part}."
        km.add(p + "conv_in.", d + "conv_in.", "same")
        km.add(p + "mid.block_1.", d + "mid_block.resnets.0.", "vae_resnet")
        km.add(p + "mid.attn_1.", d + "mid_block.attentions.0.", "vae_attn")
        km.add(p + "mid.block_2.", d + "mid_block.resnets.1.", "vae_resnet")
        km.add(p + "norm_out.", d + "conv_norm_out.", "same")
        km.add(p + "conv_out.", d + "conv_out.", "same")
    for lv in range(n):
        for j in range(nrb):
            km.add(f"{prefix}encoder.down.{lv}.block.{j}.", f"{vae}encoder.down_blocks.{lv}.resnets.{j}.", "vae_resnet")
        if lv != n - 1:
            km.add(f"{prefix}encoder.down.{lv}.downsample.conv.", f"{vae}encoder.down_blocks.{lv}.downsamplers.0.conv.",
                   "same")
        u = n - 1 - lv
        for j in range(nrb + 1):
            km.add(f"{prefix}decoder.up.{lv}.block.{j}.", f"{vae}decoder.up_blocks.{u}.resnets.{j}.", "vae_resnet")
        if lv != 0:
            km.add(f"{prefix}decoder.up.{lv}.upsample.conv.", f"{vae}decoder.up_blocks.{u}.upsamplers.0.conv.", "same")
        if cfw and 0 < lv < n - 1:
            f = f"{prefix}decoder.fusion_layer_{lv}."
            km.add(f + "encode_enc_1.", f"{dst}fusion.{lv}.enter.", "fuse_resnet")
            for r in range(cfg.num_fuse_block):
                km.add(f"{f}encode_enc_2.{r}.", f"{dst}fusion.{lv}.rrdbs.{r}.", "same")
            km.add(f + "encode_enc_3.", f"{dst}fusion.{lv}.leave.", "fuse_resnet")
    km.add(prefix + "quant_conv.", vae + "quant_conv.", "same")
    km.add(prefix + "post_quant_conv.", vae + "post_quant_conv.", "same")
    return km


_LEAF_TABLES = {"openai_resnet": _OPENAI_RESNET, "vae_resnet": _VAE_RESNET, "fuse_resnet": _FUSE_RESNET,
                "vae_attn": _VAE_ATTN, "legacy_attn": _LEGACY_ATTN}


def split_legacy_qkv(weight: torch.Tensor, num_heads: int, order: str = "legacy") -> Tuple[torch.Tensor, ...]:
    """The original's fused qkv projection [3C, C(, 1)] -> (q, k, v) [C, C(...)].

    "legacy" (QKVAttentionLegacy, what the released encoder uses): rows are grouped per head, each head
    holding its q, k, v blocks in turn. "chunk" (QKVAttention, new order) is q | k | v; it is kept only
    to show the fixture tells them apart.
    """
    if order == "chunk":
        return tuple(weight.chunk(3, dim=0))
    if order != "legacy":
        raise ValueError(f"unknown qkv order '{order}' ({', '.join(QKV_ORDERS)})")
    three_c = weight.shape[0]
    c = three_c // (3 * num_heads)
    w = weight.reshape(num_heads, 3, c, *weight.shape[1:])
    return tuple(w[:, i].reshape(num_heads * c, *weight.shape[1:]) for i in range(3))


def convert_state_dict(source: Dict[str, torch.Tensor], key_map: KeyMap, *, legacy_heads: Optional[Callable] = None,
                       qkv_order: str = "legacy") -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename `source`'s keys with `key_map`; returns (converted, keys no entry matched)."""
    out, unmatched = {}, []
    for key, value in source.items():
        hit = key_map.lookup(key)
        if hit is None:
            unmatched.append(key)
            continue
        _, dst, kind, leaf = hit
        if kind == "legacy_attn" and leaf.startswith("qkv."):
            heads = legacy_heads(dst) if legacy_heads is not None else 1
            for name, part in zip(("to_q", "to_k", "to_v"), split_legacy_qkv(value, heads, qkv_order)):
                out[f"{dst}{name}.{leaf[4:]}"] = part
            continue
        new_leaf = leaf if kind == "same" else _rename_leaf(leaf, _LEAF_TABLES[kind])
        if new_leaf is None:
            unmatched.append(key)
            continue
        out[dst + new_leaf] = value
    return out, unmatched


def match_state_dict(expected: Dict[str, torch.Size], converted: Dict[str, torch.Tensor], what: str,
                     source: str) -> Dict[str, torch.Tensor]:
    """`converted` checked against `expected` (name -> shape), reshaped where needed; or ModelNotFoundError.

    Every expected key must be present; a source of equal size whose shape differs only by singleton
    dims (an original 1x1 conv filling a linear layer, or a 1-D conv) is reshaped.
    """
    missing = [k for k in expected if k not in converted]
    extra = [k for k in converted if k not in expected]
    if missing:
        raise ModelNotFoundError(f"{source} lacks {len(missing)} {what} weight(s), e.g. {_few(missing)}: "
                                 "is it the right file (StableSR-Turbo / CFW), complete and not truncated?")
    if extra:
        raise ModelNotFoundError(f"{source} has {len(extra)} {what} weight(s) this architecture does not have, "
                                 f"e.g. {_few(extra)}: wrong model size? (a {_config_hint()})")
    ready = {}
    for k, shape in expected.items():
        value = converted[k]
        if tuple(value.shape) != tuple(shape):
            squeeze = lambda s: tuple(d for d in s if d != 1)  # noqa: E731
            if value.numel() != math.prod(shape) or squeeze(value.shape) != squeeze(shape):
                raise ModelNotFoundError(f"{source}: {what} weight '{k}' has shape {list(value.shape)}, expected "
                                         f"{list(shape)}: wrong model size? (a {_config_hint()})")
            value = value.reshape(shape)
        ready[k] = value
    return ready


def load_into(module: torch.nn.Module, converted: Dict[str, torch.Tensor], what: str, source: str):
    """Copy `converted` into `module` strictly (see `match_state_dict`)."""
    expected = module.state_dict()
    ready = match_state_dict({k: v.shape for k, v in expected.items()}, converted, what, source)
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in ready.items()}, strict=True)


def _few(keys: Iterable[str], n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _config_hint() -> str:
    from sr.stablesr.config import CONFIG_NAME
    return f"{CONFIG_NAME} beside the weights describes non-standard sizes"


# ---- files ------------------------------------------------------------------------------------------

def read_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """A state dict from a .ckpt/.pth/.bin (torch pickle, Lightning `state_dict` unwrapped) or .safetensors."""
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(path, device="cpu")
        # weights_only: a downloaded checkpoint must not run code; Lightning metadata is plain data
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated download, foreign format
        msg = str(exc).strip().splitlines()
        raise ModelNotFoundError(f"cannot read checkpoint {path} ({type(exc).__name__}: "
                                 f"{msg[0][:160] if msg else ''}); re-download it") from None
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ModelNotFoundError(f"{path} holds no state dict of tensors; is it a model checkpoint?")
    return payload


def check_unknown(unmatched: List[str], ignored_prefixes: Tuple[str, ...], source: str, allowed=()):
    unknown = [k for k in unmatched if not k.startswith(ignored_prefixes) and k not in allowed]
    if unknown:
        raise ModelNotFoundError(f"{source} has {len(unknown)} unexpected key(s), e.g. {_few(unknown)}: "
                                 "not a StableSR checkpoint of this layout")
