#!/usr/bin/env python
"""Rasterizer benchmark: the pure-PyTorch reference against the C++/OpenMP `cpu` backend, same run.

    python benchmarks/rasterizer.py --json bench.json           # 128^2/10k, 256^2/50k, 512^2/200k
    python benchmarks/rasterizer.py --quick                     # small sizes, a few seconds
    python benchmarks/rasterizer.py --train --json bench.json   # also train.py it/s + test PSNR per backend

Per size and backend it reports the median over --repeats of
  forward           inputs require grad, as in training (the reference then checkpoints its chunks)
  forward+backward  forward, then backward of a weighted sum of image, depth and alpha
and the peak memory of one forward+backward: the process's peak resident set size (VmHWM, reset
through /proc/self/clear_refs before the call, after malloc_trim) minus its resident size before it,
i.e. what the call added at its peak, torch's allocations included (tracemalloc would not see them).

It also estimates how far the cpu backend is from this machine's arithmetic limit: floating-point
operations per evaluated (pixel, Gaussian) pair times the pairs evaluated, against the peak FLOP/s
from the CPU's clock, core count and SIMD width. Timings are printed, never asserted.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gaussian_renderer import backend_status, torch_backend  # noqa: E402
from gaussian_renderer.projection import project_gaussians  # noqa: E402
from utils.system_utils import proc_status_kib  # noqa: E402

FULL_CONFIGS = [(128, 10_000), (256, 50_000), (512, 200_000)]
QUICK_CONFIGS = [(64, 2_000), (128, 10_000)]

# Floating-point operations per (pixel, Gaussian) pair in the cpu kernels, counted from the source
# (FMA = 2; compares, selects and mask logic = 1 each). Forward 68: offsets and quadratic form 11,
# exp 29 (clamps, rounding, Cody-Waite reduction, degree-7 polynomial, 2^n), alpha/threshold tests
# and transmittance 12, colour and depth accumulation 8, state updates 8. Backward 104: the same
# recomputation up to alpha 43, masks 5, T recovery by division and dL/dalpha 14, state updates 5,
# clamp mask and dL/dpower 5, the ten per-Gaussian gradient sums 32.
FLOPS_FWD_PAIR = 68
FLOPS_BWD_PAIR = 104


def realistic_scene(n, size, seed=0, dtype=torch.float32):
    """n Gaussians in the view frustum of a size x size camera, 2 to 8 units deep; screen-space sigma
    log-normal around 1.2 px (3-sigma radii of a few pixels, a long tail of larger ones), opacity
    uniform in [0.05, 0.95]: roughly what a trained 3DGS scene looks like at that resolution."""
    g = torch.Generator().manual_seed(seed)
    f = 0.9 * size
    z = 2.0 + 6.0 * torch.rand(n, generator=g, dtype=dtype)
    xy = (torch.rand(n, 2, generator=g, dtype=dtype) - 0.5) * (1.15 * size / f) * z[:, None]
    means = torch.cat([xy, z[:, None]], dim=1)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    sigma_px = 1.2 * torch.exp(0.6 * torch.randn(n, 3, generator=g, dtype=dtype))
    scales = sigma_px * z[:, None] / f
    opac = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=dtype)
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    return [means, quats, scales, opac, colors], K


def _release_free_heap():
    """Hand freed heap pages back to the OS (glibc keeps them), so that a call's peak shows up as
    RSS growth instead of hiding in memory an earlier call freed."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_delta_mib(fn):
    """Run fn(); return (its result, peak RSS it added in MiB or None where Linux /proc is missing)."""
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        before = proc_status_kib("VmRSS")
    except OSError:
        return fn(), None
    result = fn()
    peak = proc_status_kib("VmHWM")
    return result, (peak - before) / 1024.0 if peak is not None and before is not None else None


def time_backend(rasterize, scene, K, size, repeats):
    bg = torch.tensor([0.1, 0.2, 0.3])
    viewmat = torch.eye(4)
    g = torch.Generator().manual_seed(1)
    w_img = torch.rand(3, size, size, generator=g)
    w_aux = torch.rand(1, size, size, generator=g)

    def forward():
        inputs = [t.clone().requires_grad_(True) for t in scene]
        offset = torch.zeros(scene[0].shape[0], 2, requires_grad=True)
        out = rasterize(*inputs, viewmat, K, size, size, bg, kernel_size=0.1, means2d_offset=offset)
        return out, inputs

    def fwd_bwd():
        out, inputs = forward()
        ((out["image"] * w_img).sum() + (out["depth"] * w_aux).sum() + (out["alpha"] * w_aux).sum()).backward()
        return out

    forward()  # warm-up (first-call allocations, thread pool start)
    t_fwd, t_all = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        forward()
        t_fwd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fwd_bwd()
        t_all.append(time.perf_counter() - t0)
    _, mem = peak_rss_delta_mib(fwd_bwd)
    return {"forward_s": statistics.median(t_fwd), "forward_backward_s": statistics.median(t_all),
            "forward_runs_s": t_fwd, "forward_backward_runs_s": t_all, "peak_rss_delta_mib": mem}


