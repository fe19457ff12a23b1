"""Argument groups whose fields *are* the CLI flags (3DGS convention), and `cfg_args`.

Every model folder holds `cfg_args`: the repr of an argparse Namespace, as 3DGS and Mip-Splatting
write it, so later commands (render.py, sr_refine.py) need only `-m`. We read it back with literal
parsing (ast), never eval, so a model folder from elsewhere cannot run code.
"""
import ast
import os
import sys
from argparse import SUPPRESS, ArgumentDefaultsHelpFormatter, ArgumentParser, Namespace

from utils.errors import ModelNotFoundError
from utils.system_utils import atomic_write


class HelpFormatter(ArgumentDefaultsHelpFormatter):
    """--help shows every flag's default (flags whose help already says it are left alone)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is SUPPRESS or not action.option_strings:
            return text
        if action.nargs == 0:  # store_true / store_false
            return (text + " " if text else "") + "(default: off)"
        return (text + " " if text else "") + "(default: %(default)s)"


class CLIArgumentParser(ArgumentParser):
    """argparse with our one-line errors: `error: <what>; see --help`, exit code 2 (no usage dump)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"error: {self.prog}: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def show_defaults(parser: ArgumentParser) -> ArgumentParser:
    """Give flags without help text one that states their default (argparse prints no line otherwise)."""
    for action in parser._actions:
        if action.help is None and action.option_strings and action.default is not SUPPRESS:
            action.help = "(default: off)" if action.nargs == 0 else "(default: %(default)s)"
    return parser


class ParamGroup:
    """Fields of a subclass become flags; a leading underscore adds a one-letter short flag.
    A subclass's CHOICES maps a field to its allowed values (shown in --help, checked by argparse)."""

    CHOICES: dict = {}

    def __init__(self, parser: ArgumentParser, name: str, fill_none=False):
        # fill_none (3DGS's "sentinel"): unset flags parse as None, so saved cfg_args can fill them.
        group = parser.add_argument_group(name)
        self._defaults = {k.lstrip("_"): v for k, v in vars(self).items()}
        for key, value in list(vars(self).items()):
            if key == "_defaults":
                continue
            shorthand = key.startswith("_")
            key = key.lstrip("_")
            flags = [f"--{key}"] + ([f"-{key[0]}"] if shorthand else [])
            default = None if fill_none else value
            shown = "off" if value is False else repr(value) if value == "" else value
            help_text = (f"default: the model's cfg_args, else {shown}" if fill_none else f"default: {shown}")
            if isinstance(value, bool):
                group.add_argument(*flags, default=default, action="store_true", help=help_text)
            elif isinstance(value, (list, tuple)):
                group.add_argument(*flags, default=default, nargs="+", type=type(value[0]) if value else int,
                                   help=help_text)
            else:
                group.add_argument(*flags, default=default, type=type(value) if value is not None else str,
                                   choices=self.CHOICES.get(key), help=help_text)

    def extract(self, args) -> Namespace:
        """This group's values from `args`; missing or None (flag not given) -> the default."""
        out = Namespace()
        for k, default in self._defaults.items():
            value = getattr(args, k, None)
            setattr(out, k, default if value is None else value)
        return out


class ModelParams(ParamGroup):
    CHOICES = {"filter_2d": ("auto", "mip", "inria")}  # scene.conventions.FILTER_2D_CHOICES

    def __init__(self, parser, sentinel=False):
        self.sh_degree = 3
        self._source_path = ""
        self._model_path = ""
        self._images = "images"
        self._resolution = -1
        self._white_background = False
        self.data_device = ""  # where the cameras' images live; "" = the model's device (--device)
        self.eval = False
        self.llffhold = 8
        self.kernel_size = 0.1  # Mip-Splatting 2D filter variance (pixels^2)
        # 2D filter convention (scene/conventions.py): mip = Mip-Splatting's (kernel_size, opacity
        # compensated), inria = 3DGS's 0.3 px^2 dilation; auto = as recorded in / detected from the model
        self.filter_2d = "auto"
        super().__init__(parser, "Loading Parameters", sentinel)

    def extract(self, args):
        out = super().extract(args)
        if out.source_path:
            out.source_path = os.path.abspath(out.source_path)
        return out


