#!/usr/bin/env python
"""GPU smoke test: does 3dsr run on this CUDA machine, how fast, and in how much GPU memory?

    bash scripts/gpu_smoke.sh                        # a CUDA GPU: all stages, < 8 min on one H100-class GPU
    python tools/gpu_smoke.py --stages 2 4           # some stages only
    python tools/gpu_smoke.py --device cpu --tiny    # the same code at toy sizes on CPU (tests/test_gpu_smoke.py)

Stages; each prints PASS / FAIL / SKIP with its wall time and peak GPU memory
(torch.cuda.max_memory_allocated, reset per stage; for stage 3 the largest of its commands):
  1 gsplat      gsplat is installed and its compiled CUDA extension loads (`gsplat.cuda._backend._C`;
                gsplat 1.5.3 compiles it on first use, which `bash scripts/setup.sh --cuda` does ahead).
  2 rasterizer  gsplat vs the pure-PyTorch reference, both on the GPU, on random Gaussians: images, alpha,
                and the gradients of means, quaternions, scales, opacities, colours and the screen-space
                means, within the bounds of tests/test_gsplat_backend.py (gsplat cuts splats at
                opacity-aware radii on 16-pixel tiles, the reference at 3-sigma boxes on 8-pixel tiles, so
                splat fringes differ: close on average, loose per pixel, gradients aligned).
  3 pipeline    the embedded scene end to end with the gsplat backend: tools/make_scene.py (480x360),
                train.py -r 8 (1000 iterations), render.py -r 2, sr_refine.py --sr_model embedded-x4 in
                the modes 3dsr, per-view and bicubic (short schedules), render.py --iteration sr -r 2,
                metrics.py; every command as a subprocess, as a user types it.
  4 sr-memory   real-size SD-x4-upscaler and StableSR-Turbo (the released architectures, random weights:
                none can be downloaded here; fp16 UNets, fp32 VAEs as in sr_refine.py) on 17 views of
                504x378 -> 2016x1512, one full SR step each (init, predict, decode, encode, DDIM step):
                with the tiling flags (sd-x4: --vae_tiling --sr_batch 1; StableSR: --vae_tile 512
                --vae_tile_overlap 64 with its 64/32 latent tiles) under a 24 GB card's memory (cap
                23.0 GiB), without them (the defaults) under an 80 GB card's (cap 78.5 GiB). The cap is
                enforced with torch.cuda.set_per_process_memory_fraction, so "fits" means it ran there.
Writes OUT/results.json (default output/gpu_smoke) and OUT/logs/; exits 1 if a stage FAILs. No downloads.

--device cpu --tiny: stage 1 is skipped, stage 2 compares the C++ `cpu` backend (the reference itself
when it is not built) with the reference, stage 3 runs a 256x192 scene with short schedules on the cpu
(or torch) backend, stage 4 tiny models of the same classes on 2 views of 32x24 (no memory caps).
"""
import argparse
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

GIB = float(1 << 30)
# Memory classes of stage 4: cap of what PyTorch may reserve, below the card's size by the CUDA context
# and library workspaces (a "24 GB" card shows 23.99 GiB, an 80 GB one 79.6 GiB).
CARDS = {"24GB": 23.0, "80GB": 78.5}
# Stage 2 bounds: those of tests/test_gsplat_backend.py::test_gsplat_matches_reference_on_cuda.
IMAGE_MEAN_TOL, IMAGE_MAX_TOL, ALPHA_MEAN_TOL = 2e-3, 0.05, 2e-3
GRAD_COS_MIN, MEANS2D_COS_MIN, MEANS2D_NORM_RATIO = 0.95, 0.98, (0.9, 1.1)
PSNR_FLOOR = 12.0  # stage 3: a render this bad means the pipeline is broken, not merely short


class StageFailure(Exception):
    """A check failed; `details` keeps what was measured."""

    def __init__(self, message, details=None):
        super().__init__(message)
        self.details = details or {}


class StageSkip(Exception):
    pass


# ---------------------------------------------------------------------------------------------------
# helpers
def _torch():
    import torch
    return torch


def is_cuda(device):
    return _torch().device(device).type == "cuda"


def sync(device):
    if is_cuda(device):
        _torch().cuda.synchronize(device)


