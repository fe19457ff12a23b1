#!/usr/bin/env python
"""Fit-iteration benchmark: the whole CPU training step, this tree against a baseline commit, same run.

    python benchmarks/fit_iteration.py --json benchmarks/results/fit_iteration_cpu_2core.json
    python benchmarks/fit_iteration.py --quick            # fewer rounds, a smoke test
    python benchmarks/fit_iteration.py --profile          # cProfile one block per size and tree

One iteration is what training/fit.py does per step with the `cpu` backend: learning-rate update,
gaussian_renderer.render, utils.loss_utils.photometric_loss, backward, the densification statistics
(training.strategy.DensifyStrategy.step_post_backward with densification far in the future, so it
only accumulates), optimizer step and zero_grad(set_to_none=True).

Sizes: (a) a 63x47 view with 35k Gaussians, (b) a 480x360 view with 50k. Gaussians (SH degree 3)
lie 2 to 8 units in front of the camera, spread over 1.6x the view's width and height (a view of a
multi-view scene sees part of it), screen-space sigma log-normal around 1.2 px, opacity uniform in
[0.05, 0.95]; the Mip-Splatting 3D filter is computed for the view.

The baseline (default HEAD) is measured in the same run: its tree is exported with `git archive`
into a temporary folder and its C++ extension is compiled from that tree's source with the flags of
submodules/cpu_rasterizer/setup.py under another module name (cached in ~/.cache/3dsr_bench), then
put in place of `threedsr_cpu_rasterizer` in its worker. The rasterizer module takes rasterizer.cpp
and the sources it links (preprocess.cpp, ...); a source with its own PYBIND11_MODULE (ssim.cpp) is a
module of its own whose functions are attached to it, as the package's __init__ re-exports them. This tree uses the installed extension
(rebuild it after editing the C++). Both trees run in persistent worker processes on the same
scenes; timed blocks alternate between them, so machine load affects both alike. Reported per size:
median seconds per iteration over the blocks, iterations/s, and the speedup baseline / this tree.
Timings are printed, never asserted.
"""
import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"a": (63, 47, 35_000), "b": (480, 360, 50_000)}
EXT_DIR = "submodules/cpu_rasterizer/csrc"
EXT_MAIN = "rasterizer.cpp"
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "3dsr_bench")


# ---------------------------------------------------------------------------------------------
# Worker: one tree, one process; reads commands from stdin, answers one JSON line each.

def _worker_scene(width, height, n, seed=0):
    import torch
    from scene.cameras import Camera
    from scene.gaussian_model import GaussianModel
    from utils.sh_utils import RGB2SH

    g = torch.Generator().manual_seed(seed)
    f = 0.9 * width
    z = 2.0 + 6.0 * torch.rand(n, generator=g)
    x = (torch.rand(n, generator=g) - 0.5) * 1.6 * (width / f) * z
    y = (torch.rand(n, generator=g) - 0.5) * 1.6 * (height / f) * z
    sigma_px = 1.2 * torch.exp(0.6 * torch.randn(n, 3, generator=g))
    opac = 0.05 + 0.9 * torch.rand(n, generator=g)
    model = GaussianModel(sh_degree=3)
    model.params = {
        "xyz": torch.stack([x, y, z], dim=1),
        "f_dc": RGB2SH(torch.rand(n, 1, 3, generator=g)),
        "f_rest": 0.05 * torch.randn(n, 15, 3, generator=g),
        "opacity": torch.log(opac / (1 - opac))[:, None],
        "scaling": torch.log(sigma_px * z[:, None] / f),
        "rotation": torch.randn(n, 4, generator=g),
    }
    for p in model.params.values():
        p.requires_grad_(True)
    model.active_sh_degree = 3
    model.spatial_lr_scale = 5.0
    target = torch.rand(3, height, width, generator=g)
    cam = Camera(uid=0, image_name="bench", world_to_camera=torch.eye(4), fx=f, fy=f, cx=width / 2,
                 cy=height / 2, width=width, height=height, image=target)
    model.filter_3D = torch.zeros(n, 1)
    model.compute_3D_filter([cam])
    return model, cam