class PipelineParams(ParamGroup):
    CHOICES = {"backend": ("auto", "torch", "cpu", "gsplat", "inria")}  # gaussian_renderer.BACKENDS (tested)

    def __init__(self, parser, sentinel=False):
        self.backend = "auto"
        self.debug = False
        super().__init__(parser, "Pipeline Parameters", sentinel)


class OptimizationParams(ParamGroup):
    """3DGS defaults (Kerbl et al. 2023); the opacity lr is Mip-Splatting's 0.05."""

    def __init__(self, parser):
        self.iterations = 30_000
        self.position_lr_init = 0.00016
        self.position_lr_final = 0.0000016
        self.position_lr_delay_mult = 0.01
        self.position_lr_max_steps = 30_000
        self.feature_lr = 0.0025
        self.opacity_lr = 0.05
        self.scaling_lr = 0.005
        self.rotation_lr = 0.001
        self.percent_dense = 0.01
        self.lambda_dssim = 0.2
        self.densification_interval = 100
        self.opacity_reset_interval = 3000
        self.densify_from_iter = 500
        self.densify_until_iter = 15_000
        self.densify_grad_threshold = 0.0002
        self.min_opacity = 0.005
        self.max_screen_size = 20           # with --screen_size_pruning: prune max radii above this (px)
        # Off by default, as the references behave: 3DGS / Mip-Splatting test max_radii2D > 20 right
        # after densification zeroed it, so it never fires; the flag turns our live test on.
        self.screen_size_pruning = False
        self.sh_increase_interval = 1000
        self.filter_update_interval = 100  # recompute the 3D filter this often (Mip-Splatting)
        self.random_background = False
        super().__init__(parser, "Optimization Parameters")


class SRParams(ParamGroup):
    """The SR stage (sr_refine.py): the diffusion model, the denoising schedule and the per-step fit."""

    CHOICES = {"mode": ("3dsr", "per-view", "bicubic", "per-view-isr"),  # training.sr_loop.MODES (tested)
               "colorfix": ("wavelet", "none"), "timestep_spacing": ("trailing", "leading", "linspace")}

    def __init__(self, parser):
        self.mode = "3dsr"                  # 3dsr | per-view | bicubic | per-view-isr (baselines on the same code path)
        self.isr = "realesrgan-x4plus"      # --mode per-view-isr: the image SR model (name or weights file)
        self.isr_tile = 256                 # its tile edge in LR pixels (0 = whole images)
        self.name = ""                      # run name: point_cloud/iteration_<name>, sr/<name>/ (default by mode)
        self.scale = 4
        self.sr_model = "sd-x4-upscaler"    # short name, hub id in the local HF cache, or a diffusers folder
        self.sr_device = "auto"             # where the SR networks run (auto: cuda if available)
        self.sr_batch = 1                   # views per network call (memory bound)
        self.vae_tiling = False
        self.prompt = ""
        self.guidance_scale = 1.0
        self.noise_level = 20
        self.sr_weights = ""                # folder with stablesr_turbo.ckpt + vqgan_cfw_00011.ckpt (--sr_model stablesr-turbo)
        self.offline = False                # never download SR weights (as HF_HUB_OFFLINE=1); default: on first use
        self.dec_w = 0.5                    # StableSR CFW fusion weight w in [0, 1] (3DSR: 0.5)
        self.colorfix = "wavelet"           # StableSR colour fix: wavelet | none
        self.text_encoder = ""              # StableSR: diffusers SD-2.x folder for the empty-prompt embedding (cached)
        self.tile_size = 64                 # StableSR latent tile size (latent pixels; 64 = 512 image pixels)
        self.tile_overlap = 32              # StableSR latent tile overlap
        self.vae_tile = 0                   # StableSR: VAE encode / CFW decode tile (pixels, x8; 0 = whole image)
        self.vae_tile_overlap = 64          # StableSR: overlap of the VAE tiles (pixels, multiple of 8)
        self.timestep_spacing = "trailing"
        self.steps = 4                      # denoising steps (the paper's StableSR-Turbo uses 4)
        self.iters_per_step = 1000          # fit iterations of the last step (ramp) or of every step (uniform)
        self.iters_schedule = ["ramp"]      # ramp: 0.1/0.25/0.65/1 x iters_per_step; uniform (the paper's 5000
                                            # per step); or one count per step (benchmarks/sr_schedule.py)
        self.final_iters = -1               # fit on the final images; -1 = the last step's iterations
        self.fit_stop_db = 0.0              # end a fit early when its render/target agreement gains less than
                                            # this (dB) over a window; 0 = off (training/fit_stop.py)
        self.fit_stop_window = 100          # the stop rule's window (iterations, rounded up to whole epochs)
        self.lambda_lr = 1.0                # weight of the LR-consistency term
        self.eta = 0.0                      # DDIM eta: 0 deterministic, 1 DDPM-like
        self.published_update = False       # StableSR: the published 3DSR code's update (stale x_T, DDPM step)
        self.no_densify = False
        self.no_hr_test = False             # skip loading HR test views for the per-step test PSNR
        self.no_step_images = False         # skip writing sr/<name>/step_<k>/{decoded,renders}
        self.keep_checkpoints = False       # keep every step's checkpoint, not only the latest
        super().__init__(parser, "Super-resolution Parameters")


