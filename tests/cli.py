"""Run the repository's scripts as a user would (a subprocess in the repository root), for tests."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Scripts with --device: tests check CPU guarantees (bit-identical resume, backend parity), so they run on
# the CPU even on a GPU machine unless a test names a device; the device canary covers the CUDA path.
DEVICE_SCRIPTS = ("train.py", "render.py", "sr_refine.py")


def run_script(args, check=True, timeout=900):
    """`python <args>` in the repository root; on failure (check=True) the output tails go in the error."""
    args = list(args)
    if args and os.path.basename(args[0]) in DEVICE_SCRIPTS and "--device" not in args:
        args += ["--device", "cpu"]
    proc = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def tiny_llff_scene(tmp_path_factory, name, views, seed, num_points, width=256, height=192):
    """A generated forward-facing scene (tools/make_scene.py) in a fresh temp folder; returns its path."""
    from tools.make_scene import make_scene
    out = tmp_path_factory.mktemp(name) / "tiny"
    make_scene(str(out), views=views, width=width, height=height, kind="llff", seed=seed,
               num_points=num_points, progress=False)
    return str(out)
