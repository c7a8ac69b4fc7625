"""Load-time options of Stable Audio 3 (`SA3Options`) and the speed settings they turn on, in one place.

A model is built with its options (`StableAudio3Model(..., options=SA3Options(...))`) and applies them once, in
its constructor (`apply`): int8 and compile replace the loaded modules, so they are part of loading, never a
switch flipped later. Every CPU second of a request goes to the DiT steps, the decode or the text encoder; these
settings are what brings a request on the CPU to a usable real-time factor.

Default on (same numbers, up to float round-off):

* `decode_kept`: the official windowed decode computes every window over its whole 128 latents, then the family
  zeroes the padded frames and cuts the clip (a 10 s clip has a 16 s window: 6 s of padding).
  `SameAutoencoder.decode(..., keep=n)` decodes each window only over the latents whose audio is returned plus
  the decoder's receptive margin, with the official draws cut to them (10 s: 120 of 256 latents decoded).
* `cache_request_tensors`: the cross-attention keys/values and the local-conditioning embeddings are the same at
  every step of a request, so each request computes them once (`SA3State.cross_kv`, `SA3State.local_embeds`).
* `threads` (the service passes `STABLE_AUDIO_THREADS`, 0 = the cores): intra-op threads = the cores, one
  inter-op thread: the engine's single worker is the only thread that runs torch work, so nothing else competes
  for the cores.

Opt-in (they change numbers beyond round-off; judge on real weights before turning them on):

* `quantize="int8"` (`STABLE_AUDIO_QUANTIZE=int8`, or `int8-dit` for the DiT alone): dynamic int8 quantisation
  of the `nn.Linear` layers of the DiT, the SAME autoencoder and the T5Gemma encoder (weights int8 per output
  channel, activations quantised per call; fbgemm kernels, about 2x the fp32 matmul rate on an AVX2 CPU
  without VNNI). torchao's `Int8DynamicActivationInt8WeightConfig` was measured first: eager it runs
  `torch._int_mm`, whose CPU kernel is ~100x slower than fp32 here, and compiled it is no faster than fp32;
  `torch.ao.quantization.quantize_dynamic` is deprecated in this torch but is the CPU int8 path that pays. The
  DiT is left in fp32 when LoRA adapters are enabled (their hooks sit on the fp32 `nn.Linear` modules).
* `compile=True` (`STABLE_AUDIO_COMPILE=1`): `torch.compile` (inductor) of every DiT block and every SAME
  transformer layer (same code for all layers, so one compiled graph each, dynamic in the sequence length), warmed
  up while the model loads (`warm_up`, for `warmup_durations`) so the first requests do not pay the compile.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import autoencoder as ae

if TYPE_CHECKING:
    from .family import StableAudio3Model

log = logging.getLogger("stable_audio_service.sa3.accel")

# `quantize` -> the parts quantised. The DiT's 8 steps are most of a request's time; the SAME decode moves
# furthest from fp32 under int8 (see bench/results/sa3_lever_deviation.log), hence the DiT-only choice.
QUANTIZE_PARTS: dict[str, tuple[str, ...]] = {"int8": ("dit", "autoencoder", "text"), "int8-dit": ("dit",)}
# The warm-up compiles two latent lengths: the first call of a compiled layer specialises on its shape, the second
# (another length) makes dynamo compile the dynamic-shape graph every later length reuses.
DEFAULT_WARMUP_S = 10.0


@dataclass(frozen=True)
class SA3Options:
    """How a `StableAudio3Model` is served, fixed when it is built. The defaults are what the service runs by
    default, except `threads`: None leaves torch's thread count as it is (a model built in a test or a benchmark
    keeps the caller's), where the service passes its `threads` setting (0 = one per core)."""

    decode_kept: bool = True  # decode only the latents whose audio is returned (`SameAutoencoder.decode(keep=)`)
    cache_request_tensors: bool = True  # a request's cross-attention K/V and local embeddings computed once
    # Return the source itself outside the regenerated inpainting regions (the model's output there is only a
    # reconstruction of it); False returns exactly what Stability's generate() returns (oracle comparisons).
    keep_inpaint_source: bool = True
    threads: int | None = None  # intra-op threads: None leaves them, 0 one per core, n n
    quantize: str = "none"  # "none", or a key of QUANTIZE_PARTS
    compile: bool = False  # torch.compile the DiT blocks and SAME layers
    # With compile: clip lengths (s) warmed up while loading; None: 1 s and DEFAULT_WARMUP_S, up to the longest.
    warmup_durations: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.quantize != "none" and self.quantize not in QUANTIZE_PARTS:
            raise ValueError(f"unknown quantize setting {self.quantize!r}; one of none, {', '.join(QUANTIZE_PARTS)}")
        if self.threads is not None and self.threads < 0:
            raise ValueError(f"threads must be 0 (one per core) or more, got {self.threads}")

    @classmethod
    def from_settings(cls, settings: Any) -> SA3Options:
        """The service's options: `STABLE_AUDIO_THREADS`, `_QUANTIZE` and `_COMPILE`, the rest at their defaults."""
        return cls(
            threads=int(getattr(settings, "threads", 0) or 0),
            quantize=str(getattr(settings, "quantize", "none")),
            compile=bool(getattr(settings, "compile", False)),
        )


