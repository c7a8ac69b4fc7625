"""The one table of model families and known checkpoints.

A *family* is a way of computing audio (Stable Audio Open 1.0 through diffusers' components, Stable
Audio 3 as Stability's own library computes it). Each family module exports one `Family` descriptor
(models/family.py) saying how to recognise its files, how to load them and how much memory that takes;
`FAMILIES` lists them and is all the loader knows of families. No family logic lives here.

A *known model* is a published checkpoint (hub id, longest clip, recommended sampler settings, a
memory figure for operators). Hub ids were checked against the Hugging Face model pages; all are
gated: accept the licence on the model page (Stability AI Community License; the SA3 repositories
also the Gemma terms for T5Gemma) before downloading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import open1
from .family import Family
from .stable_audio_3 import family as sa3


@dataclass(frozen=True)
class KnownModel:
    """A published checkpoint: what GET /models says about it beside the loaded model's own facts."""

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


FAMILIES: tuple[Family, ...] = (open1.FAMILY, sa3.FAMILY)


def family_named(name: str) -> Family | None:
    """The family of that name (a loaded model's `family`), or None."""
    return next((family for family in FAMILIES if family.name == name), None)


def detect_family(path: Path) -> Family | None:
    """The first family that recognises the files in `path`, or None."""
    return next((family for family in FAMILIES if family.detect(path)), None)


def layouts() -> str:
    """What each family's directory holds, for the error when none recognises a directory."""
    return "; or ".join(f"{f.title}: {f.layout}" for f in FAMILIES)
