"""The two autoencoders of StableSR, on diffusers' AutoencoderKL blocks.

- The plain SD VAE (`first_stage_model` in the checkpoint) encodes LR images and 3D renders into
  latents: `build_sd_vae` (a diffusers AutoencoderKL).
- The CFW autoencoder (`vqgan_cfw_00011.ckpt`; Wang et al. 2024, "Exploiting Diffusion Prior for
  Real-World Image Super-Resolution", sec. 3.3 "controllable feature wrapping") decodes: its own encoder
  reads the LR image and keeps the features of the middle resolution levels (only those: the
  full-resolution map is the largest and is not fused); the decoder is the SD
  decoder with a fusion layer after those levels, adding w x (correction from encoder + decoder
  features). w = 0 is the plain SD decoder (fidelity off), w = 1 full fidelity; 3DSR uses 0.5.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from sr.stablesr.config import VAEConfig


def build_sd_vae(cfg: VAEConfig, scale_factor: float = 0.18215):
    """A diffusers AutoencoderKL with the ldm ddconfig's numbers (GroupNorm 32, eps 1e-6)."""
    from diffusers import AutoencoderKL
    n = len(cfg.ch_mult)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult),
                         layers_per_block=cfg.num_res_blocks, latent_channels=cfg.z_channels, norm_num_groups=32,
                         scaling_factor=scale_factor)


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs with dense connections, LeakyReLU(0.2), residual scaled by 0.2
    (ESRGAN, Wang et al. 2018, fig. 4)."""

    def __init__(self, channels: int, grow: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, grow, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels + grow, grow, 3, 1, 1)
        self.conv3 = nn.Conv2d(channels + 2 * grow, grow, 3, 1, 1)
        self.conv4 = nn.Conv2d(channels + 3 * grow, grow, 3, 1, 1)
        self.conv5 = nn.Conv2d(channels + 4 * grow, channels, 3, 1, 1)

    def forward(self, x):
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, outer residual scaled by 0.2 (ESRGAN)."""

    def __init__(self, channels: int, grow: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(channels, grow)
        self.rdb2 = ResidualDenseBlock(channels, grow)
        self.rdb3 = ResidualDenseBlock(channels, grow)

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class FusionLayer(nn.Module):
    """CFW fusion: dec + w * f(cat(enc, dec)), f = ResNet block (2C -> C), RRDBs, ResNet block."""

    def __init__(self, channels: int, num_rrdb: int = 2, grow: int = 32):
        super().__init__()
        from diffusers.models.resnet import ResnetBlock2D
        self.enter = ResnetBlock2D(in_channels=2 * channels, out_channels=channels, temb_channels=None, eps=1e-6)
        self.rrdbs = nn.Sequential(*[RRDB(channels, grow) for _ in range(num_rrdb)])
        self.leave = ResnetBlock2D(in_channels=channels, out_channels=channels, temb_channels=None, eps=1e-6)

    def forward(self, enc_feat, dec_feat, w: float):
        corr = self.leave(self.rrdbs(self.enter(torch.cat([enc_feat, dec_feat], 1), None)), None)
        return dec_feat + w * corr


class CFWAutoencoder(nn.Module):
    """CFW autoencoder: `vae` (AutoencoderKL: encoder, decoder, quant convs) + `fusion` layers.

    `fusion` is keyed by the ldm resolution level it follows ("1" .. str(n-2)): every level but the
    first (full resolution) and the last (latent resolution), as in the released model.
    """

    def __init__(self, cfg: VAEConfig, fusion_w: float = 0.5):
        super().__init__()
        self.vae = build_sd_vae(cfg)
        n = len(cfg.ch_mult)
        self.fusion = nn.ModuleDict({str(level): FusionLayer(cfg.ch * cfg.ch_mult[level], cfg.num_fuse_block,
                                                              cfg.fuse_grow_channels)
                                     for level in range(1, n - 1)})
        self.fusion_w = float(fusion_w)

    @property
    def num_levels(self) -> int:
        return len(self.vae.encoder.down_blocks)

    @property
    def fused_levels(self) -> List[int]:
        """The resolution levels whose encoder features the decoder fuses (1 .. n-2), ascending."""
        return sorted(int(level) for level in self.fusion)

    def _encoder_levels(self, images: torch.Tensor, last_level: int):
        """Run the encoder's down blocks 0..last_level; returns (h after them, {level: features before its
        downsampling} for the fused levels). Other levels' maps are dropped as soon as they are used, so
        the full-resolution one (the largest) never outlives its block."""
        enc = self.vae.encoder
        fused = set(self.fused_levels)
        h = enc.conv_in(images)
        feats: Dict[int, torch.Tensor] = {}
        for level, block in enumerate(enc.down_blocks[:last_level + 1]):
            for resnet in block.resnets:
                h = resnet(h, None)
            if level in fused:
                feats[level] = h
            if block.downsamplers is not None:
                for down in block.downsamplers:
                    h = down(h)
        return h, feats

    def encode(self, images: torch.Tensor) -> Tuple[torch.Tensor, Dict[int, torch.Tensor]]:
        """Images [B, 3, H, W] in [-1, 1] -> (moments [B, 2z, H/f, W/f], {level: features of that level
        before its downsampling [B, C_l, H/2^l, W/2^l]} for the levels the decoder fuses (1 .. n-2))."""
        enc = self.vae.encoder
        h, feats = self._encoder_levels(images, self.num_levels - 1)
        h = enc.mid_block(h)
        h = enc.conv_out(enc.conv_act(enc.conv_norm_out(h)))
        return self.vae.quant_conv(h), feats

    def encode_features(self, images: torch.Tensor) -> Dict[int, torch.Tensor]:
        """Only the features `decode` fuses: the encoder stops after the last fused level (no deeper
        levels, mid block or moments, which decoding does not use)."""
        levels = self.fused_levels
        if not levels:
            return {}
        return self._encoder_levels(images, levels[-1])[1]

    def decode(self, z: torch.Tensor, enc_feats: Dict[int, torch.Tensor], fusion_w=None) -> torch.Tensor:
        """Unscaled latents [B, z, h, w] (x0 / 0.18215) + `encode`'s (or `encode_features`') features
        -> images in ~[-1, 1]."""
        w = self.fusion_w if fusion_w is None else float(fusion_w)
        dec = self.vae.decoder
        h = dec.conv_in(self.vae.post_quant_conv(z))
        h = dec.mid_block(h, None)
        n = len(dec.up_blocks)
        for k, block in enumerate(dec.up_blocks):
            level = n - 1 - k
            for resnet in block.resnets:
                h = resnet(h, None)
            if str(level) in self.fusion:
                h = self.fusion[str(level)](enc_feats[level], h, w)
            if block.upsamplers is not None:
                for up in block.upsamplers:
                    h = up(h)
        return dec.conv_out(dec.conv_act(dec.conv_norm_out(h)))


def gaussian_sample(moments: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """mean + exp(logvar / 2) * noise, logvar clamped to [-30, 20] (ldm DiagonalGaussianDistribution)."""
    mean, logvar = moments.chunk(2, dim=1)
    return mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise.to(mean)


def moments_mean_logvar(moments: torch.Tensor):
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)