# -------------------------------------------------------------------------------------------- threads


def configure_threads(threads: int | None = None) -> int:
    """Intra-op threads = `threads` or the cores this process may use; one inter-op thread. Returns the count."""
    if threads is None or threads <= 0:
        try:
            threads = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            threads = os.cpu_count() or 1
    torch.set_num_threads(int(threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already ran: harmless
        pass
    return int(threads)


# -------------------------------------------------------------------------------------------- int8


def _quantize_linears(module: nn.Module) -> nn.Module:
    """`module` with its `nn.Linear` layers replaced by dynamic int8 ones, in place."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantize_dynamic's deprecation notice
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # per output channel: the same kernels (and speed) as per tensor, a finer weight scale
        return quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def int8_available() -> bool:
    """fbgemm (x86) or qnnpack (ARM) dynamic int8 kernels are in this torch build."""
    return bool(set(torch.backends.quantized.supported_engines) & {"fbgemm", "x86", "qnnpack"})


def quantize_int8(model: StableAudio3Model, parts: Iterable[str] = ("dit", "autoencoder", "text")) -> list[str]:
    """Quantise the Linear layers of `model`'s parts in place (CPU only); returns the parts quantised."""
    if str(model.device) != "cpu":
        log.warning("STABLE_AUDIO_QUANTIZE=int8 is a CPU lever; %s keeps its weights", model.device)
        return []
    if not int8_available():
        log.warning("this torch has no dynamic int8 kernels; running fp32")
        return []
    done = []
    for part in parts:
        if part == "dit":
            if model.adapters is not None:
                log.warning("int8: the DiT stays fp32 because LoRA adapters are enabled")
                continue
            _quantize_linears(model.dit)
        elif part == "autoencoder":
            _quantize_linears(model.autoencoder)
        elif part == "text":
            _quantize_linears(model.text.encoder)
        else:
            raise ValueError(f"unknown part {part!r}")
        done.append(part)
    return done


# -------------------------------------------------------------------------------------------- compile


def compile_model(model: StableAudio3Model) -> list[str]:
    """`torch.compile` each DiT block and each SAME transformer layer in place (lazy: the first call of a
    shape compiles, see `warm_up`). Compiled per layer rather than whole so dynamo's graph is one layer, shared
    by every layer of the same code, and the per-request Python around it (LoRA row segments, windows) stays
    eager."""
    if model.adapters is not None:
        log.warning("compile: the DiT stays eager because LoRA adapters are enabled (per-row hooks)")
        parts = []
    else:
        for block in model.dit.transformer.layers:
            block.compile(dynamic=True)
        parts = ["dit"]
    for m in model.autoencoder.modules():
        if isinstance(m, ae._TransformerLayer):
            m.compile(dynamic=True)
    parts.append("autoencoder")
    return parts


def warm_up(model: StableAudio3Model, durations: Iterable[float], progress: Any = None) -> float:
    """One 1-step request (text, a DiT step, the decode) per duration, so compiled graphs and first-call costs are
    paid before the service says it is ready. Returns the seconds it took."""
    from ..base import GenerationParams

    started = time.perf_counter()
    durations = list(durations)
    for i, duration in enumerate(durations, start=1):
        t0 = time.perf_counter()
        params = GenerationParams(
            prompt="warm-up", duration=duration, guidance_scale=1.0, num_inference_steps=1, seed=0
        )
        state = model.start(params)
        model.step([state])
        model.finish(state)
        message = f"warm-up {i}/{len(durations)}: {duration:g} s clip in {time.perf_counter() - t0:.1f} s"
        log.info(message)
        if progress is not None:
            progress(message)
    return time.perf_counter() - started


# -------------------------------------------------------------------------------------------- all together


def apply(model: StableAudio3Model, options: SA3Options) -> dict[str, Any]:
    """Turn on `options`' speed settings for `model` (its constructor calls this once, after LoRA adapters are
    hooked in); with compile, the warm-up runs here, inside model loading, so `/ready` stays 503 until it is
    done. Returns what is on, for the log."""
    threads = torch.get_num_threads() if options.threads is None else configure_threads(options.threads)
    on: dict[str, Any] = {
        "threads": threads,
        "decode": "kept latents only" if options.decode_kept else "whole windows",
        "request_caches": "cross-attention K/V, local embeddings" if options.cache_request_tensors else "off",
    }
    if options.quantize != "none":
        on["int8"] = quantize_int8(model, QUANTIZE_PARTS[options.quantize])
    if options.compile:
        on["compile"] = compile_model(model)
        durations = options.warmup_durations
        if durations is None:
            longest = float(model.limits.duration.maximum)
            durations = tuple(d for d in (1.0, DEFAULT_WARMUP_S) if d <= longest) or (longest,)
        if durations:
            log.info("compile: warming up for %s s clips (the service is not ready until this ends)", list(durations))
            on["warmup_s"] = round(warm_up(model, durations), 1)
    log.info("sa3 speed settings: %s", on)
    return on
