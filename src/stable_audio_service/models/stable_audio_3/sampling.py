"""The arithmetic of Stability's `StableAudioModel.generate` + `sample_diffusion`, one request at a time.

Everything here follows `stable_audio_3/model.py` and `inference/sampling.py` (@ 636f906) expression for
expression, because the fixtures compare float32 results to 1e-4 and the ping-pong sampler re-noises from the
request's generator at every step: a different rounding of a size or a mask changes every later draw's meaning.

* window: `(duration + 6 s)` in samples, rounded up to the hop (4096), then to `hop * latent_align` (so the
  latent length is even), clamped to the checkpoint's `sample_size`;
* padding mask: frames `< ceil(int(duration*sr) / hop) + int(6*sr / hop)` are valid;
* schedule: `linspace(sigma_max, 0, steps+1)` through the log-SNR shift, first point forced to `sigma_max`;
* ping-pong: `denoised = x - t_i * v`, `x = (1 - t_{i+1}) * denoised + t_{i+1} * noise_i`, one draw per step
  including the last;
* guidance (cfg != 1): conditional and unconditional rows in one forward; APG keeps only the part of the
  guidance difference orthogonal to the conditional prediction (over valid frames), `apg_scale` 0 is vanilla
  CFG, values between blend the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import numerics


@dataclass(frozen=True)
class Window:
    """Sizes of one request."""

    audio_samples: int  # the window in audio samples (what a2a/inpainting sources are padded or cut to)
    latent_length: int  # L
    valid_frames: int  # frames [0, valid_frames) are attended to with their values; the rest is padding
    effective_length: int  # latent frames of the duration itself (the schedule's sequence length)
    output_samples: int  # int(duration * sample_rate): the length returned


def window(
    duration: float, *, sample_rate: int, hop: int, latent_align: int, sample_size: int, padding_s: float
) -> Window:
    """`_adapt_sample_size` + the padding-mask lengths of `sample_diffusion`."""
    if duration <= 0:
        audio_samples = sample_size
    else:
        target = int((duration + padding_s) * sample_rate)
        target = ((target + hop - 1) // hop) * hop
        align = hop * latent_align
        target = ((target + align - 1) // align) * align
        audio_samples = min(target, sample_size)
    latent_length = audio_samples // hop
    effective = math.ceil(int(duration * sample_rate) / hop)
    headroom = int(padding_s * sample_rate / hop)
    valid = min(effective + headroom, latent_length)
    return Window(audio_samples, latent_length, valid, effective, int(duration * sample_rate))


def padding_mask(win: Window, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, L) bool, True = valid frame (`create_padding_mask_from_lengths`)."""
    return torch.arange(win.latent_length, device=device).unsqueeze(0) < torch.tensor(
        [[win.valid_frames]], device=device
    )


