#!/usr/bin/env python
"""How SR-stage quality grows with its fit iterations, and the cheapest schedule that keeps it (issue 19).

    python benchmarks/sr_schedule.py                      # quick embedded scene, K = 100 300 1000 3000
    python benchmarks/sr_schedule.py --ks 100 300 --modes 3dsr
    python benchmarks/sr_schedule.py --ks 1000 3000 --schedules 100,200,500,1200:1000 --modes 3dsr

On the embedded synthetic scene (tools/make_scene.py; LR 3DGS trained once, as scripts/synthetic.sh --quick
does), every --mode runs `--steps` denoising steps with K fit iterations each plus K final ones, for each K
of --ks, with the same seed and SR model. Each run is a normal `sr_refine.py` run folder (OUT/lr/sr/<mode>_k<K>)
rendered at HR and scored by metrics.py, so finished runs are reused when the benchmark is run again.
Reported per run: HR test PSNR, LPIPS-alex, MV-warp and the SR stage's wall time (log.json).
--schedules adds per-step schedules (sr_refine.py --iters_schedule): "K1,K2,...,Ksteps[:final]", the final
fit's iterations defaulting to the last step's (3DSR only: the baselines fit once, on the total).

The choice: per mode, the cheapest K whose PSNR is within --tol_psnr dB and LPIPS-alex within --tol_lpips of
the largest K's, with its cost as a fraction of the largest K's and of the paper's 4 x 5000 + 5000 schedule.
Writes the table, benchmarks/results/sr_schedule_<device>.json and a plot (quality against total HR fit
iterations). Wall times are of this machine, loaded as it was (the JSON records the load average).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from utils.system_utils import atomic_write  # noqa: E402
PAPER_ITERATIONS = 4 * 5000 + 5000
METHOD_FOLDER = "{mode}_k{k}"


def parse_schedule(text: str, steps: int):
    """'100,200,500,1200:1000' -> ([100, 200, 500, 1200], 1000); the final fit defaults to the last step's."""
    try:
        per_step, _, final = text.partition(":")
        ks = [int(k) for k in per_step.split(",")]
        final_iters = int(final) if final else ks[-1]
    except ValueError:
        raise SystemExit(f"sr_schedule: --schedules entry '{text}' is not 'K1,...,K{steps}[:final]' (integers)")
    if len(ks) != steps or min(ks + [final_iters]) < 0:
        raise SystemExit(f"sr_schedule: --schedules entry '{text}' needs {steps} non-negative counts (--steps)")
    return ks, final_iters


def schedule_name(mode: str, ks, final_iters: int) -> str:
    return f"{mode}_s{'-'.join(str(k) for k in ks)}_f{final_iters}"


def merge_recorded(rows, path, settings, scene):
    """rows + the rows of an earlier result JSON that this run did not make. The earlier run must share the
    scene and settings; a row made by both is compared, since the stage is deterministic on one machine."""
    try:
        with open(path) as f:
            old = json.load(f)
        old_rows, old_settings, old_scene = old["rows"], old["settings"], old["scene"]
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"sr_schedule: --recorded {path} is not a result of this benchmark ({exc})")
    for what, ours, theirs in (("", settings, old_settings), ("scene ", scene, old_scene)):
        for key, value in ours.items():
            if theirs.get(key) != value:
                raise SystemExit(f"sr_schedule: --recorded {path} has {what}{key} {theirs.get(key)!r}, this run {value!r}")
    ours = {(r["mode"], r["label"]): r for r in rows}
    merged = list(rows)
    for r in old_rows:
        mine = ours.get((r["mode"], r["label"]))
        if mine is None:
            merged.append({**r, "recorded": True})
            continue
        diff = {key: round(mine[key] - r[key], 4) for key in ("psnr", "lpips_alex", "mv_warp")}
        mine["recorded_difference"] = diff
        print(f"{r['mode']} {r['label']}: this run minus the recorded one: {diff}")
    return merged


