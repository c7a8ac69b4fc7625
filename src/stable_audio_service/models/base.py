"""What every model family gives the engine: limits, and a step-wise generation API.

The engine owns the loop (so it can batch, report progress and cancel between steps);
a family owns what happens inside one step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class GenerationError(RuntimeError):
    """A generation failed for a reason that is not the client's fault."""


@dataclass(frozen=True)
class Bound:
    default: float
    minimum: float
    maximum: float


@dataclass(frozen=True)
class ModelLimits:
    """Defaults and bounds of the request fields for one model (shown by `GET /models`)."""

    duration: Bound
    guidance_scale: Bound
    num_inference_steps: Bound


@dataclass
class GenerationParams:
    prompt: str
    duration: float
    guidance_scale: float
    num_inference_steps: int
    seed: int
    negative_prompt: str | None = None
    # Audio-to-audio: float32 (channels, samples) already at the model's rate and channel count.
    init_audio: Any = None
    init_noise_level: float | None = None
    # Inpainting / continuation (sa3): the source, and (start_s, end_s) regions to regenerate.
    inpaint_audio: Any = None
    inpaint_regions: list[tuple[float, float]] | None = None


@dataclass
class GenerationState:
    """Per-request state between steps. Each request owns its scheduler and generator."""

    params: GenerationParams
    batch_key: tuple
    total_steps: int
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps


def check_batch(states: list[GenerationState]) -> None:
    """One forward pass serves only states with the same batch key at the same step."""
    if len({s.batch_key for s in states}) != 1 or len({s.step for s in states}) != 1:
        raise ValueError("a batch must share its batch key and step")


class AudioModel(Protocol):
    name: str
    family: str
    sample_rate: int
    channels: int
    limits: ModelLimits
    device: str
    dtype: str

    def batch_key(self, params: GenerationParams) -> tuple:
        """Requests with equal keys can share a forward pass."""

    def start(self, params: GenerationParams) -> GenerationState: ...

    def step(self, states: list[GenerationState]) -> None:
        """Advance every state by one denoising step in one batched forward pass."""

    def finish(self, state: GenerationState) -> np.ndarray:
        """Decode to float32 audio of shape (channels, samples), clipped to [-1, 1]."""
