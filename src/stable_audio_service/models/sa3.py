"""Stable Audio 3 (`diffusers.StableAudio3Pipeline`) as a step-wise, batchable model.

The maths follows the pipelines' `__call__` step by step:

* text-to-audio: `StableAudio3Pipeline` (T5Gemma prompt, duration embedding as AdaLN input
  and as an extra cross-attention token, log-SNR sigma schedule, FlowMatchEuler with
  stochastic "ping-pong" sampling, optional classifier-free guidance);
* audio-to-audio: `StableAudio3AudioToAudioPipeline` (the reference's SAME latents mixed with
  noise at `init_noise_level`, schedule compressed to start there);
* inpainting / continuation: `StableAudio3InpaintPipeline` (mask + masked reference latents as
  the DiT's `local_add_cond`); the service then puts the kept regions of the source back
  sample for sample, so they return unchanged.

Every request keeps its own scheduler and generator. The DiT takes one timestep per row, so
requests with the same step count and latent length share a forward pass even when their
schedules differ (audio-to-audio) or only some use guidance; inpainting requests batch only
with each other (they add `local_add_cond`).

Decoding: diffusers' `AutoencoderSAME` runs one dense attention over all tokens masked to a
narrow band, so time and memory grow with the square of the clip. `band_decode` / `band_encode`
cut the sequence into chunks that carry the band's halo, which makes both linear and equal to
the full pass within float tolerance (checked in tests/test_sa3.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .base import (
    AudioModel,
    Bound,
    Capabilities,
    GenerationError,
    GenerationParams,
    GenerationState,
    ModelLimits,
    TextEmbeddingCache,
    check_batch,
)


@dataclass
class _State(GenerationState):
    extra: dict[str, Any] = field(default_factory=dict)


LOGSNR_MIN = -6.2
LOGSNR_MAX = 2.0
# Latents decoded per chunk (about 6 s of audio); the halo comes on top of this. Decode time of SAME-S on
# CPU fits a*L + b*L^2 (3 s at 10 s, 15 s at 30 s, full pass); 64 (+2x7 halo) minimises the cost per
# latent, and clips up to 2 * (chunk + halo) latents (~13 s) decode in one pass, where that is cheaper.
DECODE_CHUNK_LATENTS = 64
# Seconds faded from source to generated audio at the inner edge of an inpainted region.
INPAINT_CROSSFADE_S = 0.01


def same_halo(vae) -> int:
    """Latents each side whose audio can influence a chunk: every band-attention layer reaches
    `sliding_window` segments further; deeper levels work on finer frames, so counting each level
    in whole latents over-estimates, which is safe."""
    cfg = vae.config
    depths = list(cfg.encoder_transformer_depths)
    return int(sum(depths) * cfg.sliding_window) + 1


@torch.no_grad()
def band_decode(vae, latents: torch.Tensor, chunk: int = DECODE_CHUNK_LATENTS, halo: int | None = None) -> torch.Tensor:
    """`vae.decode(latents).sample` in chunks of `chunk` latents, each decoded with `halo` latents of
    context either side; linear in the clip length."""
    halo = same_halo(vae) if halo is None else halo
    length = latents.shape[-1]
    if length <= 2 * (chunk + halo):  # short clips: one pass is as cheap as chunks plus their halos
        return vae.decode(latents).sample
    hop = vae.downsampling_ratio
    pieces = []
    for start in range(0, length, chunk):
        end = min(length, start + chunk)
        lo, hi = max(0, start - halo), min(length, end + halo)
        audio = vae.decode(latents[:, :, lo:hi]).sample
        pieces.append(audio[:, :, (start - lo) * hop : (end - lo) * hop])
    return torch.cat(pieces, dim=-1)


@torch.no_grad()
def band_encode(vae, audio: torch.Tensor, chunk: int = DECODE_CHUNK_LATENTS, halo: int | None = None) -> torch.Tensor:
    """`vae.encode(audio).latents` in chunks of `chunk` output latents with `halo` latents of audio
    context either side."""
    halo = same_halo(vae) if halo is None else halo
    hop = vae.downsampling_ratio
    samples = audio.shape[-1]
    length = math.ceil(samples / hop)
    if length <= 2 * (chunk + halo):
        return vae.encode(audio).latents
    pieces = []
    for start in range(0, length, chunk):
        end = min(length, start + chunk)
        lo, hi = max(0, start - halo), min(length, end + halo)
        latents = vae.encode(audio[:, :, lo * hop : hi * hop]).latents
        pieces.append(latents[:, :, start - lo : end - lo])
    return torch.cat(pieces, dim=-1)


def logsnr_sigmas(steps: int, sigma_max: float = 1.0) -> list[float]:
    from diffusers.pipelines.stable_audio_3.pipeline_stable_audio_3 import logsnr_sigma_schedule

    return logsnr_sigma_schedule(steps, LOGSNR_MIN, LOGSNR_MAX, sigma_max=sigma_max)


def region_frames(regions, sample_rate: int, hop: int, length: int) -> list[tuple[int, int]]:
    """Latent frames of each (start_s, end_s), rounded as `StableAudio3InpaintPipeline` does."""
    out = []
    for start_s, end_s in regions:
        start_f = int(start_s * sample_rate / hop)
        end_f = min(int(end_s * sample_rate / hop), length)
        out.append((start_f, end_f))
    return out


class StableAudio3Model(AudioModel):
    family = "sa3"
    capabilities = Capabilities(audio_to_audio=True, init_noise_level=Bound(0.6, 0.0, 1.0), inpainting=True)

    def __init__(
        self,
        pipe,
        name: str,
        device: str,
        dtype: torch.dtype,
        limits: ModelLimits,
        text_cache_size: int = 256,
        decode_chunk: int = DECODE_CHUNK_LATENTS,
    ) -> None:
        self.pipe = pipe
        self.name = name
        self.device = device
        self.torch_dtype = dtype
        self.dtype = str(dtype).removeprefix("torch.")
        self.sample_rate = int(pipe.vae.config.sampling_rate)
        self.channels = int(pipe.vae.config.audio_channels)
        self.hop = int(pipe.vae.downsampling_ratio)
        self.latent_dim = int(pipe.vae.config.latent_dim)
        self.limits = limits
        self.max_seconds = limits.duration.maximum
        self.decode_chunk = decode_chunk
        self.halo = same_halo(pipe.vae)
        self.text_cache = TextEmbeddingCache(text_cache_size)

    # -- loading -------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, path: str, name: str, device: str, dtype: torch.dtype, limits: ModelLimits, **kw
    ) -> StableAudio3Model:
        from diffusers import StableAudio3Pipeline

        pipe = StableAudio3Pipeline.from_pretrained(path, dtype=dtype)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        for module in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.duration_embedder):
            module.eval()
        return cls(pipe, name=name, device=device, dtype=dtype, limits=limits, **kw)

    # -- helpers -------------------------------------------------------------------
    def latent_length(self, duration: float) -> int:
        return int(math.ceil(duration * self.sample_rate / self.hop))

    def upload_samples(self, duration: float) -> int:
        return (self.latent_length(duration) + self.halo) * self.hop

    def batch_key(self, params: GenerationParams) -> tuple:
        mode = "inpaint" if params.inpaint_audio is not None else "gen"
        return (self.family, params.num_inference_steps, self.latent_length(params.duration), mode)

    @torch.no_grad()
    def encode_text(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """T5Gemma hidden states and mask: the per-row result of the pipeline's `encode_prompt`."""
        cached = self.text_cache.get(text)
        if cached is not None:
            return cached
        pipe = self.pipe
        max_length = min(getattr(pipe.tokenizer, "model_max_length", 256), 256)
        tokens = pipe.tokenizer(
            [text], padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        ids = tokens.input_ids.to(self.device)
        mask = tokens.attention_mask.to(self.device)
        hidden = pipe.text_encoder(ids, attention_mask=mask)[0]
        self.text_cache.put(text, (hidden, mask))
        return hidden, mask

    def _context(self, text: str, duration_embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = self.encode_text(text)
        return self.pipe.prepare_cross_attention(hidden, mask, duration_embed)

    def _waveform(self, audio: np.ndarray, samples: int | None = None) -> torch.Tensor:
        wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        if samples is not None:
            wave = wave[:, :, :samples]
        return wave.to(device=self.device, dtype=next(self.pipe.vae.parameters()).dtype)

    def _encode_reference(self, audio: np.ndarray, length: int) -> torch.Tensor:
        """SAME latents of the reference, padded with zeros or cropped to `length` (the pipelines'
        `_encode_reference_audio`). Audio past the clip is cut before encoding except for the
        band's halo, so the kept latents equal those of encoding the whole upload."""
        wave = self._waveform(audio, (length + self.halo) * self.hop)
        latents = band_encode(self.pipe.vae, wave, self.decode_chunk, self.halo)
        if latents.shape[-1] < length:
            pad = latents.new_zeros(*latents.shape[:2], length - latents.shape[-1])
            latents = torch.cat([latents, pad], dim=-1)
        return latents[:, :, :length]

    # -- the step-wise API -----------------------------------------------------------
    @torch.no_grad()
    def start(self, params: GenerationParams) -> GenerationState:
        from diffusers.utils.torch_utils import randn_tensor

        pipe = self.pipe
        if params.duration > self.max_seconds:
            raise GenerationError(f"duration {params.duration}s exceeds the model's {self.max_seconds:g}s")
        duration_embed = pipe.encode_duration(params.duration, torch.device(self.device), 1, 1)
        cond, cond_mask = self._context(params.prompt, duration_embed)
        uncond = uncond_mask = None
        if params.guidance_scale > 1.0:
            uncond, uncond_mask = self._context(params.negative_prompt or "", duration_embed)
        length = self.latent_length(params.duration)
        generator = torch.Generator("cpu").manual_seed(params.seed)
        sigma_max = 1.0
        local = None
        reference = None
        if params.inpaint_audio is not None:
            source = params.inpaint_audio
            mask = torch.ones(1, 1, length, device=self.device)
            regions = list(params.inpaint_regions or [])
            source_s = source.shape[-1] / self.sample_rate
            if source_s < params.duration:  # continuation: everything past the source is new
                regions.append((source_s, params.duration))
            for start_f, end_f in region_frames(regions, self.sample_rate, self.hop, length):
                mask[:, :, start_f:end_f] = 0.0
            ref = self._encode_reference(source, length)
            local = torch.cat([mask, ref * mask], dim=1).to(cond.dtype)
        elif params.init_audio is not None:
            sigma_max = float(params.init_noise_level if params.init_noise_level is not None else 1.0)
            reference = self._encode_reference(params.init_audio, length).to(cond.dtype)
        noise = randn_tensor(
            (1, self.latent_dim, length), generator=generator, device=torch.device(self.device), dtype=cond.dtype
        )
        latents = noise if reference is None else (1.0 - sigma_max) * reference + sigma_max * noise
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        scheduler.set_timesteps(sigmas=logsnr_sigmas(params.num_inference_steps, sigma_max), device=self.device)
        return _State(
            params=params,
            batch_key=self.batch_key(params),
            total_steps=len(scheduler.timesteps),
            extra={
                "latents": latents,
                "cond": cond,
                "cond_mask": cond_mask,
                "uncond": uncond,
                "uncond_mask": uncond_mask,
                "global": duration_embed,
                "local": local,
                "scheduler": scheduler,
                "generator": generator,
            },
        )

    @torch.no_grad()
    def step(self, states: list[GenerationState]) -> None:
        if not states:
            return
        check_batch(states)
        latents, ctx, masks, glob, local, times = [], [], [], [], [], []
        rows: list[tuple[int | None, int]] = []  # per state: (uncond row, cond row)
        for state in states:
            e = state.extra
            t = e["scheduler"].timesteps[state.step]
            u = None
            if e["uncond"] is not None:  # the pipeline's order: uncond first, then cond
                u = len(latents)
                latents.append(e["latents"])
                ctx.append(e["uncond"])
                masks.append(e["uncond_mask"])
                glob.append(e["global"])
                local.append(e["local"])
                times.append(t)
            rows.append((u, len(latents)))
            latents.append(e["latents"])
            ctx.append(e["cond"])
            masks.append(e["cond_mask"])
            glob.append(e["global"])
            local.append(e["local"])
            times.append(t)
        velocity = self.pipe.transformer(
            torch.cat(latents),
            torch.stack([t.reshape(()) for t in times]),
            encoder_hidden_states=torch.cat(ctx),
            global_hidden_states=torch.cat(glob),
            encoder_attention_mask=torch.cat(masks),
            local_add_cond=None if local[0] is None else torch.cat(local),
            return_dict=False,
        )[0]
        for state, (u, c) in zip(states, rows, strict=True):
            e = state.extra
            v = velocity[c : c + 1]
            if u is not None:
                v_uncond = velocity[u : u + 1]
                v = v_uncond + state.params.guidance_scale * (v - v_uncond)
            t = e["scheduler"].timesteps[state.step]
            e["latents"] = e["scheduler"].step(v, t, e["latents"], generator=e["generator"]).prev_sample
            state.step += 1

    @torch.no_grad()
    def finish(self, state: GenerationState) -> np.ndarray:
        params = state.params
        latents = state.extra["latents"]
        end = int(params.duration * self.sample_rate)
        audio = band_decode(self.pipe.vae, latents, self.decode_chunk, self.halo)[0, :, :end]
        state.extra.clear()
        audio = audio.clamp(-1.0, 1.0).float().cpu().numpy()
        if not np.isfinite(audio).all():
            raise GenerationError("the model produced non-finite audio (NaN or infinity)")
        if params.inpaint_audio is not None:
            audio = splice_kept(audio, params.inpaint_audio, params.inpaint_regions or [], self.sample_rate)
        return np.clip(audio, -1.0, 1.0)


def kept_mask(total: int, source_len: int, regions, sample_rate: int) -> np.ndarray:
    """True where the output sample comes from the source: inside the source and outside every region."""
    keep = np.zeros(total, dtype=bool)
    keep[: min(total, source_len)] = True
    for start_s, end_s in regions:
        lo = max(0, int(round(start_s * sample_rate)))
        hi = min(total, int(round(end_s * sample_rate)))
        keep[lo:hi] = False
    return keep


def splice_kept(generated: np.ndarray, source: np.ndarray, regions, sample_rate: int) -> np.ndarray:
    """Kept regions: the source, sample for sample. Regenerated regions: the model's audio, faded in
    from the source over `INPAINT_CROSSFADE_S` at each edge that borders kept audio."""
    total = generated.shape[-1]
    src = np.zeros_like(generated)
    n = min(total, source.shape[-1])
    src[:, :n] = source[:, :n]
    keep = kept_mask(total, source.shape[-1], regions, sample_rate)
    # weight of the source: 1 on kept samples, ramping to 0 within `fade` samples inside regions
    # (only where there is source audio to fade from; a continuation starts straight away)
    fade = max(1, int(INPAINT_CROSSFADE_S * sample_rate))
    pos = np.arange(total)
    left = np.maximum.accumulate(np.where(keep, pos, -1))
    right = np.minimum.accumulate(np.where(keep, pos, 2 * total)[::-1])[::-1]
    dist = np.minimum(np.where(left >= 0, pos - left, np.inf), np.where(right < 2 * total, right - pos, np.inf))
    ramp = np.clip(1.0 - dist / fade, 0.0, 1.0)
    weight = np.where(keep, 1.0, np.where(pos < source.shape[-1], ramp, 0.0)).astype(np.float32)
    return (weight * src + (1.0 - weight) * generated).astype(np.float32)
