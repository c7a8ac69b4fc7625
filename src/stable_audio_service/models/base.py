"""What every model family gives the engine and the request path.

The engine owns the loop (so it can batch, report progress and cancel between steps); a family
owns what happens inside one step. A family also *declares* what it can do (`Capabilities`) and
its request limits (`ModelLimits`), so the request path, `GET /models` and the OpenAPI schema read
facts instead of probing classes or comparing family names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from threading import RLock
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch

# Defined at the bottom of the package (common.py); kept importable from here, where the engine looks for them.
from .common import GenerationError, InvalidRequest  # noqa: F401

if TYPE_CHECKING:
    from ..adapters import Adapters
    from ..loudness import LoudnessTarget


@dataclass(frozen=True)
class Bound:
    default: float
    minimum: float
    maximum: float

    def as_dict(self, kind: type = float) -> dict[str, Any]:
        return {"default": kind(self.default), "minimum": kind(self.minimum), "maximum": kind(self.maximum)}


@dataclass(frozen=True)
class ModelLimits:
    """Defaults and bounds of the request fields for one model (shown by `GET /models`)."""

    duration: Bound
    guidance_scale: Bound
    num_inference_steps: Bound


@dataclass(frozen=True)
class Capabilities:
    """What a family can do beyond text-to-audio; `None` / False means the request field is refused."""

    audio_to_audio: bool = False
    # Strength control of audio-to-audio (noise mixed into the source's latents); None: no control.
    init_noise_level: Bound | None = None
    # inpaint_regions and continuation (a duration longer than the source).
    inpainting: bool = False
    # Adaptive projected guidance (Stable Audio 3); None: plain classifier-free guidance only.
    apg_scale: Bound | None = None
    # Per-request LoRA adapters.
    loras: bool = False
    # Why adapters are refused when `loras` is False and something could change that (e.g. a setting).
    loras_unavailable: str = ""
    # Why audio-to-audio has little effect, or other caveats a user should read (GET /models, the page).
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoraRef:
    """One adapter of a request and its controls, Stability's per-LoRA settings: its strength on the denoiser,
    its strength on the conditioner (None: the same, as one `set_lora_strength` sets both), the sigma interval
    `(min, max)` in which it acts on the denoiser (inclusive), and the layer filter (substrings of denoiser layer
    names where it does not act)."""

    name: str
    strength: float = 1.0
    conditioner_strength: float | None = None
    interval: tuple[float, float] = (0.0, 1.0)
    layer_filter: tuple[str, ...] = ()


@dataclass
class GenerationParams:
    prompt: str
    duration: float
    guidance_scale: float
    num_inference_steps: int
    seed: int
    negative_prompt: str | None = None
    # Audio-to-audio: float32 (channels, samples) already at the model's rate and channel count.
    init_audio: np.ndarray | None = None
    init_noise_level: float | None = None
    # Inpainting / continuation: the source, and (start_s, end_s) regions of the output to regenerate.
    # A duration longer than the source regenerates the tail too (continuation); the family does that.
    inpaint_audio: np.ndarray | None = None
    inpaint_regions: list[tuple[float, float]] | None = None
    apg_scale: float | None = None
    loras: tuple[LoraRef, ...] = ()
    # Takes of one request, from seeds `seed, seed + 1, ...`: the engine runs each as a row of one batch; a family
    # only ever sees one take (`num_outputs` 1).
    num_outputs: int = 1
    # Long-form (the engine's, never a family's): `duration` is the whole clip, made as a chain of windows of
    # `window_s` seconds, each continuing the last `overlap_s` seconds of the one before (engine/longform.py).
    window_s: float | None = None
    overlap_s: float | None = None
    # Loudness of the result (loudness.py), applied after the model's clip is cut to length: None leaves the audio
    # exactly as the model made it. Post-processing only, so no family reads it and it is no part of a batch key.
    loudness: LoudnessTarget | None = None

    def drop_uploads(self) -> None:
        """Free the uploaded audio once the model has encoded it (it may be minutes of float32)."""
        self.init_audio = None
        self.inpaint_audio = None


@dataclass
class GenerationState:
    """Per-request state between steps. Families subclass it with their own typed fields."""

    params: GenerationParams
    batch_key: Hashable
    total_steps: int
    step: int = 0

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps


S = TypeVar("S", bound=GenerationState)


def check_batch(states: list[GenerationState], mixed_steps: bool = False) -> None:
    """One forward pass serves only states with the same batch key, at the same step unless the family declares
    `mixed_steps` (its forward takes one timestep per row)."""
    if len({s.batch_key for s in states}) != 1:
        raise ValueError("a batch must share its batch key")
    if not mixed_steps and len({s.step for s in states}) != 1:
        raise ValueError("a batch must share its batch key and step")


def to_audio(waveform: torch.Tensor) -> np.ndarray:
    """One request's decoded waveform (channels, samples) -> float32 numpy in [-1, 1]; NaN is an error
    (a broken model must not be served as silence or noise)."""
    audio = waveform.float().cpu().numpy()
    if not np.isfinite(audio).all():
        raise GenerationError("the model produced non-finite audio (NaN or infinity)")
    return np.clip(audio, -1.0, 1.0)


class LRUCache:
    """Thread-safe least-recently-used cache bounded by the summed size of its entries (1 each unless `put` says
    otherwise). One class for the text encoder's outputs (bounded in entries) and the adapter store (bounded in
    bytes), so both count hits, misses and evictions the same way.

    An entry larger than the whole capacity is not kept (its users hold it while they need it)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.hits = self.misses = self.evictions = 0
        self._lock = RLock()

    @property
    def used(self) -> int:
        """The summed size of the entries (counted, not tracked: an entry dropped by any means is never counted)."""
        with self._lock:
            return sum(size for _, size in self._items.values())

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return hit[0]

    def put(self, key: Hashable, value: Any, size: int = 1) -> None:
        with self._lock:
            self._items.pop(key, None)
            if size > self.capacity:
                return
            self._items[key] = (value, size)
            used = self.used
            while used > self.capacity:
                _, (_, freed) = self._items.popitem(last=False)
                used -= freed
                self.evictions += 1

    def drop(self, predicate: Callable[[Hashable], bool]) -> None:
        """Forget every entry whose key `predicate` accepts (e.g. made from a file that changed)."""
        with self._lock:
            for key in [k for k in self._items if predicate(k)]:
                del self._items[key]

    def __len__(self) -> int:
        return len(self._items)


