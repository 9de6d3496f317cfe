"""Canonical-atlas video editing toolkit: `pip install -e .` installs the `atlas` command.

Native hash-encoding kernels are built on first use (JIT). To build them ahead of time:
    ATLAS_BUILD_EXT=1 pip install -e . --no-build-isolation
(needs torch installed first; add BUILD_NO_CUDA=1 to skip the CUDA kernels; set CUDA_HOME and
TORCH_CUDA_ARCH_LIST when no GPU can be queried).
"""
import os

from setuptools import find_packages, setup


def native_extensions() -> dict:
    """ext_modules + cmdclass for the AOT build, or nothing (the default)."""
    if not os.environ.get("ATLAS_BUILD_EXT"):
        return {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    csrc = "cuda_ext/csrc"
    omp = {"cxx": ["-O3", "-fopenmp"]}
    exts = [CppExtension("cuda_ext._C_cpu", [f"{csrc}/hashgrid_cpu.cpp"], extra_compile_args=omp, extra_link_args=["-fopenmp"])]
    if not os.environ.get("BUILD_NO_CUDA"):
        from cuda_ext.build import cuda_home, wheel_cuda_includes

        if cuda_home() is not None:
            os.environ.setdefault("CUDA_HOME", str(cuda_home()))
            exts.append(CUDAExtension("cuda_ext._C_cuda", [f"{csrc}/hashgrid_cuda.cpp", f"{csrc}/hashgrid_cuda.cu"],
                                      include_dirs=wheel_cuda_includes(), extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]}))
    return {"ext_modules": exts, "cmdclass": {"build_ext": BuildExtension}}

# `atlas edit --prompt`: Stable Diffusion pipelines, LoRA, annotators
DIFFUSION = ["diffusers>=0.30", "transformers>=4.40", "peft>=0.10", "accelerate>=0.30", "controlnet_aux>=0.0.9"]

setup(
    name="atlas-video",
    version="0.1.0",
    description="Register a video into layered hash-grid atlases, edit once, propagate to every frame.",
    python_requires=">=3.10",
    packages=[*find_packages(include=["atlas*", "propagation*", "editing*", "cuda_ext*"]), "atlas.configs"],
    # a regular (non-editable) install carries the presets and the kernel sources (built JIT)
    package_dir={"atlas.configs": "configs"},
    package_data={"atlas.configs": ["*.yaml"], "cuda_ext": ["csrc/*"]},
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy",
        "imageio>=2.31",
        "imageio-ffmpeg",
        # pinned like torch: its RANSAC draws set the fits' initial transforms, so another
        # release gives other (equally valid) fits and moves the benchmarks' numbers
        "opencv-python-headless==5.1.0.95",
        "scipy",
        "safetensors",
        "pyyaml",
        "tqdm",
        "pillow",
        "OpenEXR",
    ],
    extras_require={
        "test": ["pytest", "segment-anything", *DIFFUSION],
        "sam": ["segment-anything"],
        "diffusion": DIFFUSION,
    },
    entry_points={"console_scripts": ["atlas=atlas.cli:main"]},
    **native_extensions(),
)
