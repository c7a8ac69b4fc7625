"""Stable Audio Open 1.0 (`diffusers.StableAudioPipeline`) as a step-wise, batchable model, and its `FAMILY`.

The maths follows `StableAudioPipeline.__call__` line for line (prompt encoding,
duration conditioning, classifier-free guidance, the scheduler step); what differs is
the bookkeeping: every request keeps its own scheduler, generator and guidance scale so
that requests with the same step count and window can share one transformer call
without changing each other's audio.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    to_audio,
)
from .common import dtype_bytes, safetensors_parameters
from .family import Family, Footprint, LoadRequest

if TYPE_CHECKING:
    from ..config import Settings

# The Oobleck decoder is convolutional: output sample n depends on latents within a
# few frames of n // hop. Decoding the kept latents plus this margin reproduces the
# full decode-then-crop (checked in tests/test_model.py).
DECODE_MARGIN_LATENTS = 16

OPEN1_LIMITS = ModelLimits(
    duration=Bound(10.0, 1.0, 30.0),
    guidance_scale=Bound(7.0, 1.0, 20.0),
    num_inference_steps=Bound(100, 10, 200),
)

# torchsde warns on every step about float round-off at the interval ends; it is harmless.
warnings.filterwarnings("ignore", message="Should have .* but got", module="torchsde")


@dataclass
class Open1State(GenerationState):
    """One request between steps: its latents, its conditioning and its own scheduler and generator
    (diffusers' schedulers are stateful, so requests sharing a batch must not share one)."""

    latents: torch.Tensor | None = None
    cond: torch.Tensor | None = None
    uncond: torch.Tensor | None = None  # None: no guidance for this request
    global_states: torch.Tensor | None = None
    scheduler: Any = None
    generator: torch.Generator | None = None


OPEN1_CAPABILITIES = Capabilities(
    audio_to_audio=True,
    notes=(
        "audio-to-audio adds the source's latents to full-strength noise (diffusers' initial_audio_waveforms), "
        "so the output changes only slightly; there is no strength control and no inpainting",
    ),
)


class StableAudioOpenModel(AudioModel[Open1State]):
    family = "open-1.0"
    capabilities = OPEN1_CAPABILITIES

    def __init__(
        self,
        pipe,
        name: str,
        device: str,
        dtype: torch.dtype,
        window: str = "full",
        text_cache_size: int = 256,
    ) -> None:
        self.pipe = pipe
        self.name = name
        self.device = device
        self.torch_dtype = dtype
        self.dtype = str(dtype).removeprefix("torch.")
        self.window_mode = window
        self.sample_rate = int(pipe.vae.config.sampling_rate)
        self.channels = int(pipe.vae.config.audio_channels)
        self.hop = int(pipe.vae.hop_length)
        self.max_window = int(pipe.transformer.config.sample_size)
        self.max_seconds = self.max_window * self.hop / self.sample_rate
        self.limits = OPEN1_LIMITS
        self.text_cache = TextEmbeddingCache(text_cache_size)
        self._rotary: dict[int, tuple] = {}
        self._silence: torch.Tensor | None = None  # encoder moments of silence (audio-to-audio)

    # -- loading -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, name: str, device: str, dtype: torch.dtype, **kw) -> StableAudioOpenModel:
        from diffusers import StableAudioPipeline

        pipe = StableAudioPipeline.from_pretrained(path, dtype=dtype)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        for module in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.projection_model):
            module.eval()
        return cls(pipe, name=name, device=device, dtype=dtype, **kw)

    # -- helpers -------------------------------------------------------------------
    def window_for(self, duration: float) -> int:
        """Latents sampled for a clip: diffusers' whole window ("full", what its pipeline computes) or, with
        "fit", only what the clip needs rounded up to 16 (faster; not the pipeline's numbers)."""
        if self.window_mode == "full":
            return self.max_window
        needed = math.ceil(duration * self.sample_rate / self.hop)
        return min(self.max_window, 16 * math.ceil(needed / 16))

    def batch_key(self, params: GenerationParams) -> tuple:
        """One transformer call shares one timestep schedule and one latent length."""
        return (params.num_inference_steps, self.window_for(params.duration))

    def upload_samples(self, duration: float) -> int:
        """diffusers encodes the source cropped to the latent window."""
        return self.window_for(duration) * self.hop

    def describe(self) -> dict[str, Any]:
        return {"window": self.window_mode}

    @torch.no_grad()
    def encode_text(self, text: str) -> torch.Tensor:
        """T5 + projection, masked at padding: the per-row result of the pipeline's `encode_prompt`."""
        cached = self.text_cache.get(text)
        if cached is not None:
            return cached
        pipe = self.pipe
        tokens = pipe.tokenizer(
            [text],
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.device)
        mask = tokens.attention_mask.to(self.device)
        hidden = pipe.text_encoder(ids, attention_mask=mask)[0]
        hidden = pipe.projection_model(text_hidden_states=hidden).text_hidden_states
        hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        self.text_cache.put(text, hidden)
        return hidden

    def _rotary_for(self, length: int):
        if length not in self._rotary:
            from diffusers.models.embeddings import get_1d_rotary_pos_embed

            self._rotary[length] = get_1d_rotary_pos_embed(
                self.pipe.rotary_embed_dim, length, use_real=True, repeat_interleave_real=False
            )
        return self._rotary[length]

    def _encode_initial_audio(self, audio: np.ndarray, window: int, generator: torch.Generator) -> torch.Tensor:
        """`StableAudioPipeline.prepare_latents` with `initial_audio_waveforms`: the audio, zero-padded or
        cropped to the latent window, encoded by the VAE (a sample of its posterior) and added to the
        noise, which is already scaled to sigma_max (500): the audio's latents are small beside it, so
        the result changes little (diffusers issue 10861; measured in tests/test_a2a.py)."""
        from diffusers.models.autoencoders.autoencoder_oobleck import OobleckDiagonalGaussianDistribution

        vae, margin = self.pipe.vae, DECODE_MARGIN_LATENTS
        n = min(window * self.hop, audio.shape[-1])
        used = math.ceil(n / self.hop)
        wave = torch.from_numpy(np.ascontiguousarray(audio[:, :n], dtype=np.float32))[None]
        wave = wave.to(device=self.device, dtype=self.torch_dtype)
        if used + 2 * margin >= window:
            padded = wave.new_zeros((1, self.channels, window * self.hop))
            padded[:, :, :n] = wave
            return vae.encode(padded).latent_dist.sample(generator)
        # The encoder is convolutional: past `margin` latents after the audio, the window's zero padding
        # encodes to one constant column (and the window's end to a fixed edge), so encode only the
        # audio plus margins and fill in the rest; equal to encoding the whole window (tests/test_a2a.py),
        # several times cheaper for short clips. The posterior is sampled over the whole window as diffusers does.
        head = wave.new_zeros((1, self.channels, (used + 2 * margin) * self.hop))
        head[:, :, :n] = wave
        head = vae.encode(head).latent_dist.parameters[:, :, : used + margin]
        if self._silence is None:
            self._silence = vae.encode(wave.new_zeros((1, self.channels, 4 * margin * self.hop))).latent_dist.parameters
        silence = self._silence
        fill = silence[:, :, 2 * margin : 2 * margin + 1].expand(-1, -1, window - margin - head.shape[-1])
        moments = torch.cat([head, fill, silence[:, :, -margin:]], dim=-1)
        return OobleckDiagonalGaussianDistribution(moments).sample(generator)

    # -- the step-wise API -----------------------------------------------------------
    @torch.no_grad()
    def start(self, params: GenerationParams) -> Open1State:
        from diffusers.utils.torch_utils import randn_tensor

        pipe = self.pipe
        if params.duration > self.max_seconds:
            raise GenerationError(f"duration {params.duration}s exceeds the model's {self.max_seconds:.2f}s")
        cfg = params.guidance_scale > 1.0
        text = self.encode_text(params.prompt)
        seconds = pipe.projection_model(
            start_seconds=torch.tensor([0.0], device=self.device),
            end_seconds=torch.tensor([float(params.duration)], device=self.device),
        )
        s_start, s_end = seconds.seconds_start_hidden_states, seconds.seconds_end_hidden_states
        cond = torch.cat([text, s_start, s_end], dim=1)
        global_states = torch.cat([s_start, s_end], dim=2)
        if not cfg:
            uncond = None
        elif params.negative_prompt is not None:
            uncond = torch.cat([self.encode_text(params.negative_prompt), s_start, s_end], dim=1)
        else:
            uncond = torch.zeros_like(cond)

        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        scheduler.set_timesteps(params.num_inference_steps, device=self.device)
        generator = torch.Generator("cpu").manual_seed(params.seed)
        window = self.window_for(params.duration)
        latents = randn_tensor(
            (1, pipe.transformer.config.in_channels, window),
            generator=generator,
            device=torch.device(self.device),
            dtype=cond.dtype,
        )
        latents = latents * scheduler.init_noise_sigma
        if params.init_audio is not None:
            latents = latents + self._encode_initial_audio(params.init_audio, window, generator)
        return Open1State(
            params=params,
            batch_key=self.batch_key(params),
            total_steps=len(scheduler.timesteps),
            latents=latents,
            cond=cond,
            uncond=uncond,
            global_states=global_states,
            scheduler=scheduler,
            generator=generator,
        )

    @torch.no_grad()
    def step(self, states: list[Open1State]) -> None:
        if not states:
            return
        check_batch(states)
        t = states[0].scheduler.timesteps[states[0].step]
        # Guidance rows only for the requests that use guidance: [uncond rows of guided requests; cond rows of all].
        guided = [i for i, s in enumerate(states) if s.uncond is not None]
        scaled = [s.scheduler.scale_model_input(s.latents, t) for s in states]
        inputs = torch.cat([scaled[i] for i in guided] + scaled)
        enc = torch.cat([states[i].uncond for i in guided] + [s.cond for s in states])
        glob = torch.cat([states[i].global_states for i in guided] + [s.global_states for s in states])
        rotary = self._rotary_for(inputs.shape[2] + glob.shape[1])
        pred = self.pipe.transformer(
            inputs,
            t.unsqueeze(0),
            encoder_hidden_states=enc,
            global_hidden_states=glob,
            rotary_embedding=rotary,
            return_dict=False,
        )[0]
        g = len(guided)
        uncond_row = {i: row for row, i in enumerate(guided)}
        for i, state in enumerate(states):
            noise = pred[g + i : g + i + 1]
            if i in uncond_row:
                uncond_pred = pred[uncond_row[i] : uncond_row[i] + 1]
                noise = uncond_pred + state.params.guidance_scale * (noise - uncond_pred)
            state.latents = state.scheduler.step(noise, t, state.latents, generator=state.generator).prev_sample
            state.step += 1

    @torch.no_grad()
    def finish(self, state: Open1State) -> np.ndarray:
        latents = state.latents
        end = int(state.params.duration * self.sample_rate)
        keep = min(latents.shape[2], math.ceil(end / self.hop) + DECODE_MARGIN_LATENTS)
        audio = self.pipe.vae.decode(latents[:, :, :keep]).sample[0, :, :end]
        state.latents = state.cond = state.uncond = None
        return to_audio(audio)


