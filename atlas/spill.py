"""Memory-mapped arrays for shots larger than RAM.

A fit holds the shot's frames, flows, their validity and the masks for the whole
optimisation, and the camera residuals while preprocessing: about 17 bytes a pixel,
4.2 GB for 1920x1080x120 and 34 GB for 4K x 240.
With spilling on, those arrays live in files in a folder beside the output instead of in
the process's own memory: the kernel keeps the pages it can in its file cache and drops
them under pressure, so RAM no longer bounds the shot, disk does. The arrays and the fit
are the same bit for bit; only where the bytes live changes. (Frames handed to the fit in
memory, an array or a Video, stay where they are.) The folder is removed when
the fit ends, whether it succeeded, failed or was interrupted (Ctrl-C); a killed process
(SIGKILL, power loss) leaves a `.<bundle>.spill-*` folder for the user to delete.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

Alloc = Callable[..., np.ndarray]  # (shape, dtype) -> an empty array: np.empty, or Spill.empty

SPILLED_BYTES_PER_PIXEL = 17.0  # 8-bit frames (3), flows (8), validity (2), masks (1), camera residuals (2) and their counts (1)


class Spill:
    """A context giving empty shot-sized arrays: memory-mapped files in a temporary folder
    beside `out` when `enabled`, else ordinary arrays (then nothing touches the disk)."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.out, self.enabled = Path(out), enabled
        self.dir: Path | None = None
        self.count = 0

    def __enter__(self) -> "Spill":
        if self.enabled:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.spill-", dir=self.out.parent))
        return self

    def __exit__(self, *exc: object) -> None:
        # mapped arrays still in use (a returned bundle's cache) stay readable: on POSIX a
        # mapping outlives its file's name
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialised array (np.empty's contract), file-backed while spilling."""
        if self.dir is None:
            return np.empty(shape, dtype)
        self.count += 1
        return np.lib.format.open_memmap(self.dir / f"{self.count:03d}.npy", mode="w+", dtype=dtype, shape=tuple(shape))
