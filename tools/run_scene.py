#!/usr/bin/env python
"""One scene of the evaluation protocol, stage by stage, each skipped when its result exists.

    python tools/run_scene.py -s data/fern -m output/llff/fern                  # the paper's protocol
    python tools/run_scene.py -s data/synthetic -m output/synthetic --train_iters 3000 --iters_per_step 500

Stages (each a subprocess of the usual commands, so a failure names the command to rerun by hand):
  train        train.py at LR (-r lr_res, --eval, Mip-Splatting kernel) for train_iters
  lr-3dgs      render.py of the LR model at HR (-r hr_res)                    method folder test/lr-3dgs
  bicubic      sr_refine.py --mode bicubic  + render at HR                    test/bicubic
  per-view-isr sr_refine.py --mode per-view-isr (Real-ESRGAN per view) + render  test/per-view-isr
  per-view-sr  sr_refine.py --mode per-view + render at HR ("SR then 3D")     test/per-view-sr
  3dsr         sr_refine.py --mode 3dsr     + render at HR                    test/3dsr
  metrics      metrics.py over every test/<method>/
Wall time per stage goes to MODEL/timings.json; methods that cannot run (no SR model weights) are
recorded with the reason in MODEL/unavailable.json, so the summary says so instead of guessing.
A killed SR stage resumes from its last denoising step (sr_refine.py --resume). Ctrl-C stops cleanly.
--launcher gpus|slurm runs this scene as a job of tools/launch.py (on a free GPU, or as a SLURM job that is
requeued on time limit / preemption); many scenes: tools/launch.py or the dataset scripts.
"""
import json
import os
import subprocess
import sys
import time
from argparse import ArgumentParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scene.scene import sr_run_ply  # noqa: E402
from tools.launch import add_launcher_args, launch_run_scene  # noqa: E402
from utils.errors import ModelNotFoundError, ThreeDSRError  # noqa: E402
from utils.system_utils import atomic_write, run_cli  # noqa: E402

SR_METHODS = {"bicubic": ("bicubic", "sr_bicubic"), "per-view-isr": ("per-view-isr", "sr_per-view-isr"),
              "per-view-sr": ("per-view", "sr_per-view"),
              "3dsr": ("3dsr", "sr")}
METHODS = ("lr-3dgs",) + tuple(SR_METHODS)


def build_parser():
    p = ArgumentParser(description="Run one scene of the 3DSR evaluation protocol (resumable)")
    p.add_argument("-s", "--source_path", required=True, help="scene folder (COLMAP layout with images_N)")
    p.add_argument("-m", "--model_path", required=True, help="output folder of this scene")
    p.add_argument("--lr_res", type=int, default=8, help="LR images: images_<lr_res> (default 8)")
    p.add_argument("--scale", type=int, default=4, help="SR factor (default 4: HR = images_<lr_res/4>)")
    p.add_argument("--train_iters", type=int, default=30_000, help="LR 3DGS iterations (default 30000)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps (default 4)")
    p.add_argument("--iters_per_step", type=int, default=5000, help="fit iterations per step (default 5000)")
    p.add_argument("--iters_schedule", nargs="+", default=["uniform"],
                   help="sr_refine.py --iters_schedule (default uniform: the paper's protocol, not sr_refine's ramp)")
    p.add_argument("--sr_model", default="sd-x4-upscaler", help="diffusion SR model (name, hub id or folder)")
    p.add_argument("--isr", default="realesrgan-x4plus",
                   help="image SR model of the per-view-isr method (Real-ESRGAN -> 3DGS)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra_train", default="", help="extra flags for train.py, one string")
    p.add_argument("--extra_sr", default="", help="extra flags for every sr_refine.py call, one string")
    add_launcher_args(p, for_run_scene=True)
    return p


