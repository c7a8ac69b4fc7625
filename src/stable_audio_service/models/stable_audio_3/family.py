"""Stable Audio 3 as the engine sees it: official checkpoint in, Stability's `generate()` out, one step at a time.

(Long: `generate()` is one function in Stability's code; here it is one class, with the limits, memory figures and
family descriptor that are read from the same config, so the order of its random draws can be read in one place.)

`start` does what `StableAudioModel.generate` does before its sampler loop, in the same order for the random
stream: the initial noise is the request generator's first draw, before any conditioning; then the sources are
encoded, the audio-to-audio source before the inpainting one, each once whatever the number of regions, and an
encoder with token noise (`mask_noise > 0`) draws from the same generator (one draw per noisy resampling block and
encode window, as `generate()` -> `_encode_audio_input` -> `pretransform.encode` -> `encode_audio` draws from the
global RNG); `step` runs one ping-pong step for a whole batch of requests in one DiT forward (guided requests add
their unconditional row next to their conditional one, as the official batch-2 CFG forward does); `finish` decodes
with the autoencoder's decode-time draws from the same generator, zeroes the padded frames, clamps and cuts to the
duration. Each request keeps its own `torch.Generator("cpu")`, so its draws do not depend on its batch.

Limits, and where they come from (Stability-AI/stable-audio-3 @ 636f906):

* duration: from `MIN_DURATION_S` up to `sample_size // sample_rate` of the checkpoint's config (small 120 s,
  medium 380 s: the cap of Stability's Gradio interface; `generate()` clamps the window to `sample_size`, so
  above `sample_size/sr - 6` the 6 s padding shrinks), or the operator's `max_duration` when lower. The official
  code accepts any positive duration; below one latent frame (4096 samples, 0.093 s) every duration gives the
  same latent length, so 0.1 s, about one frame, is the floor: short enough for a sound effect.
* steps: 8 by default (`generate(steps=8)`), 50 for `-base` checkpoints ("use something like 50",
  docs/workflows/inference.md); 1-200.
* guidance: 1 (off) by default for the post-trained models (`cfg_scale=1.0`); 7 for `-base` ("try 7.0 for base
  models", the CLI's --cfg-scale help); 1-20.
* apg_scale: 1 by default (`generate(apg_scale=1.0)`), 0 (vanilla CFG) to 1.
* init_noise_level: 0.9 by default (the CLI's `--init-noise-level`), 0.01-1 (0 would divide by a zero sigma).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...adapters import AdapterError, Adapters, RequestAdapters, RowPlans, SetPlan, applied
from ..base import (
    AudioModel,
    Bound,
    Capabilities,
    GenerationError,
    GenerationParams,
    GenerationState,
    InvalidRequest,
    ModelLimits,
    check_batch,
    to_audio,
)
from ..common import DTYPE_BYTES, GIB, ModelLoadError
from ..family import Family, Footprint, LoadRequest
from . import accel, sampling
from .accel import SA3Options
from .autoencoder import SameAutoencoder
from .checkpoint import (
    CheckpointFiles,
    count_parameters,
    is_official_checkpoint,
    load_strict,
    load_tensors,
    resolve_checkpoint,
)
from .conditioning import DurationConditioner, TextConditioner
from .config import DEFAULT_DURATION_PADDING_S, SA3Config
from .dit import DiffusionTransformer
from .lora_targets import sa3_targets

if TYPE_CHECKING:
    from ...config import Settings

MIN_DURATION_S = 0.1
DEFAULT_DURATION_S = 10.0
MAX_STEPS = 200
MAX_GUIDANCE = 20.0
# A request keeps its per-layer local-conditioning embeddings (computing them at every step costs time) when they
# take at most this much (small, float32: 19 MiB for a 10 s clip, up to about a minute; half that in half
# precision); longer clips recompute them instead.
LOCAL_EMBED_CACHE_BYTES = 64 * 1024**2


def is_base_checkpoint(name: str) -> bool:
    """Stability's pre-trained (not post-trained) checkpoints end in `-base`."""
    return name.rstrip("/").rsplit("/", 1)[-1].lower().endswith("-base")


