"""Run the repository's scripts as a user would (a subprocess in the repository root), for tests."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(args, check=True, timeout=900):
    """`python <args>` in the repository root; on failure (check=True) the output tails go in the error."""
    proc = subprocess.run([sys.executable] + list(args), cwd=ROOT, capture_output=True, text=True,
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
