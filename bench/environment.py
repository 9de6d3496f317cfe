"""The library versions a benchmark ran with, for its header.

The fits are deterministic for a seed only within one set of libraries: OpenCV's RANSAC
draws (the initial transforms) and DIS flow feed every fit, so a table is comparable with
another only when this line matches.
"""
from __future__ import annotations

import platform

import cv2
import numpy as np
import torch


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "opencv": cv2.__version__, "numpy": np.__version__}


def describe() -> str:
    return "libraries: " + ", ".join(f"{k} {v}" for k, v in versions().items())