class LogSNRShift:
    """Stability's `LogSNRShift`: t spaced uniformly in log-SNR between `logsnr_end` and a start that drops by
    `rate` per doubling of the sequence length (rate 0, the sampling default, makes it length-free)."""

    def __init__(
        self, anchor_length: float = 2000, anchor_logsnr: float = -6.2, rate: float = 1.0, logsnr_end: float = 2.0
    ) -> None:
        self.anchor_length = anchor_length
        self.anchor_logsnr = anchor_logsnr
        self.rate = rate
        self.logsnr_end = logsnr_end

    def shift(self, t: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        t_original = t
        start = self.anchor_logsnr - self.rate * torch.log2(seq_len.float() / self.anchor_length)
        start = start.to(t.device)
        if t.dim() == 1 and start.dim() == 1 and t.shape[0] != start.shape[0]:
            t = t.unsqueeze(0)
            start = start.unsqueeze(1)
        t_out = torch.sigmoid(-(self.logsnr_end - t * (self.logsnr_end - start)))
        t_out = torch.where(t_original <= 0, torch.zeros_like(t_out), t_out)
        return torch.where(t_original >= 1, torch.ones_like(t_out), t_out)


class IdentityShift:
    def shift(self, t: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        return t


def make_shift(options: dict | None) -> LogSNRShift | IdentityShift:
    """`sampling_distribution_shift_options`; absent means `LogSNRShift(rate=0, -6.2, 2.0)` as in Stability's
    `ConditionedDiffusionModelWrapper`."""
    if options is None:
        return LogSNRShift(rate=0, anchor_logsnr=-6.2, logsnr_end=2.0)
    kind = options.get("type", "full")
    kwargs = {k: v for k, v in options.items() if k != "type"}
    if kind == "logsnr":
        return LogSNRShift(**kwargs)
    if kind == "none":
        return IdentityShift()
    raise ValueError(f"sampling_distribution_shift_options type {kind!r} is not supported (logsnr, none)")


def schedule(steps: int, sigma_max: float, shift: LogSNRShift | IdentityShift, effective_length: int) -> torch.Tensor:
    """`build_schedule` for one request: (1, steps+1) float32, t[0] = sigma_max, t[-1] = 0."""
    t = numerics.linspace(sigma_max, 0, steps + 1)  # the fused form on every CPU (see numerics)
    seq_len = torch.clamp(torch.tensor([float(effective_length)], dtype=torch.float32), min=1)
    t = shift.shift(t, seq_len)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    t[..., 0] = t.new_tensor(sigma_max)
    return t


def draw(generator: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One draw of the request's stream, on the CPU so a seed means the same noise on any device. `dtype`: the
    tensor `torch.randn_like` is called on in the official code (the re-noising draw is made in the sampler's
    dtype: float16 while a half-precision model's latents are float16; ATen's float16 sampler rounds its uniforms
    to float16 first, so it is not always a float32 draw cast)."""
    return torch.randn(shape, generator=generator, dtype=dtype)


def apg_project(v0: torch.Tensor, v1: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Parts of v0 parallel and orthogonal to v1 (per row, over channels and valid frames), in float32."""
    dtype = v0.dtype
    v0, v1 = v0.float(), v1.float()
    if mask is not None:
        m = mask.unsqueeze(1).float()
        v0_masked, v1_masked = v0 * m, v1 * m
        v1_unit = v1_masked / v1_masked.norm(dim=[-1, -2], keepdim=True).clamp(min=1e-8)
        parallel = (v0_masked * v1_unit).sum(dim=[-1, -2], keepdim=True) * v1_unit
        orthogonal = (v0 - (v0 * v1_unit).sum(dim=[-1, -2], keepdim=True) * v1_unit) * m
    else:
        v1_unit = F.normalize(v1, dim=[-1, -2])
        parallel = (v0 * v1_unit).sum(dim=[-1, -2], keepdim=True) * v1_unit
        orthogonal = v0 - parallel
    return parallel.to(dtype), orthogonal.to(dtype)


def guided_velocity(
    x: torch.Tensor,
    t: torch.Tensor,
    cond_out: torch.Tensor,
    uncond_out: torch.Tensor,
    cfg_scale: float,
    apg_scale: float,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """The velocity `DiffusionTransformer.forward` returns under guidance, from its two rows' raw outputs.

    `x` and `t` are the sampler's latents and sigma. As in the official forward, the guidance works on the DiT's
    own copy of `x` (cast to the weights' dtype, the outputs' dtype) and on its float32 copy of `t` as the sampler
    passed it (cast to the latents' dtype first). In float32 both casts do nothing; with half-precision weights
    the float16 outputs times the float32 sigma make every later term float32, so the velocity is float32."""
    sigma = t.to(x.dtype).float()[:, None, None]
    x = x.to(cond_out.dtype)
    cond_denoised = x - cond_out * sigma
    uncond_denoised = x - uncond_out * sigma
    diff = cond_denoised - uncond_denoised
    if apg_scale == 0.0:
        cfg_diff = diff
    elif apg_scale == 1.0:
        cfg_diff = apg_project(diff, cond_denoised, mask)[1]
    else:
        orthogonal = apg_project(diff, cond_denoised, mask)[1]
        cfg_diff = apg_scale * orthogonal + (1 - apg_scale) * diff
    cfg_denoised = cond_denoised + (cfg_scale - 1) * cfg_diff
    return (x - cfg_denoised) / sigma


def pingpong_step(
    x: torch.Tensor, velocity: torch.Tensor, t_curr: torch.Tensor, t_next: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of `sample_flow_pingpong` (per-row schedule); returns (next x, denoised).

    The dtypes follow the official expressions: sigmas cast to the latents' dtype, `noise` drawn in it. Float16
    latents and a float16 velocity (no guidance) give float16 arithmetic, one rounding per operation; a float32
    (guided) velocity promotes `denoised` and the next latents to float32."""
    t_curr = t_curr.to(x.dtype).view(-1, 1, 1)
    denoised = x - t_curr * velocity
    return renoise(denoised, t_next.to(x.dtype), noise.to(x.dtype)), denoised


def renoise(denoised: torch.Tensor, t_next: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The ping-pong's next latents `(1 - t_next) * denoised + t_next * noise`, with `t_next` (per row) and `noise`
    in the dtype of the latents they replace (float16 `1 - t_next` rounds to float16 before the product)."""
    t_next = t_next.view(-1, 1, 1)
    return (1 - t_next) * denoised + t_next * noise


def inpaint_latent_mask(
    win: Window,
    regions: list[tuple[float, float]],
    source_samples: int,
    *,
    sample_rate: int,
    duration: float,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(1, 1, L) float, 1 = keep the source's latents, 0 = generate; built as `generate()` builds it.

    At audio rate: ones, zero on each `[int(start*sr), int(end*sr))`, zero from the source's end (a duration
    longer than the source continues it: there is nothing to keep there; Stability's caller passes that region
    itself), zero past `int(duration*sr)`; then nearest-neighbour down to the latent length.
    """
    n = win.audio_samples
    mask = torch.ones(1, n, device=device)
    for start_s, end_s in regions:
        lo = min(int(start_s * sample_rate), n)
        hi = min(int(end_s * sample_rate), n)
        mask[:, lo:hi] = 0
    if source_samples < n:
        mask[:, source_samples:] = 0
    effective = int(duration * sample_rate)
    if effective < n:
        mask[:, effective:] = 0
    return F.interpolate(mask.unsqueeze(1), size=win.latent_length, mode="nearest")