def stop_name(name: str, db: float, window: int) -> str:
    """Run folder of `name` with the stop rule: 3dsr_k1000 -> 3dsr_k1000_stop0.05 (_w<window> unless 100)."""
    return f"{name}_stop{db:g}" + (f"_w{window}" if window != 100 else "")


def run(cmd, quiet=False):
    """A project script with this interpreter, from the repository root; a failure stops the benchmark."""
    full = [sys.executable] + cmd
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(full, cwd=ROOT, stdout=subprocess.DEVNULL if quiet else None)
    if proc.returncode:
        raise SystemExit(f"sr_schedule: `{' '.join(cmd)}` failed with exit code {proc.returncode}")


def sr_log(model, name):
    path = os.path.join(model, "sr", name, "log.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        log = json.load(f)
    return log if log.get("complete") else None


def metric(result, key):
    """A number from metrics.py's results.json entry (MV-warp is {"value", "pairs"}); unavailable is an error."""
    value = result[key]
    if isinstance(value, dict):
        if "value" not in value:
            raise SystemExit(f"sr_schedule: {key} is unavailable: {value.get('unavailable', value)}")
        value = value["value"]
    return float(value)


def choose(rows, tol_psnr, tol_lpips):
    """The cheapest row within tolerance of the row with the most iterations (rows of one mode)."""
    ref = max(rows, key=lambda r: r["total_iterations"])
    ok = [r for r in rows if r["psnr"] >= ref["psnr"] - tol_psnr and r["lpips_alex"] <= ref["lpips_alex"] + tol_lpips]
    best = min(ok, key=lambda r: r["total_iterations"])
    return {"k": best["k"], "label": best.get("label", f"K={best['k']}"), "total_iterations": best["total_iterations"],
            "reference_k": ref["k"], "reference_label": ref.get("label", f"K={ref['k']}"),
            "psnr_delta": round(best["psnr"] - ref["psnr"], 4),
            "lpips_alex_delta": round(best["lpips_alex"] - ref["lpips_alex"], 4),
            "cost_vs_reference": round(best["total_iterations"] / ref["total_iterations"], 4),
            "seconds_vs_reference": round(best["seconds"] / ref["seconds"], 4) if ref["seconds"] else None,
            "cost_vs_paper": round(best["total_iterations"] / PAPER_ITERATIONS, 4)}


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for mode in sorted({r["mode"] for r in rows}):
        rs = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["total_iterations"])
        for ax, key, label in zip(axes, ("psnr", "lpips_alex", "mv_warp"), ("PSNR (dB)", "LPIPS-alex", "MV-warp")):
            uniform = [r for r in rs if r.get("schedule") is None and not r.get("fit_stop_db")]
            ax.plot([r["total_iterations"] for r in uniform], [r[key] for r in uniform], "o-", label=mode)
            for r in (r for r in rs if r.get("schedule") is not None or r.get("fit_stop_db")):
                ax.plot([r["total_iterations"]], [r[key]], "*", markersize=11, label=f"{mode} {r['label']}")
            ax.set_xscale("log")
            ax.set_xlabel("HR fit iterations (steps x K + K)")
            ax.set_ylabel(label)
    axes[0].legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "output", "bench_sr_schedule"), help="work folder")
    p.add_argument("--scene", default=os.path.join(ROOT, "data", "synthetic_quick"),
                   help="embedded scene folder (made by tools/make_scene.py when missing)")
    p.add_argument("--size", type=int, nargs=2, default=(480, 360), help="scene image size when it is made")
    p.add_argument("--views", type=int, default=16, help="scene views when it is made")
    p.add_argument("--lr_res", type=int, default=8)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--train_iters", type=int, default=1500, help="LR 3DGS iterations (as synthetic.sh --quick)")
    p.add_argument("--ks", type=int, nargs="*", default=[100, 300, 1000, 3000],
                   help="uniform fit iterations per step, one run each (none: only --schedules)")
    p.add_argument("--schedules", nargs="*", default=[],
                   help="per-step schedules to add, each 'K1,...,Ksteps[:final]' (sr_refine.py --iters_schedule)")
    p.add_argument("--fit_stop_db", type=float, nargs="*", default=[],
                   help="for each value, every 3DSR run above again with sr_refine.py's stop rule at that gain "
                        "(dB per --fit_stop_window iterations); such rows count the iterations actually run")
    p.add_argument("--fit_stop_window", type=int, default=100)
    p.add_argument("--recorded", default=None,
                   help="a JSON this benchmark wrote before, on the same scene and settings: its rows join the table "
                        "(marked recorded; a row run again here is checked against its record), so an expensive "
                        "reference such as K=3000 need not be run again")
    p.add_argument("--only_finished", action="store_true",
                   help="tabulate the finished runs only and start none (a long run still under way elsewhere)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--modes", nargs="+", default=["3dsr", "per-view"], choices=["3dsr", "per-view"])
    p.add_argument("--sr_model", default="embedded-x4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol_psnr", type=float, default=0.1)
    p.add_argument("--tol_lpips", type=float, default=0.005)
    p.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "sr_schedule_cpu_2core.json"))
    p.add_argument("--plot", default=os.path.join(ROOT, "benchmarks", "results", "sr_schedule_cpu_2core.png"))
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    load_start = os.getloadavg()

    if not os.path.isdir(os.path.join(args.scene, "sparse")):
        run(["tools/make_scene.py", "--out", args.scene, "--width", str(args.size[0]), "--height", str(args.size[1]),
             "--views", str(args.views), "--quiet"])
    model, it = os.path.join(args.out, "lr"), str(args.train_iters)
    if not os.path.isfile(os.path.join(model, "point_cloud", f"iteration_{it}", "point_cloud.ply")):
        run(["train.py", "-s", args.scene, "-m", model, "-r", str(args.lr_res), "--eval", "--iterations", it,
             "--save_iterations", it, "--test_iterations", it, "--position_lr_max_steps", it,
             "--densify_until_iter", str(args.train_iters // 2), "--opacity_reset_interval", "100000",
             "--sh_increase_interval", str(max(1, args.train_iters // 4)), "--seed", str(args.seed),
             "--device", args.device, "--quiet"])
    hr_res = str(args.lr_res // args.scale)
    runs = []  # (mode, per-step iterations, final iterations, folder name, uniform K or None, stop dB or 0)
    for k in args.ks:
        runs += [(mode, [k] * args.steps, k, METHOD_FOLDER.format(mode=mode, k=k), k, 0.0) for mode in args.modes]
    for text in args.schedules:
        ks, final_iters = parse_schedule(text, args.steps)
        # only 3DSR fits between steps: a baseline fits once, so a schedule is just its total
        runs += [(mode, ks, final_iters, schedule_name(mode, ks, final_iters), None, 0.0) for mode in args.modes
                 if mode == "3dsr"]
    runs += [(mode, ks, final_iters, stop_name(name, db, args.fit_stop_window), k, db)
             for db in args.fit_stop_db for mode, ks, final_iters, name, k, _ in list(runs) if mode == "3dsr"]
    if args.only_finished:
        skipped = [r[3] for r in runs if sr_log(model, r[3]) is None]
        runs = [r for r in runs if r[3] not in skipped]
        if skipped:
            print(f"not finished, left out (--only_finished): {', '.join(skipped)}")
    for mode, ks, final_iters, name, _, stop_db in runs:
        if sr_log(model, name) is None:
            resume = ["--resume"] if os.path.isdir(os.path.join(model, "sr", name)) else []
            per_step = (["--iters_per_step", str(ks[0]), "--iters_schedule", "uniform"] if len(set(ks)) == 1
                        else ["--iters_schedule"] + [str(k) for k in ks])
            if stop_db:
                per_step += ["--fit_stop_db", str(stop_db), "--fit_stop_window", str(args.fit_stop_window)]
            run(["sr_refine.py", "-m", model, "--iteration", it, "--mode", mode, "--name", name,
                 "--scale", str(args.scale), "--steps", str(args.steps)] + per_step +
                ["--final_iters", str(final_iters), "--sr_model", args.sr_model, "--seed", str(args.seed),
                 "--no_step_images", "--device", args.device, "--quiet"] + resume)
        renders = os.path.join(model, "test", name, "renders")
        if not (os.path.isdir(renders) and os.listdir(renders)):
            run(["render.py", "-m", model, "-r", hr_res, "--iteration", name, "--method", name, "--skip_train",
                 "--device", args.device, "--quiet"])
    run(["metrics.py", "-m", model, "--metrics", "psnr", "lpips-alex", "mv-warp", "--device", args.device,
         "--quiet"], quiet=True)
    with open(os.path.join(model, "results.json")) as f:
        results = json.load(f)

    rows = []
    for mode, ks, final_iters, name, k, stop_db in runs:
        res, log = results[name], sr_log(model, name)
        label = f"K={k}" if k is not None else f"{'+'.join(str(x) for x in ks)}+{final_iters}"
        planned = sum(ks) + final_iters
        rows.append({"mode": mode, "k": k, "schedule": None if k is not None else ks, "final_iters": final_iters,
                     "label": label + (f" stop {stop_db:g} dB" if stop_db else ""), "fit_stop_db": stop_db or None,
                     "planned_iterations": planned,
                     # the stop rule's rows cost what they ran (log.json; older logs: as planned)
                     "total_iterations": int(log.get("fit_iterations", planned)) if stop_db else planned,
                     "psnr": metric(res, "PSNR"), "lpips_alex": metric(res, "LPIPS-alex"),
                     "mv_warp": metric(res, "MV-warp"),
                     "seconds": round(float(log["total_seconds"]), 1)})
    if args.recorded:
        rows = merge_recorded(rows, args.recorded, {"steps": args.steps, "sr_model": args.sr_model, "seed": args.seed},
                              {"lr_res": args.lr_res, "scale": args.scale, "train_iters": args.train_iters})
    chosen = {mode: choose([r for r in rows if r["mode"] == mode], args.tol_psnr, args.tol_lpips)
              for mode in args.modes}

    print(f"\n{'mode':<9} {'schedule':>30} {'HR iters':>9} {'PSNR':>8} {'LPIPS-alex':>11} {'MV-warp':>8} {'seconds':>8}")
    for r in rows:
        print(f"{r['mode']:<9} {r['label']:>30} {r['total_iterations']:>9} {r['psnr']:>8.3f} {r['lpips_alex']:>11.4f} "
              f"{r['mv_warp']:>8.4f} {r['seconds']:>8.1f}" + ("  (recorded)" if r.get("recorded") else ""))
    for mode, c in chosen.items():
        print(f"{mode}: {c['label']} reaches {c['reference_label']} within {c['psnr_delta']:+.3f} dB / "
              f"{c['lpips_alex_delta']:+.4f} LPIPS-alex at {c['cost_vs_reference']:.3f}x its iterations "
              f"({c['seconds_vs_reference']}x its time; {c['cost_vs_paper']:.3f}x the paper's {PAPER_ITERATIONS})")

    payload = {"machine": {"platform": platform.platform(), "threads": os.cpu_count(),
                           "load_average_at_start": list(load_start), "device": args.device},
               "scene": {"folder": os.path.relpath(args.scene, ROOT), "lr_res": args.lr_res, "scale": args.scale,
                         "train_iters": args.train_iters},
               "settings": {"steps": args.steps, "sr_model": args.sr_model, "seed": args.seed,
                            "tolerance": {"psnr_db": args.tol_psnr, "lpips_alex": args.tol_lpips}},
               "rows": rows, "chosen": chosen, "date": time.strftime("%Y-%m-%d")}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with atomic_write(args.json, "w") as f:
        json.dump(payload, f, indent=2)
    if args.plot:
        plot(rows, args.plot)
    print(f"written {args.json}" + (f" and {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
