"""The one table of model families and known checkpoints.

A *family* is a way of computing audio (Stable Audio Open 1.0 through diffusers' components, Stable
Audio 3 as Stability's own library computes it). Each declares how to recognise its files, how to
load them and how much memory that takes; nothing else in the service dispatches on family names.

A *known model* is a published checkpoint (hub id, longest clip, recommended sampler settings, a
memory figure for operators). Hub ids were checked against the Hugging Face model pages; all are
gated: accept the licence on the model page (Stability AI Community License; the SA3 repositories
also the Gemma terms for T5Gemma) before downloading.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..config import Settings
    from .base import AudioModel

GIB = 1024**3


@dataclass(frozen=True)
class KnownModel:
    name: str
    hub_id: str
    family: str
    max_duration: float  # seconds the checkpoint is made for
    default_steps: int
    default_guidance: float
    parameters: str  # as the model card states it
    memory_gib: float  # rough fp32 weights + working memory of a typical clip, for operators
    device: str  # where it is meant to run
    notes: str = ""


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel(
        name="stable-audio-open-1.0",
        hub_id="stabilityai/stable-audio-open-1.0",
        family="open-1.0",
        max_duration=30.0,  # 47 s window; the design note caps requests at 30 s
        default_steps=100,
        default_guidance=7.0,
        parameters="1.2B",
        memory_gib=11.6,
        device="GPU (CPU works, slowly)",
        notes="audio-to-audio via initial_audio_waveforms has little effect (diffusers issue 10861)",
    ),
    KnownModel(
        name="stable-audio-3-small-music",
        hub_id="stabilityai/stable-audio-3-small-music",
        family="sa3",
        max_duration=120.0,
        default_steps=8,
        default_guidance=1.0,
        parameters="433M",
        memory_gib=4.3,
        device="CPU-capable",
    ),
    KnownModel(
        name="stable-audio-3-small-sfx",
        hub_id="stabilityai/stable-audio-3-small-sfx",
        family="sa3",
        max_duration=120.0,
        default_steps=8,
        default_guidance=1.0,
        parameters="433M",
        memory_gib=4.3,
        device="CPU-capable",
    ),
    KnownModel(
        name="stable-audio-3-medium",
        hub_id="stabilityai/stable-audio-3-medium",
        family="sa3",
        max_duration=380.0,
        default_steps=8,
        default_guidance=1.0,
        parameters="1.4B",
        memory_gib=8.0,
        device="GPU (CUDA)",
    ),
)


def lookup(name_or_id: str | None) -> KnownModel | None:
    """By hub id, short name, or a path whose last component is one of those."""
    if not name_or_id:
        return None
    key = name_or_id.rstrip("/").lower()
    tail = key.rsplit("/", 1)[-1]
    for model in KNOWN_MODELS:
        if key in (model.hub_id.lower(), model.name) or tail == model.name:
            return model
    return None


@dataclass(frozen=True)
class LoadRequest:
    """What a family's loader gets: where the files are and how the operator wants them served."""

    path: Path
    name: str
    device: str
    dtype: torch.dtype
    settings: Settings


@dataclass(frozen=True)
class Family:
    """A way of computing audio, and how to recognise, size and load its checkpoints."""

    name: str
    title: str
    layout: str  # what the directory holds, for error messages
    detect: Callable[[Path], bool]
    longest_clip: Callable[[Path, Settings], float]
    weights_bytes: Callable[[Path, torch.dtype], int]
    working_bytes: Callable[[Path, torch.dtype, float], int]
    load: Callable[[LoadRequest], AudioModel]


def _index_class(path: Path) -> str | None:
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    return index.get("_class_name") if isinstance(index, dict) else None


# -- Stable Audio Open 1.0 (diffusers layout) ----------------------------------------------------


def _open1_detect(path: Path) -> bool:
    return _index_class(path) == "StableAudioPipeline"


def _open1_longest(path: Path, settings: Settings) -> float:
    from .open1 import OPEN1_LIMITS

    return OPEN1_LIMITS.duration.maximum


