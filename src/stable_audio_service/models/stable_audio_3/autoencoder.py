"""Stable Audio 3's SAME autoencoder, computed as Stability's `stable_audio_3` library computes it.

(Long: it is the whole SAME network, layer by layer, kept in one module so its names are the checkpoint's own.)

Why our own module instead of diffusers' `AutoencoderSAME`: diffusers can only express SAME-L (a band mask over
the whole sequence, quadratic in memory) and cannot represent SAME-S at all (no chunked attention with midpoint
shift, no kernel-3 decoder mapping, no chunk alignment, no decode-time noise, no windowed decode); its tensor names
also differ from the official checkpoint. Written here in Stability's own module naming, the official
`pretransform.model.*` tensors load 1:1 (no key conversion), and both structures share one code path:

* SAME-L (`sliding_window [l, r]`): every token attends to tokens within `l*(stride+1)` / `r*(stride+1)` of
  itself, computed in query blocks with a key halo, so memory and time are linear in the sequence length;
  RoPE positions run over the whole sequence.
* SAME-S (no `sliding_window`): attention inside fixed chunks of `chunk_size + chunk_size // stride` tokens, RoPE
  restarting in every chunk; with `chunk_midpoint_shift` the second half of the layers works on chunks shifted
  by half a chunk over a sequence padded with copies of its first/last half chunk.

The decode path (bottleneck noise, TRB new tokens plus `mask_noise`, kernel-1/3 mapping, patch unfolding) and the
official windowed decode/encode (`chunked: true`: windows of 128 latents every 96, right-anchored last window,
16 latents trimmed at inner edges, later windows overwrite) follow `stable_audio_3` @ 636f906 step by step; the
oracle fixtures' MAKING.md files (shared/fixtures/sa3-official/, read by tests/oracle.py) record the facts this
was checked against. Encode and decode walk the same `windows`.

Decode-time randomness is explicit: `decode(..., generator=g)` draws, window by window, the bottleneck
`noise_regularize` noise and then each TRB's `mask_noise`, exactly as `torch.randn_like` on the CPU global RNG
does in the official code when `g` is a CPU generator in the same state; `generator=None` means no decode-time
noise; `noises=[...]` replays stored draws in that order (for parity tests). Encoding is the same: an encoder
with `mask_noise > 0` draws its new-token noise from `encode(..., generator=g)`, window by window.

`decode(..., keep=n)` returns the first `n` latents' audio and decodes each window only over the latents that
audio needs (see `decode`): a clip is shorter than its window (6 s of padding), so most of the last window's
work would be cut away.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_strict

__all__ = ["PRETRANSFORM_PREFIX", "WINDOW_LATENTS", "WINDOW_OVERLAP", "SameAutoencoder", "Window", "windows"]

PRETRANSFORM_PREFIX = "pretransform.model."
# The official pretransform's windowed decode/encode (`decode_audio` / `encode_audio` defaults), in latents.
WINDOW_LATENTS = 128
WINDOW_OVERLAP = 32
# Query block of the band attention; keys are the block plus the window on each side. Any value gives the same
# numbers (up to float rounding). Measured on CPU at SAME-L size (24 heads x 64, +-17 tokens, 2176 tokens): 32-48
# is fastest (0.11 s per call, 1 thread) against 0.31 s at 128 and 0.52 s at 256, as less out-of-band work is done.
BAND_QUERY_BLOCK = 32


class _NoiseSource:
    """Decode/encode-time draws in call order: from a generator, replayed from tensors, or none at all."""

    def __init__(self, generator: torch.Generator | None = None, replay: Iterable[torch.Tensor] | None = None):
        if generator is not None and replay is not None:
            raise ValueError("pass either a generator or noises to replay, not both")
        self.generator = generator
        self._replay = iter(replay) if replay is not None else None
        self.used = 0

    @property
    def active(self) -> bool:
        return self.generator is not None or self._replay is not None

    def draw(self, like: torch.Tensor) -> torch.Tensor:
        """A standard-normal tensor shaped and typed like `like`; a CPU generator gives `torch.randn_like`'s CPU
        stream (drawn in `like`'s dtype: ATen's float16 sampler is not always a float32 draw cast)."""
        self.used += 1
        if self._replay is not None:
            noise = next(self._replay, None)
            if noise is None:
                raise ValueError(f"replayed noises ran out at draw {self.used} (shape {tuple(like.shape)})")
            if tuple(noise.shape) != tuple(like.shape):
                raise ValueError(
                    f"replayed noise {self.used} has shape {tuple(noise.shape)}, expected {tuple(like.shape)}"
                )
            return noise.to(device=like.device, dtype=like.dtype)
        assert self.generator is not None
        noise = torch.randn(like.shape, generator=self.generator, dtype=like.dtype, device=self.generator.device)
        return noise.to(device=like.device)

    def finish(self) -> None:
        """Replaying more noises than the decode draws is a caller error (wrong window count or order)."""
        if self._replay is not None and next(self._replay, None) is not None:
            raise ValueError(f"more replayed noises than the {self.used} draws this call makes")


# --------------------------------------------------------------------------------------------- layers


class _DynamicTanh(nn.Module):
    """DyT norm: `gamma * tanh(alpha * x) + beta` (`norm_type 'dyt'`, also the q/k norm when `dyt`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), 4.0))
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * torch.tanh(self.alpha * x) + self.beta


