"""The Stable Audio 3 diffusion transformer, in Stability's module names.

Why our own module and not diffusers' `StableAudio3DiTModel`: diffusers' transformer is numerically the
official DiT only once its block RMSNorm eps is changed to 1e-5, it has no padding mask (the official CPU
path multiplies the *value* rows of padded latent frames by zero in self-attention while the padded keys stay
in the softmax), and its weights need a key converter from `model.model.*`. Reusing it would mean a converter,
an attention processor and an eps patch, three places to drift from the official code. This module instead
mirrors `stable_audio_3/models/{dit,transformer}.py` operation for operation (same order of float ops, same
views), so the checkpoint's `model.model.*` tensors load as they are and the fixtures reproduce bit for bit;
and an adapter written against Stability's names (`model.transformer.layers.0.self_attn.to_qkv`) maps
onto these modules one to one.

The forward takes one timestep, context, global and local conditioning and padding mask *per row*, so one call
serves a batch of unrelated requests (each with its own guidance rows). Guidance is not in here: see
`sampling.guided_velocity`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...adapters.hooks import RowPlans, applied
from ...adapters.hooks import window as adapter_rows
from . import numerics
from .config import DiTConfig


def expo_fourier_features(t: torch.Tensor, dim: int, min_freq: float = 0.5, max_freq: float = 10000.0) -> torch.Tensor:
    """Stability's `ExpoFourierFeatures`: cos/sin of t at log-spaced frequencies, computed in float32."""
    in_dtype = t.dtype
    t = t.float()
    if t.dim() == 1:
        t = t.unsqueeze(-1)
    ramp = numerics.linspace(0, 1, dim // 2, device=t.device)  # the fused form on every CPU (see numerics)
    log_min, log_max = math.log(min_freq), math.log(max_freq)
    freqs = torch.exp(ramp * (log_max - log_min) + log_min)
    args = t * freqs * 2 * math.pi
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(in_dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, force_fp32: bool = False) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.force_fp32 = force_fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.force_fp32:
            return F.rms_norm(x.float(), x.shape[-1:], weight=self.gamma.float(), eps=self.eps).to(x.dtype)
        return F.rms_norm(x, x.shape[-1:], weight=self.gamma, eps=self.eps)


class RotaryEmbedding(nn.Module):
    """Frequencies of the partial rotary embedding (the first `dim` channels of each head). `inv_freq` is a buffer,
    so a float16 model holds it rounded to float16, as Stability's `model.to(float16)` does; the positions times
    those frequencies are float32 (the product promotes), and q/k are rotated in float32."""

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        # persistent: the official checkpoint stores it (`...rotary_pos_emb.inv_freq`)
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, seq_len: int) -> torch.Tensor:
        t = torch.arange(seq_len, device=self.inv_freq.device).to(torch.float32)
        freqs = torch.einsum("i , j -> i j", t, self.inv_freq)
        return torch.cat((freqs, freqs), dim=-1)


