"""Build: python -m pip install --no-build-isolation ./submodules/cpu_rasterizer

`--no-build-isolation` makes pip build against the torch already installed (an isolated build
would download a different, possibly CUDA, torch). Compiler flags: -O3 -fopenmp, plus AVX2/FMA when
both this CPU and the compiler support them (THREEDSR_CPU_ARCH=generic disables that,
THREEDSR_CPU_ARCH=native uses -march=native).
"""
import os
import platform
import shutil
import subprocess
import tempfile

from setuptools import setup

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError as exc:  # an isolated build environment has no torch
    raise SystemExit("threedsr_cpu_rasterizer builds against the installed torch: "
                     "python -m pip install --no-build-isolation ./submodules/cpu_rasterizer") from exc

HERE = os.path.dirname(os.path.abspath(__file__))


def _compiler_accepts(flags):
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write("#include <immintrin.h>\nint main(){__m256 a=_mm256_set1_ps(1.f);"
                    "a=_mm256_fmadd_ps(a,a,a);return (int)_mm256_cvtss_f32(a)-3;}\n")
        try:
            res = subprocess.run([cxx, *flags, src, "-o", os.path.join(tmp, "probe")],
                                 capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return res.returncode == 0


def _cpu_has(*features):
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return all(feat in have for feat in features)
    except OSError:
        pass
    return False


def _arch_flags():
    mode = os.environ.get("THREEDSR_CPU_ARCH", "auto")
    if mode == "generic":
        return []
    if mode == "native":
        return ["-march=native"]
    if platform.machine().lower() in ("x86_64", "amd64") and _cpu_has("avx2", "fma") \
            and _compiler_accepts(["-mavx2", "-mfma"]):
        return ["-mavx2", "-mfma"]
    return []


# The sources are C++17; the language standard itself is left to torch (its headers need C++20).
# -g0: no debug info (Python's default CFLAGS add -g, which triples build time and size).
# -ffp-contract=off: round each expression the way the PyTorch reference does (parity tests).
CXX_FLAGS = ["-O3", "-g0", "-fopenmp", "-ffp-contract=off", *_arch_flags()]

setup(
    name="threedsr_cpu_rasterizer",
    version="0.1.0",
    description="3dsr C++/OpenMP Gaussian splatting rasterizer (forward + backward) for CPU training",
    packages=["threedsr_cpu_rasterizer"],
    ext_modules=[
        CppExtension(
            name="threedsr_cpu_rasterizer._C",
            sources=[os.path.join("csrc", "rasterizer.cpp"), os.path.join("csrc", "preprocess.cpp")],
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=["-fopenmp"],
        ),
        # Fused SSIM (utils/loss_utils.py). Its own module so that it may contract to FMAs: it is checked
        # against the reference with a tolerance, not for identical rounding.
        CppExtension(
            name="threedsr_cpu_rasterizer._ssim",
            sources=[os.path.join("csrc", "ssim.cpp")],
            extra_compile_args={"cxx": [f for f in CXX_FLAGS if f != "-ffp-contract=off"]},
            extra_link_args=["-fopenmp"],
        ),
    ],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
