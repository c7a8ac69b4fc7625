"""Speed levers for Stable Audio 3 on the CPU (issue 12), kept in one place.

Default on (same numbers, up to float round-off):

* `decode_kept`: the official windowed decode computes every window over its whole 128 latents, then the family
  zeroes the padded frames and cuts the clip (a 10 s clip has a 16 s window: 6 s of padding). SAME-S attention
  never reaches further than two chunks (4 latents) and SAME-L's band further than `depth` latents, so each
  window is decoded only over the latents whose audio survives (what the later windows do not overwrite, up to
  the clip's end) plus a margin wider than the receptive field. The decode-time draws are taken from the request's
  generator at full window size, in the official order, and cut to the same region, so every kept sample sees
  the noise it sees in the official decode. Windows past the clip's end are skipped (their draws come after every
  draw that matters). 10 s: 120 of 256 latents decoded.
* `configure_threads`: intra-op threads = the CPU cores (or `threads`), one inter-op thread: the engine's single
  worker is the only thread that runs torch work, so nothing else competes for the cores.
* the family's per-request caches (`SA3State.cross_kv`, `SA3State.local_embeds`; family.py/dit.py): the
  cross-attention keys/values and the local-conditioning embeddings are the same at every step of a request.

Opt-in (they change numbers beyond round-off; judge on real weights before turning them on):

* `quantize_int8` (`STABLE_AUDIO_QUANTIZE=int8`, or `int8-dit` for the DiT alone): dynamic int8 quantisation
  of the `nn.Linear` layers of the DiT, the SAME autoencoder and the T5Gemma encoder (weights int8 per output
  channel, activations quantised per call; fbgemm kernels, about 2x the fp32 matmul rate on an AVX2 CPU
  without VNNI). torchao's `Int8DynamicActivationInt8WeightConfig` was measured first: eager it runs
  `torch._int_mm`, whose CPU kernel is ~100x slower than fp32 here, and compiled it is no faster than fp32;
  `torch.ao.quantization.quantize_dynamic` is deprecated in this torch but is the CPU int8 path that pays. The
  DiT is left in fp32 when LoRA adapters are enabled (their hooks sit on the fp32 `nn.Linear` modules).
* `compile_model` (`STABLE_AUDIO_COMPILE=1`): `torch.compile` (inductor) of every DiT block and every SAME
  transformer layer (same code for all layers, so one compiled graph each, dynamic in the sequence length), warmed
  up at start-up (`warm_up`) for the latent lengths of `warmup_durations` so the first requests do not pay the
  compile.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from . import autoencoder as ae

log = logging.getLogger("stable_audio_service.sa3.accel")


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


# -------------------------------------------------------------------------------------------- decode


def _decoder_block(model: ae.SameAutoencoder) -> ae._ResamplingBlock | None:
    """The decoder's one transformer resampling block, or None when the structure is not the one `decode_kept`
    knows (exactly one TRB with transformer layers: SAME-S and SAME-L)."""
    blocks = [m for m in model.decoder.layers if isinstance(m, ae._ResamplingBlock)]
    if len(blocks) != 1 or blocks[0].depth == 0:
        return None
    return blocks[0]


def receptive_margin(block: ae._ResamplingBlock) -> tuple[int, int]:
    """(margin, alignment) in latents. Chunked attention: a chunk is `chunk_size // stride` latents, the shifted
    layers straddle two aligned chunks, the kernel-3 output mapping reaches one patch further: two chunks cover it.
    Band attention: each layer reaches `max(left, right)` latents further."""
    if block.window is None:
        chunk = max(1, block.chunk_size // block.stride)
        return 2 * chunk, chunk
    per_layer = math.ceil(max(block.window) / block.group)
    return block.depth * per_layer + 1, 1


def _regions(length: int, chunked: bool) -> list[tuple[int, int, int]]:
    """(window start, first latent it provides, end) of every decode window, as the official decode writes
    them (later windows overwrite earlier ones from their left trim on)."""
    if not chunked or length < ae.WINDOW_LATENTS:
        return [(0, 0, length)]
    starts = ae._window_starts(length, ae.WINDOW_LATENTS, ae.WINDOW_LATENTS - ae.WINDOW_OVERLAP)
    trim = ae.WINDOW_OVERLAP // 2
    lefts = [s + (0 if i == 0 else trim) for i, s in enumerate(starts)]
    return [(s, lefts[i], lefts[i + 1] if i + 1 < len(starts) else length) for i, s in enumerate(starts)]


@torch.no_grad()
def decode_kept(
    model: ae.SameAutoencoder, latents: torch.Tensor, generator: torch.Generator | None, keep: int
) -> torch.Tensor:
    """`model.decode(latents, generator)[..., : keep * hop]`, computing only what those samples need."""
    length = latents.shape[-1]
    keep = max(1, min(int(keep), length))
    block = _decoder_block(model)
    if block is None:
        return model.decode(latents, generator)[..., : keep * model.hop]
    latents = latents.to(model._dtype)
    margin, align = receptive_margin(block)
    batch = latents.shape[0]
    out = latents.new_zeros(batch, model.io_channels, keep * model.hop)
    noisy_bottleneck = model.bottleneck.noise_regularize and generator is not None
    noisy_block = block.mask_noise > 0 and generator is not None
    width = block.new_tokens.shape[-1]
    pad_to = block.chunk_size // block.stride if block.window is None else 1
    for start, first, end in _regions(length, model.chunked):
        if first >= keep:
            break  # this window's audio and every later one's lies past the clip
        window = min(ae.WINDOW_LATENTS, length) if model.chunked and length >= ae.WINDOW_LATENTS else length
        lo, hi = first - start, min(end, keep) - start  # the kept part, in window coordinates
        c0 = max(0, (lo - margin) // align * align)
        c1 = min(window, -(-(hi + margin) // align) * align)
        noises: list[torch.Tensor] = []
        if noisy_bottleneck:
            full = torch.randn((batch, model.latent_dim, window), generator=generator, device=generator.device)
            noises.append(full[..., c0:c1])
        if noisy_block:
            padded = -(-window // pad_to) * pad_to  # the block pads the latents to whole chunks, and draws for them
            n1 = padded if c1 == window else c1
            full = torch.randn((batch * padded, block.out_seg, width), generator=generator, device=generator.device)
            noises.append(full.view(batch, padded, block.out_seg, width)[:, c0:n1].reshape(-1, block.out_seg, width))
        source = ae._NoiseSource(replay=noises) if noises else ae._NoiseSource()
        audio = model._decode_once(latents[..., start + c0 : start + c1], source)
        source.finish()
        hop = model.hop
        out[..., (start + lo) * hop : (start + hi) * hop] = audio[..., (lo - c0) * hop : (hi - c0) * hop]
    return out


# -------------------------------------------------------------------------------------------- int8


def _quantize_linears(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantize_dynamic's deprecation notice
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # per output channel: the same kernels (and speed) as per tensor, a finer weight scale
        return quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def int8_available() -> bool:
    """fbgemm (x86) or qnnpack (ARM) dynamic int8 kernels are in this torch build."""
    return bool(set(torch.backends.quantized.supported_engines) & {"fbgemm", "x86", "qnnpack"})


def quantize_int8(model: Any, parts: Iterable[str] = ("dit", "autoencoder", "text")) -> list[str]:
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
            if getattr(model, "loras", None) is not None:
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


def compile_model(model: Any) -> list[str]:
    """`torch.compile` each DiT block and each SAME transformer layer in place (lazy: the first call of a
    shape compiles, see `warm_up`). Compiled per layer rather than whole so dynamo's graph is one layer, shared
    by every layer of the same code, and the per-request Python around it (LoRA row segments, windows) stays
    eager."""
    if getattr(model, "loras", None) is not None:
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


# The warm-up compiles two latent lengths: the first call of a compiled layer specialises on its shape, the second
# (another length) makes dynamo compile the dynamic-shape graph every later length reuses.
DEFAULT_WARMUP_S = 10.0


def warm_up(model: Any, durations: Iterable[float], progress: Any = None) -> float:
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

# `STABLE_AUDIO_QUANTIZE` -> the parts quantised. The DiT's 8 steps are most of a request's time; the SAME decode
# moves furthest from fp32 under int8 (see bench/results/sa3_lever_deviation.log), hence the DiT-only choice.
QUANTIZE_PARTS: dict[str, tuple[str, ...]] = {"int8": ("dit", "autoencoder", "text"), "int8-dit": ("dit",)}


def apply(model: Any, *, quantize: str = "none", compile: bool = False, threads: int | None = None) -> dict:
    """Turn on the configured levers (called once at load); returns what is on, for logs and `GET /models`."""
    on: dict[str, Any] = {"threads": configure_threads(threads), "decode": "kept latents only"}
    on["request_caches"] = (
        "cross-attention K/V, local embeddings" if getattr(model, "cache_request_tensors", False) else "off"
    )
    if quantize in QUANTIZE_PARTS:
        on["int8"] = quantize_int8(model, QUANTIZE_PARTS[quantize])
    elif quantize != "none":
        raise ValueError(f"unknown quantize setting {quantize!r}; one of none, {', '.join(QUANTIZE_PARTS)}")
    if compile:
        on["compile"] = compile_model(model)
    return on


def from_settings(model: Any, settings: Any) -> dict:
    """`apply` with the service's settings (`STABLE_AUDIO_THREADS`, `_QUANTIZE`, `_COMPILE`); with compile, the
    warm-up runs here, inside model loading, so `/ready` stays 503 until it is done (progress in the log)."""
    on = apply(
        model,
        quantize=str(getattr(settings, "quantize", "none")),
        compile=bool(getattr(settings, "compile", False)),
        threads=int(getattr(settings, "threads", 0) or 0) or None,
    )
    if on.get("compile"):
        longest = float(model.limits.duration.maximum)
        durations = [d for d in (1.0, DEFAULT_WARMUP_S) if d <= longest] or [longest]
        log.info("compile: warming up for %s s clips (the service is not ready until this ends)", durations)
        on["warmup_s"] = round(warm_up(model, durations), 1)
    model.speed_levers = on
    log.info("sa3 speed levers: %s", on)
    return on
