"""The GPU smoke test (tools/gpu_smoke.py, scripts/gpu_smoke.sh) at toy sizes on CPU, and the install files
for GPU users: environment.yml's pip list = requirements-cuda.txt (+ common), the CPU route keeps its
pinned torch, and the scripts never swap an active conda environment for .venv."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools import gpu_smoke  # noqa: E402


def test_tiny_smoke_on_cpu(tmp_path):
    out = tmp_path / "smoke"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gpu_smoke.py"), "--device", "cpu", "--tiny",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(re.match(r"^SKIP\s+stage 1 gsplat\b", ln) for ln in lines), proc.stdout
    for number, name in ((2, "rasterizer"), (3, "pipeline"), (4, "sr-memory")):
        assert any(re.match(rf"^PASS\s+stage {number} {name}\s+\d+\.\d s\s+peak GPU", ln) for ln in lines), proc.stdout
    assert len(re.findall(r"^\s+PASS (sd-x4|stablesr)\s", proc.stdout, re.M)) == 4, proc.stdout

    with open(out / "results.json") as f:
        res = json.load(f)
    assert res["passed"] is True and res["mode"] == "tiny"
    assert [(s["stage"], s["status"]) for s in res["stages"]] == [(1, "SKIP"), (2, "PASS"), (3, "PASS"), (4, "PASS")]
    assert res["environment"]["torch"] == torch.__version__
    for s in res["stages"]:
        assert s["seconds"] >= 0 and s["peak_gpu_gib"] is None  # CPU: no GPU memory to report
    raster = res["stages"][1]["details"]
    assert raster["candidate"] in ("cpu", "torch") and raster["cases"][0]["failures"] == []
    pipe = res["stages"][2]["details"]
    labels = [c["label"] for c in pipe["commands"]]
    assert labels == ["make_scene", "train", "render lr-3dgs", "sr_refine 3dsr", "sr_refine per-view",
                      "sr_refine bicubic", "render 3dsr", "metrics"]
    assert all(c["returncode"] == 0 for c in pipe["commands"])
    assert pipe["psnr"]["3dsr"] > gpu_smoke.PSNR_FLOOR
    configs = res["stages"][3]["details"]["configs"]
    assert [(c["model"], c["config"]) for c in configs] == [("sd-x4", "tiled"), ("sd-x4", "untiled"),
                                                            ("stablesr", "tiled"), ("stablesr", "untiled")]
    for c in configs:
        assert c["status"] == "PASS" and c["hr_shape"] == [2, 3, 96, 128]
        assert {"predict_s", "decode_s", "encode_s"} <= set(c)
    assert not (out / "work").exists()  # the stage 3 scene and model are removed unless --keep_work
    assert (out / "logs" / "stage3_train.log").is_file()


def test_cpu_needs_tiny():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gpu_smoke.py"), "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--tiny" in proc.stderr


def test_rasterizer_comparison_flags_a_mismatch():
    """Stage 2's checks: identical renders pass; a shifted image, a flipped gradient fail, each named."""
    tensors, K = gpu_smoke.random_gaussians(200, 32, 24)
    bg = torch.zeros(3)
    from gaussian_renderer import torch_backend
    ref, g_ref, off_ref = gpu_smoke.render_with_grads(torch_backend.rasterize, tensors, K, 32, 24, bg)
    same = gpu_smoke.compare_renders(ref, g_ref, off_ref, ref, g_ref, off_ref)
    assert same["failures"] == [] and min(same["grad_cos"].values()) > 0.999
    bad = dict(ref, image=ref["image"] + 0.01)
    g_bad = [g_ref[0], g_ref[1], -g_ref[2], g_ref[3], g_ref[4]]
    res = gpu_smoke.compare_renders(ref, g_ref, off_ref, bad, g_bad, off_ref)
    text = " | ".join(res["failures"])
    assert "image mean" in text and "grad scales" in text and "grad means " not in text


