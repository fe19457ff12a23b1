"""Where a model and its data live: `--device` and `--data_device` resolved once at the CLI.

One device per model (DESIGN.md, Devices): the Gaussians, their optimizer state, the densification
statistics and everything the training routine makes live on `--device`; the cameras' images on
`--data_device` (default: the model's device). Neither is stored in a model's `cfg_args`, so a model
trained on a GPU renders on a laptop and the other way round.
"""
import torch

from utils.errors import ThreeDSRError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def add_device_args(parser):
    """--device and --deterministic for a CLI (train.py, render.py, sr_refine.py)."""
    parser.add_argument("--device", default="auto",
                        help="where the Gaussians and the fit run: auto (cuda when available, else cpu), cpu, cuda "
                             "or cuda:N (default: auto)")
    parser.add_argument("--deterministic", action="store_true",
                        help="force deterministic kernels on CUDA too (slower; gsplat's atomics stay "
                             "non-deterministic). Always on for CPU runs, whose resume is bit-identical")


def resolve_device(name) -> torch.device:
    """'auto' -> cuda when available, else cpu; an unavailable cuda is a one-line error."""
    name = "auto" if name in (None, "") else str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ThreeDSRError(f"unknown device '{name}'; use one of {', '.join(DEVICE_CHOICES)} (or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ThreeDSRError(f"--device {name} but no CUDA GPU is available to torch "
                                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                                "use --device cpu, or install a CUDA torch (README, GPU)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ThreeDSRError(f"--device {name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise ThreeDSRError(f"unsupported device '{name}'; use one of {', '.join(DEVICE_CHOICES)}")
    return device


def resolve_data_device(name, model_device: torch.device) -> torch.device:
    """--data_device: '' or 'auto' -> the model's device. 'cuda' written in the cfg_args of a model trained
    elsewhere (Inria's default) falls back to the model's device when no GPU is here."""
    name = "" if name is None else str(name)
    if name in ("", "auto"):
        return model_device
    if name.startswith("cuda") and not torch.cuda.is_available():
        return model_device
    return resolve_device(name)


def use_deterministic(device: torch.device, requested: bool) -> bool:
    """Deterministic kernels always on CPU (bit-identical resume is tested there); on CUDA only when asked,
    since deterministic CUDA kernels are slow and gsplat's atomics are not reproducible anyway."""
    return device.type == "cpu" or bool(requested)


def release_cached_memory(device):
    """Return cached blocks to the driver (between the diffusion model's and the fit's working sets)."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
