"""Canonical-atlas video editing: fit a video into layered atlases, edit once, propagate.

    >>> import atlas
    >>> bundle = atlas.fit("clip.mp4", out="clip.atlas", config="fast")
    >>> frames = atlas.load("clip.atlas").render()
"""
from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bundle import AtlasBundle


def fit(*args: Any, **kwargs: Any) -> "AtlasBundle":
    """Register a video; see :func:`atlas.train.fit`."""
    from .train import fit as _fit

    return _fit(*args, **kwargs)


def load(path: str, device: str = "cpu") -> "AtlasBundle":
    """Open a saved bundle; see :meth:`atlas.bundle.AtlasBundle.load`."""
    from .bundle import AtlasBundle

    return AtlasBundle.load(path, device=device)


from . import io  # noqa: E402  (light: numpy/torch only; makes atlas.io.write_video available)
