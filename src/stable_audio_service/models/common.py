"""The bottom of the models package: the errors and units every layer shares.

It imports nothing else of this package, so a family module, the loader and the engine can all use these
names without importing one another (they used to, in a circle, for exactly these few definitions).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

MIB = 2**20
GIB = 2**30
# Bytes per element of the dtypes a model may be served in; anything else is sized as float32.
DTYPE_BYTES: dict[torch.dtype, int] = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message says why and what to do (it is shown to an operator as is)."""


class GenerationError(RuntimeError):
    """A generation failed for a reason that is not the client's fault."""


class InvalidRequest(ValueError):
    """Found only when the model starts a request (e.g. an adapter that vanished, or that a Ray ingress
    could not check): the client's mistake, answered 422 with the reason, never a 500."""


def dtype_bytes(dtype: torch.dtype) -> int:
    """Bytes per element at `dtype`, for memory estimates made before any weight is loaded."""
    return DTYPE_BYTES.get(dtype, 4)


def safetensors_header(path: Path) -> dict[str, Any]:
    """A safetensors file's JSON header (names, dtypes, shapes): sizes without reading any weight."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(length))


def safetensors_parameters(files: Iterable[Path | str]) -> int:
    """Parameters of these files from their headers alone; files that do not exist count nothing."""
    total = 0
    for file in files:
        file = Path(file)
        if not file.is_file():
            continue
        for key, info in safetensors_header(file).items():
            if key != "__metadata__":
                total += math.prod(info["shape"])
    return total