def _requirement_lines(path):
    """Requirement and option lines of a pip requirements file, `-r` files expanded, comments dropped."""
    lines = []
    with open(path) as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("-r "):
                lines += _requirement_lines(os.path.join(os.path.dirname(path), line[3:].strip()))
            else:
                lines.append(line)
    return lines


def test_environment_yml_is_the_cuda_requirements():
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(ROOT, "environment.yml")) as f:
        env = yaml.safe_load(f)
    assert env["name"] == "3dsr" and env["channels"][0] == "conda-forge" and "pytorch" not in env["channels"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda and "cuda-nvcc" in conda and "cuda-cudart-dev" in conda
    assert any(d.startswith("cuda-version=12.") for d in conda)
    assert not any(d.split("=")[0] in ("pytorch", "pytorch-cuda", "torch") for d in conda)  # torch comes from pip
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    want = _requirement_lines(os.path.join(ROOT, "requirements-cuda.txt"))
    assert [p for p in pip if not p.startswith("pytest")] == want
    assert any(p.startswith("pytest") for p in pip)
    torch_spec = next(p for p in want if re.match(r"torch\b", p))
    assert "2.13" not in torch_spec and ">=2." in torch_spec  # CUDA torch, not the CPU pin
    assert any(p.startswith("gsplat") for p in want)
    cuda_index = next(p for p in want if p.startswith("--extra-index-url"))
    cuda_tag = re.search(r"/whl/cu(\d+)$", cuda_index).group(1)
    toolkit = next(d for d in conda if d.startswith("cuda-version="))
    assert toolkit.split("=")[1].replace(".", "") == cuda_tag  # nvcc matches the torch build's CUDA


def test_cpu_route_keeps_its_pinned_torch():
    common = _requirement_lines(os.path.join(ROOT, "requirements-common.txt"))
    assert not any(re.match(r"(torch|gsplat)\b", ln) for ln in common)  # installing it never changes torch
    cpu = _requirement_lines(os.path.join(ROOT, "requirements.txt"))
    assert not any(re.match(r"torch\s*==", ln) for ln in cpu) and set(common) <= set(cpu)
    with open(os.path.join(ROOT, "scripts", "setup.sh")) as f:
        setup = f.read()
    cpu_branch = setup[setup.index("torch==2.13.0"):]
    assert cpu_branch.index("torch==2.13.0") < cpu_branch.index("-r requirements.txt")


def test_scripts_parse():
    scripts = ["scripts/setup.sh", "scripts/gpu_smoke.sh", "scripts/test.sh", "scripts/synthetic.sh",
               "scripts/lib/pyenv.sh", "scripts/setup.d/15_gsplat.sh", "scripts/setup.d/20_metric_weights.sh"]
    for script in scripts:
        proc = subprocess.run(["bash", "-n", os.path.join(ROOT, script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


@pytest.mark.parametrize("env, expect", [
    ({"CONDA_DEFAULT_ENV": "3dsr"}, "conda"),
    ({"CONDA_DEFAULT_ENV": "base"}, "venv"),
    ({"CONDA_DEFAULT_ENV": "3dsr", "THREEDSR_USE_VENV": "1"}, "venv"),
    ({}, "venv"),
])
def test_an_active_conda_environment_is_kept(tmp_path, env, expect):
    prefix = tmp_path / "envs" / "3dsr"
    (prefix / "bin").mkdir(parents=True)
    os.symlink(sys.executable, prefix / "bin" / "python")
    full = {k: v for k, v in os.environ.items() if not k.startswith(("CONDA", "MAMBA", "THREEDSR_USE_VENV"))}
    if env:
        full.update(env, CONDA_PREFIX=str(prefix))
    proc = subprocess.run(["bash", "-c", ". scripts/lib/pyenv.sh; threedsr_conda_env && echo conda || echo venv"],
                          cwd=ROOT, env=full, capture_output=True, text=True)
    assert proc.stdout.strip() == expect, proc.stderr
