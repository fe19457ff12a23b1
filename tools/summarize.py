#!/usr/bin/env python
"""One table of every scene and method of a dataset run: OUT_ROOT/results.{md,csv,json}.

    python tools/summarize.py output/llff [--methods lr-3dgs 3dsr] [--paper] [--dataset llff|mipnerf360]

Reads OUT_ROOT/<scene>/results.json (as metrics.py writes it: {method folder: {"views", "PSNR", ...}},
a metric being a number, {"value": x, ...} or {"unavailable": "why"}) and, if present,
OUT_ROOT/<scene>/timings.json ({stage: seconds}) and OUT_ROOT/<scene>/unavailable.json ({method folder:
why it could not run}), both written by tools/run_scene.py. A stage named "<method folder>/<stage>" or
"<stage> <method folder>" (e.g. "sr 3dsr") belongs to that method's row only, as column <stage>; any other
stage (e.g. "train") is the scene's and shows on every row of the scene. A method listed in
unavailable.json and absent from results.json gets a row whose metrics are all unavailable, with the reason.

A scene run by tools/launch.py has OUT_ROOT/<scene>/launch.json; scenes whose run did not finish
(failed after its retries, still queued or running, interrupted) are listed under "Scenes not finished"
with the reason (the first error line of the failing stage) and in the JSON's "not_finished".

Writes, atomically, one row per (scene, method) and a "mean" row per method: the mean of each metric
over the scenes where it is available (the markdown marks "(k/n)" when only k of the method's n scenes
have it; "unavailable" when none has), and the mean wall time of each stage. Method folders get display
names (METHOD_NAMES); other folders are listed as they are. --paper adds the published numbers of
3DSR (arXiv 2508.04090, x8 down, x4 up) for LLFF / Mip-NeRF 360 beside ours, marked as the paper's.
Arrows in the markdown header say whether higher (↑) or lower (↓) is better; the CSV header keeps the
plain metric names (metrics.py's keys) for scripts, and the JSON says it in "higher_is_better".
"""
import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import argparse  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

from utils.errors import ThreeDSRError  # noqa: E402
from utils.system_utils import atomic_write, run_cli  # noqa: E402

# The keys metrics.py writes (evaluation.evaluate.KEYS, in its order; a test keeps the two equal
# without this tool importing torch).
METRIC_KEYS = ("PSNR", "SSIM", "LPIPS-alex", "LPIPS-vgg", "NIQE", "FID", "MV-warp", "MEt3R")
HIGHER_IS_BETTER = {"PSNR": True, "SSIM": True, "LPIPS-alex": False, "LPIPS-vgg": False, "NIQE": False,
                    "FID": False, "MV-warp": False, "MEt3R": False}
DECIMALS = {"PSNR": 3, "NIQE": 3, "FID": 3}  # others: 4

# Method folders (test/<folder>/ of a model, as the batch scripts name them) -> display names, in
# table order. Other folders keep their own name and come after these, sorted.
METHOD_NAMES = {
    "lr-3dgs": "LR 3DGS @HR",
    "bicubic": "Bicubic → 3DGS",
    "per-view-isr": "Real-ESRGAN → 3DGS",
    "per-view-sr": "Per-view SR → 3DGS",
    "3dsr": "3DSR",
}

PAPER_REF = "3DSR paper (arXiv 2508.04090), x8 down / x4 up"
# Published numbers (DESIGN.md, Evaluation protocol). The paper's LPIPS does not say which network.
PAPER = {
    "llff": {
        "label": "LLFF",
        "rows": [
            ("StableSR per view", {"PSNR": 22.748, "SSIM": 0.717, "LPIPS": 0.219, "NIQE": 4.793,
                                   "MEt3R": 0.531, "FID": 41.129}),
            ("3DSR", {"PSNR": 24.212, "SSIM": 0.754, "LPIPS": 0.181, "NIQE": 4.632, "MEt3R": 0.516,
                      "FID": 20.731}),
        ],
        "scenes": {"fern", "flower", "fortress", "horns", "leaves", "orchids", "room", "trex"},
    },
    "mipnerf360": {
        "label": "Mip-NeRF 360",
        "rows": [
            ("SuperGaussian", {"PSNR": 25.252, "SSIM": 0.725, "LPIPS": 0.303, "NIQE": 4.694, "MEt3R": 0.675,
                               "FID": 32.652}),
            ("3DSR", {"PSNR": 26.097, "SSIM": 0.746, "LPIPS": 0.222, "NIQE": 5.065, "MEt3R": 0.625,
                      "FID": 22.438}),
        ],
        "scenes": {"bicycle", "bonsai", "counter", "flowers", "garden", "kitchen", "room", "stump", "treehill"},
    },
}


