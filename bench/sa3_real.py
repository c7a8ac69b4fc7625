"""The real-size Stable Audio 3 small structure with random weights, built in memory, for benchmarks only.

Shapes are Stability's small config (`/work/shared/fixtures/sa3-official/small-tiny/MAKING.md`, real values in
brackets there): DiT embed 1024, depth 20, 16 heads, 64 memory tokens, local_add_cond_dim 257, latent 256;
SAME-S width 768 (channels 128 x c_mults [6]), 6 layers, dim_heads 64, ff x3, chunk 32 with midpoint shift;
T5Gemma b-b encoder (12 layers, hidden 768, 12 heads x 64, GeGLU 2048, vocab 256000). Timing does not depend on
weight values, so random weights give the real cost of the shapes. The tokenizer is the tiny offline one; prompts
are padded to 256 tokens exactly like the real one, so the encoder does the real amount of work.

Built by `sa3_structures.build_ours` with every parameter drawn (`_randomize`), not only the zero-initialised ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .sa3_structures import build_ours, real_config


def real_small_config() -> dict:
    """`model_config.json` of the small structure at its real widths."""
    return real_config("small")


def _randomize(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every parameter a plausible random value (zero-initialised gates and weight-norm `v` would give NaN
    or an identity map): N(0, 1/fan_in) for matrices, small noise around the init for vectors."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
            elif name.endswith(("weight_g", "gamma", "alpha")) or "norm" in name:
                continue
            else:
                param.add_(torch.randn(param.shape, generator=generator) * param.shape[-1] ** -0.5)


def build_real_small(
    seed: int = 0,
    text_cache_size: int = 0,
    workdir: Path | None = None,
    options=None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
):
    """A `StableAudio3Model` of the real small shapes (random weights, every parameter drawn in float32), served
    at `dtype` on `device` as `options` (an `SA3Options`; None: the defaults) say."""
    return build_ours(
        "small",
        seed,
        workdir,
        randomize=_randomize,
        text_cache_size=text_cache_size,
        name="sa3-small-real-random",
        options=options,
        dtype=dtype,
        device=device,
    )


def parameter_counts(model) -> dict[str, float]:
    """Millions of parameters per part (a check that the shapes are the real ones)."""

    def count(m: torch.nn.Module) -> float:
        return round(sum(p.numel() for p in m.parameters()) / 1e6, 1)

    return {
        "dit": count(model.dit),
        "autoencoder": count(model.autoencoder),
        "text_encoder": count(model.text.encoder),
    }