# -- the family descriptor ------------------------------------------------------------------------


def _index_class(path: Path) -> str | None:
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    return index.get("_class_name") if isinstance(index, dict) else None


def detect(path: Path) -> bool:
    """A diffusers-layout directory whose pipeline is `StableAudioPipeline`."""
    return _index_class(path) == "StableAudioPipeline"


def longest_clip(path: Path, settings: Settings) -> float:
    """The 30 s contract, whatever the operator's cap: the checkpoint itself allows 47 s."""
    return OPEN1_LIMITS.duration.maximum


def footprint(path: Path, dtype: torch.dtype, seconds: float) -> Footprint:
    """Weights from the safetensors headers of every component. Working memory is dominated by the Oobleck
    decoder's last stage (samples x decoder channels, a few live tensors); the factor 6 matches the measured
    fp32 peak of the real model (11.6 GiB RSS, 4.9 GiB weights)."""
    weights = safetensors_parameters(path.glob("*/*.safetensors")) * dtype_bytes(dtype)
    vae = json.loads((path / "vae" / "config.json").read_text())
    hop = math.prod(vae.get("downsampling_ratios", [2, 4, 4, 8, 8]))
    samples = (math.ceil(seconds * vae.get("sampling_rate", 44100) / hop) + DECODE_MARGIN_LATENTS) * hop
    return Footprint(weights, 6 * samples * vae.get("decoder_channels", 128) * dtype_bytes(dtype))


def load(req: LoadRequest) -> StableAudioOpenModel:
    """Through diffusers' own `from_pretrained`, with the operator's window mode and text cache."""
    return StableAudioOpenModel.from_pretrained(
        str(req.path),
        name=req.name,
        device=req.device,
        dtype=req.dtype,
        window=req.settings.window,
        text_cache_size=req.settings.text_cache_size,
    )


FAMILY = Family(
    name="open-1.0",
    title="Stable Audio Open 1.0",
    layout="a diffusers-layout directory (model_index.json naming StableAudioPipeline, plus transformer/, "
    "vae/, text_encoder/, tokenizer/, projection_model/, scheduler/)",
    detect=detect,
    longest_clip=longest_clip,
    footprint=footprint,
    load=load,
)