def sa3_limits(config: SA3Config, name: str, max_duration: float | None = None) -> ModelLimits:
    """Request limits of a checkpoint (see the module docstring for the source of each number)."""
    longest = config.longest_clip_s if max_duration is None else min(config.longest_clip_s, max_duration)
    longest = max(MIN_DURATION_S, longest)
    base = is_base_checkpoint(name)
    return ModelLimits(
        duration=Bound(min(DEFAULT_DURATION_S, longest), MIN_DURATION_S, longest),
        guidance_scale=Bound(7.0 if base else 1.0, 1.0, MAX_GUIDANCE),
        num_inference_steps=Bound(50 if base else 8, 1, MAX_STEPS),
    )


def longest_clip(path: Path) -> float:
    """The checkpoint's longest clip in seconds (`sample_size // sample_rate` of its model_config.json)."""
    from .checkpoint import CONFIG_FILE, read_config

    return read_config(Path(path) / CONFIG_FILE).longest_clip_s


def sa3_capabilities(config: SA3Config) -> Capabilities:
    """What requests may ask of this checkpoint: inpainting only when its DiT takes local conditioning."""
    return Capabilities(
        audio_to_audio=True,
        init_noise_level=Bound(0.9, 0.01, 1.0),
        inpainting=bool(config.local_add_ids),
        apg_scale=Bound(1.0, 0.0, 1.0),
        loras=False,  # until enable_loras
        loras_unavailable="no adapter directory is configured (STABLE_AUDIO_LORA_DIR)",
    )


def memory_estimate(path: Path, dtype: torch.dtype, max_seconds: float) -> tuple[int, int]:
    """(weights, working) bytes for serving `path` at `dtype` with clips up to `max_seconds`.

    Weights: DiT, autoencoder and conditioners at `dtype`, T5Gemma in float32 (it always runs in float32).
    Working: the DiT's activations grow linearly with the window (no attention matrix is materialised; about 32
    live tensors of tokens x width per row, two rows under guidance), the decoded window and its float32 copy,
    plus 0.5 GiB of allocator slack and windowed-decode buffers (the decode itself is windowed, 128 latents),
    plus the request's caches (`SA3Options.cache_request_tensors`): every layer's cross-attention keys/values for
    both rows and its local-conditioning embeddings (bounded by `LOCAL_EMBED_CACHE_BYTES`).
    """
    files = resolve_checkpoint(path)
    config = _config_of(files)
    size = DTYPE_BYTES.get(dtype, 4)
    parts = count_parameters(path)
    weights = (parts["dit"] + parts["autoencoder"] + parts["conditioners"]) * size + parts["text_encoder"] * 4
    win = sampling.window(
        max_seconds,
        sample_rate=config.sample_rate,
        hop=config.hop,
        latent_align=config.latent_align,
        sample_size=config.sample_size,
        padding_s=DEFAULT_DURATION_PADDING_S,
    )
    tokens = win.latent_length + config.dit.num_memory_tokens
    dit = config.dit
    dit_working = 2 * tokens * dit.embed_dim * size * 32
    audio_working = win.audio_samples * config.channels * (size + 4) * 2
    context_dim = dit.embed_dim if dit.project_cond_tokens else dit.cond_token_dim
    cross_kv = 2 * dit.depth * (config.text.max_length + 1) * 2 * context_dim * size if max_seconds > 0 else 0
    local_rows = win.latent_length + dit.num_memory_tokens  # kept padded to the memory tokens (`dit.local_embeds`)
    local = dit.depth * local_rows * dit.embed_dim * size if config.local_add_ids and max_seconds > 0 else 0
    caches = cross_kv + min(local, LOCAL_EMBED_CACHE_BYTES)
    return weights, GIB // 2 + dit_working + audio_working + caches


