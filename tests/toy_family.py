"""A toy model family, written as a family plug-in is: this module and its one `FAMILY` descriptor.

test_family_plugin.py registers it by adding `FAMILY` to the registry's tuple and nothing else, then detects,
sizes, loads and serves it through the public load path. Its model plays a sine whose pitch is the seed.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from pathlib import Path

import numpy as np
import torch

from stable_audio_service.config import Settings
from stable_audio_service.models.base import (
    AudioModel,
    Bound,
    Capabilities,
    GenerationParams,
    GenerationState,
    ModelLimits,
    check_batch,
)
from stable_audio_service.models.common import dtype_bytes
from stable_audio_service.models.family import Family, Footprint, LoadRequest

MARKER = "toy_model.json"
SAMPLE_RATE = 8000
PARAMETERS = 1000  # what the toy "weights" count, for the memory check


class ToyModel(AudioModel[GenerationState]):
    family = "toy"
    sample_rate = SAMPLE_RATE
    channels = 1
    capabilities = Capabilities()

    def __init__(self, name: str, device: str, dtype: torch.dtype, longest_s: float) -> None:
        self.name = name
        self.device = device
        self.dtype = str(dtype).removeprefix("torch.")
        self.limits = ModelLimits(
            duration=Bound(1.0, 0.1, longest_s),
            guidance_scale=Bound(1.0, 1.0, 1.0),
            num_inference_steps=Bound(2, 1, 4),
        )

    def batch_key(self, params: GenerationParams) -> Hashable:
        return ("toy",)

    def upload_samples(self, duration: float) -> int:
        return int(duration * SAMPLE_RATE)

    def start(self, params: GenerationParams) -> GenerationState:
        return GenerationState(params=params, batch_key=self.batch_key(params), total_steps=params.num_inference_steps)

    def step(self, states: list[GenerationState]) -> None:
        check_batch(states)
        for state in states:
            state.step += 1

    def finish(self, state: GenerationState) -> np.ndarray:
        t = np.arange(int(state.params.duration * SAMPLE_RATE)) / SAMPLE_RATE
        return (0.5 * np.sin(2 * np.pi * (100 + state.params.seed % 1000) * t)).astype(np.float32)[None]


def write(directory: Path, longest_s: float = 5.0) -> Path:
    """A toy model directory: just the marker file with the longest clip."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text(json.dumps({"longest_s": longest_s}))
    return directory


def _longest(path: Path) -> float:
    return float(json.loads((path / MARKER).read_text())["longest_s"])


def detect(path: Path) -> bool:
    return (path / MARKER).is_file()


def longest_clip(path: Path, settings: Settings) -> float:
    cap = settings.max_duration
    return _longest(path) if cap is None else min(_longest(path), cap)


def footprint(path: Path, dtype: torch.dtype, seconds: float) -> Footprint:
    return Footprint(PARAMETERS * dtype_bytes(dtype), int(seconds * SAMPLE_RATE) * 4)


def load(req: LoadRequest) -> ToyModel:
    return ToyModel(req.name, req.device, req.dtype, longest_clip(req.path, req.settings))


FAMILY = Family(
    name="toy",
    title="Toy tones",
    layout=f"a directory with {MARKER}",
    detect=detect,
    longest_clip=longest_clip,
    footprint=footprint,
    load=load,
)