class _Bench:
    def __init__(self, width, height, n):
        from argparse import ArgumentParser

        import torch
        from arguments import OptimizationParams, PipelineParams
        from training.strategy import DensifyStrategy

        parser = ArgumentParser()
        self.opt = OptimizationParams(parser).extract(parser.parse_args([]))
        parser = ArgumentParser()
        self.pipe = PipelineParams(parser).extract(parser.parse_args([]))
        self.pipe.backend = "cpu"
        self.model, self.cam = _worker_scene(width, height, n)
        self.model.training_setup(self.opt)
        self.strategy = DensifyStrategy(densify_from_iter=10**9, densify_until_iter=10**9 + 1)
        self.bg = torch.zeros(3)
        self.iteration = 1

    def step(self):
        from gaussian_renderer import render
        from utils.loss_utils import photometric_loss
        import torch

        m, cam = self.model, self.cam
        m.update_learning_rate(self.iteration)
        pkg = render(cam, m, self.pipe, self.bg, backend="cpu")
        loss = photometric_loss(pkg["render"], cam.image, self.opt.lambda_dssim)
        loss.backward()
        with torch.no_grad():
            self.strategy.step_post_backward(self.iteration, m, pkg, cam, 1.0)
            m.optimizer.step()
            m.optimizer.zero_grad(set_to_none=True)
        self.iteration += 1

    def run(self, iters):
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - t0)
        return times


