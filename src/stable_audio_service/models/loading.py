"""Find the weights, pick device and dtype, check memory, then load through the family's class.

Every failure here raises `ModelLoadError` with a message meant for a person: where we
looked, what was missing, what to do.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DEFAULT_HUB_MODEL, DEFAULT_LOCAL_MODEL, Settings

log = logging.getLogger("stable_audio_service")
# diffusers/accelerate build models under a process-wide "empty weights" context: two loads at once in
# one process corrupt each other ("Cannot copy out of meta tensor"), so loads take turns.
_LOAD_LOCK = threading.Lock()

DTYPE_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}
GIB = 1024**3


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message says why and what to do."""


def pick_device(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():  # ROCm builds answer here too
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, requested: str = "auto") -> torch.dtype:
    if requested != "auto":
        return getattr(torch, requested)
    return torch.float16 if device in ("cuda", "mps") else torch.float32


def resolve_source(source: str) -> Path:
    """A local directory as is; a hub id through the HF cache, downloading only if it is missing."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"{path} exists but holds no model_index.json: expected a diffusers-layout model directory "
                f"(model_index.json plus transformer/, vae/, text_encoder/, tokenizer/, projection_model/, scheduler/)."
            )
        return path
    if source.startswith(("/", ".", "~")) or source.count("/") != 1:
        raise ModelLoadError(f"model directory {source} does not exist (and it is not a hub repo id like owner/name).")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(source))
    except Exception as exc:  # offline, gated, unknown repo: all end the same way for the operator
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"no weights for {source!r}: not in the Hugging Face cache and the hub could not be reached "
            f"({type(exc).__name__}: {reason}).\n"
            f"Looked at: {DEFAULT_LOCAL_MODEL} (studio path), the HF cache, then huggingface.co.\n"
            f"To get them: accept the licence at https://huggingface.co/{source}, then "
            f"`HF_TOKEN=... huggingface-cli download {source} --local-dir {DEFAULT_LOCAL_MODEL}`, "
            f"or point STABLE_AUDIO_MODEL / --model at a diffusers-layout directory. "
            f"To try the service without weights: `stable-audio-service make-tiny /tmp/tiny` and --model /tmp/tiny."
        ) from None


# model_index.json's pipeline class -> the family that serves it (the audio-to-audio and inpaint
# pipelines of SA3 share StableAudio3Pipeline's components, so their directories load the same way).
FAMILIES = {
    "StableAudioPipeline": "open-1.0",
    "StableAudio3Pipeline": "sa3",
    "StableAudio3AudioToAudioPipeline": "sa3",
    "StableAudio3InpaintPipeline": "sa3",
}


def read_family(path: Path) -> str:
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}/model_index.json cannot be read: {type(exc).__name__}: {exc}") from None
    cls = index.get("_class_name", "") if isinstance(index, dict) else ""
    if cls in FAMILIES:
        return FAMILIES[cls]
    raise ModelLoadError(
        f"{path}/model_index.json names {cls!r}; this service serves "
        f"{', '.join(sorted(set(FAMILIES)))} models (Stable Audio Open 1.0 and Stable Audio 3)."
    )


def count_parameters(path: Path) -> int:
    """Parameters from the safetensors headers alone: no weights are read."""
    total = 0
    for file in path.glob("*/*.safetensors"):
        with open(file, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for key, info in header.items():
            if key != "__metadata__":
                total += math.prod(info["shape"])
    return total


@dataclass
class MemoryEstimate:
    needed: int
    available: int
    weights: int
    working: int
    where: str

    @property
    def ok(self) -> bool:
        return self.needed <= self.available


def available_memory(device: str) -> tuple[int, str]:
    """What the whole device has free, not just this process (other services share the box)."""
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info()
        return int(free), "GPU free (device-wide, torch.cuda.mem_get_info)"
    import psutil

    if device == "mps":
        return int(psutil.virtual_memory().available), "unified memory available"
    return int(psutil.virtual_memory().available), "RAM available"


def estimate_memory(path: Path, device: str, dtype: torch.dtype, max_seconds: float) -> MemoryEstimate:
    """Weights at the serving dtype plus working memory for the longest allowed clip.

    The working term is dominated by the Oobleck decoder's last stage (audio samples x
    decoder channels, a few live tensors); the factor 6 matches the measured fp32 peak of
    the real model (11.6 GiB RSS with 4.9 GiB of weights, full-window decode).
    """
    size = DTYPE_BYTES.get(dtype, 4)
    weights = count_parameters(path) * size
    vae_cfg = json.loads((path / "vae" / "config.json").read_text())
    if vae_cfg.get("_class_name") == "AutoencoderSAME":
        # SAME decodes in fixed-size chunks (sa3.band_decode), so working memory does not grow with
        # the square of the clip; the DiT's activations grow linearly. 0.5 GiB matches the measured
        # fp32 peak of SA3 small (3.9 GiB RSS at 10 s, 4.3 GiB at 30 s, weights 3.4 GiB).
        hop = vae_cfg.get("patch_size", 256) * math.prod(vae_cfg.get("encoder_strides", [16]))
        latents = math.ceil(max_seconds * vae_cfg.get("sampling_rate", 44100) / hop)
        working = GIB // 2 + latents * 64 * 1024 * size
        available, where = available_memory(device)
        return MemoryEstimate(weights + working, available, weights, working, where)
    hop = math.prod(vae_cfg.get("downsampling_ratios", [2, 4, 4, 8, 8]))
    sr = vae_cfg.get("sampling_rate", 44100)
    samples = (math.ceil(max_seconds * sr / hop) + 16) * hop
    working = 6 * samples * vae_cfg.get("decoder_channels", 128) * size
    available, where = available_memory(device)
    return MemoryEstimate(weights + working, available, weights, working, where)


@dataclass
class LoadedInfo:
    source: str
    path: Path
    family: str
    memory: MemoryEstimate | None
    seconds: float


def load_model(settings: Settings):
    """Resolve, check and load; returns (model, LoadedInfo)."""
    import time

    from . import registry
    from .open1 import OPEN1_LIMITS

    started = time.perf_counter()
    source = settings.resolved_model()
    path = resolve_source(source)
    family = read_family(path)
    device = pick_device(settings.device)
    dtype = pick_dtype(device, settings.dtype)
    name = source if source != str(DEFAULT_LOCAL_MODEL) else DEFAULT_HUB_MODEL
    if family == "sa3":
        limits = registry.sa3_limits(registry.known_for(name, family), settings.max_duration)
    else:
        limits = OPEN1_LIMITS
    memory = None
    if not settings.skip_memory_check:
        memory = estimate_memory(path, device, dtype, limits.duration.maximum)
        log.info(
            "memory: need %.2f GiB (weights %.2f + working %.2f), %s %.2f GiB",
            memory.needed / GIB,
            memory.weights / GIB,
            memory.working / GIB,
            memory.where,
            memory.available / GIB,
        )
        if not memory.ok:
            raise ModelLoadError(
                f"not enough memory on {device} for {source}: needs about {memory.needed / GIB:.2f} GiB "
                f"(weights {memory.weights / GIB:.2f} + working {memory.working / GIB:.2f}), "
                f"{memory.where}: {memory.available / GIB:.2f} GiB. "
                f"Free memory, use a smaller dtype, or set STABLE_AUDIO_SKIP_MEMORY_CHECK=1 to try anyway."
            )
    try:
        with _LOAD_LOCK:
            model = _construct(family, path, name, device, dtype, limits, settings)
    except Exception as exc:
        raise ModelLoadError(f"loading {path} failed: {type(exc).__name__}: {exc}") from exc
    return model, LoadedInfo(source, path, family, memory, time.perf_counter() - started)


def _construct(family: str, path: Path, name: str, device: str, dtype: torch.dtype, limits, settings: Settings):
    if family == "sa3":
        from .sa3 import StableAudio3Model

        return StableAudio3Model.from_pretrained(
            str(path),
            name=name,
            device=device,
            dtype=dtype,
            limits=limits,
            text_cache_size=settings.text_cache_size,
        )
    from .open1 import StableAudioOpenModel

    return StableAudioOpenModel.from_pretrained(
        str(path),
        name=name,
        device=device,
        dtype=dtype,
        window=settings.window,
        text_cache_size=settings.text_cache_size,
    )
