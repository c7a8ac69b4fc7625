"""The open Stable Audio models this service knows: hub ids, family, limits and memory.

The family of a model directory is decided by its model_index.json (see `loading.read_family`);
this table adds what the directory does not say: the longest clip the checkpoint was trained for,
the sampler defaults its authors recommend and a rough memory figure for operators.

Hub ids were checked against the Hugging Face model pages (stabilityai/stable-audio-open-1.0,
stabilityai/stable-audio-3-small-music, -small-sfx, -medium). All are gated: accept the licence on
the model page (Stability AI Community License; the SA3 repos also the Gemma terms for T5Gemma)
before `huggingface-cli download`. That the SA3 repositories hold a diffusers-layout
model_index.json (as diffusers' StableAudio3Pipeline docstring implies) is not verified offline.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Bound, ModelLimits

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

# Fallbacks when the model is not in the table (a local or fine-tuned checkpoint).
FAMILY_DEFAULTS = {"open-1.0": KNOWN_MODELS[0], "sa3": KNOWN_MODELS[1]}


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


def known_for(name_or_id: str | None, family: str) -> KnownModel:
    """The registry entry for this model, else the family's default entry."""
    known = lookup(name_or_id)
    if known is not None and known.family == family:
        return known
    return FAMILY_DEFAULTS[family]


def sa3_limits(known: KnownModel, max_duration_cap: float | None = None) -> ModelLimits:
    """Request limits of an SA3 model: its own step count and guidance off by default, durations up to
    the checkpoint's maximum, or the operator's cap (STABLE_AUDIO_MAX_DURATION) when that is lower."""
    maximum = known.max_duration if max_duration_cap is None else min(known.max_duration, max_duration_cap)
    maximum = max(1.0, maximum)
    return ModelLimits(
        duration=Bound(min(10.0, maximum), 1.0, maximum),
        guidance_scale=Bound(known.default_guidance, 1.0, 20.0),
        num_inference_steps=Bound(known.default_steps, 1, 200),
    )
