"""StableSR's denoiser: diffusers' UNet2DConditionModel (the SD-2 layout) with spatial feature transform
(SFT) on the residual branch of every ResNet block, and the time-aware structure encoder that feeds it.

Wang et al. 2024 ("Exploiting Diffusion Prior for Real-World Image Super-Resolution", IJCV, sec. 3.2):
the structure encoder turns the LR latent (and the timestep) into feature maps at every UNet resolution;
each ResNet block's output branch h becomes GroupNorm(h) * (1 + gamma(s)) + beta(s), with gamma, beta
from 3x3 convs over the structure features s of h's width. The UNet itself is SD 2.1-base.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sr.stablesr.config import StructEncoderConfig, UNetConfig


class SFT(nn.Module):
    """out = GroupNorm(h) * (1 + gamma(s)) + beta(s), gamma/beta = 3x3 conv(ReLU(3x3 conv(s)))."""

    def __init__(self, channels: int, cond_channels: int, hidden: int = 128):
        super().__init__()
        self.norm = nn.GroupNorm(32, channels, eps=1e-5)
        self.shared = nn.Conv2d(cond_channels, hidden, 3, padding=1)
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, h, cond):
        actv = F.relu(self.shared(cond))
        return self.norm(h) * (1 + self.gamma(actv)) + self.beta(actv)


class _StructFeatures:
    """The structure features of the current UNet call, shared by its SFT blocks (keyed by width,
    as the original selects them: str(h.shape[-1]))."""

    def __init__(self):
        self.feats: Optional[Dict[str, torch.Tensor]] = None

    def get(self, width: int) -> torch.Tensor:
        if self.feats is None:
            raise RuntimeError("the StableSR UNet needs structure features: call StableSRUNet(x, t, context, struct)")
        try:
            return self.feats[str(width)]
        except KeyError:
            raise ValueError(f"no structure features of width {width} (have {sorted(self.feats, key=int)}); "
                             "the structure encoder must see the same latent size as the UNet") from None


def _sft_resnet_class():
    from diffusers.models.resnet import ResnetBlock2D

    class SFTResnetBlock2D(ResnetBlock2D):
        """diffusers' ResnetBlock2D (default time-embedding path) with SFT after its second conv."""

        def attach(self, cond_channels: int, hidden: int, features: _StructFeatures):
            self.sft = SFT(self.out_channels, cond_channels, hidden)
            self._features = features
            return self

        def forward(self, input_tensor, temb, *args, **kwargs):
            h = self.conv1(self.nonlinearity(self.norm1(input_tensor)))
            if temb is not None:
                h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
            h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
            h = self.sft(h, self._features.get(h.shape[-1]).to(h.dtype))
            x = self.conv_shortcut(input_tensor) if self.conv_shortcut is not None else input_tensor
            return (x + h) / self.output_scale_factor

    return SFTResnetBlock2D


def unet_diffusers_config(cfg: UNetConfig) -> dict:
    """UNet2DConditionModel arguments for the ldm UNetModelDualcondV2 numbers (SD-2 style)."""
    n = len(cfg.channel_mult)
    channels = tuple(cfg.model_channels * m for m in cfg.channel_mult)
    attn = set(cfg.attention_levels)
    return dict(
        sample_size=64, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if lv in attn else "DownBlock2D" for lv in range(n)),
        up_block_types=tuple("CrossAttnUpBlock2D" if lv in attn else "UpBlock2D" for lv in reversed(range(n))),
        block_out_channels=channels, layers_per_block=cfg.num_res_blocks, cross_attention_dim=cfg.context_dim,
        # diffusers' historical name: per-level number of *heads* (SD-2: 5, 10, 20, 20)
        attention_head_dim=tuple(c // cfg.num_head_channels for c in channels),
        use_linear_projection=True, norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
        upcast_attention=True)  # the original computes q.k in fp32 (_ATTN_PRECISION = "fp32")


