"""What a model family plugs into the service: one `Family` descriptor per family module.

The loader knows families only through these descriptors (the registry's tuple), so adding a family means
writing its module, which exports one `Family`, and adding that descriptor to `registry.FAMILIES`; nothing
else dispatches on family names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch

    from ..config import Settings
    from .base import AudioModel


@dataclass(frozen=True)
class LoadRequest:
    """What a family's loader gets: where the files are and how the operator wants them served."""

    path: Path
    name: str
    device: str
    dtype: torch.dtype
    settings: Settings


class Footprint(NamedTuple):
    """Bytes a model needs: its weights at the serving dtype, and the working memory of one request."""

    weights: int
    working: int


@dataclass(frozen=True)
class Family:
    """A way of computing audio, and how to recognise, size and load its checkpoints.

    Every callable gets the model directory; none may load weights except `load` (detection and the memory
    check run before the loader decides to load anything).
    """

    name: str  # the `family` of its models, in GET /models and the logs
    title: str  # for people: error messages and GET /models
    layout: str  # what its directory holds, for the error when no family recognises one
    # Whether the directory holds this family's files (cheap: a file or two are looked at).
    detect: Callable[[Path], bool]
    # The longest clip the service will be asked for under these settings, in seconds (sizes the memory check).
    longest_clip: Callable[[Path, Settings], float]
    # (weights, working) bytes at this dtype for one request of this many seconds; 0 s gives the fixed part.
    footprint: Callable[[Path, torch.dtype, float], Footprint]
    # Build the model the engine serves; may raise ModelLoadError with a message for the operator.
    load: Callable[[LoadRequest], AudioModel]
    # Whether `auto` may serve it in bfloat16 on a CPU with native bfloat16 matmuls (where measured faster): the
    # family runs end to end in bfloat16 and gains from it; the others keep float32 on the CPU.
    cpu_bfloat16: bool = False