def pair_counts(scene, K, size):
    """(pairs in the tile lists x 64 pixels: what the reference evaluates,
        pairs walked per pixel up to its last contributor: the compositing work that matters)."""
    with torch.no_grad():
        proj = project_gaussians(*scene[:4], torch.eye(4), K, size, size, 0.1)
        _, _, tile_count, _, _ = torch_backend.bin_gaussians(proj["means2d"], proj["radii"], proj["depths"],
                                                             size, size)
    tile_pairs = int(tile_count.sum()) * 64
    walked = None
    if backend_status("cpu", "cpu")[0]:
        import threedsr_cpu_rasterizer as ext
        res = ext.forward(*[t.contiguous() for t in scene], torch.eye(4), K, size, size, torch.zeros(3), 0.1,
                          torch.zeros(scene[0].shape[0], 2), torch_backend.CHUNK_ELEMENTS, torch.get_num_threads())
        walked = int(res[9].sum())  # `last`: per pixel, list position of its last contributor + 1
    return tile_pairs, walked


def cpu_peak_flops():
    """(peak FLOP/s, how it was derived) from /proc/cpuinfo: cores x clock x FP32 lanes x 2 (FMA)
    x 2 FMA pipes (true of the AVX2 cores these machines have: Zen 2-4, Skylake and later)."""
    flags, mhz = set(), None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("cpu MHz") and mhz is None:
                    mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    cores = torch.get_num_threads()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma = 2 if "fma" in flags or "avx512f" in flags else 1
    mhz = mhz or 2000.0
    peak = cores * mhz * 1e6 * lanes * fma * 2
    simd = "AVX-512" if lanes == 16 else "AVX2" if lanes == 8 else "SSE"
    return peak, f"{cores} threads x {mhz / 1000:.2f} GHz x {lanes} fp32 lanes ({simd}) x {fma} (FMA) x 2 pipes"


