"""Tiny, randomly initialised SR models of the real diffusers classes, for tests (no downloads).

`save_tiny_x4_upscaler(folder)` writes a complete StableDiffusionUpscalePipeline folder (model_index.json
plus unet/, vae/, scheduler/, low_res_scheduler/ and, when `transformers` is available, a tiny CLIP
text_encoder/ and tokenizer/ built in memory) that `load_sr_model(folder)` loads exactly as it loads
the released model. The outputs are meaningless but deterministic for a seed.
`PixelOracleSR` is a model-free DiffusionSR whose clean estimate is given HR images (plumbing tests).
"""
import os
from typing import Optional

import torch

from sr.base import DiffusionSR

# Same layout as stabilityai/stable-diffusion-x4-upscaler (7-channel UNet with noise-level class
# embeddings, cross-attention, linear projections; 3-block VAE = x4; scaled-linear schedules), shrunk.
TINY_CROSS_ATTENTION_DIM = 32


def tiny_unet(cross_attention_dim: int = TINY_CROSS_ATTENTION_DIM):
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(
        sample_size=16, in_channels=7, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
        num_class_embeds=1000, use_linear_projection=True)


def tiny_vae(scale: int = 4, sample_size: int = 64):
    """AutoencoderKL whose latent -> image factor is `scale` (a power of 2): log2(scale) + 1 blocks."""
    from diffusers import AutoencoderKL
    n = scale.bit_length()
    if scale < 1 or 2 ** (n - 1) != scale:
        raise ValueError(f"scale must be a power of 2, got {scale}")
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=(8,) + (16,) * (n - 1),
        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=sample_size,
        scaling_factor=0.08333)


def tiny_schedulers(prediction_type: str = "v_prediction"):
    """(scheduler, low_res_scheduler) with the released model's schedule settings."""
    from diffusers import DDIMScheduler, DDPMScheduler
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    low_res = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02)
    return scheduler, low_res


