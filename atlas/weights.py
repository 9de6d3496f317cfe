"""Model weights from disk, never running code from them: `.safetensors`, or a PyTorch
checkpoint read with `weights_only=True`. A file that is neither (a pickle that holds code,
a truncated download) is a one-line error naming it."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .errors import AtlasInputError, first_line


def load_weights(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (`what` names it in errors, e.g. "SAM checkpoint")."""
    path = Path(path)
    if not path.is_file():
        raise AtlasInputError(f"{what} not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except PermissionError:
            raise
        except Exception as exc:  # safetensors raises several types for broken files
            raise AtlasInputError(f"cannot read {what} {path}: not a valid .safetensors file ({first_line(exc)})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # PyTorch's own message advises loading the code: never shown
        raise AtlasInputError(f"{what} {path} holds pickled objects besides tensors, which atlas never loads; "
                              "use a weights-only checkpoint or a .safetensors file") from None
    except PermissionError:
        raise
    except Exception as exc:  # truncated zip, not a checkpoint at all
        raise AtlasInputError(f"cannot read {what} {path}: {first_line(exc)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AtlasInputError(f"{what} {path} does not hold a dictionary of tensors")
    return state
