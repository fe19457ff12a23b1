"""StableSR's empty-prompt text embedding, computed once from a diffusers SD-2.x text encoder folder.

StableSR conditions its UNet on the empty prompt through ldm's FrozenOpenCLIPEmbedder(layer="penultimate"):
OpenCLIP ViT-H/14's 24-layer text transformer run up to its 23rd block (the last one skipped), then its
final LayerNorm. The released stablesr_turbo.ckpt holds no text-encoder weights, so the embedding comes
from a diffusers Stable Diffusion 2.x folder (stabilityai/stable-diffusion-2-1-base: text_encoder/ +
tokenizer/). diffusers ships that encoder as a CLIPTextModel of 23 layers -- OpenCLIP's first 23 blocks
plus its final LayerNorm -- so its `last_hidden_state` is already the penultimate-layer embedding; a full
24-layer conversion takes the second-to-last hidden state through `final_layer_norm` instead. The empty
prompt tokenizes as OpenCLIP does: start, end, then padding (id 0, "!" in the SD-2 tokenizer) to 77.

The result [1, 77, 1024] is cached as `empty_prompt_embedding.safetensors` (key "context") in the
weights folder (atomic write), and read from there on every later run.
"""
import os

import torch

from utils.errors import ModelNotFoundError
from utils.system_utils import atomic_write

OPENCLIP_LAYERS = 24  # OpenCLIP ViT-H/14 text transformer blocks; diffusers' SD-2 copy keeps 23


def load_text_encoder(folder: str):
    """(tokenizer, text_encoder) from a diffusers SD-2.x folder (or one holding text_encoder/ + tokenizer/)."""
    for sub in ("text_encoder", "tokenizer"):
        if not os.path.isdir(os.path.join(folder, sub)):
            raise ModelNotFoundError(f"--text_encoder {folder} has no {sub}/ folder; pass a diffusers "
                                     "stabilityai/stable-diffusion-2-1-base folder (text_encoder/ + tokenizer/)")
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as exc:
        raise ModelNotFoundError(f"the empty-prompt embedding needs transformers ({exc}): "
                                 "pip install transformers") from None
    try:
        tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
        encoder = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"), torch_dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - foreign/partial folder: one line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"cannot load the text encoder from {folder} ({msg})") from None
    return tokenizer, encoder.eval()


@torch.no_grad()
def empty_prompt_embedding(tokenizer, text_encoder, tokens: int = 77) -> torch.Tensor:
    """FrozenOpenCLIPEmbedder(layer="penultimate")("") as float32 [1, tokens, hidden] (see module doc)."""
    ids = tokenizer("", padding="max_length", max_length=tokens, truncation=True, return_tensors="pt").input_ids
    out = text_encoder(input_ids=ids.to(text_encoder.device), output_hidden_states=True)
    layers = int(text_encoder.config.num_hidden_layers)
    if layers == OPENCLIP_LAYERS - 1:  # diffusers' SD-2 layout: the last block already dropped
        ctx = out.last_hidden_state
    elif layers == OPENCLIP_LAYERS:  # the full transformer: skip its last block
        norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm  # transformers 4 | 5
        ctx = norm(out.hidden_states[-2])
    else:
        raise ModelNotFoundError(f"the text encoder has {layers} layers; StableSR needs OpenCLIP ViT-H/14's "
                                 f"({OPENCLIP_LAYERS - 1} as in stable-diffusion-2-1-base, or all {OPENCLIP_LAYERS})")
    return ctx.float().cpu()


def cache_empty_prompt_embedding(weights_folder: str, text_encoder_folder: str, tokens: int,
                                 context_dim: int, filename: str) -> torch.Tensor:
    """Compute the embedding [1, tokens, context_dim] from `text_encoder_folder`, write it atomically to
    weights_folder/filename and return it. A weights folder that cannot be written (a read-only cache)
    only costs the caching: the embedding is used anyway, with a note."""
    with torch.device("cpu"):  # built on the CPU explicitly, whatever torch's default device is
        tokenizer, encoder = load_text_encoder(text_encoder_folder)
        ctx = empty_prompt_embedding(tokenizer, encoder, tokens)
    del encoder
    if tuple(ctx.shape[-2:]) != (tokens, context_dim):
        raise ModelNotFoundError(f"the text encoder in {text_encoder_folder} gives embeddings of shape "
                                 f"{list(ctx.shape)}, but the UNet expects [1, {tokens}, {context_dim}]")
    from safetensors.torch import save
    path = os.path.join(weights_folder, filename)
    data = save({"context": ctx.contiguous()}, metadata={"source": os.path.abspath(text_encoder_folder),
                                                         "layer": "penultimate", "prompt": ""})
    try:
        with atomic_write(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        print(f"[sr] note: cannot cache the empty-prompt embedding in {path} ({exc.strerror or exc}); it is "
              "used for this run and computed again next time (make the weights folder writable to keep it)")
        return ctx
    print(f"[sr] cached the empty-prompt embedding from {text_encoder_folder} in {path}")
    return ctx