def _open1_weights(path: Path, dtype: torch.dtype) -> int:
    from .loading import dtype_bytes, safetensors_parameters

    return safetensors_parameters(path.glob("*/*.safetensors")) * dtype_bytes(dtype)


def _open1_working(path: Path, dtype: torch.dtype, seconds: float) -> int:
    """Dominated by the Oobleck decoder's last stage (samples x decoder channels, a few live tensors);
    the factor 6 matches the measured fp32 peak of the real model (11.6 GiB RSS, 4.9 GiB weights)."""
    import math

    from .loading import dtype_bytes

    vae = json.loads((path / "vae" / "config.json").read_text())
    hop = math.prod(vae.get("downsampling_ratios", [2, 4, 4, 8, 8]))
    samples = (math.ceil(seconds * vae.get("sampling_rate", 44100) / hop) + 16) * hop
    return 6 * samples * vae.get("decoder_channels", 128) * dtype_bytes(dtype)


def _open1_load(req: LoadRequest) -> AudioModel:
    from .open1 import StableAudioOpenModel

    return StableAudioOpenModel.from_pretrained(
        str(req.path),
        name=req.name,
        device=req.device,
        dtype=req.dtype,
        window=req.settings.window,
        text_cache_size=req.settings.text_cache_size,
    )


# -- Stable Audio 3 (Stability's official single-checkpoint format) --------------------------------


def _sa3_detect(path: Path) -> bool:
    return (path / "model_config.json").is_file()


def _sa3_longest(path: Path, settings: Settings) -> float:
    from .stable_audio_3.family import longest_clip

    cap = settings.max_duration
    longest = longest_clip(path)
    return longest if cap is None else min(longest, cap)


def _sa3_weights(path: Path, dtype: torch.dtype) -> int:
    from .stable_audio_3.family import memory_estimate

    return memory_estimate(path, dtype, 0.0)[0]


def _sa3_working(path: Path, dtype: torch.dtype, seconds: float) -> int:
    from .stable_audio_3.family import memory_estimate

    return memory_estimate(path, dtype, seconds)[1]


def _sa3_load(req: LoadRequest) -> AudioModel:
    from .stable_audio_3 import accel
    from .stable_audio_3.family import StableAudio3Model

    model = StableAudio3Model.from_checkpoint(
        req.path,
        name=req.name,
        device=req.device,
        dtype=req.dtype,
        text_cache_size=req.settings.text_cache_size,
        max_duration=req.settings.max_duration,
        lora_dir=req.settings.lora_dir,  # LoRA (issue 16)
        lora_cache_mb=req.settings.lora_cache_mb,
    )
    accel.from_settings(model, req.settings)  # speed levers (issue 12)
    return model


FAMILIES: dict[str, Family] = {
    "open-1.0": Family(
        name="open-1.0",
        title="Stable Audio Open 1.0",
        layout="a diffusers-layout directory (model_index.json naming StableAudioPipeline, plus transformer/, "
        "vae/, text_encoder/, tokenizer/, projection_model/, scheduler/)",
        detect=_open1_detect,
        longest_clip=_open1_longest,
        weights_bytes=_open1_weights,
        working_bytes=_open1_working,
        load=_open1_load,
    ),
    "sa3": Family(
        name="sa3",
        title="Stable Audio 3",
        layout="Stability's official format (model_config.json, model.safetensors and the T5Gemma folder the "
        "config names)",
        detect=_sa3_detect,
        longest_clip=_sa3_longest,
        weights_bytes=_sa3_weights,
        working_bytes=_sa3_working,
        load=_sa3_load,
    ),
}


def detect_family(path: Path) -> Family | None:
    """The family whose files are in `path`, or None."""
    for family in FAMILIES.values():
        if family.detect(path):
            return family
    return None


def layouts() -> str:
    return "; or ".join(f"{f.title}: {f.layout}" for f in FAMILIES.values())