def display_name(folder):
    return METHOD_NAMES.get(folder, folder)


def metric_value(entry):
    """(value, reason): a finite float and None, or None and why it is unavailable."""
    if entry is None:
        return None, "not computed (run metrics.py with this metric)"
    if isinstance(entry, dict):
        if "unavailable" in entry:
            return None, str(entry["unavailable"])
        entry = entry.get("value")
    if isinstance(entry, bool) or not isinstance(entry, (int, float)):
        return None, "no numeric value in results.json"
    if not math.isfinite(entry):
        return None, "non-finite value"
    return float(entry), None


def read_json_object(path, what):
    """A JSON object from `path`; unreadable, invalid or non-object content is a one-line error that
    says to re-run `what` (the command that writes the file)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ThreeDSRError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                            f"re-run {what}") from None
    except OSError as exc:
        raise ThreeDSRError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    if not isinstance(data, dict):
        raise ThreeDSRError(f"{path} should hold a JSON object; re-run {what}")
    return data


def load_runs(out_root):
    """{scene: (results {folder: {...}}, timings {stage: seconds})} of OUT_ROOT/<scene>/results.json."""
    if not os.path.isdir(out_root):
        raise ThreeDSRError(f"{out_root} does not exist; pass the folder holding one model folder per scene")
    runs = {}
    for scene in sorted(os.listdir(out_root)):
        folder = os.path.join(out_root, scene)
        if scene.startswith(".") or not os.path.isdir(folder):
            continue
        res_path = os.path.join(folder, "results.json")
        if not os.path.isfile(res_path):
            continue
        results = read_json_object(res_path, "metrics.py")
        results = {k: v for k, v in results.items() if isinstance(v, dict)}
        timings = {}
        t_path = os.path.join(folder, "timings.json")
        if os.path.isfile(t_path):
            for stage, sec in read_json_object(t_path, "tools/run_scene.py").items():
                if isinstance(sec, (int, float)) and not isinstance(sec, bool) and math.isfinite(sec):
                    timings[str(stage)] = float(sec)
        u_path = os.path.join(folder, "unavailable.json")
        if os.path.isfile(u_path):
            for method, why in read_json_object(u_path, "tools/run_scene.py").items():
                if method not in results:
                    results[method] = {key: {"unavailable": f"method not run: {why}"} for key in METRIC_KEYS}
        runs[scene] = (results, timings)
    if not runs:
        raise ThreeDSRError(f"no <scene>/results.json under {out_root}; run metrics.py -m {out_root}/<scene> "
                            f"for each scene first")
    return runs


def load_unfinished(out_root):
    """[{scene, state, reason, log}] of OUT_ROOT/<scene>/launch.json (tools/launch.py) not in state "done"."""
    out = []
    if not os.path.isdir(out_root):
        return out
    for scene in sorted(os.listdir(out_root)):
        path = os.path.join(out_root, scene, "launch.json")
        if scene.startswith(".") or not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                status = json.load(f)
        except (OSError, ValueError):  # being rewritten or damaged: say so rather than fail the table
            status = {"state": "unknown", "reason": f"unreadable {path}"}
        if not isinstance(status, dict) or status.get("state") == "done":
            continue
        state = str(status.get("state", "unknown"))
        reason = status.get("reason") or ("not finished yet" if state in ("queued", "running", "requeued",
                                                                           "retrying") else "no reason recorded")
        out.append({"scene": scene, "state": state, "reason": str(reason),
                    "log": os.path.join(out_root, scene, "run.log")})
    return out


def unfinished_lines(unfinished):
    return [f"- {u['scene']} ({u['state']}): {u['reason']}" for u in unfinished]


def order_methods(folders):
    known = [m for m in METHOD_NAMES if m in folders]
    return known + sorted(m for m in folders if m not in METHOD_NAMES)


def _stage_owner(stage, folders):
    """(method folder or None, column name) of a timings.json key."""
    head, sep, tail = stage.partition("/")
    if sep and head in folders and tail:
        return head, tail
    head, sep, tail = stage.rpartition(" ")
    if sep and tail in folders and head:
        return tail, head
    return None, stage


def _row_timings(timings, folder, folders):
    """{column: seconds} for one method's row: the scene's shared stages plus the method's own."""
    out, own = {}, {}
    for stage, sec in timings.items():
        owner, column = _stage_owner(stage, folders)
        if owner is None:
            out[column] = sec
        elif owner == folder:
            own[column] = sec
    out.update(own)
    return out