class StableSRUNet(nn.Module):
    """eps = unet(x_t, t, context, struct): `unet` is a diffusers UNet2DConditionModel whose ResNet
    blocks carry SFT; `struct` is the structure encoder's output (dict width -> [B, semb, h, w])."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        from diffusers import UNet2DConditionModel
        self.config = cfg
        self.unet = UNet2DConditionModel(**unet_diffusers_config(cfg))
        self._features = _StructFeatures()
        cls = _sft_resnet_class()
        blocks = list(self.unet.down_blocks) + [self.unet.mid_block] + list(self.unet.up_blocks)
        for block in blocks:
            for i, old in enumerate(block.resnets):
                new = cls(in_channels=old.in_channels, out_channels=old.out_channels,
                          temb_channels=old.time_emb_proj.in_features, eps=old.norm1.eps, groups=old.norm1.num_groups)
                block.resnets[i] = new.attach(cfg.semb_channels, cfg.sft_hidden, self._features)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                struct: Dict[str, torch.Tensor]) -> torch.Tensor:
        """x [B, 4, h, w], t LongTensor [B] (original timesteps 0..999), context [B, 77, D] -> eps."""
        self._features.feats = struct
        try:
            return self.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
        finally:
            self._features.feats = None


class _Level(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList()
        self.downsampler = None


class StructureEncoder(nn.Module):
    """Time-aware structure encoder (ldm EncoderUNetModelWT): the encoder half of a UNet over the LR
    latent, conditioned on the timestep; the output of every level before it downsamples, and of the
    middle block, goes through one more ResNet block to `out_channels`.

    forward(z_lr [B, 4, h, w], t [B]) -> {str(width): [B, out_channels, h_l, w_l]} (the SFT keys).
    Its self-attention is the legacy multi-head kind (one qkv projection, heads interleaved in the
    checkpoint; the converter de-interleaves them into diffusers' to_q/to_k/to_v).
    """

    def __init__(self, cfg: StructEncoderConfig):
        super().__init__()
        from diffusers.models.attention_processor import Attention
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.resnet import Downsample2D, ResnetBlock2D

        self.config = cfg
        mc = cfg.model_channels
        temb = 4 * mc
        self.time_proj = Timesteps(mc, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(mc, temb)
        self.conv_in = nn.Conv2d(cfg.in_channels, mc, 3, padding=1)

        def resnet(cin, cout):
            return ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=temb, eps=1e-5, groups=32)

        def attention(c):
            return Attention(c, heads=cfg.num_heads, dim_head=c // cfg.num_heads, bias=True, norm_num_groups=32,
                             eps=1e-5, residual_connection=True, out_bias=True)

        self.levels = nn.ModuleList()
        ch = mc
        tapped = []
        n = len(cfg.channel_mult)
        for lv, mult in enumerate(cfg.channel_mult):
            level = _Level()
            for _ in range(cfg.num_res_blocks):
                level.resnets.append(resnet(ch, mc * mult))
                ch = mc * mult
                if lv in cfg.attention_levels:
                    level.attentions.append(attention(ch))
            if lv != n - 1:
                level.downsampler = Downsample2D(ch, use_conv=True, out_channels=ch, padding=1, name="op")
                tapped.append(ch)
            self.levels.append(level)
        self.mid = _Level()
        self.mid.resnets.extend([resnet(ch, ch), resnet(ch, ch)])
        self.mid.attentions.append(attention(ch))
        tapped.append(ch)
        self.fea_tran = nn.ModuleList(resnet(c, cfg.out_channels) for c in tapped)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> Dict[str, torch.Tensor]:
        emb = self.time_embedding(self.time_proj(t).to(z.dtype))
        h = self.conv_in(z)
        taps = []
        for level in self.levels:
            for i, res in enumerate(level.resnets):
                h = res(h, emb)
                if len(level.attentions):
                    h = level.attentions[i](h)
            if level.downsampler is not None:
                # the original taps wherever the width changes; with stride-2 convs that is every level
                taps.append(h)
                h = level.downsampler(h)
        h = self.mid.resnets[0](h, emb)
        h = self.mid.attentions[0](h)
        h = self.mid.resnets[1](h, emb)
        taps.append(h)
        return {str(f.shape[-1]): tran(f, emb) for f, tran in zip(taps, self.fea_tran)}