class _RMSNorm(nn.Module):
    """RMS norm with gain `gamma` (used instead of DyT when `dyt` is false)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, x.shape[-1:], weight=self.gamma, eps=self.eps)


def _norm(dim: int, dyt: bool) -> nn.Module:
    return _DynamicTanh(dim) if dyt else _RMSNorm(dim, eps=1e-3)


class _Rotary(nn.Module):
    """Rotary embedding over the first `dim` channels of each head (`inv_freq` is a checkpoint tensor)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def cos_sin(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(length, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq.float())
        freqs = torch.cat((freqs, freqs), dim=-1)
        return freqs.cos(), freqs.sin()

    @staticmethod
    def apply(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rot = cos.shape[-1]
        t_rot, t_pass = t[..., :rot].float(), t[..., rot:]
        first, second = t_rot.chunk(2, dim=-1)
        rotated = t_rot * cos + torch.cat((-second, first), dim=-1) * sin
        return torch.cat((rotated.to(t.dtype), t_pass), dim=-1)


def _band_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """SDPA where query i sees keys i-left..i+right only, in query blocks with a key halo: O(n) memory."""
    n = q.shape[-2]
    block = min(BAND_QUERY_BLOCK, n)
    blocks = -(-n // block)
    pad = blocks * block - n
    span = block + left + right
    qb = F.pad(q, (0, 0, 0, pad)).unflatten(-2, (blocks, block))
    kb = F.pad(k, (0, 0, left, right + pad)).unfold(-2, span, block).transpose(-1, -2)
    vb = F.pad(v, (0, 0, left, right + pad)).unfold(-2, span, block).transpose(-1, -2)
    row = torch.arange(block, device=q.device)[:, None]
    col = torch.arange(span, device=q.device)[None, :]
    key_pos = torch.arange(blocks, device=q.device)[:, None, None] * block + col - left
    mask = (col >= row) & (col <= row + left + right) & (key_pos >= 0) & (key_pos < n)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)
    return out.flatten(-3, -2)[..., :n, :]


class _SelfAttention(nn.Module):
    """Multi-head self-attention with fused qkv, q/k norm, partial RoPE; differential = attn(q,k) - attn(q',k')."""

    def __init__(self, dim: int, dim_heads: int, differential: bool, dyt: bool):
        super().__init__()
        self.heads = dim // dim_heads
        self.dim_heads = dim_heads
        self.differential = differential
        self.to_qkv = nn.Linear(dim, dim * (5 if differential else 3), bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.q_norm = _DynamicTanh(dim_heads) if dyt else _RMSNorm(dim_heads, eps=1e-3)
        self.k_norm = _DynamicTanh(dim_heads) if dyt else _RMSNorm(dim_heads, eps=1e-3)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], window: tuple[int, int] | None
    ) -> torch.Tensor:
        b, n, _ = x.shape
        parts = [
            t.reshape(b, n, self.heads, self.dim_heads).transpose(1, 2)
            for t in self.to_qkv(x).chunk(5 if self.differential else 3, dim=-1)
        ]
        if self.differential:
            q_main, k_main, v, q_diff, k_diff = parts
            q, k = torch.stack([q_main, q_diff], dim=1), torch.stack([k_main, k_diff], dim=1)
        else:
            q, k, v = parts
        cos, sin = rope
        q = _Rotary.apply(self.q_norm(q), cos, sin)
        k = _Rotary.apply(self.k_norm(k), cos, sin)
        if self.differential:
            out = self._attend(q[:, 0], k[:, 0], v, window) - self._attend(q[:, 1], k[:, 1], v, window)
        else:
            out = self._attend(q, k, v, window)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_heads))

    @staticmethod
    def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: tuple[int, int] | None) -> torch.Tensor:
        if window is None:
            return F.scaled_dot_product_attention(q, k, v)
        return _band_attention(q, k, v, *window)