def _config_of(files: CheckpointFiles) -> SA3Config:
    from .checkpoint import read_config

    return read_config(files.config_path)


@dataclass(kw_only=True)
class SA3State(GenerationState):
    """One request between steps: rows of batch 1 on the model's device. The conditioning is float32 (the DiT casts
    it to its weights' dtype); `x`, `denoised` and `noise` are in the dtype the official sampler holds them in: the
    weights' dtype at the start, float32 once a float32 (guided) velocity has promoted them."""

    window: sampling.Window
    generator: torch.Generator
    x: torch.Tensor  # (1, C, L): the sampler's current latents
    sigmas: torch.Tensor  # (1, steps+1)
    context: torch.Tensor  # (1, 257, cond): prompt rows + duration token
    uncond_context: torch.Tensor | None  # None: no guidance (cfg 1)
    global_cond: torch.Tensor  # (1, cond)
    local_cond: torch.Tensor | None  # (1, C+1, L): inpainting mask + masked latents (zeros when not inpainting)
    padding_mask: torch.Tensor  # (1, L) bool
    cfg_scale: float
    apg_scale: float
    inpaint_keep: np.ndarray | None = None  # per output sample: True where the source is returned as is
    inpaint_source: np.ndarray | None = None  # (channels, output samples): the source, kept past drop_uploads()
    denoised: torch.Tensor | None = None  # the last step's prediction (the final latents after the last step)
    noise: torch.Tensor | None = None  # the last step's re-noising draw
    adapters: RequestAdapters | None = None  # the request's adapters: the DiT's plan at each step's sigma
    # The same at every step, so computed once per request (`SA3Options.cache_request_tensors`):
    cross_kv: list[torch.Tensor] | None = None  # per layer, to_kv of the context rows
    local_embeds: list[torch.Tensor] | None = None  # per layer, to_local_embed of local_cond
    # The DiT plans these were computed with (a request's adapters may act at some steps only).
    cross_kv_plan: SetPlan | None = None
    local_embeds_plan: SetPlan | None = None


