"""Safe loading of torch checkpoints (docs/architecture.md, Conventions 6): nothing is unpickled."""
from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from posthoc.errors import DTypeError, MissingExtraError, PosthocError, ValueRangeError

log = logging.getLogger(__name__)


class UnsafeCheckpointError(PosthocError, ValueError):
    """A checkpoint would need unpickling arbitrary objects; posthoc refuses to load it."""


def load_state_dict(path: Any, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Load a torch state dict without unpickling arbitrary objects (docs/architecture.md, Conventions 6).

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers.
    Checkpoints that wrap the weights (``{"state_dict": ...}`` as mmseg writes,
    ``{"model": ...}`` as detectron2 writes) are unwrapped; ``key`` picks the entry.

    Raises:
        FileNotFoundError (ModelFileNotFoundError): the file does not exist.
        UnsafeCheckpointError: the checkpoint holds pickled objects (a whole module, an
            optimizer with custom classes ...). The message names the safe alternative:
            re-save ``model.state_dict()`` (or convert to safetensors) once, in an
            environment you trust.
        MissingExtraError: a .safetensors file without the safetensors package.
    """
    from .onnx_runtime import ModelFileNotFoundError

    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelFileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    if p.suffix == ".onnx":
        raise DTypeError(f"{str(p)!r} is an ONNX file, not a torch checkpoint; use OnnxTeacher / weights='{p}'")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise MissingExtraError("loading .safetensors needs safetensors: `pip install 'posthoc[bench]'`") from e
        obj: Any = load_file(str(p))
    else:
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(
                f"refusing to unpickle {str(p)!r}: it holds Python objects beyond tensors ({e}). "
                "posthoc only loads weights safely. In an environment you trust, re-save just the weights "
                "once: `torch.save(model.state_dict(), 'weights.pt')` or "
                "`safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')`, "
                "or export the model to ONNX and use weights='model.onnx'."
            ) from e
        except (RuntimeError, EOFError, OSError) as e:
            raise UnsafeCheckpointError(
                f"could not read {str(p)!r} as a torch checkpoint with weights_only=True: {e}. "
                "Save weights with torch.save(model.state_dict(), path) or safetensors."
            ) from e
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            keys = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueRangeError(f"checkpoint {str(p)!r} has no entry {key!r}; it has {keys}")
        obj = obj[key]
    elif isinstance(obj, Mapping):
        for k in ("state_dict", "model", "model_state_dict"):
            if k in obj and isinstance(obj[k], Mapping):
                obj = obj[k]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DTypeError(f"checkpoint {str(p)!r} must hold a state dict of tensors; got {type(obj).__name__}")
    return dict(obj)