class _GatedProjection(nn.Module):
    """`proj` to 2x inner width, then `value * act(gate)`: SiLU (SwiGLU) or `sin(pi * gate)`."""

    def __init__(self, dim: int, inner: int, sinusoidal: bool):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)
        self.sinusoidal = sinusoidal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * (torch.sin(3.14159265359 * gate) if self.sinusoidal else F.silu(gate))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: float, sinusoidal: bool):
        super().__init__()
        inner = int(dim * mult)
        # Indices 0 and 2 are the official `ff.ff.0.proj` / `ff.ff.2` tensors; 1 is a parameter-free slot.
        self.ff = nn.ModuleList([_GatedProjection(dim, inner, sinusoidal), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff[2](self.ff[0](x))


class _TransformerLayer(nn.Module):
    def __init__(self, dim: int, dim_heads: int, differential: bool, dyt: bool, ff_mult: float, sinusoidal: bool):
        super().__init__()
        dim_heads = min(dim_heads, dim)
        self.pre_norm = _norm(dim, dyt)
        self.self_attn = _SelfAttention(dim, dim_heads, differential, dyt)
        self.ff_norm = _norm(dim, dyt)
        self.ff = _FeedForward(dim, ff_mult, sinusoidal)
        self.rope = _Rotary(dim_heads // 2)

    def forward(self, x: torch.Tensor, window: tuple[int, int] | None) -> torch.Tensor:
        x = x + self.self_attn(self.pre_norm(x), self.rope.cos_sin(x.shape[-2]), window)
        return x + self.ff(self.ff_norm(x))


class _WNConv1d(nn.Module):
    """Weight-normalised conv (`weight_g`, `weight_v`), padding 'same'."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.zeros(out_channels, in_channels, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The op `nn.utils.weight_norm` runs in Stability's code: g * v / ||v|| rounded once (spelling it out in
        # three ops rounds three times: 1e-3 off Stability's float16 decode).
        weight = torch._weight_norm(self.weight_v, self.weight_g, 0)
        return F.conv1d(x, weight, self.bias, padding="same")


def _pad_to_multiple(x: torch.Tensor, multiple: int, dim: int) -> torch.Tensor:
    pad = -x.shape[dim] % multiple
    if pad == 0:
        return x
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


class _ResamplingBlock(nn.Module):
    """SAME's transformer resampling block (TRB): interleaves `stride` input tokens (encoder) or one latent
    (decoder) with learned new tokens, runs the transformer, and keeps the new tokens' outputs."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        kind: str,
        depth: int,
        cfg: Mapping[str, Any],
        sinusoidal_blocks: int,
    ):
        super().__init__()
        unsupported = [key for key in ("conformer", "layer_scale", "feat_scale", "cross_attn") if cfg.get(key)]
        if unsupported:
            raise NotImplementedError(f"SAME options not supported: {unsupported}")
        self.kind = kind
        self.stride = stride
        self.depth = depth
        self.mask_noise = float(cfg.get("mask_noise", 0.0))
        self.chunk_size = int(cfg.get("chunk_size", 128))
        self.midpoint_shift = bool(cfg.get("chunk_midpoint_shift", False))
        sliding = cfg.get("sliding_window")
        # Band half-widths in tokens: one latent's group is `stride` new/old tokens plus one.
        self.window = None if sliding is None else (int(sliding[0]) * (stride + 1), int(sliding[1]) * (stride + 1))
        if self.window is None and self.chunk_size % stride:
            raise ValueError(f"chunk_size {self.chunk_size} is not a multiple of stride {stride}")
        self.in_seg = stride if kind == "encoder" else 1
        self.out_seg = 1 if kind == "encoder" else stride
        self.group = stride + 1
        self.chunk_tokens = self.chunk_size + self.chunk_size // stride
        width = out_channels if kind == "encoder" else in_channels
        kernel = 3 if cfg.get("conv_mapping", False) else 1
        self.mapping = (
            _WNConv1d(in_channels, out_channels, kernel, bool(cfg.get("mapping_bias", True)))
            if in_channels != out_channels
            else nn.Identity()
        )
        variable = bool(cfg.get("variable_stride", False))
        self.new_tokens = nn.Parameter(torch.zeros(1, 1 if variable else self.out_seg, width))
        self.transformers = nn.ModuleList(
            _TransformerLayer(
                width,
                int(cfg.get("dim_heads", 128)),
                bool(cfg.get("differential", True)),
                bool(cfg.get("dyt", True)),
                float(cfg.get("ff_mult", 3)),
                sinusoidal=(depth - i) < sinusoidal_blocks,
            )
            for i in range(depth)
        )

    @property
    def frame_multiple(self) -> int:
        """Decoder latents are padded to whole attention chunks (`chunk_size // stride` latents); a band needs none."""
        return self.chunk_size // self.stride if self.window is None else 1

    def receptive_margin(self) -> tuple[int, int]:
        """(margin, alignment) in latents: how far a decoded latent's audio depends on its neighbours. Chunked
        attention: a chunk is `chunk_size // stride` latents, the shifted layers straddle two aligned chunks, the
        kernel-3 output mapping reaches one patch further: two chunks cover it. Band attention: each layer
        reaches `max(left, right)` tokens further."""
        if self.window is None:
            chunk = max(1, self.chunk_size // self.stride)
            return 2 * chunk, chunk
        per_layer = math.ceil(max(self.window) / self.group)
        return self.depth * per_layer + 1, 1

    def decode_span(self, lo: int, hi: int, size: int) -> tuple[int, int]:
        """The latents c0..c1 of a `size`-latent window whose decode gives latents lo..hi as the whole window does:
        lo..hi widened by the receptive margin, on chunk boundaries so that every chunk is a whole-window one."""
        margin, align = self.receptive_margin()
        return max(0, (lo - margin) // align * align), min(size, -(-(hi + margin) // align) * align)

    def forward(self, x: torch.Tensor, noise: _NoiseSource) -> torch.Tensor:
        batch = x.shape[0]
        if self.kind == "encoder":
            if self.depth > 0:  # pad before the mapping, so padding is mapped silence
                x = _pad_to_multiple(x, self.chunk_size if self.window is None else self.in_seg, dim=-1)
            x = self.mapping(x)
        if self.depth > 0:
            x = x.transpose(1, 2)
            if self.kind == "decoder":
                x = _pad_to_multiple(x, self.frame_multiple, dim=-2)
            groups = x.shape[1] // self.in_seg
            x = x.reshape(batch * groups, self.in_seg, x.shape[-1])
            new = self.new_tokens.expand(batch * groups, self.out_seg, -1)
            if self.mask_noise > 0 and noise.active:
                new = new + noise.draw(new) * self.mask_noise
            x = torch.cat([x, new], dim=1).reshape(batch, groups * self.group, -1)
            x = self._transform(x)
            x = x.reshape(batch * groups, self.group, -1)[:, -self.out_seg :]
            x = x.reshape(batch, groups * self.out_seg, -1).transpose(1, 2)
        if self.kind == "decoder":
            x = self.mapping(x)
        return x

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.window is not None:
            for layer in self.transformers:
                x = layer(x, self.window)
            return x
        if not self.midpoint_shift:
            return self._chunked(x, self.transformers)
        split = self.depth // 2
        shift = self.chunk_tokens // 2
        x = self._chunked(x, self.transformers[:split])
        # Shifted half: edge copies of half a chunk on both sides, so every chunk straddles two aligned ones.
        x = torch.cat([x[:, :shift], x, x[:, -shift:]], dim=1)
        return self._chunked(x, self.transformers[split:])[:, shift:-shift]

    def _chunked(self, x: torch.Tensor, layers: Iterable[nn.Module]) -> torch.Tensor:
        batch, length, width = x.shape
        x = x.reshape(batch * (length // self.chunk_tokens), self.chunk_tokens, width)
        for layer in layers:
            x = layer(x, None)
        return x.reshape(batch, length, width)


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-1, -2)


def _run(layers: nn.ModuleList, x: torch.Tensor, noise: _NoiseSource) -> torch.Tensor:
    for layer in layers:
        x = layer(x, noise) if isinstance(layer, _ResamplingBlock) else layer(x)
    return x


class _Encoder(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        dims = [int(cfg.get("in_channels", 2))] + [int(m) * int(cfg["channels"]) for m in cfg["c_mults"]]
        strides, depths = list(cfg["strides"]), list(cfg["transformer_depths"])
        sinusoidal = int(cfg.get("sinusoidal_blocks", 0))
        blocks: list[nn.Module] = [
            _ResamplingBlock(dims[i], dims[i + 1], int(strides[i]), "encoder", int(depths[i]), cfg, sinusoidal)
            for i in range(len(dims) - 1)
        ]
        self.layers = nn.ModuleList([*blocks, _Transpose(), nn.Linear(dims[-1], int(cfg["latent_dim"])), _Transpose()])


class _Decoder(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        dims = [int(cfg.get("out_channels", 2))] + [int(m) * int(cfg["channels"]) for m in cfg["c_mults"]]
        strides, depths = list(cfg["strides"]), list(cfg["transformer_depths"])
        sinusoidal = list(cfg.get("sinusoidal_blocks", [0] * len(strides)))
        layers: list[nn.Module] = [_Transpose(), nn.Linear(int(cfg["latent_dim"]), dims[-1]), _Transpose()]
        for i in range(len(dims) - 1, 0, -1):
            layers.append(
                _ResamplingBlock(
                    dims[i],
                    dims[i - 1],
                    int(strides[i - 1]),
                    "decoder",
                    int(depths[i - 1]),
                    cfg,
                    int(sinusoidal[i - 1]),
                )
            )
        self.layers = nn.ModuleList(layers)


class _SoftNormBottleneck(nn.Module):
    """`softnorm`: affine + division by the frozen running std on encode; the inverse plus, when asked,
    `noise_regularize` noise (`randn * running_std * 1e-3`, the inference scale) on decode."""

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        dim = int(cfg.get("dim", 32))
        if int(cfg.get("noise_augment_dim", 0)) > 0:
            raise NotImplementedError("softnorm noise_augment_dim > 0 is not supported")
        self.scaling_factor = nn.Parameter(torch.ones(1, dim, 1))
        self.bias = nn.Parameter(torch.zeros(1, dim, 1))
        self.noise_regularize = bool(cfg.get("noise_regularize", False))
        self.auto_scale = bool(cfg.get("auto_scale", False))
        if self.auto_scale:
            self.running_std = nn.Parameter(torch.ones(1), requires_grad=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scaling_factor + self.bias
        return x / self.running_std if self.auto_scale else x

    def decode(self, x: torch.Tensor, noise: _NoiseSource) -> torch.Tensor:
        if self.auto_scale:
            x = x * self.running_std
        if self.noise_regularize and noise.active:
            scaling = self.running_std if self.auto_scale else x.std(dim=-1).unsqueeze(-1)
            x = x + noise.draw(x) * scaling * 1e-3
        return x


# --------------------------------------------------------------------------------------------- the model


class SameAutoencoder(nn.Module):
    """The SA3 pretransform (SAME + softnorm + stereo patching), with the official windowed encode/decode."""

    sample_rate: int
    io_channels: int
    latent_dim: int
    hop: int
    latent_align: int
    chunked: bool

    def __init__(self, ae_config: Mapping[str, Any], sample_rate: int, chunked: bool):
        super().__init__()
        for part, expected in (
            ("encoder", "same"),
            ("decoder", "same"),
            ("bottleneck", "softnorm"),
            ("pretransform", "patched"),
        ):
            kind = ae_config.get(part, {}).get("type")
            if kind != expected:
                raise ValueError(f"pretransform.config.{part}.type must be {expected!r}, got {kind!r}")
        enc_cfg, dec_cfg = ae_config["encoder"]["config"], ae_config["decoder"]["config"]
        patch_cfg = ae_config["pretransform"]["config"]
        if int(patch_cfg.get("oversampling", 1)) != 1 or int(patch_cfg.get("postfilter_channels", 0)) != 0:
            raise NotImplementedError("patched pretransform oversampling/postfilter is not supported")
        self.patch = int(patch_cfg["patch_size"])
        self.io_channels = int(ae_config.get("io_channels", patch_cfg["channels"]))
        if int(patch_cfg["channels"]) != self.io_channels:
            raise ValueError("patched pretransform channels differ from io_channels")
        self.sample_rate = int(sample_rate)
        self.latent_dim = int(ae_config.get("latent_dim", enc_cfg["latent_dim"]))
        self.hop = int(ae_config.get("downsampling_ratio", self.patch * math.prod(enc_cfg["strides"])))
        if self.hop != self.patch * math.prod(enc_cfg["strides"]):
            raise ValueError(f"downsampling_ratio {self.hop} != patch_size x strides")
        if ae_config["decoder"]["config"].get("soft_clip", False):
            raise NotImplementedError("decoder soft_clip is not supported")
        # What the official generate() aligns the latent length to: encoder chunk_size // first stride (2 for
        # both SAME-S and SAME-L configs; SAME-L's band attention does not need it, but parity does).
        self.latent_align = max(1, int(enc_cfg.get("chunk_size", 32)) // int(enc_cfg["strides"][0]))
        self.chunked = bool(chunked)
        self.encoder = _Encoder(enc_cfg)
        self.decoder = _Decoder(dec_cfg)
        self.bottleneck = _SoftNormBottleneck(ae_config["bottleneck"].get("config", {}))
        self.requires_grad_(False).eval()

    @classmethod
    def from_config(cls, model_config: Mapping[str, Any]) -> SameAutoencoder:
        """Build from the WHOLE official `model_config.json` dict (its `model.pretransform` block)."""
        try:
            pretransform = model_config["model"]["pretransform"]
            sample_rate = model_config["sample_rate"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"model_config lacks model.pretransform / sample_rate: {exc}") from exc
        if pretransform.get("type") != "autoencoder":
            raise ValueError(f"model.pretransform.type must be 'autoencoder', got {pretransform.get('type')!r}")
        return cls(pretransform["config"], sample_rate, bool(pretransform.get("chunked", False)))

    def load_official(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Load the `pretransform.model.*` tensors of an official checkpoint (or an already-stripped dict).

        Strict: any missing, unexpected or mis-shaped tensor raises ValueError naming it. The empty
        `bottleneck.noise_scaling_factor` (noise_augment_dim 0) that some checkpoints carry is ignored."""
        if any(key.startswith(PRETRANSFORM_PREFIX) for key in tensors):
            state = {k[len(PRETRANSFORM_PREFIX) :]: v for k, v in tensors.items() if k.startswith(PRETRANSFORM_PREFIX)}
        else:
            state = dict(tensors)
        if "bottleneck.noise_scaling_factor" in state and state["bottleneck.noise_scaling_factor"].numel() == 0:
            del state["bottleneck.noise_scaling_factor"]
        try:
            load_strict(self, state)
        except ValueError as exc:
            raise ValueError(f"SAME checkpoint does not match model_config ({PRETRANSFORM_PREFIX}*): {exc}") from None

    # ------------------------------------------------------------------ encode

    @torch.no_grad()
    def encode(self, audio: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, io_channels, N) at the model rate -> (B, latent_dim, L), as the official pretransform encodes.

        Windowed when `chunked` and N >= 128 latents of audio (then L = N // hop); otherwise one pass over the
        input zero-padded to whole patches and chunks. `generator`: where an encoder with `mask_noise > 0` draws
        its new-token noise ([B * groups, 1 or stride, width] per noisy TRB, window by window, as the official
        `torch.randn_like` on the CPU global RNG); None encodes without that noise. An encoder without
        `mask_noise` (see `encode_draws`) never touches the generator."""
        if audio.ndim != 3 or audio.shape[1] != self.io_channels or audio.shape[-1] < 1:
            raise ValueError(f"audio must be (batch, {self.io_channels}, samples>0), got {tuple(audio.shape)}")
        audio = audio.to(self._dtype)
        noise = _NoiseSource(generator)
        total = audio.shape[-1]
        if not _windowed(total // self.hop, self.chunked):
            return self._encode_once(audio, noise)  # the whole pass, padding included, as the official encode
        out = audio.new_zeros(audio.shape[0], self.latent_dim, total // self.hop)
        for w in windows(total, self.hop, chunked=self.chunked):  # every window: each one draws
            chunk = self._encode_once(audio[..., w.source : w.source + w.size], noise)
            out[..., w.first : w.end] = chunk[..., w.first - w.at : w.end - w.at]
        return out

    @property
    def encode_draws(self) -> bool:
        """Whether `encode` draws from its generator: some encoder TRB with transformer layers has `mask_noise`."""
        return any(isinstance(m, _ResamplingBlock) and m.depth > 0 and m.mask_noise > 0 for m in self.encoder.layers)

    def _encode_once(self, audio: torch.Tensor, noise: _NoiseSource) -> torch.Tensor:
        x = _pad_to_multiple(audio, self.patch, dim=-1)
        b, c, n = x.shape
        x = x.reshape(b, c, n // self.patch, self.patch).transpose(2, 3).reshape(b, c * self.patch, n // self.patch)
        return self.bottleneck.encode(_run(self.encoder.layers, x, noise))

    # ------------------------------------------------------------------ decode

    @torch.no_grad()
    def decode(
        self,
        latents: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        noises: Sequence[torch.Tensor] | None = None,
        keep: int | None = None,
    ) -> torch.Tensor:
        """(B, latent_dim, L) -> (B, io_channels, L * hop), as the official pretransform decodes.

        `generator`: the official decode-time draws (per window: bottleneck `noise_regularize` [B, D, Lw], then each
        TRB's `mask_noise` [B * Lw_padded, stride, width]) taken from it in that order; None: no decode-time
        noise. `noises`: replay exactly those draws instead (list in draw order). Windowed when `chunked` and
        L >= 128: each window is one decode with its own draws, so time and memory grow linearly with L.

        `keep`: return `decode(latents, generator)[..., : keep * hop]` (the same numbers up to float round-off) and
        compute only what those samples need, since a clip is shorter than its window. Windows whose audio lies
        past them are skipped (their draws come after every draw that matters), and with one transformer block
        (SAME-S and SAME-L) each window is decoded only over the latents it provides to the kept audio plus the
        block's receptive margin; its draws are made at whole-window size in the official order and cut to those
        latents, so every kept sample sees the noise it sees in the whole decode. 10 s: 120 of 256 latents."""
        if latents.ndim != 3 or latents.shape[1] != self.latent_dim or latents.shape[-1] < 1:
            raise ValueError(f"latents must be (batch, {self.latent_dim}, frames>0), got {tuple(latents.shape)}")
        if keep is not None and noises is not None:
            raise ValueError("keep decodes part of each window, which whole-window replayed noises do not fit")
        latents = latents.to(self._dtype)
        batch, length = latents.shape[0], latents.shape[-1]
        kept = length if keep is None else max(1, min(int(keep), length))
        block = None if keep is None else self._span_block()
        noise = _NoiseSource(generator, noises)
        hop = self.hop
        out = latents.new_zeros(batch, self.io_channels, kept * hop)
        for w in windows(length, 1, chunked=self.chunked):
            if w.first >= kept:
                break  # this window's audio, and every later one's, lies past what is returned
            lo, hi = w.first - w.at, min(w.end, kept) - w.at  # what it provides, in window latents
            if block is None:
                c0, c1, source = 0, w.size, noise
            else:
                c0, c1 = block.decode_span(lo, hi, w.size)
                source = self._span_draws(block, generator, batch, w.size, c0, c1)
            audio = self._decode_once(latents[..., w.source + c0 : w.source + c1], source)
            if source is not noise:
                source.finish()
            out[..., (w.at + lo) * hop : (w.at + hi) * hop] = audio[..., (lo - c0) * hop : (hi - c0) * hop]
        noise.finish()
        return out

    def _span_block(self) -> _ResamplingBlock | None:
        """The decoder's one transformer block, whose receptive margin bounds a decoded latent's reach; None when
        the decoder is not built that way (then `keep` decodes whole windows)."""
        blocks = [m for m in self.decoder.layers if isinstance(m, _ResamplingBlock)]
        return blocks[0] if len(blocks) == 1 and blocks[0].depth > 0 else None

    def _span_draws(
        self,
        block: _ResamplingBlock,
        generator: torch.Generator | None,
        batch: int,
        size: int,
        c0: int,
        c1: int,
    ) -> _NoiseSource:
        """A window's official draws, made at whole-window size (`size` latents, the block's padded frames) and cut
        to latents c0..c1, for a decode of those latents alone."""
        if generator is None:
            return _NoiseSource()
        noises: list[torch.Tensor] = []
        if self.bottleneck.noise_regularize:
            full = torch.randn(
                (batch, self.latent_dim, size), generator=generator, dtype=self._dtype, device=generator.device
            )
            noises.append(full[..., c0:c1])
        if block.mask_noise > 0:
            frames = -(-size // block.frame_multiple) * block.frame_multiple  # the block draws for its padding too
            end = frames if c1 == size else c1
            width = block.new_tokens.shape[-1]
            shape = (batch * frames, block.out_seg, width)
            full = torch.randn(shape, generator=generator, dtype=self._dtype, device=generator.device)
            noises.append(full.view(batch, frames, block.out_seg, width)[:, c0:end].reshape(-1, block.out_seg, width))
        return _NoiseSource(replay=noises) if noises else _NoiseSource()

    def _decode_once(self, latents: torch.Tensor, noise: _NoiseSource) -> torch.Tensor:
        x = _run(self.decoder.layers, self.bottleneck.decode(latents, noise), noise)
        b, ch, n = x.shape
        c = ch // self.patch
        return x.reshape(b, c, self.patch, n).transpose(2, 3).reshape(b, c, n * self.patch)

    @property
    def _dtype(self) -> torch.dtype:
        return self.bottleneck.scaling_factor.dtype

    def window_starts(self, length: int) -> list[int]:
        """Latent offsets of the decode windows for `length` latents ([0] when decoded in one pass)."""
        return [w.source for w in windows(length, 1, chunked=self.chunked)]


@dataclass(frozen=True)
class Window:
    """One pass of the official windowed encode/decode. `source`/`size` are in input units (samples when encoding,
    latents when decoding); the rest in latents. Its output's first latent lands on `at`; of it, latents
    `first`..`end` survive (a later window overwrites from its own `first` on), so the windows' survivors tile
    the output and writing only them gives what the official overwriting loop gives."""

    source: int
    size: int
    at: int
    first: int
    end: int


def _windowed(latents: int, chunked: bool) -> bool:
    return chunked and latents >= WINDOW_LATENTS


def windows(total: int, unit: int = 1, *, chunked: bool = True) -> list[Window]:
    """The passes of the official windowed encode/decode over `total` input units, `unit` per latent (the hop
    for audio, 1 for latents): windows of 128 latents every 96, the last one anchored to the end, 16 latents
    trimmed at inner edges. One pass over everything when not `chunked` or shorter than a window."""
    latents = total // unit
    if not _windowed(latents, chunked):
        return [Window(0, total, 0, 0, latents)]
    size = WINDOW_LATENTS * unit
    starts = _window_starts(total, size, (WINDOW_LATENTS - WINDOW_OVERLAP) * unit)
    # The last window is anchored to the end in input units; its output lands on the last 128 latents.
    ats = [start // unit for start in starts[:-1]] + [latents - WINDOW_LATENTS]
    trim = WINDOW_OVERLAP // 2
    firsts = [0] + [at + trim for at in ats[1:]]
    ends = firsts[1:] + [latents]
    return [Window(*parts) for parts in zip(starts, [size] * len(starts), ats, firsts, ends, strict=True)]


def _window_starts(total: int, window: int, hop: int) -> list[int]:
    """Every `hop` from 0, plus a last window anchored to the end (the official chunking)."""
    starts = list(range(0, total - window + 1, hop))
    if starts[-1] != total - window:
        starts.append(total - window)
    return starts