class StableAudio3Model(AudioModel[SA3State]):
    family = "sa3"
    # Requests at different steps share a forward (continuous batching): timestep, schedule and draws are per row.
    mixed_steps = True

    def __init__(
        self,
        *,
        name: str,
        config: SA3Config,
        dit: DiffusionTransformer,
        autoencoder: SameAutoencoder,
        text: TextConditioner,
        duration: DurationConditioner,
        device: str,
        dtype: torch.dtype,
        max_duration: float | None = None,
        files: CheckpointFiles | None = None,
        options: SA3Options | None = None,
        lora_dir: Path | None = None,
        lora_cache_mb: float = 512,
    ) -> None:
        """A model from its loaded parts, served as `options` say (defaults: `SA3Options()`); with `lora_dir`,
        requests may name the adapters in it. The options' speed settings are applied here, once, after the
        adapters are hooked in: int8 and compile replace modules the hooks must see in fp32 and eager."""
        official_backend_flags()
        self.name = name
        self.config = config
        self.dit = dit
        self.autoencoder = autoencoder
        self.text = text
        self.duration_cond = duration
        self.device = device
        self.torch_dtype = dtype
        self.dtype = str(dtype).removeprefix("torch.")
        self.sample_rate = config.sample_rate
        self.channels = config.channels
        self.files = files
        self.padding_s = DEFAULT_DURATION_PADDING_S
        self.shift = sampling.make_shift(config.sampling_shift)
        self.limits = sa3_limits(config, name, max_duration)
        self.capabilities = sa3_capabilities(config)
        self.options = SA3Options() if options is None else options
        self.adapters: Adapters | None = None  # set by enable_loras
        self.speed_settings: dict[str, Any] = {}
        if lora_dir is not None:
            self.enable_loras(Path(lora_dir), lora_cache_mb)
        self.speed_settings = accel.apply(self, self.options)  # what is on, for the log

    # -- loading -----------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: Path,
        *,
        name: str,
        device: str,
        dtype: torch.dtype,
        text_cache_size: int = 256,
        max_duration: float | None = None,
        lora_dir: Path | None = None,
        lora_cache_mb: float = 512,
        options: SA3Options | None = None,
    ) -> StableAudio3Model:
        """Load an official-format checkpoint directory (or hub id, through the HF cache), served as `options`
        say; with `lora_dir`, requests may name the adapters in it (see the `adapters` package)."""
        files = resolve_checkpoint(path)
        config = _config_of(files)
        tensors = load_tensors(files.weights_path)
        dit = DiffusionTransformer(config.dit)
        prefix = "model.model."
        try:
            load_strict(dit, {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, prefix)
        except ValueError as exc:
            raise ModelLoadError(f"{files.weights_path} does not match {files.config_path.name}: {exc}") from None
        try:
            autoencoder = SameAutoencoder.from_config(config.raw)
            autoencoder.load_official(tensors)
        except (ValueError, NotImplementedError, KeyError) as exc:
            raise ModelLoadError(f"{files.weights_path}: {exc}") from None
        duration = DurationConditioner(config.duration, config.cond_dim)
        text = TextConditioner(config.text, files.text_encoder, config.cond_dim, text_cache_size, device)
        try:
            duration.load(tensors, f"conditioner.conditioners.{config.duration_id}.")
            text.load(tensors, f"conditioner.conditioners.{config.text_id}.")
        except KeyError as exc:
            raise ModelLoadError(f"{files.weights_path} has no tensor {exc.args[0]}") from None
        del tensors
        for module in (dit, autoencoder, duration, text):
            module.eval().requires_grad_(False).to(device=device, dtype=dtype)
        return cls(
            name=name,
            config=config,
            dit=dit,
            autoencoder=autoencoder,
            text=text,
            duration=duration,
            device=device,
            dtype=dtype,
            max_duration=max_duration,
            files=files,
            options=options,
            lora_dir=lora_dir,
            lora_cache_mb=lora_cache_mb,
        )

    def enable_loras(self, directory: Path, cache_mb: float = 512) -> None:
        """Serve the LoRA adapters of `directory` per request (hooks on the DiT and the duration embedder; the
        base weights stay as loaded). The hooks need the fp32, eager DiT: pass `lora_dir` at construction when the
        options quantise or compile it."""
        if "dit" in [*self.speed_settings.get("int8", []), *self.speed_settings.get("compile", [])]:
            raise RuntimeError("LoRA adapters hook the fp32, eager DiT: build the model with lora_dir instead")
        targets = sa3_targets(self.dit, self.duration_cond, self.config.duration_id)
        self.adapters = Adapters(directory, targets, cache_mb=cache_mb, device=self.device, dtype=self.torch_dtype)
        self.capabilities = replace(self.capabilities, loras=True, loras_unavailable="")

    def _rows(self, segments: list[tuple[int, int, SetPlan | None]]) -> RowPlans | None:
        """The DiT's `adapters` argument: each request's plan on its rows (None without adapter support or plans)."""
        return None if self.adapters is None else self.adapters.rows(segments)

    def _adapters_on(self, segments: list[tuple[int, int, SetPlan | None]]) -> AbstractContextManager[None]:
        """The plans bound for modules called outside the DiT's forward (the duration embedder)."""
        return applied(self._rows(segments))

    # -- sizes ---------------------------------------------------------------------------------------------
    def window(self, duration: float) -> sampling.Window:
        """The request's latent window for a clip of `duration` s (the checkpoint's hop, alignment and padding)."""
        return sampling.window(
            duration,
            sample_rate=self.sample_rate,
            hop=self.config.hop,
            latent_align=self.config.latent_align,
            sample_size=self.config.sample_size,
            padding_s=self.padding_s,
        )

    def batch_key(self, params: GenerationParams) -> Hashable:
        """One forward pass serves requests of the same latent length, at any step of any step count (timesteps,
        schedules, guidance, inpainting, audio-to-audio and LoRA adapters are per row; but for adapter sets that
        must be merged, see `adapters.plans`)."""
        key: tuple = (self.family, self.window(params.duration).latent_length)
        if self.adapters is not None and params.loras:
            key += self.adapters.batch_key(params.loras)
        return key

    def upload_samples(self, duration: float) -> int:
        """Sources are zero-padded or cut to the request's whole window (Stability's `PadCrop`)."""
        return self.window(duration).audio_samples

    # -- the step-wise API ------------------------------------------------------------------------------
    def _waveform(self, audio: np.ndarray, samples: int) -> torch.Tensor:
        """(channels, n) float32 -> (1, C, samples): zero-padded or cut, mono repeated, extra channels dropped."""
        wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        out = wave.new_zeros(wave.shape[0], samples)
        n = min(samples, wave.shape[-1])
        out[:, :n] = wave[:, :n]
        out = out.unsqueeze(0)
        if self.channels == 1:
            out = out.mean(1, keepdim=True)
        elif out.shape[1] == 1:
            out = out.repeat(1, self.channels, 1)
        elif out.shape[1] > self.channels:
            out = out[:, : self.channels, :]
        return out.to(self.device)

    @torch.no_grad()
    def _encode_source(
        self, audio: np.ndarray, win: sampling.Window, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A source's latents. An encoder with token noise (`mask_noise > 0`) draws from `generator`, the request's
        stream, where `generate()` draws from the global RNG: one draw per noisy resampling block and encode window,
        so every later draw of the request (the ping-pong steps, the decode) lands where the official one does."""
        wave = self._waveform(audio, win.audio_samples).to(self.torch_dtype)
        return self.autoencoder.encode(wave, generator).float()

    @torch.no_grad()
    def _context(self, text: str, duration_token: torch.Tensor, *, negative: bool = False) -> torch.Tensor:
        rows = self.text.padded(self.text.encode(text), negative=negative).to(self.device)
        return torch.cat([rows, duration_token.unsqueeze(1)], dim=1)

    @torch.no_grad()
    def start(self, params: GenerationParams) -> SA3State:
        """What `generate()` does before its sampler loop, in its order of draws (see the module docstring)."""
        duration = float(params.duration)
        if not math.isfinite(duration) or duration <= 0 or duration > self.limits.duration.maximum + 1e-9:
            raise GenerationError(f"duration {duration}s is outside 0-{self.limits.duration.maximum:g}s")
        steps = int(params.num_inference_steps)
        if steps < 1:
            raise GenerationError("num_inference_steps must be at least 1")
        win = self.window(duration)
        generator = torch.Generator("cpu").manual_seed(int(params.seed))
        latent_shape = (1, self.config.dit.io_channels, win.latent_length)
        # The first draw, as in generate(): drawn in float32, then cast to the DiT's dtype (`noise.type(model_dtype)`).
        noise = sampling.draw(generator, latent_shape).to(device=self.device, dtype=self.torch_dtype)

        adapters = None  # the request's LoRA adapters: those of the conditioner act on the duration embedding too
        if params.loras:
            if self.adapters is None:
                raise InvalidRequest("loras: this model serves no LoRA adapters (no adapter directory)")
            try:
                adapters = self.adapters.request(params.loras)
            except AdapterError as exc:
                raise InvalidRequest(f"loras: {exc}") from None
        with self._adapters_on([(0, 1, None if adapters is None else adapters.conditioner)]):
            duration_token = self.duration_cond([duration]).float()  # (1, cond)
        context = self._context(params.prompt, duration_token)
        cfg_scale = float(params.guidance_scale)
        uncond = None
        if cfg_scale != 1.0:
            if params.negative_prompt is not None:
                uncond = self._context(params.negative_prompt, duration_token, negative=True)
            else:
                uncond = torch.zeros_like(context)  # null context: text rows and duration token
        apg = self.capabilities.apg_scale
        apg_scale = float(params.apg_scale if params.apg_scale is not None else (apg.default if apg else 1.0))

        sigma_max = 1.0
        x = noise
        if params.init_audio is not None:
            level = params.init_noise_level
            sigma_max = float(level if level is not None else self.capabilities.init_noise_level.default)
            init = self._encode_source(params.init_audio, win, generator=generator)
            x = init.to(noise.dtype) * (1 - sigma_max) + noise * sigma_max  # in the latents' dtype, as generate()

        local = None
        keep = kept_source = None
        if self.config.local_add_ids:
            mask = torch.zeros(1, 1, win.latent_length, device=self.device)
            masked = torch.zeros(latent_shape, device=self.device)
            if params.inpaint_audio is not None:
                source = params.inpaint_audio
                regions = list(params.inpaint_regions or [])
                mask = sampling.inpaint_latent_mask(
                    win,
                    regions,
                    int(source.shape[-1]),
                    sample_rate=self.sample_rate,
                    duration=duration,
                    device=self.device,
                )
                masked = self._encode_source(source, win, generator=generator) * mask
                keep = kept_samples(win.output_samples, int(source.shape[-1]), regions, self.sample_rate)
                wave = self._waveform(source, win.output_samples)[0].float().clamp(-1, 1)
                kept_source = wave.cpu().numpy()
            local = torch.cat([mask, masked], dim=1)
        elif params.inpaint_audio is not None:
            raise GenerationError("this checkpoint has no inpainting conditioning")

        sigmas = sampling.schedule(steps, sigma_max, self.shift, win.effective_length).to(self.device)
        return SA3State(
            params=params,
            batch_key=self.batch_key(params),
            total_steps=steps,
            window=win,
            generator=generator,
            x=x,
            sigmas=sigmas,
            context=context,
            uncond_context=uncond,
            global_cond=duration_token,
            local_cond=local,
            padding_mask=sampling.padding_mask(win, self.device),
            cfg_scale=cfg_scale,
            apg_scale=apg_scale,
            inpaint_keep=keep,
            inpaint_source=kept_source,
            adapters=adapters,
        )

    @torch.no_grad()
    def step(self, states: list[SA3State]) -> None:
        """One ping-pong step for every request in `states`, in one DiT forward (each draws from its own stream)."""
        if not states:
            return
        check_batch(states, mixed_steps=self.mixed_steps)
        xs, ts, contexts, globals_, locals_, masks = [], [], [], [], [], []
        rows: list[tuple[int, int | None]] = []
        plans: list[SetPlan | None] = []  # each request's DiT adapters at this step
        for state in states:
            t = state.sigmas[:, state.step].to(state.x.dtype)  # the sampler passes t in its latents' dtype
            plans.append(None if state.adapters is None else state.adapters.at(t.float().item()))
            cond_row = len(xs)
            pairs = [state.context] + ([state.uncond_context] if state.uncond_context is not None else [])
            for context in pairs:  # [cond, uncond], the official batch-2 CFG order
                xs.append(state.x)
                ts.append(t)
                contexts.append(context)
                globals_.append(state.global_cond)
                locals_.append(state.local_cond)
                masks.append(state.padding_mask)
            rows.append((cond_row, cond_row + 1 if state.uncond_context is not None else None))
        groups = [1 if u is None else 2 for _, u in rows]
        segments = [(c, c + g, plan) for plan, (c, _), g in zip(plans, rows, groups, strict=True)]
        context_kv = None
        if self.options.cache_request_tensors:  # see SA3State.cross_kv and local_embeds
            for state, plan, (c, _), g in zip(states, plans, rows, groups, strict=True):
                if state.cross_kv is None or state.cross_kv_plan is not plan:
                    adapted = self._rows([(0, g, plan)])
                    state.cross_kv = self.dit.cross_kv(torch.cat(contexts[c : c + g]), adapted)
                    state.cross_kv_plan = plan
            per_state = [s.cross_kv for s in states]
            context_kv = per_state[0] if len(states) == 1 else [torch.cat(kv) for kv in zip(*per_state, strict=True)]
        local_embeds = None if locals_[0] is None else self._local_embeds(states, groups, plans)
        local = None if locals_[0] is None or local_embeds is not None else torch.cat(locals_)
        out = self.dit(
            torch.cat(xs),
            torch.cat(ts),
            None if context_kv is not None else torch.cat(contexts),
            torch.cat(globals_),
            local,
            torch.cat(masks),
            groups,
            context_kv,
            local_embeds,
            self._rows(segments),
        )
        for state, (c, u) in zip(states, rows, strict=True):
            i = state.step
            t_curr, t_next = state.sigmas[:, i], state.sigmas[:, i + 1]
            velocity = out[c : c + 1]
            if u is not None:
                velocity = sampling.guided_velocity(
                    state.x, t_curr, velocity, out[u : u + 1], state.cfg_scale, state.apg_scale, state.padding_mask
                )
            noise = sampling.draw(state.generator, tuple(state.x.shape), state.x.dtype).to(state.x.device)
            state.x, state.denoised = sampling.pingpong_step(state.x, velocity, t_curr, t_next, noise)
            state.noise = noise
            state.step += 1

    def _local_embeds(
        self, states: list[SA3State], groups: list[int], plans: list[SetPlan | None]
    ) -> list[torch.Tensor] | None:
        """Each layer's local-conditioning embedding of these rows, from what every request computed once per
        DiT adapter plan (its guidance rows share one local conditioning, so one row is computed and repeated).
        None (computed in the forward, every step) when caching is off, the DiT takes no local conditioning or a
        request's cache would pass `LOCAL_EMBED_CACHE_BYTES`."""
        dit = self.config.dit
        if not self.options.cache_request_tensors or not dit.local_add_cond_dim:
            return None
        for state, plan in zip(states, plans, strict=True):
            if state.local_embeds is None or state.local_embeds_plan is not plan:
                rows = state.local_cond.shape[-1] + dit.num_memory_tokens  # padded to the memory tokens
                size = dit.depth * rows * dit.embed_dim * state.local_cond.element_size()
                if size > LOCAL_EMBED_CACHE_BYTES:
                    return None
                state.local_embeds = self.dit.local_embeds(state.local_cond, self._rows([(0, 1, plan)]))
                state.local_embeds_plan = plan
        rows = [[e.expand(g, -1, -1) for e in s.local_embeds] for s, g in zip(states, groups, strict=True)]
        return rows[0] if len(rows) == 1 else [torch.cat(layer) for layer in zip(*rows, strict=True)]

    @torch.no_grad()
    def decode(self, state: SA3State) -> torch.Tensor:
        """Stability's output before the float32 cast: decode (with its draws), padded frames zeroed."""
        hop = self.config.hop
        # Only the latents whose audio is returned, when the options say so (`SameAutoencoder.decode`'s `keep`).
        keep = math.ceil(state.window.output_samples / hop) if self.options.decode_kept else None
        audio = self.autoencoder.decode(state.x.to(self.torch_dtype), state.generator, keep=keep)
        frame_mask = state.padding_mask.unsqueeze(1).repeat_interleave(hop, dim=-1)
        length = audio.shape[-1]
        if frame_mask.shape[-1] >= length:
            frame_mask = frame_mask[..., :length]
        else:
            frame_mask = torch.nn.functional.pad(frame_mask, (0, length - frame_mask.shape[-1]), value=False)
        return audio * frame_mask.to(audio.dtype)

    @torch.no_grad()
    def finish(self, state: SA3State) -> np.ndarray:
        """The clip as float32 (channels, samples), cut to the duration; the state's tensors are freed."""
        audio = self.decode(state).to(torch.float32).clamp(-1, 1)[0, :, : state.window.output_samples]
        result = to_audio(audio)
        if self.options.keep_inpaint_source and state.inpaint_keep is not None and state.inpaint_source is not None:
            result = np.where(state.inpaint_keep[None, :], state.inpaint_source, result).astype(np.float32)
        state.x = state.context = state.global_cond = state.padding_mask = torch.empty(0)
        state.uncond_context = state.local_cond = state.denoised = state.noise = None
        state.cross_kv = state.local_embeds = None
        state.inpaint_keep = state.inpaint_source = None
        state.adapters = state.cross_kv_plan = state.local_embeds_plan = None
        return result

    def describe(self) -> dict[str, Any]:
        """Facts for GET /models that tell operators which structure and sampler this checkpoint runs."""
        return {
            "structure": self.config.structure,
            "format": "official (model_config.json + model.safetensors)",
            "longest_clip_s": self.config.longest_clip_s,
            "duration_padding_s": self.padding_s,
            "latent_hop": self.config.hop,
            "sampler": "ping-pong (Stability's stable_audio_3 generate())",
            "guidance": "APG (apg_scale 1) or vanilla CFG (apg_scale 0), from guidance_scale > 1",
            # `dtype` is the DiT's, the autoencoder's and the duration conditioner's; T5Gemma keeps its own.
            "text_encoder_dtype": str(self.text.encoder_dtype).removeprefix("torch."),
        }


def official_backend_flags() -> None:
    """What Stability's `StableAudioModel.__init__` sets for the whole process: no TF32 in float32 matmuls and
    convolutions, float32 accumulation in float16 matmuls (cuBLAS may otherwise reduce in float16), no cuDNN
    autotuning. They change only CUDA kernels, where they decide what a float16 (and float32) model computes."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cudnn.benchmark = False


def kept_samples(total: int, source_samples: int, regions: list[tuple[float, float]], sample_rate: int) -> np.ndarray:
    """True where the output sample comes from the source: inside the source and outside every region (sample
    boundaries rounded as the official mask rounds them, `int(seconds * sr)`)."""
    keep = np.zeros(total, dtype=bool)
    keep[: min(total, source_samples)] = True
    for start_s, end_s in regions:
        keep[min(int(start_s * sample_rate), total) : min(int(end_s * sample_rate), total)] = False
    return keep


# -- the family descriptor ------------------------------------------------------------------------


def _longest_served(path: Path, settings: Settings) -> float:
    """The checkpoint's longest clip, or the operator's `max_duration` when lower."""
    longest = longest_clip(path)
    return longest if settings.max_duration is None else min(longest, settings.max_duration)


def _footprint(path: Path, dtype: torch.dtype, seconds: float) -> Footprint:
    return Footprint(*memory_estimate(path, dtype, seconds))


def load(req: LoadRequest) -> StableAudio3Model:
    """The service's load path: the checkpoint with the operator's adapters, then the speed settings (threads,
    quantisation, compile), which change the loaded modules and so are part of loading."""
    return StableAudio3Model.from_checkpoint(
        req.path,
        name=req.name,
        device=req.device,
        dtype=req.dtype,
        text_cache_size=req.settings.text_cache_size,
        max_duration=req.settings.max_duration,
        lora_dir=req.settings.lora_dir,
        lora_cache_mb=req.settings.lora_cache_mb,
        options=SA3Options.from_settings(req.settings),
    )


FAMILY = Family(
    name="sa3",
    title="Stable Audio 3",
    layout="Stability's official format (model_config.json, model.safetensors and the T5Gemma folder the config names)",
    detect=is_official_checkpoint,
    longest_clip=_longest_served,
    footprint=_footprint,
    load=load,
    # bfloat16 on an AVX512-BF16 CPU: 3.25x eager float32 for SA3-small 10 s (bench/results, bench/README.md)
    cpu_bfloat16=True,
)