def parse_cfg_args(text: str) -> Namespace:
    """Parse `Namespace(a=1, b='x', ...)` with ast literals only."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"not a Namespace repr ({exc.msg})") from None
    if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Namespace" and not node.args):
        raise ValueError("not a Namespace(...) repr")
    values = {}
    for kw in node.keywords:
        try:
            values[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            raise ValueError(f"value of '{kw.arg}' is not a literal") from None
    return Namespace(**values)


def read_cfg_args(model_path: str) -> Namespace:
    path = os.path.join(model_path, "cfg_args")
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"no cfg_args in {model_path}; pass the folder written by train.py (-m OUT)")
    with open(path) as f:
        text = f.read()
    try:
        return parse_cfg_args(text)
    except ValueError as exc:
        raise ModelNotFoundError(f"{path} is unreadable: {exc}; re-run train.py or fix the file") from None


# Flags of one invocation, not of the model: a model trained on a GPU must render on a laptop.
NOT_SAVED = ("device", "deterministic")


def write_cfg_args(model_path: str, args: Namespace):
    with atomic_write(os.path.join(model_path, "cfg_args"), "w") as f:
        f.write(repr(Namespace(**{k: v for k, v in vars(args).items() if k not in NOT_SAVED})))


def get_combined_args(parser: ArgumentParser, argv=None) -> Namespace:
    """Command-line flags override the model's saved cfg_args (3DGS behaviour)."""
    argv = sys.argv[1:] if argv is None else argv
    cmd = parser.parse_args(argv)
    if not cmd.model_path:
        raise ModelNotFoundError("no model folder given; pass -m OUT (the folder train.py wrote)")
    if not os.path.isdir(cmd.model_path):
        raise ModelNotFoundError(f"model folder {cmd.model_path} does not exist; train one with "
                                 f"python train.py -s SCENE -m {cmd.model_path}")
    merged = vars(read_cfg_args(cmd.model_path)).copy()
    for key, value in vars(cmd).items():
        # groups built with sentinel=True leave unset flags as None: the saved value wins then
        if value is not None or key not in merged:
            merged[key] = value
    return Namespace(**merged)