def _bytes_to_unicode():
    """GPT-2/CLIP byte-level BPE alphabet: 256 printable characters, one per byte."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def tiny_clip_text(hidden_size: int = TINY_CROSS_ATTENTION_DIM):
    """(tokenizer, text_encoder): a character-level CLIP tokenizer (no merges) and a 2-layer CLIP text
    model, built offline. Returns (None, None) when `transformers` is missing."""
    try:
        import inspect

        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    except ImportError:
        return None, None
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    params = inspect.signature(CLIPTokenizer.__init__).parameters
    if "vocab" in params:  # transformers >= 5: vocabulary and merges in memory
        tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    else:  # transformers 4: from files
        import json
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "vocab.json"), "w") as f:
                json.dump(vocab, f)
            with open(os.path.join(tmp, "merges.txt"), "w") as f:
                f.write("#version: 0.2\n")
            tokenizer = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"),
                                      model_max_length=77)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=37,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"])
    return tokenizer, CLIPTextModel(config)


def save_tiny_x4_upscaler(folder: str, seed: int = 0, prediction_type: str = "v_prediction",
                          with_text_encoder: bool = True, scale: int = 4,
                          vae_sample_size: int = 64) -> str:
    """Write a tiny random StableDiffusionUpscalePipeline folder; returns `folder`.

    with_text_encoder=False (or no `transformers`) leaves tokenizer/text_encoder out of the folder, the
    case where the adapter uses a zero prompt embedding. The global RNG is left untouched.
    """
    from diffusers import StableDiffusionUpscalePipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = tiny_unet()
        vae = tiny_vae(scale, vae_sample_size)
        tokenizer, text_encoder = tiny_clip_text() if with_text_encoder else (None, None)
    scheduler, low_res = tiny_schedulers(prediction_type)
    pipe = StableDiffusionUpscalePipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          low_res_scheduler=low_res, scheduler=scheduler, max_noise_level=350)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def load_tiny_x4_upscaler(folder: str, device="cpu", dtype: Optional[torch.dtype] = None, **opts):
    """Save a tiny model to `folder` (if not there yet) and load it through `load_sr_model`."""
    from sr.loading import load_sr_model
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        save_tiny_x4_upscaler(folder)
    return load_sr_model(folder, device, dtype, **opts)


class PixelOracleSR(DiffusionSR):
    """An "oracle" SR model for testing the 3DSR plumbing: its clean estimate x0 is always the encoding
    of known HR images (e.g. the ground truth), in a pixel-space "latent" (encode: 2x - 1, decode its
    inverse), with a scaled-linear schedule. `targets` [V, 3, s*h, s*w] in [0, 1] are returned for the V
    views in the order the loop passes them. `final_alpha_cumprod` 1.0: the last step lands exactly on z.
    """

    def __init__(self, targets: torch.Tensor, scale: int = 4, num_train_timesteps: int = 1000,
                 beta_start: float = 0.00085, beta_end: float = 0.012):
        self.name, self.scale, self.prediction_type = "pixel-oracle", int(scale), "sample"
        self.targets = targets.detach().float()
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, 0).float()
        self.final_alpha_cumprod = 1.0

    def latent_shape(self, lr_shape):
        b, _, h, w = lr_shape
        return (b, 3, h * self.scale, w * self.scale)

    def model_output(self, x_t, t, lr_images, cond_noise=None):
        if lr_images.shape[0] != self.targets.shape[0]:
            raise ValueError(f"oracle holds {self.targets.shape[0]} views, asked for {lr_images.shape[0]}")
        return self.encode(self.targets).to(x_t)

    def decode(self, x0, lr_images=None):
        return ((x0.float() + 1.0) * 0.5).clamp(0.0, 1.0)

    def encode(self, images, lr_images=None):
        return images.float() * 2.0 - 1.0


def save_tiny_pixel_prior(folder: str, seed: int = 0, residual_scale: float = 0.05, base: str = "bicubic") -> str:
    """Write a tiny random ThreeDSRPixelPrior folder (sr.pixel_prior layout, a 2-level 8/16-channel UNet);
    returns `folder`. base: "bicubic" or an image SR model's short name (prior v2; its weights are looked
    up in the ISR cache when the folder is loaded). The global RNG is left untouched."""
    from diffusers import UNet2DModel

    from sr.pixel_prior import prior_scheduler_config, save_pixel_prior, tiny_unet_config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(**tiny_unet_config(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4))
    return save_pixel_prior(folder, unet, prior_scheduler_config(),
                            {"scale": 4, "unshuffle": 2, "residual_scale": residual_scale, "base": base,
                             "training": {"note": "tiny random test model"}})


# ---- Real-ESRGAN (sr.realesrgan) ------------------------------------------------------------------------
def tiny_realesrgan_config(num_feat: int = 8, num_block: int = 1, num_grow_ch: int = 4):
    """A small RRDBNet x4 configuration (RealESRGAN_x4plus is num_feat 64, num_block 23, num_grow_ch 32)."""
    from sr.realesrgan import RRDBConfig
    return RRDBConfig(num_feat=num_feat, num_block=num_block, num_grow_ch=num_grow_ch)


def tiny_realesrgan_state_dict(seed: int = 0, config=None):
    """Random RRDBNet weights (float32, CPU) whose outputs lie around 0.5 with visible structure, so that
    clamping to [0, 1] does not hide differences. The global RNG is left untouched."""
    from sr.realesrgan import RRDBNet
    config = config or tiny_realesrgan_config()
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        net = RRDBNet(config)
        with torch.no_grad():
            net.conv_last.weight.mul_(4.0)
            net.conv_last.bias.fill_(0.5)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def save_tiny_realesrgan(path: str, seed: int = 0, num_feat: int = 8, num_block: int = 1,
                         num_grow_ch: int = 4) -> str:
    """Write a tiny random RRDBNet x4 that `load_isr_model(path)` loads; returns `path`.

    `.safetensors` (our format, hyper-parameters in the metadata) or `.pth` (the official Real-ESRGAN layout:
    {"params_ema": state_dict})."""
    from sr.realesrgan import save_rrdbnet_safetensors
    config = tiny_realesrgan_config(num_feat, num_block, num_grow_ch)
    state = tiny_realesrgan_state_dict(seed, config)
    path = os.fspath(path)
    if path.endswith(".pth"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save({"params_ema": state}, path)
        return path
    return save_rrdbnet_safetensors(path, state, config, {"source": "tiny random test model (sr.testing)"})


def write_rrdbnet_ncnn(state, config, param_path: str, bin_path: str, weight_storage: str = "fp16"):
    """Write RRDBNet(config) weights `state` as an ncnn model, laid out as onnx2ncnn lays out Real-ESRGAN
    (sr.ncnn_convert.rrdbnet_graph plus a Split after every blob read more than once); input blob "x",
    output blob "conv_last". weight_storage: "fp16" (tag 0x01306B47, as the released models) or "fp32"
    (tag 0). Biases are raw fp32. Returns (param_path, bin_path)."""
    import struct

    from sr.ncnn_convert import TAG_FP16, rrdbnet_graph
    if weight_storage not in ("fp16", "fp32"):
        raise ValueError(f"weight_storage must be fp16 or fp32, got {weight_storage}")
    ops = rrdbnet_graph(config)
    readers = {}
    for op in ops:
        for blob in op.inputs:
            readers[blob] = readers.get(blob, 0) + 1
    taken = {}

    def read(blob):  # the name a consumer reads: the blob itself, or its next Split output
        if readers[blob] == 1:
            return blob
        taken[blob] = taken.get(blob, 0) + 1
        return f"{blob}_splitncnn_{taken[blob] - 1}"

    def fmt(v):
        return f"{v:e}" if isinstance(v, float) else str(v)

    lines, n_blobs = [], 0
    weights = bytearray()
    for i, op in enumerate(ops):
        inputs = [read(b) for b in op.inputs]
        params = []
        for key, value in op.params.items():
            if isinstance(value, list):
                params.append(f"{-23300 - key}={len(value)}," + ",".join(fmt(float(v)) for v in value))
            else:
                params.append(f"{key}={fmt(value)}")
        lines.append(" ".join([op.type, f"{op.type}_{i}", str(len(inputs)), "1", *inputs, op.output, *params]))
        n_blobs += 1
        if readers.get(op.output, 0) > 1:
            outs = [f"{op.output}_splitncnn_{j}" for j in range(readers[op.output])]
            lines.append(" ".join(["Split", f"split_{op.output}", "1", str(len(outs)), op.output, *outs]))
            n_blobs += len(outs)
        if op.type == "Convolution":
            w = state[f"{op.conv}.weight"].detach().cpu().numpy().reshape(-1)
            if weight_storage == "fp16":
                data = w.astype("<f2").tobytes()
                weights += struct.pack("<I", TAG_FP16) + data + b"\0" * (-len(data) % 4)
            else:
                weights += struct.pack("<I", 0) + w.astype("<f4").tobytes()
            weights += state[f"{op.conv}.bias"].detach().cpu().numpy().astype("<f4").tobytes()
    with open(param_path, "w") as f:
        f.write(f"7767517\n{len(lines)} {n_blobs}\n" + "\n".join(lines) + "\n")
    with open(bin_path, "wb") as f:
        f.write(bytes(weights))
    return param_path, bin_path
