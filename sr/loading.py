"""`load_sr_model`: a short name, a Hugging Face hub id or a local diffusers folder -> a DiffusionSR.

Resolution order for `name_or_path`:
  0. a model shipped in this repository (`EMBEDDED_MODELS`, e.g. "embedded-x4" -> models/embedded-x4);
  1. `WEIGHTS_FOLDER_MODELS` ("stablesr-turbo"): the `sr_weights` folder, else the released files from the
     Hub (sr.hub: Iceclear/StableSR, its licence printed before the download);
  2. an existing folder: a diffusers pipeline folder (model_index.json + component subfolders);
  3. a short name from `KNOWN_MODELS` ("sd-x4-upscaler") -> its hub id;
  4. a hub id "org/name" -> its snapshot in the local Hugging Face cache, downloaded there on first use
     (only the files needed) unless downloads are off: HF_HUB_OFFLINE=1 or offline=True (--offline).
Anything else, and any missing, undownloadable or unreadable weights, raise `ModelNotFoundError` with one
line that names what was asked for and how to get it.

Networks are built under an explicit device (`torch.device(...)` contexts), never on torch's default
device, so a `torch.set_default_device` elsewhere cannot misplace them (tests/test_sr_device.py).
"""
import dataclasses
import json
import os
import re
from typing import Optional

import torch

from sr import hub
from utils.device import resolve_device
from utils.errors import ModelNotFoundError

# Short name -> Hugging Face hub id.
KNOWN_MODELS = {
    "sd-x4-upscaler": "stabilityai/stable-diffusion-x4-upscaler",
}
# Models shipped with the repository: short name -> folder relative to the repository root.
EMBEDDED_MODELS = {"embedded-x4": os.path.join("models", "embedded-x4"),         # the prior on a bicubic base
                   "embedded-x4-v2": os.path.join("models", "embedded-x4-v2")}   # prior v2: a Real-ESRGAN base
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Models whose weights are not a diffusers folder: short name -> how to get them (see sr/stablesr).
WEIGHTS_FOLDER_MODELS = {"stablesr-turbo": "stablesr_turbo.ckpt + vqgan_cfw_00011.ckpt from the StableSR authors' "
                                           "release (README, StableSR-Turbo)"}
# ... and where they come from when no folder is given (downloaded into the Hugging Face cache).
HUB_WEIGHTS_MODELS = {"stablesr-turbo": hub.STABLESR_TURBO}


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (our errors are one line)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def default_device() -> torch.device:
    return resolve_device("auto")


def default_dtype(device) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere (CPU fp16 convolutions are slow or missing)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def _adapters():
    """model_index.json `_class_name` -> adapter class. Imported lazily: diffusers is a heavy import."""
    import diffusers  # noqa: F401  (ImportError here: diffusers is not installed)

    from sr import pixel_prior, sd_x4_upscaler
    return {sd_x4_upscaler.PIPELINE_CLASS: sd_x4_upscaler.SDx4Upscaler,
            pixel_prior.PIPELINE_CLASS: pixel_prior.PixelPriorSR}