def summarize(runs, methods=None):
    """The summary as a JSON-ready dict (rows, mean, stages, ...); see the module docstring."""
    present = sorted({m for results, _ in runs.values() for m in results})
    if methods:
        missing = [m for m in methods if m not in present]
        if missing:
            raise ThreeDSRError(f"method folder(s) {', '.join(missing)} in no results.json (found: "
                                f"{', '.join(present) or 'none'}); fix --methods")
        order = list(dict.fromkeys(methods))
    else:
        order = order_methods(present)
    rows, stages = [], []
    for scene, (results, timings) in runs.items():
        for folder in order:
            if folder not in results:
                continue
            res = results[folder]
            row = {"scene": scene, "method": display_name(folder), "folder": folder, "views": res.get("views")}
            for key in METRIC_KEYS:
                value, why = metric_value(res.get(key))
                row[key] = value if why is None else {"unavailable": why}
            row["seconds"] = _row_timings(timings, folder, set(results) | set(METHOD_NAMES))
            stages.extend(s for s in row["seconds"] if s not in stages)
            rows.append(row)
    if not rows:
        raise ThreeDSRError("none of the selected methods has results; check --methods")
    means = []
    for folder in order:
        mine = [r for r in rows if r["folder"] == folder]
        if not mine:
            continue
        entry = {"scene": "mean", "method": display_name(folder), "folder": folder, "scenes": len(mine)}
        for key in METRIC_KEYS:
            vals = [r[key] for r in mine if not isinstance(r[key], dict)]
            if vals:
                entry[key] = {"value": float(sum(vals) / len(vals)), "scenes": len(vals), "of": len(mine)}
            else:
                reasons = list(dict.fromkeys(r[key]["unavailable"] for r in mine))
                entry[key] = {"unavailable": reasons[0] if len(reasons) == 1 else "; ".join(reasons)}
        secs = {}
        for s in stages:
            vals = [r["seconds"][s] for r in mine if s in r["seconds"]]
            if vals:
                secs[s] = float(sum(vals) / len(vals))
        entry["seconds"] = secs
        means.append(entry)
    return {"scenes": list(runs), "methods": [{"folder": m, "name": display_name(m)} for m in order
                                              if any(r["folder"] == m for r in rows)],
            "metrics": list(METRIC_KEYS), "higher_is_better": HIGHER_IS_BETTER, "stages": stages,
            "rows": rows, "mean": means}


def detect_dataset(out_root, scenes):
    base = os.path.basename(os.path.normpath(os.path.abspath(out_root))).lower()
    if "llff" in base:
        return "llff"
    if "360" in base:
        return "mipnerf360"
    hits = [d for d, p in PAPER.items() if set(scenes) <= p["scenes"]]
    return hits[0] if len(hits) == 1 else None


def paper_rows(dataset):
    """The paper's rows with our metric keys; the paper's single LPIPS goes under both LPIPS columns."""
    out = []
    for method, nums in PAPER[dataset]["rows"]:
        row = {"scene": f"paper ({PAPER[dataset]['label']})", "method": f"{method} (paper)"}
        for key in METRIC_KEYS:
            src = "LPIPS" if key.startswith("LPIPS") else key
            row[key] = nums.get(src)
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------------
# rendering


def _fmt(value, key):
    return f"{value:.{DECIMALS.get(key, 4)}f}"


def _md_cell(entry, key):
    if entry is None:
        return "—"
    if isinstance(entry, dict):
        if "unavailable" in entry:
            return "unavailable"
        text = _fmt(entry["value"], key)
        return text if entry.get("scenes") == entry.get("of") else f"{text} ({entry['scenes']}/{entry['of']})"
    return _fmt(entry, key)


def _md_table(head, body, right_from):
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i < right_from else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return lines