class Stages:
    def __init__(self, model_path):
        self.model_path = model_path
        self.timings_path = os.path.join(model_path, "timings.json")
        self.unavailable_path = os.path.join(model_path, "unavailable.json")

    def _update(self, path, key, value):
        data = {}
        if os.path.isfile(path):
            with open(path) as f:
                data = json.load(f)
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
        with atomic_write(path, "w") as f:
            json.dump(data, f, indent=2)

    def run(self, stage, args):
        """Run one command; record its wall time under `stage`."""
        cmd = [sys.executable] + args
        print(f"[{stage}] {' '.join(args)}", flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT)
        if proc.returncode != 0:
            raise ThreeDSRError(f"stage '{stage}' failed (exit {proc.returncode}); rerun the same command to "
                                f"continue, or run by hand: python {' '.join(args)}")
        self._update(self.timings_path, stage, round(time.time() - t0, 2))

    def unavailable(self, method, why):
        print(f"[{method}] unavailable: {why}", flush=True)
        self._update(self.unavailable_path, method, why)

    def available(self, method):
        if os.path.isfile(self.unavailable_path):
            self._update(self.unavailable_path, method, None)


def renders_complete(model_path, method):
    root = os.path.join(model_path, "test", method)
    cams = os.path.join(root, "cameras.json")
    if not os.path.isfile(cams):
        return False
    with open(cams) as f:
        return all(os.path.isfile(os.path.join(root, "renders", e["render"])) for e in json.load(f))


def run_complete(log_path):
    """Whether sr_refine.py's log.json says its run finished."""
    if not os.path.isfile(log_path):
        return False
    with open(log_path) as f:
        return bool(json.load(f).get("complete"))


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.lr_res % args.scale:
        raise ThreeDSRError(f"--scale {args.scale} does not divide --lr_res {args.lr_res}; the HR ground truth "
                            f"would be no images_N folder")
    if args.launcher != "local":  # this scene as a job of tools/launch.py (gpus / slurm)
        return launch_run_scene(args, sys.argv[1:] if argv is None else argv)
    hr_res = args.lr_res // args.scale
    model, it = args.model_path, str(args.train_iters)
    os.makedirs(model, exist_ok=True)
    st = Stages(model)
    ply = os.path.join(model, "point_cloud", f"iteration_{it}", "point_cloud.ply")
    if not os.path.isfile(ply):
        st.run("train", ["train.py", "-s", args.source_path, "-m", model, "-r", str(args.lr_res), "--eval",
                         "--iterations", it, "--save_iterations", it, "--test_iterations", it,
                         "--position_lr_max_steps", it, "--seed", str(args.seed), "--quiet"]
               + args.extra_train.split())
    render = ["render.py", "-m", model, "-r", str(hr_res), "--skip_train", "--quiet"]
    for method in args.methods:
        if method == "lr-3dgs":
            if not renders_complete(model, method):
                st.run("render lr-3dgs", render + ["--iteration", it, "--method", method])
            continue
        mode, name = SR_METHODS[method]
        log_path = os.path.join(model, "sr", name, "log.json")
        done = sr_run_ply(model, name) is not None and run_complete(log_path)
        if not done:
            try:  # the weights this method needs; missing ones make it "unavailable", not a failure
                if mode == "per-view-isr":
                    from sr.image_sr import load_isr_model
                    load_isr_model(args.isr, "cpu")
                elif mode != "bicubic":
                    from sr.loading import resolve_sr_model
                    resolve_sr_model(args.sr_model)
            except ModelNotFoundError as exc:
                st.unavailable(method, str(exc))
                continue
            cmd = ["sr_refine.py", "-m", model, "--iteration", it, "--mode", mode, "--name", name,
                   "--scale", str(args.scale), "--steps", str(args.steps), "--iters_per_step",
                   str(args.iters_per_step), "--iters_schedule", *args.iters_schedule, "--seed", str(args.seed),
                   "--quiet"]
            if mode == "per-view-isr":
                cmd += ["--isr", args.isr]
            elif mode != "bicubic":
                cmd += ["--sr_model", args.sr_model]
            resume = os.path.isdir(os.path.join(model, "sr", name))
            st.run(f"sr {method}", cmd + (["--resume"] if resume else []) + args.extra_sr.split())
        st.available(method)
        if not done or not renders_complete(model, method):
            st.run(f"render {method}", render + ["--iteration", name, "--method", method])
    st.run("metrics", ["metrics.py", "-m", model, "--quiet"])
    print(f"scene done: {model}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(run_cli(main))
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to continue where it stopped", file=sys.stderr)
        sys.exit(130)