def _load_so(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(os.path.basename(path).split(".")[0], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def worker_main(root, ext_paths):
    # answers go to the real stdout; anything the code under test prints goes to stderr
    channel = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr
    sys.path.insert(0, root)
    if ext_paths:
        import torch  # noqa: F401  (loads libtorch before the extension)
        ext = _load_so(ext_paths[0])
        for path in ext_paths[1:]:  # separate modules: their functions on the package, as its __init__ does
            extra = _load_so(path)
            for k, v in vars(extra).items():
                if not k.startswith("_"):
                    setattr(ext, k, v)
        sys.modules["threedsr_cpu_rasterizer"] = ext
    import torch
    import threedsr_cpu_rasterizer as C
    from gaussian_renderer import cpu_backend
    assert cpu_backend._C is C, "the cpu backend did not pick up the intended extension"
    print(json.dumps({"ready": True, "build_info": C.build_info(), "threads": torch.get_num_threads(),
                      "root": root}), file=channel, flush=True)
    benches = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        key = cmd["size"]
        if key not in benches:
            benches[key] = _Bench(*SIZES[key])
            benches[key].run(3)  # warm-up: thread pool, allocator, Adam state
        b = benches[key]
        if cmd.get("profile"):
            import cProfile
            import io
            import pstats
            prof = cProfile.Profile()
            prof.enable()
            times = b.run(cmd["iters"])
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
            print(json.dumps({"times": times, "profile": out.getvalue()}), file=channel, flush=True)
        else:
            print(json.dumps({"times": b.run(cmd["iters"]), "n": b.model.num_points}), file=channel, flush=True)


# ---------------------------------------------------------------------------------------------
# Driver

def _cxx_flags():
    flags = ["-O3", "-g0", "-fopenmp", "-ffp-contract=off"]
    mode = os.environ.get("THREEDSR_CPU_ARCH", "auto")
    if mode == "native":
        return flags + ["-march=native"]
    if mode != "generic" and platform.machine().lower() in ("x86_64", "amd64"):
        try:
            with open("/proc/cpuinfo") as fh:
                have = next((set(ln.split(":", 1)[1].split()) for ln in fh if ln.startswith("flags")), set())
        except OSError:
            have = set()
        if {"avx2", "fma"} <= have:
            flags += ["-mavx2", "-mfma"]
    return flags


def _build_module(prefix, sources, flags, ref):
    import torch
    from torch.utils.cpp_extension import load

    h = hashlib.sha256()
    for src in sources:
        with open(src, "rb") as fh:
            h.update(fh.read())
    h.update(" ".join(flags).encode() + torch.__version__.encode())
    name = f"{prefix}_{h.hexdigest()[:12]}"
    build_dir = os.path.join(CACHE, name)
    so = [f for f in os.listdir(build_dir) if f.startswith(name) and f.endswith(".so")] \
        if os.path.isdir(build_dir) else []
    if so:
        return os.path.join(build_dir, so[0])
    os.makedirs(build_dir, exist_ok=True)
    print(f"compiling the {ref} {prefix} (once; cached in {build_dir}) ...", flush=True)
    mod = load(name=name, sources=sources, extra_cflags=flags, extra_ldflags=["-fopenmp"],
               build_directory=build_dir, verbose=False)
    return mod.__file__


def build_baseline_extension(tree, ref):
    """Compile the baseline tree's extension; returns the .so paths, the rasterizer module first (cached)."""
    csrc = os.path.join(tree, EXT_DIR)
    linked, separate = [os.path.join(csrc, EXT_MAIN)], []
    for f in sorted(os.listdir(csrc)):
        if f.endswith(".cpp") and f != EXT_MAIN:
            with open(os.path.join(csrc, f), encoding="utf-8", errors="replace") as fh:
                (separate if "PYBIND11_MODULE" in fh.read() else linked).append(os.path.join(csrc, f))
    paths = [_build_module("threedsr_cpu_rasterizer_base", linked, _cxx_flags(), ref)]
    # setup.py builds the separate modules (the fused SSIM) without -ffp-contract=off
    flags = [f for f in _cxx_flags() if f != "-ffp-contract=off"]
    for src in separate:
        stem = os.path.splitext(os.path.basename(src))[0]
        paths.append(_build_module(f"threedsr_{stem}_base", [src], flags, ref))
    return paths


class Worker:
    def __init__(self, label, root, ext_paths=()):
        cmd = [sys.executable, os.path.abspath(__file__), "--_worker", root]
        for path in ext_paths:
            cmd += ["--_ext", path]
        env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        self.label = label
        self.proc = subprocess.Popen(cmd, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.label} worker exited (rc {self.proc.wait()})")
        return json.loads(line)

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--baseline", default="HEAD", help="git revision to compare against (default HEAD)")
    ap.add_argument("--sizes", default="a,b", help="a: 63x47/35k, b: 480x360/50k (default both)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating timed blocks per tree (default 7)")
    ap.add_argument("--iters", type=int, default=None, help="iterations per block (default 10 for a, 4 for b)")
    ap.add_argument("--quick", action="store_true", help="2 rounds of short blocks")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one block per size and tree")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_ext", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        return worker_main(args._worker, args._ext)

    rounds = args.rounds or (2 if args.quick else 7)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    rev = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory(prefix="3dsr_bench_") as tmp:
        base_root = os.path.join(tmp, "baseline")
        os.makedirs(base_root)
        archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", base_root], input=archive.stdout, check=True)
        ext = build_baseline_extension(base_root, args.baseline)
        workers = {"baseline": Worker("baseline", base_root, ext), "current": Worker("current", ROOT)}
        try:
            import torch
            load = os.getloadavg() if hasattr(os, "getloadavg") else None
            report = {
                "machine": {"platform": platform.platform(), "processor": platform.processor(),
                            "threads": workers["current"].info["threads"], "torch": torch.__version__,
                            "load_average_at_start": load},
                "baseline": {"revision": f"{args.baseline} ({rev})", "extension": workers["baseline"].info["build_info"]},
                "current": {"tree": "working tree" + (" (uncommitted changes)" if dirty else ""),
                            "extension": workers["current"].info["build_info"]},
                "iteration": "lr update, render (cpu backend), photometric_loss, backward, densification "
                             "statistics, optimizer step, zero_grad",
                "rounds": rounds, "results": [],
            }
            print(f"threads {report['machine']['threads']}, load average {load}; baseline {args.baseline} ({rev}) "
                  f"vs the working tree", flush=True)
            for key in sizes:
                W, H, n = SIZES[key]
                iters = args.iters or ((10 if key == "a" else 4) if not args.quick else (4 if key == "a" else 2))
                times = {"baseline": [], "current": []}
                for r in range(rounds):
                    order = ("baseline", "current") if r % 2 == 0 else ("current", "baseline")
                    for label in order:
                        ans = workers[label].ask(size=key, iters=iters)
                        times[label].append(statistics.median(ans["times"]))
                entry = {"size": f"{W}x{H}", "gaussians": n}
                for label, ts in times.items():
                    med = statistics.median(ts)
                    entry[label] = {"seconds_per_iteration": med, "iterations_per_second": 1.0 / med,
                                    "block_medians_s": ts}
                entry["speedup"] = entry["baseline"]["seconds_per_iteration"] / entry["current"]["seconds_per_iteration"]
                report["results"].append(entry)
                print(f"  {W}x{H} / {n // 1000}k: baseline {1e3 * entry['baseline']['seconds_per_iteration']:7.1f} ms "
                      f"({entry['baseline']['iterations_per_second']:5.1f} it/s)   current "
                      f"{1e3 * entry['current']['seconds_per_iteration']:7.1f} ms "
                      f"({entry['current']['iterations_per_second']:5.1f} it/s)   x{entry['speedup']:.2f}", flush=True)
                if args.profile:
                    for label, w in workers.items():
                        ans = w.ask(size=key, iters=iters, profile=True)
                        print(f"--- cProfile, {label}, {W}x{H}/{n}, {iters} iterations ---\n{ans['profile']}")
        finally:
            for w in workers.values():
                w.close()
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