def run_training(backends, iterations):
    """train.py on the embedded scene with each backend: iterations/s and the final test PSNR."""
    from tools.make_scene import make_scene
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        scene_dir = os.path.join(tmp, "scene")
        make_scene(scene_dir, views=16, width=256, height=192, kind="llff", seed=1, num_points=2000, progress=False)
        for backend in backends:
            model = os.path.join(tmp, f"model_{backend}")
            cmd = [sys.executable, os.path.join(ROOT, "train.py"), "-s", scene_dir, "-m", model, "-r", "4", "--eval",
                   "--iterations", str(iterations), "--densify_from_iter", "100",
                   "--densify_until_iter", str(int(iterations * 0.75)), "--densification_interval", "50",
                   "--opacity_reset_interval", "100000", "--test_iterations", str(iterations),
                   "--save_iterations", str(iterations), "--backend", backend, "--quiet"]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                results[backend] = {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
                continue
            with open(os.path.join(model, "train_log.json")) as fh:
                log = json.load(fh)
            psnr = [e["psnr"] for e in log["evaluations"] if e["split"] == "test" and e["iteration"] == iterations]
            results[backend] = {"iterations": iterations, "iterations_per_second": log["iterations_per_second"],
                                "test_psnr": psnr[0] if psnr else None, "num_gaussians": log["num_gaussians"]}
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--quick", action="store_true", help="small sizes only (64^2/2k, 128^2/10k)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 3, quick 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--train", action="store_true", help="also time train.py on the embedded scene per backend")
    ap.add_argument("--train_iterations", type=int, default=300)
    ap.add_argument("--train_only", action="store_true", help="skip the rasterizer timings (implies --train)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 3)
    configs = [] if args.train_only else QUICK_CONFIGS if args.quick else FULL_CONFIGS
    args.train = args.train or args.train_only
    backends = {"torch": torch_backend.rasterize}
    cpu_ok, cpu_why = backend_status("cpu", "cpu")
    if cpu_ok:
        from gaussian_renderer import cpu_backend
        backends["cpu"] = cpu_backend.rasterize
    else:
        print(f"cpu backend unavailable ({cpu_why}); timing the reference only")
    peak, peak_how = cpu_peak_flops()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "load_average_at_start": load, "peak_gflops_fp32": peak / 1e9, "peak_derivation": peak_how},
        "memory_metric": "peak RSS added by one forward+backward (malloc_trim, reset VmHWM via /proc/self/clear_refs, "
                         "then VmHWM after minus VmRSS before), MiB",
        "flops_per_pair": {"forward": FLOPS_FWD_PAIR, "backward": FLOPS_BWD_PAIR},
        "results": [],
    }
    if cpu_ok:
        import threedsr_cpu_rasterizer as ext
        report["machine"]["cpu_extension"] = ext.build_info()
    print(f"threads {torch.get_num_threads()}, load average {load}, peak {peak / 1e9:.0f} GFLOP/s fp32 ({peak_how})")

    for size, n in configs:
        scene, K = realistic_scene(n, size)
        entry = {"size": size, "gaussians": n}
        for name, fn in backends.items():
            entry[name] = time_backend(fn, scene, K, size, repeats)
        tile_pairs, walked = pair_counts(scene, K, size)
        entry["pairs_in_tile_lists"] = tile_pairs
        entry["pairs_walked"] = walked
        if "cpu" in entry:
            c, t = entry["cpu"], entry["torch"]
            entry["speedup_forward"] = t["forward_s"] / c["forward_s"]
            entry["speedup_forward_backward"] = t["forward_backward_s"] / c["forward_backward_s"]
            if walked:
                flops = walked * (FLOPS_FWD_PAIR + FLOPS_BWD_PAIR)
                entry["cpu_gflops_achieved_fwd_bwd"] = flops / c["forward_backward_s"] / 1e9
                entry["cpu_fraction_of_peak_fwd_bwd"] = flops / c["forward_backward_s"] / peak
        report["results"].append(entry)
        print(f"  done {size}^2 / {n}", flush=True)

    if configs:
        print_table(report)
    if args.train:
        report["training"] = run_training(list(backends), args.train_iterations)
        for b, r in report["training"].items():
            print(f"train.py --backend {b}: {r}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


def print_table(report):
    rows = report["results"]
    has_cpu = any("cpu" in r for r in rows)
    head = f"{'size':>6} {'N':>8} | {'torch fwd':>9} {'fwd+bwd':>8} {'MiB':>6}"
    if has_cpu:
        head += f" | {'cpu fwd':>8} {'fwd+bwd':>8} {'MiB':>6} | {'x fwd':>6} {'x f+b':>6} | {'GFLOP/s':>7} {'%peak':>6}"
    print(head)
    print("-" * len(head))

    def mib(v):
        return f"{v:6.0f}" if v is not None else f"{'n/a':>6}"

    for r in rows:
        t = r["torch"]
        line = f"{r['size']:>4}^2 {r['gaussians']:>8} | {t['forward_s']:9.3f} {t['forward_backward_s']:8.3f} " \
               f"{mib(t['peak_rss_delta_mib'])}"
        if "cpu" in r:
            c = r["cpu"]
            line += f" | {c['forward_s']:8.4f} {c['forward_backward_s']:8.4f} {mib(c['peak_rss_delta_mib'])} | " \
                    f"{r['speedup_forward']:6.1f} {r['speedup_forward_backward']:6.1f}"
            if r.get("cpu_gflops_achieved_fwd_bwd"):
                line += f" | {r['cpu_gflops_achieved_fwd_bwd']:7.1f} {100 * r['cpu_fraction_of_peak_fwd_bwd']:5.1f}%"
        print(line)
    print("times: median seconds; MiB: peak RSS added by one forward+backward; x: torch time / cpu time")
    if has_cpu:
        fl = report["flops_per_pair"]
        print(f"arithmetic limit: ~{fl['forward']} FLOPs per (pixel, Gaussian) pair forward, ~{fl['backward']} "
              f"backward (it recomputes alpha itself); pairs = (pixel, Gaussian) pairs "
              f"walked up to each pixel's last contributor. Peak {report['machine']['peak_gflops_fp32']:.0f} "
              f"GFLOP/s = {report['machine']['peak_derivation']}.")
        for r in rows:
            if r.get("pairs_walked"):
                ideal = r["pairs_walked"] * (fl["forward"] + fl["backward"]) / (report["machine"]["peak_gflops_fp32"] * 1e9)
                print(f"  {r['size']}^2/{r['gaussians']}: {r['pairs_walked'] / 1e6:.1f} M pairs walked "
                      f"({r['pairs_in_tile_lists'] / 1e6:.1f} M in the 3-sigma tile lists); at peak a "
                      f"forward+backward would take {1e3 * ideal:.1f} ms, measured "
                      f"{1e3 * r['cpu']['forward_backward_s']:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