def reset_peak(device):
    torch = _torch()
    gc.collect()
    if is_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device):
    if not is_cuda(device):
        return None
    return _torch().cuda.max_memory_allocated(device) / GIB


def fmt_gib(value):
    return "n/a" if value is None else f"{value:.2f} GiB"


def first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


class Smoke:
    def __init__(self, args):
        self.args = args
        self.device = args.device
        self.tiny = args.tiny
        self.out = os.path.abspath(args.out)
        self.logs = os.path.join(self.out, "logs")
        self.work = os.path.join(self.out, "work")
        self.results = []

    def log_path(self, name):
        os.makedirs(self.logs, exist_ok=True)
        return os.path.join(self.logs, name)

    def run_stage(self, number, name, fn):
        torch = _torch()
        reset_peak(self.device)
        t0 = time.time()
        status, details, error = "PASS", {}, None
        try:
            details = fn() or {}
        except StageSkip as exc:
            status, error = "SKIP", str(exc)
        except StageFailure as exc:
            status, error, details = "FAIL", str(exc), exc.details
        except Exception as exc:  # noqa: BLE001  (a smoke test reports every failure and goes on)
            status, error = "FAIL", first_line(exc)
            with open(self.log_path(f"stage{number}_traceback.txt"), "w") as f:
                traceback.print_exc(file=f)
            details = {"traceback": os.path.relpath(self.log_path(f"stage{number}_traceback.txt"), self.out)}
        seconds = time.time() - t0
        peak = details.pop("_peak_gib", None) if isinstance(details, dict) else None
        if peak is None:
            peak = peak_gib(self.device)
        if is_cuda(self.device):
            torch.cuda.set_per_process_memory_fraction(1.0, torch.device(self.device))
        result = {"stage": number, "name": name, "status": status, "seconds": round(seconds, 2),
                  "peak_gpu_gib": None if peak is None else round(peak, 3), "details": details}
        if error:
            result["error"] = error
        self.results.append(result)
        summary = details.get("summary", "") if isinstance(details, dict) else ""
        line = f"{status:<4}  stage {number} {name:<10} {seconds:7.1f} s  peak GPU {fmt_gib(peak):>9}"
        if summary:
            line += f"  {summary}"
        if error:
            line += f"  -- {error}"
        print(line, flush=True)
        return result

    # -----------------------------------------------------------------------------------------------
    # stage 1
    def stage_gsplat(self):
        if not is_cuda(self.device):
            raise StageSkip("gsplat is CUDA only (device cpu)")
        import importlib.util
        if importlib.util.find_spec("gsplat") is None:
            raise StageFailure("gsplat is not installed (bash scripts/setup.sh --cuda, or environment.yml)")
        import gsplat
        from torch.utils.cpp_extension import CUDA_HOME
        t0 = time.time()
        from gsplat.cuda import _backend
        load_s = time.time() - t0
        details = {"gsplat": getattr(gsplat, "__version__", "?"), "cuda_home": CUDA_HOME,
                   "extension_load_s": round(load_s, 2)}
        ext = getattr(_backend, "_C", None)
        if ext is None:
            raise StageFailure("gsplat's CUDA extension did not load (no prebuilt kernels and no toolkit to build "
                               "them; bash scripts/setup.sh --cuda says why)", details)
        details["extension"] = getattr(ext, "__file__", None) or getattr(ext, "__name__", "?")
        for op in ("rasterize_to_pixels_3dgs_fwd", "projection_ewa_3dgs_fused_fwd", "intersect_tile"):
            if not hasattr(ext, op):
                raise StageFailure(f"gsplat's extension lacks {op}", details)
        if hasattr(ext, "null"):  # gsplat's copy kernel: the compiled code runs on this GPU's architecture
            torch = _torch()
            x = torch.arange(1000, dtype=torch.float32, device=self.device)
            y = ext.null(x)
            sync(self.device)
            if not torch.equal(x, y):
                raise StageFailure("gsplat's test kernel (null) returned wrong values", details)
            details["kernel_ran"] = True
        try:
            from gaussian_renderer import backend_status
            ok, why = backend_status("gsplat")
            details["backend_status"] = why
            if not ok:
                raise StageFailure(f"the renderer does not offer gsplat: {why}", details)
        except ImportError:
            pass
        details["summary"] = f"gsplat {details['gsplat']}, extension loaded in {load_s:.1f} s"
        return details

    # -----------------------------------------------------------------------------------------------
    # stage 2
    def candidate_backend(self):
        if is_cuda(self.device):
            return "gsplat"
        try:
            import threedsr_cpu_rasterizer  # noqa: F401
            return "cpu"
        except ImportError:
            return "torch"

    def stage_rasterizer(self):
        torch = _torch()
        from gaussian_renderer import torch_backend
        name = self.candidate_backend()
        if name == "gsplat":
            from gaussian_renderer import gsplat_backend
            candidate = gsplat_backend.rasterize
        elif name == "cpu":
            from gaussian_renderer import cpu_backend
            candidate = cpu_backend.rasterize
        else:
            candidate = torch_backend.rasterize
        cases = [(600, 64, 48)] if self.tiny else [(600, 64, 48), (20000, 320, 240)]
        details = {"candidate": name, "reference": "torch", "device": str(self.device), "cases": []}
        failures = []
        for n, W, H in cases:
            tensors, K = random_gaussians(n, W, H, seed=0, device=self.device)
            bg = torch.tensor([0.2, 0.1, 0.4], device=self.device)
            t0 = time.time()
            ref, g_ref, off_ref = render_with_grads(torch_backend.rasterize, tensors, K, W, H, bg)
            sync(self.device)
            t_ref = time.time() - t0
            t0 = time.time()
            out, g_out, off_out = render_with_grads(candidate, tensors, K, W, H, bg)
            sync(self.device)
            t_cand = time.time() - t0
            case = compare_renders(ref, g_ref, off_ref, out, g_out, off_out)
            case.update({"gaussians": n, "size": f"{W}x{H}", "reference_s": round(t_ref, 3),
                         "candidate_s": round(t_cand, 3)})
            details["cases"].append(case)
            failures += [f"{n}@{W}x{H}: {f}" for f in case["failures"]]
        worst = min(min(c["grad_cos"].values()) for c in details["cases"])
        details["summary"] = (f"{name} vs torch: image |d| mean <= "
                              f"{max(c['image_mean_abs'] for c in details['cases']):.1e}, min grad cos {worst:.4f}")
        if failures:
            raise StageFailure("; ".join(failures), details)
        return details

    # -----------------------------------------------------------------------------------------------
    # stage 3
    def stage_pipeline(self):
        if is_cuda(self.device):
            backend = "gsplat"
        else:
            backend = self.candidate_backend()
        tiny = self.tiny
        work = os.path.join(self.work, "pipeline")
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        scene, model = os.path.join(work, "scene"), os.path.join(work, "model")
        iters = self.args.train_iters or (60 if tiny else 1000)
        steps, per_step = (1, 10) if tiny else (2, 100)
        dev_flag = ["--device", str(self.device)] if script_has_flag("train.py", "--device") else []
        details = {"backend": backend, "commands": [], "device_flag": bool(dev_flag)}
        peaks = []

        def run(label, script, args):
            res = self.run_script(label, script, args)
            details["commands"].append(res)
            if res["peak_gpu_gib"] is not None:
                peaks.append(res["peak_gpu_gib"])
            if res["returncode"] != 0:
                details["_peak_gib"] = max(peaks) if peaks else None
                raise StageFailure(f"{label} exited {res['returncode']} (log: {res['log']}): {res['last_line']}",
                                   details)

        size = ["--width", "256", "--height", "192", "--views", "9", "--points", "1000"] if tiny else \
            ["--width", "480", "--height", "360", "--views", "16"]
        run("make_scene", "tools/make_scene.py", ["--out", scene, "--quiet"] + size)
        dens = [str(max(iters // 2, 1)), "--densify_from_iter", "10", "--densification_interval", "10"] if tiny \
            else [str(iters // 2)]
        run("train", "train.py", ["-s", scene, "-r", "8", "--eval", "-m", model, "--iterations", str(iters),
                                  "--save_iterations", str(iters), "--test_iterations", str(iters),
                                  "--position_lr_max_steps", str(iters), "--densify_until_iter"] + dens +
            ["--opacity_reset_interval", "100000", "--sh_increase_interval", str(max(iters // 4, 1)),
             "--backend", backend, "--seed", "0", "--quiet"] + dev_flag)
        render = ["render.py", "-m", model, "-r", "2", "--skip_train", "--quiet", "--backend", backend]
        run("render lr-3dgs", render[0], render[1:] + ["--iteration", str(iters), "--method", "lr-3dgs"] + dev_flag)
        for mode, name in (("3dsr", "sr"), ("per-view", "sr_per-view"), ("bicubic", "sr_bicubic")):
            run(f"sr_refine {mode}", "sr_refine.py",
                ["-m", model, "--iteration", str(iters), "--mode", mode, "--name", name, "--sr_model", "embedded-x4",
                 "--steps", str(steps), "--iters_per_step", str(per_step), "--iters_schedule", "uniform",
                 "--backend", backend, "--seed", "0",
                 "--overwrite", "--quiet"] + dev_flag)
            log = os.path.join(model, "sr", name, "log.json")
            with open(log) as f:
                if not json.load(f).get("complete"):
                    raise StageFailure(f"sr_refine {mode}: {log} does not say complete", details)
        run("render 3dsr", render[0], render[1:] + ["--iteration", "sr", "--method", "3dsr"] + dev_flag)
        metrics = ["-m", model, "--quiet"] + (["--metrics", "psnr", "ssim", "mv-warp"] if tiny else [])
        if script_has_flag("metrics.py", "--device"):
            metrics += ["--device", str(self.device)]
        run("metrics", "metrics.py", metrics)
        with open(os.path.join(model, "results.json")) as f:
            results = json.load(f)
        psnr = {}
        for method in ("lr-3dgs", "3dsr"):
            value = find_metric(results, method, "PSNR")
            psnr[method] = value
            if value is None or not math.isfinite(value) or value < PSNR_FLOOR:
                raise StageFailure(f"metrics: PSNR of {method} is {value} (< {PSNR_FLOOR} dB or missing)", details)
        details["psnr"] = psnr
        details["_peak_gib"] = max(peaks) if peaks else None
        secs = {c["label"]: c["seconds"] for c in details["commands"]}
        details["summary"] = (f"{backend}: train {secs['train']:.0f} s, 3dsr {secs['sr_refine 3dsr']:.0f} s, "
                              f"PSNR lr-3dgs {psnr['lr-3dgs']:.2f} / 3dsr {psnr['3dsr']:.2f} dB")
        return details

    def run_script(self, label, script, args):
        """Run `python SCRIPT ARGS` in the repository root; record wall time, peak GPU memory and the log."""
        slug = "".join(c if c.isalnum() else "_" for c in label)
        log = self.log_path(f"stage3_{slug}.log")
        peak_file = log + ".peak.json"
        cmd = [sys.executable, os.path.abspath(__file__), "--exec-script", peak_file, script] + args
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env["PYTHONUNBUFFERED"] = "1"
        t0 = time.time()
        with open(log, "w") as f:
            f.write(f"$ python {script} {' '.join(args)}\n")
            f.flush()
            proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
        seconds = time.time() - t0
        peak = None
        if os.path.isfile(peak_file):
            with open(peak_file) as f:
                peak_bytes = json.load(f).get("peak_bytes")
            os.remove(peak_file)
            if is_cuda(self.device) and peak_bytes is not None:
                peak = round(peak_bytes / GIB, 3)
        with open(log) as f:
            lines = [ln.rstrip() for ln in f if ln.strip()]
        return {"label": label, "command": f"python {script} {' '.join(args)}", "returncode": proc.returncode,
                "seconds": round(seconds, 2), "peak_gpu_gib": peak, "log": os.path.relpath(log, self.out),
                "last_line": lines[-1] if lines else ""}

    # -----------------------------------------------------------------------------------------------
    # stage 4
    def stage_sr_memory(self):
        torch = _torch()
        device = torch.device(self.device)
        if self.tiny:
            views, lr_h, lr_w = 2, 24, 32
        else:
            views, lr_h, lr_w = self.args.views, 378, 504
        gen = torch.Generator().manual_seed(0)
        lr = torch.rand(views, 3, lr_h, lr_w, generator=gen)
        if self.tiny:
            configs = [("sd-x4", "tiled", dict(vae_tiling=True, sr_batch=1), None),
                       ("sd-x4", "untiled", dict(vae_tiling=False, sr_batch=1), None),
                       ("stablesr", "tiled", dict(vae_tile=64, vae_tile_overlap=16, tile_size=8, tile_overlap=4), None),
                       ("stablesr", "untiled", dict(), None)]
        else:
            configs = [("sd-x4", "tiled", dict(vae_tiling=True, sr_batch=1), "24GB"),
                       ("sd-x4", "untiled", dict(vae_tiling=False, sr_batch=1), "80GB"),
                       ("stablesr", "tiled", dict(vae_tile=512, vae_tile_overlap=64, tile_size=64, tile_overlap=32),
                        "24GB"),
                       ("stablesr", "untiled", dict(), "80GB")]
        total_gib = torch.cuda.get_device_properties(device).total_memory / GIB if device.type == "cuda" else None
        details = {"views": views, "lr": f"{lr_w}x{lr_h}", "hr": f"{4 * lr_w}x{4 * lr_h}", "gpu_total_gib":
                   None if total_gib is None else round(total_gib, 2), "configs": []}
        failures, peaks = [], []
        for model_name, label, opts, card in configs:
            cfg = {"model": model_name, "config": label, "options": opts, "card": card}
            cap = CARDS.get(card)
            sr = None
            try:
                sr = build_sr(model_name, device, self.tiny, opts)
                cfg["weights_gib"] = round(sum(p.numel() * p.element_size() for p in sr_parameters(sr)) / GIB, 3)
                reset_peak(device)
                if cap is not None and total_gib is not None and total_gib > cap:
                    torch.cuda.set_per_process_memory_fraction(cap / total_gib, device)
                cfg["cap_gib"] = cap
                cfg.update(one_sr_step(sr, lr.to(device), device))
                peak = peak_gib(device)
                cfg["peak_gib"] = None if peak is None else round(peak, 3)
                if device.type == "cuda":
                    cfg["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / GIB, 3)
                if cap is not None and peak is not None and peak > cap:
                    cfg["status"] = "FAIL"
                    failures.append(f"{model_name} {label}: peak {peak:.2f} GiB > {cap} GiB")
                elif cfg.get("problem"):
                    cfg["status"] = "FAIL"
                    failures.append(f"{model_name} {label}: {cfg['problem']}")
                else:
                    cfg["status"] = "PASS"
            except Exception as exc:  # noqa: BLE001
                oom = "out of memory" in str(exc).lower()
                cfg["error"] = first_line(exc)
                if oom and cap is not None and total_gib is not None and total_gib < cap:
                    cfg["status"] = "SKIP"
                    cfg["error"] += f" (this GPU has {total_gib:.1f} GiB, less than the {card} class)"
                else:
                    cfg["status"] = "FAIL"
                    failures.append(f"{model_name} {label}: {cfg['error']}")
                    if not oom:
                        with open(self.log_path(f"stage4_{model_name}_{label}_traceback.txt"), "w") as f:
                            traceback.print_exc(file=f)
            finally:
                if device.type == "cuda":
                    cfg.setdefault("peak_gib", round(peak_gib(device), 3))
                    torch.cuda.set_per_process_memory_fraction(1.0, device)
                del sr
                reset_peak(device)
            details["configs"].append(cfg)
            if cfg.get("peak_gib") is not None:
                peaks.append(cfg["peak_gib"])
            timing = "" if "predict_s" not in cfg else \
                f"predict {cfg['predict_s']:.1f} s, decode {cfg['decode_s']:.1f} s, encode {cfg['encode_s']:.1f} s"
            print(f"        {cfg['status']:<4} {model_name:<8} {label:<8} peak {fmt_gib(cfg.get('peak_gib')):>9}"
                  f"{'' if cap is None else f' (cap {cap} GiB, {card})'}  {timing}"
                  f"{'  -- ' + cfg['error'] if cfg.get('error') else ''}", flush=True)
        details["_peak_gib"] = max(peaks) if peaks else None
        details["summary"] = ", ".join(f"{c['model']} {c['config']} {fmt_gib(c.get('peak_gib'))}"
                                       for c in details["configs"])
        if failures:
            raise StageFailure("; ".join(failures), details)
        return details


# ---------------------------------------------------------------------------------------------------
# stage 2 pieces
def random_gaussians(n, W, H, seed=0, device="cpu"):
    """Random Gaussians in front of an identity camera (the scene of tests/test_gsplat_backend.py), drawn on
    the CPU so every device gets the same numbers."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    z = 2.0 + 3.0 * torch.rand(n, generator=g)
    xy = (torch.rand(n, 2, generator=g) - 0.5) * 1.2 * z[:, None]
    means = torch.cat([xy, z[:, None]], 1)
    quats = torch.randn(n, 4, generator=g)
    scales = 0.03 * torch.exp(0.5 * torch.randn(n, 3, generator=g)) * (600.0 / max(n, 600)) ** 0.5
    opac = 0.1 + 0.8 * torch.rand(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    K = torch.tensor([[0.9 * W, 0, W / 2 + 0.7], [0, 0.9 * W, H / 2 - 1.1], [0, 0, 1.0]])
    return [t.to(device) for t in (means, quats, scales, opac, colors)], K.to(device)


def render_with_grads(fn, tensors, K, W, H, bg):
    torch = _torch()
    inputs = [t.clone().requires_grad_(True) for t in tensors]
    offset = torch.zeros(tensors[0].shape[0], 2, device=tensors[0].device, requires_grad=True)
    out = fn(*inputs, torch.eye(4, device=K.device), K, W, H, bg, kernel_size=0.1, means2d_offset=offset)
    w = torch.linspace(-1, 1, W, device=K.device)
    ((out["image"] * w).sum() + 0.1 * (out["depth"] * w).sum() + (out["alpha"] * w).sum()).backward()
    return out, [t.grad for t in inputs], offset.grad


def compare_renders(ref, g_ref, off_ref, out, g_out, off_out):
    torch = _torch()
    cos = torch.nn.functional.cosine_similarity
    diff = (out["image"].detach().float() - ref["image"].detach().float()).abs()
    alpha = (out["alpha"].detach().float() - ref["alpha"].detach().float()).abs()
    res = {"image_mean_abs": float(diff.mean()), "image_max_abs": float(diff.max()),
           "alpha_mean_abs": float(alpha.mean()), "grad_cos": {}, "failures": []}
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), g_out, g_ref):
        res["grad_cos"][name] = float(cos(a.flatten().double(), b.flatten().double(), dim=0))
    visible = (out["radii"] > 0) & (ref["radii"] > 0)
    a, b = off_out[visible].flatten().double(), off_ref[visible].flatten().double()
    res["grad_cos"]["means2d"] = float(cos(a, b, dim=0))
    res["means2d_norm_ratio"] = float(a.norm() / b.norm().clamp_min(1e-30))
    if not res["image_mean_abs"] < IMAGE_MEAN_TOL:
        res["failures"].append(f"image mean |diff| {res['image_mean_abs']:.2e} >= {IMAGE_MEAN_TOL}")
    if not res["image_max_abs"] < IMAGE_MAX_TOL:
        res["failures"].append(f"image max |diff| {res['image_max_abs']:.3f} >= {IMAGE_MAX_TOL}")
    if not res["alpha_mean_abs"] < ALPHA_MEAN_TOL:
        res["failures"].append(f"alpha mean |diff| {res['alpha_mean_abs']:.2e} >= {ALPHA_MEAN_TOL}")
    for name, value in res["grad_cos"].items():
        bound = MEANS2D_COS_MIN if name == "means2d" else GRAD_COS_MIN
        if not value > bound:
            res["failures"].append(f"grad {name} cosine {value:.4f} <= {bound}")
    lo, hi = MEANS2D_NORM_RATIO
    if not lo < res["means2d_norm_ratio"] < hi:
        res["failures"].append(f"screen-space gradient norm ratio {res['means2d_norm_ratio']:.3f} outside ({lo}, {hi})")
    return res


# ---------------------------------------------------------------------------------------------------
# stage 3 pieces
_HELP_CACHE = {}


def script_has_flag(script, flag):
    """Whether `python SCRIPT --help` lists `flag` (flags other engineers add appear without a code change)."""
    if script not in _HELP_CACHE:
        proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True)
        _HELP_CACHE[script] = proc.stdout
    return flag in _HELP_CACHE[script].split() or f"{flag} " in _HELP_CACHE[script]


def find_metric(results, method, metric):
    """`metric` of `method` in a metrics.py results.json ({method: {metric: value}} or nested under the
    model folder / split); None when absent or unavailable."""
    stack = [results]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if method in node and isinstance(node[method], dict) and metric in node[method]:
            value = node[method][metric]
            return float(value) if isinstance(value, (int, float)) else None
        stack.extend(node.values())
    return None


def exec_script(argv):
    """`gpu_smoke.py --exec-script PEAK_FILE SCRIPT ARGS...`: run SCRIPT as `python SCRIPT ARGS` would, then
    write its peak GPU memory (torch.cuda.max_memory_allocated, all devices) to PEAK_FILE."""
    import atexit
    import runpy
    peak_file, script, args = argv[0], argv[1], argv[2:]

    def dump():
        peak = 0
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            peak = max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
        with open(peak_file, "w") as f:
            json.dump({"peak_bytes": peak}, f)

    atexit.register(dump)
    path = os.path.join(ROOT, script)
    sys.argv = [path] + args
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [os.path.dirname(path)] + [p for p in sys.path if p not in (ROOT, here)]
    runpy.run_path(path, run_name="__main__")
    return 0


# ---------------------------------------------------------------------------------------------------
# stage 4 pieces: the released architectures (random weights) and their tiny test copies
def sd_x4_unet_config():
    """stabilityai/stable-diffusion-x4-upscaler's UNet (its ldm x4-upscaling.yaml in diffusers terms): 256
    base channels x (1, 2, 2, 4), attention at 1/2, 1/4, 1/8 (cross-attention only but at 1/8),
    8 heads, 1024-d text context, noise-level class embeddings, 7 input channels (latent + LR image)."""
    return dict(sample_size=128, in_channels=7, out_channels=4, layers_per_block=2,
                block_out_channels=(256, 512, 512, 1024),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                  "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                only_cross_attention=(True, True, True, False), cross_attention_dim=1024, attention_head_dim=8,
                num_class_embeds=1000, use_linear_projection=True)


def sd_x4_vae_config():
    """Its VAE: 128 x (1, 2, 4) channels, x4, 4 latent channels, scaling factor 0.08333."""
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(128, 256, 512), layers_per_block=2,
                latent_channels=4, norm_num_groups=32, sample_size=256, scaling_factor=0.08333)


def build_sr(model_name, device, tiny, opts):
    """A DiffusionSR adapter of `model_name` with random weights: the released sizes, or the tiny test ones."""
    torch = _torch()
    from sr.loading import default_dtype
    dtype = default_dtype(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if model_name == "sd-x4":
            from diffusers import AutoencoderKL, UNet2DConditionModel

            from sr.sd_x4_upscaler import SDx4Upscaler
            from sr.testing import tiny_schedulers, tiny_unet, tiny_vae
            if tiny:
                unet, vae, cross = tiny_unet(), tiny_vae(4, 64), 32
            else:
                unet = UNet2DConditionModel(**sd_x4_unet_config())
                vae = AutoencoderKL(**sd_x4_vae_config())
                cross = 1024
            scheduler, low_res = tiny_schedulers()  # the released model's schedule settings
            return SDx4Upscaler(unet, vae, scheduler, low_res, torch.zeros(1, 77, cross), name="sd-x4 (random)",
                                device=device, dtype=dtype, **opts)
        from sr.stablesr.adapter import StableSRTurbo
        from sr.stablesr.config import REAL, TINY
        from sr.stablesr.model import StableSRModel
        model = StableSRModel(TINY if tiny else REAL).eval().requires_grad_(False)
        return StableSRTurbo(model, name="stablesr-turbo (random)", device=device, dtype=dtype, **opts)


def sr_parameters(sr):
    seen = set()
    for attr in ("unet", "vae", "model"):
        module = getattr(sr, attr, None)
        if module is None:
            continue
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                yield p


def one_sr_step(sr, lr, device):
    """One full denoising step over all views: init, predict (x0, eps), decode, encode, DDIM step."""
    torch = _torch()
    gen = torch.Generator().manual_seed(0)
    ts = [int(t) for t in sr.timesteps(4)]
    res = {}
    t0 = time.time()
    x = sr.init_latents(lr, gen)
    cond = sr.init_cond_noise(lr, gen)
    sync(device)
    res["init_s"] = round(time.time() - t0, 2)
    t0 = time.time()
    x0, eps = sr.predict(x, ts[0], lr, cond)
    sync(device)
    res["predict_s"] = round(time.time() - t0, 2)
    t0 = time.time()
    hr = sr.decode(x0, lr)
    sync(device)
    res["decode_s"] = round(time.time() - t0, 2)
    t0 = time.time()
    z = sr.encode(hr, lr)
    sync(device)
    res["encode_s"] = round(time.time() - t0, 2)
    x = sr.step(z, eps, ts[0], ts[1])
    sync(device)
    want = (lr.shape[0], 3, 4 * lr.shape[-2], 4 * lr.shape[-1])
    res["hr_shape"] = list(hr.shape)
    res["latent_shape"] = list(x.shape)
    if tuple(hr.shape) != want:
        res["problem"] = f"decoded HR images {list(hr.shape)}, expected {list(want)}"
    elif z.shape != x0.shape:
        res["problem"] = f"encoded latents {list(z.shape)} differ from x0 {list(x0.shape)}"
    # Random weights can overflow fp16; a smoke test notes it but measures memory and time all the same.
    res["finite"] = bool(torch.isfinite(x0).all() and torch.isfinite(hr).all() and torch.isfinite(z).all())
    return res


# ---------------------------------------------------------------------------------------------------
def environment(device):
    torch = _torch()
    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "device": str(device), "host": platform.node()}
    try:
        import gsplat
        env["gsplat"] = getattr(gsplat, "__version__", "?")
    except Exception:  # noqa: BLE001  (not installed, or its import fails: stage 1 says which)
        env["gsplat"] = None
    for name in ("diffusers", "transformers"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            env[name] = None
    if is_cuda(device):
        props = torch.cuda.get_device_properties(torch.device(device))
        env.update(gpu=props.name, gpu_total_gib=round(props.total_memory / GIB, 2),
                   capability=f"{props.major}.{props.minor}")
    return env


def build_parser():
    p = argparse.ArgumentParser(description="GPU smoke test of 3dsr (see the module docstring)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (cpu needs --tiny)")
    p.add_argument("--tiny", action="store_true", help="toy sizes (minutes -> seconds), for CPU and CI")
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    p.add_argument("--out", default=os.path.join(ROOT, "output", "gpu_smoke"), help="results.json, logs/, work/")
    p.add_argument("--views", type=int, default=17, help="views of stage 4 (default 17)")
    p.add_argument("--train_iters", type=int, default=0, help="stage 3 training iterations (default 1000; tiny 60)")
    p.add_argument("--keep_work", action="store_true", help="keep OUT/work (the stage 3 scene and model)")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--exec-script"]:
        return exec_script(argv[1:])
    args = build_parser().parse_args(argv)
    torch = _torch()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA GPU visible (torch {torch.__version__}, CUDA build {torch.version.cuda}); on a CPU machine "
              "run: python tools/gpu_smoke.py --device cpu --tiny", file=sys.stderr)
        return 2
    if device.type != "cuda" and not args.tiny:
        print("--device cpu runs the toy sizes only: add --tiny", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.cuda.set_device(device)
    args.device = str(device)
    smoke = Smoke(args)
    os.makedirs(smoke.out, exist_ok=True)
    shutil.rmtree(smoke.logs, ignore_errors=True)
    env = environment(device)
    print(f"3dsr GPU smoke ({'tiny' if args.tiny else 'full'}): torch {env['torch']} (CUDA {env['torch_cuda']}), "
          f"device {env['device']}{' ' + env['gpu'] if 'gpu' in env else ''}, gsplat {env['gsplat']}", flush=True)
    t0 = time.time()
    stages = {1: ("gsplat", smoke.stage_gsplat), 2: ("rasterizer", smoke.stage_rasterizer),
              3: ("pipeline", smoke.stage_pipeline), 4: ("sr-memory", smoke.stage_sr_memory)}
    for number in sorted(set(args.stages)):
        name, fn = stages[number]
        smoke.run_stage(number, name, fn)
    passed = all(r["status"] != "FAIL" for r in smoke.results)
    summary = {"mode": "tiny" if args.tiny else "full", "environment": env, "passed": passed,
               "wall_s": round(time.time() - t0, 1), "stages": smoke.results}
    path = os.path.join(smoke.out, "results.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    if not args.keep_work:
        shutil.rmtree(smoke.work, ignore_errors=True)
    counts = {s: sum(r["status"] == s for r in smoke.results) for s in ("PASS", "FAIL", "SKIP")}
    print(f"{'PASSED' if passed else 'FAILED'}: {counts['PASS']} passed, {counts['FAIL']} failed, "
          f"{counts['SKIP']} skipped in {summary['wall_s']:.0f} s; {path}", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
