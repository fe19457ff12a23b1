"""Architecture numbers of StableSR(-Turbo), as plain records.

`REAL` is the released model (StableSR `v2-finetune_text_T_512.yaml` + `autoencoder_kl_64x64x4_resi.yaml`:
an SD-2.1-base UNet with SFT, a time-aware structure encoder, the SD VAE and the CFW decoder).
`TINY` is the oracle fixture's shrunken copy (tests/fixtures/stablesr-tiny/tiny_*.yaml), same classes.
A weights folder may hold a `stablesr_config.json` (`StableSRConfig.to_dict`) to describe other sizes.
"""
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Tuple

from utils.errors import ModelNotFoundError

CONFIG_NAME = "stablesr_config.json"


@dataclass(frozen=True)
class UNetConfig:
    """The denoiser (ldm UNetModelDualcondV2): attention at the levels in `attention_levels`
    (level k works at 1/2^k of the latent) and in the middle; SFT on every ResNet block."""
    model_channels: int = 320
    channel_mult: Tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: Tuple[int, ...] = (0, 1, 2)
    num_head_channels: int = 64
    context_dim: int = 1024
    semb_channels: int = 256            # channels of the structure features fed to SFT
    sft_hidden: int = 128               # SFT's shared conv width (fixed in the original)
    in_channels: int = 4
    out_channels: int = 4


@dataclass(frozen=True)
class StructEncoderConfig:
    """The time-aware structure encoder (ldm EncoderUNetModelWT), legacy multi-head attention."""
    model_channels: int = 256
    channel_mult: Tuple[int, ...] = (1, 1, 2, 2)
    num_res_blocks: int = 2
    attention_levels: Tuple[int, ...] = (0, 1, 2)
    num_heads: int = 4
    out_channels: int = 256
    in_channels: int = 4


@dataclass(frozen=True)
class VAEConfig:
    """An ldm AutoencoderKL (no attention outside the middle block): 2^(len(ch_mult)-1) down."""
    ch: int = 128
    ch_mult: Tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    num_fuse_block: int = 2             # RRDBs per CFW fusion layer (decoder only)
    fuse_grow_channels: int = 32


@dataclass(frozen=True)
class StableSRConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    struct: StructEncoderConfig = field(default_factory=StructEncoderConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    cfw: VAEConfig = field(default_factory=VAEConfig)
    linear_start: float = 0.00085
    linear_end: float = 0.012
    num_train_timesteps: int = 1000
    scale_factor: float = 0.18215
    context_tokens: int = 77

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StableSRConfig":
        def sub(kind, values):
            return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        d = dict(d)
        return cls(unet=sub(UNetConfig, d.pop("unet", {})), struct=sub(StructEncoderConfig, d.pop("struct", {})),
                   vae=sub(VAEConfig, d.pop("vae", {})), cfw=sub(VAEConfig, d.pop("cfw", {})), **d)

    def save(self, folder: str):
        with open(os.path.join(folder, CONFIG_NAME), "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def for_folder(cls, folder: str) -> "StableSRConfig":
        """The folder's `stablesr_config.json` if it has one, else the released model's numbers."""
        path = os.path.join(folder, CONFIG_NAME)
        if not os.path.isfile(path):
            return REAL
        try:
            with open(path) as f:
                return cls.from_dict(json.load(f))
        except (OSError, ValueError, TypeError) as exc:
            raise ModelNotFoundError(f"cannot read {path} ({exc}); fix or delete it "
                                     "(without it the released StableSR-Turbo sizes are assumed)") from None


REAL = StableSRConfig()

TINY = StableSRConfig(
    unet=UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0,),
                    num_head_channels=16, context_dim=32, semb_channels=32),
    struct=StructEncoderConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0,),
                               num_heads=2, out_channels=32),
    vae=VAEConfig(ch=32, ch_mult=(1, 1, 1, 2), num_res_blocks=1),
    cfw=VAEConfig(ch=32, ch_mult=(1, 1, 1, 2), num_res_blocks=1),
)