def to_markdown(summary, out_root, paper=None):
    keys = summary["metrics"]
    arrow = {k: "↑" if summary["higher_is_better"][k] else "↓" for k in keys}
    head = ["scene", "method", "views"] + [f"{k} {arrow[k]}" for k in keys]
    body = [[r["scene"], r["method"], "" if r["views"] is None else r["views"]] + [_md_cell(r[k], k) for k in keys]
            for r in summary["rows"]]
    body += [["**mean**", m["method"], ""] + [_md_cell(m[k], k) for k in keys] for m in summary["mean"]]
    if paper:  # as published: three decimals
        body += [[f"*{p['scene']}*", f"*{p['method']}*", ""] +
                 [("—" if p[k] is None else f"*{p[k]:.3f}*" + ("†" if k.startswith("LPIPS") else ""))
                  for k in keys] for p in paper["rows"]]
    lines = [f"# Results: {os.path.basename(os.path.normpath(os.path.abspath(out_root)))}", "",
             f"Scenes: {', '.join(summary['scenes'])}. Test-view metrics from metrics.py; ↑ higher is better, "
             f"↓ lower is better. A mean is over the scenes where the metric is available: (k/n) marks a mean "
             f"over k of the method's n scenes.", ""]
    lines += _md_table(head, body, 2)
    if paper:
        lines += ["", f"Rows in *italics* are not ours: they are the numbers published in the {PAPER_REF}, "
                      f"with its own code and LR images. † the paper reports one LPIPS without naming the network; "
                      f"it is shown under both LPIPS columns."]
    reasons = {}  # why -> ({metric: None}, {scene/folder: None}), insertion-ordered
    for r in summary["rows"]:
        for k in keys:
            if isinstance(r[k], dict):
                metrics, where = reasons.setdefault(r[k]["unavailable"], ({}, {}))
                metrics[k] = where[f"{r['scene']}/{r['folder']}"] = None
    if reasons:
        lines += ["", "Unavailable:"]
        for why, (metrics, where) in reasons.items():
            lines.append(f"- {', '.join(metrics)} ({', '.join(where)}): {why}")
    if summary.get("not_finished"):
        lines += ["", "## Scenes not finished", "", "Not in the table above, or with older results (see each "
                  "scene's run.log):", ""] + unfinished_lines(summary["not_finished"])
    if summary["stages"]:
        lines += ["", "## Wall time per stage (s)", ""]
        head_t = ["scene", "method"] + summary["stages"]
        cell = lambda secs, s: f"{secs[s]:.1f}" if s in secs else "—"  # noqa: E731
        body_t = [[r["scene"], r["method"]] + [cell(r["seconds"], s) for s in summary["stages"]]
                  for r in summary["rows"]]
        body_t += [["**mean**", m["method"]] + [cell(m["seconds"], s) for s in summary["stages"]]
                   for m in summary["mean"]]
        lines += _md_table(head_t, body_t, 2)
    return "\n".join(lines) + "\n"


def to_csv(summary, paper=None):
    keys = summary["metrics"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["scene", "method", "folder", "views"] + keys + [f"{s} [s]" for s in summary["stages"]])

    def val(entry):
        if entry is None:
            return ""
        if isinstance(entry, dict):
            return "unavailable" if "unavailable" in entry else repr(entry["value"])
        return repr(entry)

    for r in summary["rows"] + summary["mean"]:
        w.writerow([r["scene"], r["method"], r["folder"], "" if r.get("views") is None else r.get("views")] +
                   [val(r[k]) for k in keys] +
                   [repr(r["seconds"][s]) if s in r["seconds"] else "" for s in summary["stages"]])
    if paper:
        for p in paper["rows"]:
            w.writerow([p["scene"], p["method"], "", ""] + [val(p[k]) for k in keys] + [""] * len(summary["stages"]))
    return buf.getvalue()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("out_root", help="folder holding one model folder per scene (each with results.json)")
    p.add_argument("--methods", nargs="+", default=None, metavar="FOLDER",
                   help="method folders to include, in this order (default: all found)")
    p.add_argument("--paper", action="store_true", help="add the paper's published numbers beside ours")
    p.add_argument("--dataset", choices=sorted(PAPER), default=None,
                   help="which paper table --paper uses (default: from the folder or scene names)")
    args = p.parse_args(argv)
    unfinished = load_unfinished(args.out_root)
    try:
        runs = load_runs(args.out_root)
    except ThreeDSRError as exc:
        if unfinished:  # no table, but say which scenes failed and why
            print("Scenes not finished:\n" + "\n".join(unfinished_lines(unfinished)), file=sys.stderr)
        raise exc from None
    summary = summarize(runs, args.methods)
    if unfinished:
        summary["not_finished"] = unfinished
    paper = None
    if args.paper:
        dataset = args.dataset or detect_dataset(args.out_root, summary["scenes"])
        if dataset is None:
            raise ThreeDSRError(f"cannot tell whether {args.out_root} is LLFF or Mip-NeRF 360 from its name or "
                                f"scenes; add --dataset llff or --dataset mipnerf360")
        paper = {"dataset": dataset, "reference": PAPER_REF, "lpips_network": "not stated",
                 "rows": paper_rows(dataset)}
        summary["paper"] = paper
    md = to_markdown(summary, args.out_root, paper)
    outputs = {"results.md": md, "results.csv": to_csv(summary, paper),
               "results.json": json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n"}
    for name, text in outputs.items():
        with atomic_write(os.path.join(args.out_root, name), "wb") as f:
            f.write(text.encode("utf-8"))
    print(md, end="")
    print(f"wrote {', '.join(os.path.join(args.out_root, n) for n in outputs)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
