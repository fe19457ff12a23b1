#!/usr/bin/env python
"""Evaluate render folders: PSNR, SSIM, LPIPS (AlexNet and VGG), NIQE, FID, MV-warp, MEt3R.

    python metrics.py -m output/fern [-m output/room ...] [--split test] [--metrics psnr ssim lpips-vgg ...]

For every model folder OUT and every method folder OUT/<split>/<method>/ holding renders/ and gt/ (render.py
writes ours_<iteration>/), computes the metrics and writes OUT/results.json and OUT/per_view.json (for
--split test; OUT/results_<split>.json and OUT/per_view_<split>.json otherwise), atomically, merged into
what those files already hold (a re-run replaces only the metrics it computes), and prints a table.

A metric that cannot be computed is recorded as {"unavailable": "<why and how to enable it>"}, never a
number. Conventions:
  * images are read as 8-bit RGB in [0,1]; greyscale files are replicated to RGB; RGBA (and LA) files are
    alpha-composited on black (rgb * alpha); renders and gt are matched by file name, same size required;
    files whose extension is not an image's are ignored; a file with an image extension that does not decode
    is an error;
  * PSNR: per image 10 log10(1 / MSE) over all pixels and channels, capped at 100 dB (identical images give
    100.0, so the JSON stays finite and standard); the reported value is the mean over views, as in 3DGS;
  * SSIM: skimage's definition (Gaussian window sigma 1.5, 11 taps, K1 0.01, K2 0.03, population statistics,
    valid region, RGB averaged), per view, then the mean;
  * LPIPS-alex / LPIPS-vgg: LPIPS v0.1 on full-resolution images (evaluation/lpips.py); lower is better;
  * NIQE: of the renders only (no reference), basicsr/MATLAB conventions (evaluation/niqe.py); lower is better;
  * FID: renders vs gt of the method folder, {"value", "num_images"} (pytorch-fid Inception weights needed);
  * MV-warp: our consistency proxy over consecutive renders (evaluation/mv_warp.py); lower is better;
  * MEt3R: the official package over consecutive renders, if installed with its weights.
Exit status: 0 when every method folder was evaluated, 2 (one line per problem) when a folder's input is
bad (missing/empty folders, mismatched names or sizes, unreadable images) or nothing could be evaluated.
"""
import os
import sys

from arguments import CLIArgumentParser, show_defaults
from evaluation.evaluate import METRICS, evaluate_method, find_methods, merge_json, print_table, scan_method
from utils.device import resolve_device
from utils.errors import ThreeDSRError
from utils.system_utils import run_cli


def main(argv=None):
    parser = CLIArgumentParser(description="Evaluate render folders (PSNR, SSIM, LPIPS, NIQE, FID, MV-warp, MEt3R)")
    parser.add_argument("-m", "--model_paths", action="extend", nargs="+", required=True,
                        help="model folder(s) holding <split>/<method>/{renders,gt}")
    parser.add_argument("--split", default="test", help="which render split to evaluate (default: test)")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS), metavar="METRIC",
                        help=f"metrics to compute (default: all of {' '.join(METRICS)})")
    parser.add_argument("--fid_weights", default=None, help="path of pt_inception-2015-12-05-*.pth for FID")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = show_defaults(parser).parse_args(argv)
    metrics = [m for m in METRICS if m in args.metrics]
    device = resolve_device(args.device)
    suffix = "" if args.split == "test" else f"_{args.split}"

    errors, rows, evaluated = [], [], 0
    for model_dir in args.model_paths:
        try:
            methods = find_methods(model_dir, args.split)
        except ThreeDSRError as exc:
            errors.append(str(exc))
            continue
        results, per_view = {}, {}
        for method, method_dir in methods:
            try:
                names, sizes = scan_method(method_dir)
                res, pv = evaluate_method(method_dir, names, sizes, metrics, device, args.fid_weights, args.quiet)
            except ThreeDSRError as exc:
                errors.append(str(exc))
                continue
            results[method], per_view[method] = res, pv
            rows.append((os.path.basename(os.path.normpath(model_dir)), method, res))
            evaluated += 1
        if results:
            merge_json(os.path.join(model_dir, f"results{suffix}.json"), results)
            merge_json(os.path.join(model_dir, f"per_view{suffix}.json"), per_view)
            print(f"wrote {os.path.join(model_dir, f'results{suffix}.json')} and per_view{suffix}.json")
    if rows:
        print_table(rows, metrics)
    if len(errors) == 1:
        raise ThreeDSRError(errors[0])
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        raise ThreeDSRError(f"{len(errors)} render folders could not be evaluated ({evaluated} were)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