def resolve_sr_model(name_or_path: str, cache_dir: Optional[str] = None, sr_weights: Optional[str] = None,
                     offline: Optional[bool] = None) -> str:
    """The local folder holding `name_or_path`'s weights, or ModelNotFoundError (see module docstring).

    Models of `WEIGHTS_FOLDER_MODELS` take their folder from `sr_weights` (--sr_weights DIR), else from
    the Hub. offline: True forbids downloads; None/False leave it to HF_HUB_OFFLINE (sr.hub.hub_offline).
    """
    name = os.fspath(name_or_path)
    if name in EMBEDDED_MODELS:
        folder = os.path.join(_REPO_ROOT, EMBEDDED_MODELS[name])
        if not os.path.isfile(os.path.join(folder, "model_index.json")):
            raise ModelNotFoundError(f"the embedded SR model '{name}' is missing from {folder}; it ships with the "
                                     f"repository: restore it with `git checkout -- {EMBEDDED_MODELS[name]}`")
        return folder
    if name in WEIGHTS_FOLDER_MODELS:
        if sr_weights:
            if not os.path.isdir(sr_weights):
                raise ModelNotFoundError(f"--sr_weights folder '{sr_weights}' does not exist; it must hold "
                                         f"{WEIGHTS_FOLDER_MODELS[name]}")
            return os.fspath(sr_weights)
        spec = HUB_WEIGHTS_MODELS[name]
        local = os.path.join("models", name.split("-")[0])
        return hub.fetch(spec, cache_dir, offline, local_dir=local, offline_message=(
            f"SR model '{name}' needs --sr_weights DIR holding {WEIGHTS_FOLDER_MODELS[name]}, or its weights in "
            f"the local Hugging Face cache ({spec.repo_id}), and downloads are off (HF_HUB_OFFLINE / --offline): "
            f"allow them to download on first use, or on a machine with internet run "
            f"`{spec.hf_download_command(local)}` and pass --sr_weights {local}"))
    if os.path.isdir(name):
        return name
    if os.path.exists(name):
        raise ModelNotFoundError(f"SR model '{name}' is a file, not a diffusers pipeline folder")
    hub_id = KNOWN_MODELS.get(name)
    if hub_id is None:
        if _HUB_ID.match(name):
            hub_id = name
        elif "/" in name or os.sep in name or name.startswith((".", "~")):
            raise ModelNotFoundError(f"SR model folder '{name}' does not exist; pass a diffusers pipeline "
                                     f"folder or one of: {', '.join(KNOWN_MODELS)}")
        else:
            known = list(EMBEDDED_MODELS) + list(KNOWN_MODELS) + list(WEIGHTS_FOLDER_MODELS)
            raise ModelNotFoundError(f"unknown SR model '{name}' (and no folder of that name); known names: "
                                     f"{', '.join(known)}, or pass a diffusers pipeline folder")
    spec = hub.spec_for(hub_id)
    if hub_id != name:
        spec = dataclasses.replace(spec, what=f"SR model '{name}'")
    return hub.fetch(spec, cache_dir, offline, local_dir="models/" + hub_id.split("/")[-1])


def is_stablesr_folder(folder: str) -> bool:
    """A folder with the released StableSR-Turbo weights (sr.stablesr), not a diffusers pipeline."""
    return any(os.path.isfile(os.path.join(folder, f)) for f in ("stablesr_turbo.ckpt", "stablesr_turbo.safetensors"))


def load_sr_model(name_or_path: str = "sd-x4-upscaler", device=None, dtype: Optional[torch.dtype] = None, *,
                  cache_dir: Optional[str] = None, offline: Optional[bool] = None, **opts):
    """Load a diffusion SR model behind the DiffusionSR interface.

    Args:
        name_or_path: a short name (`KNOWN_MODELS`, `WEIGHTS_FOLDER_MODELS`), a hub id, or a diffusers
            pipeline folder (e.g. a fine-tuned copy of stabilityai/stable-diffusion-x4-upscaler).
        device: default CUDA if available, else CPU. dtype: default fp16 on CUDA, fp32 on CPU.
        cache_dir: Hugging Face cache to look hub ids up in and download them to (default: HF_HUB_CACHE).
        offline: True: never download (missing weights are an error); None/False: HF_HUB_OFFLINE decides.
        **opts: adapter options, e.g. for sd-x4-upscaler prompt, negative_prompt, guidance_scale,
            noise_level, timestep_spacing, sr_batch, vae_tiling (see SDx4Upscaler); sr_weights for
            stablesr-turbo.
    Raises:
        ModelNotFoundError: unknown name, missing folder, hub id neither cached nor downloadable, unreadable
            or unsupported weights, or diffusers not installed; the message is one line.
    """
    folder = resolve_sr_model(name_or_path, cache_dir, opts.pop("sr_weights", None), offline)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    if os.fspath(name_or_path) in WEIGHTS_FOLDER_MODELS or is_stablesr_folder(folder):
        from sr.stablesr.adapter import StableSRTurbo
        return StableSRTurbo.from_folder(folder, device, dtype, name=os.fspath(name_or_path), cache_dir=cache_dir,
                                         offline=offline, **opts)
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        raise ModelNotFoundError(f"SR model folder '{folder}' is not a diffusers pipeline folder "
                                 "(no model_index.json)")
    try:
        adapters = _adapters()
    except ImportError as exc:
        raise ModelNotFoundError(f"diffusion SR needs diffusers ({first_line(exc)}): "
                                 "pip install diffusers transformers safetensors") from None
    try:
        with open(index_path) as f:
            class_name = json.load(f).get("_class_name")
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read {index_path}: {first_line(exc)}") from None
    if class_name not in adapters:
        raise ModelNotFoundError(f"SR model folder '{folder}' holds a {class_name}; supported pipelines: "
                                 f"{', '.join(adapters)}")
    return adapters[class_name].from_folder(folder, device, dtype, name=os.fspath(name_or_path), **opts)
