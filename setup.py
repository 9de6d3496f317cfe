"""Canonical-atlas video editing toolkit: `pip install -e .` installs the `atlas` command."""
from setuptools import find_packages, setup

setup(
    name="atlas-video",
    version="0.1.0",
    description="Register a video into layered hash-grid atlases, edit once, propagate to every frame.",
    python_requires=">=3.10",
    packages=find_packages(include=["atlas*", "propagation*", "editing*", "cuda_ext*"]),
    include_package_data=True,
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy",
        "imageio>=2.31",
        "imageio-ffmpeg",
        "opencv-python-headless",
        "scipy",
        "safetensors",
        "pyyaml",
        "tqdm",
        "pillow",
        "OpenEXR",
    ],
    extras_require={
        "test": ["pytest"],
        "sam": ["segment-anything"],
    },
    entry_points={"console_scripts": ["atlas=atlas.cli:main"]},
)