class TextEmbeddingCache(LRUCache):
    """Text-encoder outputs keyed by the exact text, at most `capacity` of them: a repeated prompt skips the
    encoder."""

    def put(self, key: Hashable, value: Any, size: int = 1) -> None:
        super().put(key, value, 1)


class AudioModel(ABC, Generic[S]):
    """A loaded model as the engine and the request path see it."""

    name: str
    family: str
    sample_rate: int
    channels: int
    device: str
    dtype: str
    limits: ModelLimits
    capabilities: Capabilities
    # True when one `step(states)` call may advance states at different steps (one timestep per row in the
    # forward pass): the engine then lets queued requests join a running batch (continuous batching).
    mixed_steps: bool = False
    # The per-request adapters this model serves (GET /loras, request checks), or None: the family has no adapter
    # targets, or no adapter directory is configured.
    adapters: Adapters | None = None

    @abstractmethod
    def batch_key(self, params: GenerationParams) -> Hashable:
        """Requests with equal keys can share a forward pass."""

    @abstractmethod
    def upload_samples(self, duration: float) -> int:
        """Samples (at the model's rate) of an uploaded source that a clip of `duration` can use; the rest
        is never decoded or kept."""

    @abstractmethod
    def start(self, params: GenerationParams) -> S:
        """Encode text and audio, draw the initial noise."""

    @abstractmethod
    def step(self, states: list[S]) -> None:
        """Advance every state by one denoising step in one batched forward pass (all at the same step unless
        the family declares `mixed_steps`)."""

    @abstractmethod
    def finish(self, state: S) -> np.ndarray:
        """Decode to float32 audio of shape (channels, samples), clipped to [-1, 1]."""

    def describe(self) -> dict[str, Any]:
        """Family-specific facts for `GET /models` (window mode, structure, ...)."""
        return {}

    def release(self, state: S) -> None:
        """Optional hook: free a state's buffers early (the engine calls it once a request has left its batch,
        finished, failed or cancelled). The default keeps nothing beyond the state, so there is nothing to do."""