def rotary_tables(freqs: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (float32) of the last `seq_len` rows of `RotaryEmbedding`'s frequencies, one half of them: the
    frequencies are the same half twice, so one half holds every value. Computed once per forward and shared by
    every layer's q and k (each layer computing them again gives the same numbers)."""
    half = freqs.float()[-seq_len:, : freqs.shape[-1] // 2]
    return half.cos(), half.sin()


def apply_rotary(
    t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Stability's `apply_rotary_pos_emb` on (b, h, n, d): the first `2 * cos.shape[-1]` channels rotated in float32
    and rounded once to `t`'s dtype, the rest passed through; written into `out` when given (any layout).

    The same numbers as Stability's form `t * cos + rotate_half(t) * sin` on `t.float()`, in fewer and smaller
    passes: with x1, x2 the two rotated halves, that form is `x1 * c + (-x2) * s` (exactly `x1 * c - x2 * s`) and
    `x2 * c + x1 * s`, and the pass-through channels go float32 and back unchanged (an exact round trip)."""
    half = cos.shape[-1]
    if out is None:
        out = torch.empty_like(t)
    x1, x2 = t[..., :half].float(), t[..., half : 2 * half].float()
    out[..., :half] = x1 * cos - x2 * sin
    out[..., half : 2 * half] = x2 * cos + x1 * sin
    out[..., 2 * half :] = t[..., 2 * half :]
    return out


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, n, h*d) -> (b, h, n, d), as a view (einops' `b n (h d) -> b h n d`)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


class Attention(nn.Module):
    """Self-attention (`to_qkv`) or cross-attention (`to_q`, `to_kv`); differential attention subtracts a
    second softmax map computed from `q_diff`/`k_diff` over the same values."""

    def __init__(
        self,
        dim: int,
        dim_heads: int,
        dim_context: int | None = None,
        differential: bool = False,
        qk_norm: str = "none",
        qk_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.differential = differential
        self.num_heads = dim // dim_heads
        dim_kv = dim_context if dim_context is not None else dim
        self.kv_heads = dim_kv // dim_heads
        self.cross = dim_context is not None
        if self.cross:
            self.to_q = nn.Linear(dim, dim * (2 if differential else 1), bias=False)
            self.to_kv = nn.Linear(dim_kv, dim_kv * (3 if differential else 2), bias=False)
        else:
            self.to_qkv = nn.Linear(dim, dim * (5 if differential else 3), bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.qk_norm = qk_norm
        if qk_norm == "rms":
            self.q_norm = RMSNorm(dim_heads, eps=qk_norm_eps)
            self.k_norm = RMSNorm(dim_heads, eps=qk_norm_eps)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, value_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """`value_mask`: (b, 1, n, 1) in `v`'s dtype, 1 on valid frames (`ContinuousTransformer.forward`)."""
        if self.num_heads != self.kv_heads:
            repeat = self.num_heads // self.kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        if value_mask is not None:
            # The official non-flash path: padded frames contribute nothing, their keys stay in the softmax.
            v = v * value_mask
        return F.scaled_dot_product_attention(q, k, v, is_causal=False)

    def context_kv(self, context: torch.Tensor) -> torch.Tensor:
        """Cross-attention keys and values of `context` as the attention takes them: (b, 2, kv_heads, n, d) holding
        the normalised keys and the values ((b, 3, ...): keys, differential keys, values). The same numbers at every
        step of a request, so a request computes them once (`DiffusionTransformer.cross_kv`); the forward computes
        them here when none are given, so both paths run the same operations."""
        kv_h = self.kv_heads
        kv = self.to_kv(context)
        if self.differential:
            k, k_diff, v = kv.chunk(3, dim=-1)
            k = torch.stack([_heads(k, kv_h), _heads(k_diff, kv_h)], dim=1)
        else:
            k, v = kv.chunk(2, dim=-1)
            k = _heads(k, kv_h)
        if self.qk_norm == "rms":
            k = self.k_norm(k).to(k.dtype)
        v = _heads(v, kv_h).unsqueeze(1)
        return torch.cat([k if self.differential else k.unsqueeze(1), v], dim=1)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        value_mask: torch.Tensor | None = None,
        kv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`rotary`: `rotary_tables` of the sequence; `value_mask`: (b, 1, n, 1) in the weights' dtype; `kv`:
        `context_kv(context)` computed earlier (for speed: a request's context is the same at every step, so its
        cross-attention keys and values are computed once; `context` is then not read)."""
        h = self.num_heads
        if self.cross:
            if kv is None:
                assert context is not None
                kv = self.context_kv(context)
            k, v = (kv[:, :2], kv[:, 2]) if self.differential else (kv[:, 0], kv[:, 1])
            if self.differential:
                q, q_diff = self.to_q(x).chunk(2, dim=-1)
                q = torch.stack([_heads(q, h), _heads(q_diff, h)], dim=1)
            else:
                q = _heads(self.to_q(x), h)
            if self.qk_norm == "rms":
                q = self.q_norm(q).to(q.dtype)
        else:
            if self.differential:
                q, k, v, q_diff, k_diff = (_heads(p, h) for p in self.to_qkv(x).chunk(5, dim=-1))
                q = torch.stack([q, q_diff], dim=1)
                k = torch.stack([k, k_diff], dim=1)
            else:
                q, k, v = (_heads(p, h) for p in self.to_qkv(x).chunk(3, dim=-1))
            if self.qk_norm == "rms":
                q = self.q_norm(q).to(q.dtype)
                k = self.k_norm(k).to(k.dtype)
        if rotary is not None:
            # Stability's code scales the key frequencies by len(q) / len(k), which is 1 in self-attention. Rotated
            # into buffers laid out (b, n, heads, d), so the attention's output is already in the (b, n, h*d) order
            # `to_out` reads (the CPU kernels write their output in the query's layout): no copy before `to_out`.
            q = apply_rotary(q, *rotary, out=_sequence_major(q))
            k = apply_rotary(k, *rotary, out=_sequence_major(k))
        if self.differential:
            q, q_diff = q.unbind(dim=1)
            k, k_diff = k.unbind(dim=1)
            out = self._attend(q, k, v, value_mask) - self._attend(q_diff, k_diff, v, value_mask)
        else:
            out = self._attend(q, k, v, value_mask)
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def _sequence_major(t: torch.Tensor) -> torch.Tensor:
    """An empty tensor shaped like `t` (..., n, d) whose memory is ordered (b, n, ..., d)."""
    shape = (t.shape[0], t.shape[-2], *t.shape[1:-2], t.shape[-1])
    return torch.empty(shape, dtype=t.dtype, device=t.device).movedim(1, -2)


def _bias_fused_ok() -> bool:
    """oneDNN's linear with the bias as a post-op is in this torch, and bfloat16 matmuls go through oneDNN."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_BIAS_FUSED = _bias_fused_ok()


def _linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)`, for the feed-forward's biased Linears. On the CPU in bfloat16, `F.linear` copies the bias into
    the (tokens x 8192) output before oneDNN's matmul adds the product to it; oneDNN's own linear adds the bias as
    a post-op, bitwise the same numbers (measured: bench/bench_sa3_bf16_step.py), without that pass. Only for a
    plain, unhooked `nn.Linear` (LoRA hooks, int8 and compile keep the module call) and a contiguous input (a
    strided one takes another oneDNN path)."""
    if (
        _BIAS_FUSED
        and x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and type(layer) is nn.Linear
        and layer.bias is not None
        and x.is_contiguous()
        and not (layer._forward_hooks or layer._forward_pre_hooks)
        and not torch.compiler.is_compiling()
    ):
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [], "")
    return layer(x)


class GLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = _linear(self.proj, x).chunk(2, dim=-1)
        return x * self.act(gate)


class FeedForward(nn.Module):
    """SwiGLU; `ff.ff.0` / `ff.ff.2` as in the checkpoint (index 1 is Stability's no-op rearrange)."""

    def __init__(self, dim: int, mult: float) -> None:
        super().__init__()
        inner = int(dim * mult)
        self.ff = nn.Sequential(GLU(dim, inner), nn.Identity(), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(self.ff[2], self.ff[0](x))  # ff[1] is the identity


class TransformerBlock(nn.Module):
    """adaLN block: self-attention (RoPE, padding mask), cross-attention, the local (inpainting) term, SwiGLU."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        heads = min(cfg.dim_heads, dim)
        attn = {"differential": cfg.differential, "qk_norm": cfg.qk_norm, "qk_norm_eps": cfg.qk_norm_eps}
        self.pre_norm = RMSNorm(dim, cfg.norm_eps, cfg.norm_force_fp32)
        self.self_attn = Attention(dim, heads, **attn)
        self.cross_attend_norm = RMSNorm(dim, cfg.norm_eps, cfg.norm_force_fp32)
        context_dim = dim if cfg.project_cond_tokens else cfg.cond_token_dim
        self.cross_attn = Attention(dim, heads, dim_context=context_dim, **attn)
        self.ff_norm = RMSNorm(dim, cfg.norm_eps, cfg.norm_force_fp32)
        self.ff = FeedForward(dim, cfg.ff_mult)
        self.to_scale_shift_gate = nn.Parameter(torch.zeros(6 * dim))
        self.to_local_embed = (
            nn.Sequential(nn.Linear(cfg.local_add_cond_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
            if cfg.local_add_cond_dim
            else None
        )

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        global_cond: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        value_mask: torch.Tensor | None,
        local_add_cond: torch.Tensor | None,
        context_kv: torch.Tensor | None = None,
        local_embed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`local_embed`: `to_local_embed(local_add_cond)` computed earlier (for speed: the same at every step of a
        request), already padded to the memory tokens or not; `local_add_cond` is then not read. `rotary`:
        `rotary_tables` of the sequence; `value_mask`: (b, 1, n, 1) in the weights' dtype."""
        scale_self, shift_self, gate_self, scale_ff, shift_ff, gate_ff = (
            (self.to_scale_shift_gate + global_cond).unsqueeze(1).chunk(6, dim=-1)
        )
        residual = x
        x = self.pre_norm(x)
        x = x * (1 + scale_self) + shift_self
        x = self.self_attn(x, rotary=rotary, value_mask=value_mask)
        x = x * torch.sigmoid(1 - gate_self)
        x = x + residual
        x = x + self.cross_attn(self.cross_attend_norm(x), context=context, kv=context_kv)
        if local_embed is None and local_add_cond is not None and self.to_local_embed is not None:
            local_embed = self.to_local_embed(local_add_cond)
        if local_embed is not None:
            if local_embed.shape[-2] != x.shape[-2]:  # zeros on the memory tokens in front (`_left_pad_to_match`)
                local_embed = F.pad(local_embed, (0, 0, x.shape[-2] - local_embed.shape[-2], 0), value=0.0)
            x = x + local_embed
        residual = x
        x = self.ff_norm(x)
        x = x * (1 + scale_ff) + shift_ff
        x = self.ff(x)
        x = x * torch.sigmoid(1 - gate_ff)
        return x + residual


class ContinuousTransformer(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.project_in = nn.Linear(cfg.io_channels, dim, bias=False)
        self.project_out = nn.Linear(dim, cfg.io_channels, bias=False)
        self.rotary_pos_emb = RotaryEmbedding(max(cfg.dim_heads // 2, 32))
        self.num_memory_tokens = cfg.num_memory_tokens
        if cfg.num_memory_tokens:
            self.memory_tokens = nn.Parameter(torch.zeros(cfg.num_memory_tokens, dim))
        self.global_cond_embedder = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim * 6))
        self.layers = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.depth)])

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        global_cond: torch.Tensor,
        local_add_cond: torch.Tensor | None,
        padding_mask: torch.Tensor | None,
        context_kv: list[torch.Tensor] | None = None,
        local_embeds: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`global_cond` is already through `global_cond_embedder` (the caller runs it per request); `context_kv`:
        each layer's cross-attention keys and values (`Attention.context_kv`), computed earlier
        (`DiffusionTransformer.cross_kv`); `local_embeds`: each layer's `to_local_embed(local_add_cond)`
        (`DiffusionTransformer.local_embeds`)."""
        batch = x.shape[0]
        x = self.project_in(x)
        if self.num_memory_tokens:
            x = torch.cat((self.memory_tokens.expand(batch, -1, -1), x), dim=1)
        # Once per forward, the same for every layer: the rotary cos/sin and the value mask in the weights' dtype.
        rotary = rotary_tables(self.rotary_pos_emb(x.shape[1]), x.shape[1])
        value_mask = None
        if padding_mask is not None:
            memory_valid = torch.ones(batch, self.num_memory_tokens, device=x.device, dtype=torch.bool)
            value_mask = torch.cat([memory_valid, padding_mask], dim=-1).to(x.dtype)[:, None, :, None]
        for i, layer in enumerate(self.layers):
            kv = None if context_kv is None else context_kv[i]
            local = None if local_embeds is None else local_embeds[i]
            x = layer(x, context, global_cond, rotary, value_mask, local_add_cond, kv, local)
        return self.project_out(x[:, self.num_memory_tokens :, :])


class DiffusionTransformer(nn.Module):
    """`model.model` of the official checkpoint: velocity of rows (B, C, L) at per-row timesteps t (B,)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.to_timestep_embed = nn.Sequential(
            nn.Linear(cfg.timestep_features_dim, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        cond_dim = dim if cfg.project_cond_tokens else cfg.cond_token_dim
        self.to_cond_embed = nn.Sequential(
            nn.Linear(cfg.cond_token_dim, cond_dim, bias=False), nn.SiLU(), nn.Linear(cond_dim, cond_dim, bias=False)
        )
        self.to_global_embed = nn.Sequential(
            nn.Linear(cfg.global_cond_dim, dim, bias=False), nn.SiLU(), nn.Linear(dim, dim, bias=False)
        )
        self.transformer = ContinuousTransformer(cfg)
        self.preprocess_conv = nn.Conv1d(cfg.io_channels, cfg.io_channels, 1, bias=False)
        self.postprocess_conv = nn.Conv1d(cfg.io_channels, cfg.io_channels, 1, bias=False)

    @staticmethod
    def _logsnr_cond(t: torch.Tensor) -> torch.Tensor:
        """`timestep_features_logsnr`: t -> log-SNR clamped to [-12, 5], normalised to [0, 1]."""
        tc = t.float().clamp(1e-7, 1 - 1e-7)
        logsnr = torch.log((1 - tc) / tc).clamp(-12.0, 5.0)
        return ((5.0 - logsnr) / 17.0).to(t.dtype)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None,
        global_cond: torch.Tensor,
        local_add_cond: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        row_groups: list[int] | None = None,
        context_kv: list[torch.Tensor] | None = None,
        local_embeds: list[torch.Tensor] | None = None,
        adapters: RowPlans | None = None,
    ) -> torch.Tensor:
        """`row_groups`: rows per request (1, or 2 under guidance), in order. The per-request vectors (timestep and
        global embeddings) are then projected request by request: a matrix product over 1 row and over several
        rounds differently, and each request must get exactly the numbers of its solo (official) forward.
        `context_kv` (for speed): `cross_kv(context)` of these rows, computed once per request; `context` is then
        not used; `local_embeds` (for speed): `local_embeds(local_add_cond)` of these rows, computed once per
        request; `local_add_cond` is then not used. `adapters`: each request's adapter plan on its rows (from
        `Adapters.rows`); None runs the base weights."""
        with applied(adapters):
            return self._forward(
                x, t, context, global_cond, local_add_cond, padding_mask, row_groups, context_kv, local_embeds, adapters
            )

    def _forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None,
        global_cond: torch.Tensor,
        local_add_cond: torch.Tensor | None,
        padding_mask: torch.Tensor | None,
        row_groups: list[int] | None,
        context_kv: list[torch.Tensor] | None,
        local_embeds: list[torch.Tensor] | None,
        adapters: RowPlans | None,
    ) -> torch.Tensor:
        dtype = self.preprocess_conv.weight.dtype
        x = x.to(dtype)
        t = t.float()  # the official code keeps t in float32 whatever the weights' dtype
        if context_kv is None:
            context = self.to_cond_embed(context.to(dtype))
        if local_add_cond is not None and local_embeds is None:
            local_add_cond = local_add_cond.to(dtype).transpose(1, 2)
        # The timestep reaches its Fourier features in the weights' dtype (Stability: `t_cond.to(x.dtype)`); with
        # frequencies up to 1e4, that float16 rounding decides the high-frequency features.
        t_cond = (self._logsnr_cond(t) if self.cfg.timestep_features_logsnr else t).to(dtype)
        features = expo_fourier_features(t_cond[:, None], self.cfg.timestep_features_dim)
        global_cond = global_cond.to(dtype)
        groups = row_groups or [x.shape[0]]
        embedded = []
        first = 0
        for g_rows, f_rows in zip(global_cond.split(groups), features.split(groups), strict=True):
            with adapter_rows(adapters, first, first + g_rows.shape[0]):  # these rows are one request's
                global_embed = self.to_global_embed(g_rows) + self.to_timestep_embed(f_rows)
                embedded.append(self.transformer.global_cond_embedder(global_embed))
            first += g_rows.shape[0]
        x = self.preprocess_conv(x) + x
        out = self.transformer(
            x.transpose(1, 2), context, torch.cat(embedded), local_add_cond, padding_mask, context_kv, local_embeds
        )
        out = out.transpose(1, 2)
        return self.postprocess_conv(out) + out

    def cross_kv(self, context: torch.Tensor, adapters: RowPlans | None = None) -> list[torch.Tensor]:
        """Every layer's cross-attention keys and values (`Attention.context_kv` of the projected context: `to_kv`,
        the key norm, heads) for these rows: the same numbers `forward` computes from `context` (with the same
        `adapters`), which stay the same at every step of a request."""
        with applied(adapters):
            context = self.to_cond_embed(context.to(self.preprocess_conv.weight.dtype))
            return [layer.cross_attn.context_kv(context) for layer in self.transformer.layers]

    def local_embeds(self, local_add_cond: torch.Tensor, adapters: RowPlans | None = None) -> list[torch.Tensor]:
        """Every layer's `to_local_embed` of these rows' local (inpainting) conditioning (B, C+1, L): the same
        numbers `forward` computes from it, which stays the same at every step of a request, already padded with
        the zeros the forward adds on the memory tokens (B, memory + L, dim). Only for a DiT with local
        conditioning (`cfg.local_add_cond_dim`: then every block has `to_local_embed`)."""
        memory = self.transformer.num_memory_tokens
        with applied(adapters):
            cond = local_add_cond.to(self.preprocess_conv.weight.dtype).transpose(1, 2)
            return [F.pad(layer.to_local_embed(cond), (0, 0, memory, 0)) for layer in self.transformer.layers]
