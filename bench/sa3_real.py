"""The real-size Stable Audio 3 small structure with random weights, built in memory, for benchmarks only.

Shapes are Stability's small config (`/work/shared/fixtures/sa3-official/small-tiny/MAKING.md`, real values in
brackets there): DiT embed 1024, depth 20, 16 heads, 64 memory tokens, local_add_cond_dim 257, latent 256;
SAME-S width 768 (channels 128 x c_mults [6]), 6 layers, dim_heads 64, ff x3, chunk 32 with midpoint shift;
T5Gemma b-b encoder (12 layers, hidden 768, 12 heads x 64, GeGLU 2048, vocab 256000). Timing does not depend on
weight values, so random weights give the real cost of the shapes. The tokenizer is the tiny offline one; prompts
are padded to 256 tokens exactly like the real one, so the encoder does the real amount of work.

Nothing is written to disk except the tiny tokenizer folder; `StableAudio3Model` is assembled from its parts the
way `from_checkpoint` assembles it.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from stable_audio_service.models.tiny import SA3_TEXT_FOLDER, tiny_sa3_config, write_tiny_sa3

REAL_T5GEMMA_ENCODER = {
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "head_dim": 64,
    "query_pre_attn_scalar": 64,
    "sliding_window": 4096,
    "max_position_embeddings": 8192,
    "vocab_size": 256000,
}


def real_small_config() -> dict:
    """`model_config.json` of the small structure at its real widths (the tiny config, widened)."""
    raw = copy.deepcopy(tiny_sa3_config("small"))
    pre = raw["model"]["pretransform"]["config"]
    for part in ("encoder", "decoder"):
        pre[part]["config"].update(channels=128, c_mults=[6], latent_dim=256, transformer_depths=[6], dim_heads=64)
    pre["bottleneck"]["config"]["dim"] = 256
    pre["latent_dim"] = 256
    diffusion = raw["model"]["diffusion"]["config"]
    diffusion.update(
        io_channels=256,
        embed_dim=1024,
        depth=20,
        num_heads=16,
        local_add_cond_dim=257,
        timestep_features_dim=256,
        num_memory_tokens=64,
        ff_kwargs={"mult": 4},
    )
    raw["model"]["io_channels"] = 256
    return raw


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


def build_real_small(seed: int = 0, text_cache_size: int = 0, workdir: Path | None = None):
    """A `StableAudio3Model` of the real small shapes (random weights, float32, CPU)."""
    from transformers import T5GemmaConfig, T5GemmaEncoderModel

    from stable_audio_service.models.stable_audio_3.autoencoder import SameAutoencoder
    from stable_audio_service.models.stable_audio_3.conditioning import DurationConditioner, TextConditioner
    from stable_audio_service.models.stable_audio_3.config import parse_config
    from stable_audio_service.models.stable_audio_3.dit import DiffusionTransformer
    from stable_audio_service.models.stable_audio_3.family import StableAudio3Model

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="sa3-real-"))
    if not (workdir / SA3_TEXT_FOLDER).is_dir():
        write_tiny_sa3(workdir, "small", seed)  # for its tokenizer and text folder only
    raw = real_small_config()
    config = parse_config(raw)
    dit = DiffusionTransformer(config.dit)
    _randomize(dit, generator)
    autoencoder = SameAutoencoder.from_config(raw)
    _randomize(autoencoder, generator)
    with torch.no_grad():  # the official decoder's output mapping is small: keep the noise inside [-1, 1]
        autoencoder.decoder.layers[-1].mapping.weight_g.fill_(0.1)
    duration = DurationConditioner(config.duration, config.cond_dim)
    _randomize(duration, generator)
    text = TextConditioner(config.text, workdir / SA3_TEXT_FOLDER, config.cond_dim, text_cache_size, "cpu")
    module = dict(REAL_T5GEMMA_ENCODER, layer_types=["sliding_attention", "full_attention"] * 6)
    encoder_config = T5GemmaConfig(encoder=module, decoder=module, is_encoder_decoder=False, vocab_size=256000)
    encoder = T5GemmaEncoderModel(encoder_config).eval().requires_grad_(False)
    text.__dict__["encoder"] = encoder  # kept out of the module tree, as TextConditioner keeps it
    with torch.no_grad():
        text.padding_embedding.normal_(0, 0.02, generator=generator)
    for part in (dit, autoencoder, duration, text):
        part.eval().requires_grad_(False)
    return StableAudio3Model(
        name="sa3-small-real-random",
        config=config,
        dit=dit,
        autoencoder=autoencoder,
        text=text,
        duration=duration,
        device="cpu",
        dtype=torch.float32,
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
