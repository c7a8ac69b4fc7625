"""Real-size Stable Audio 3 structures with random weights, built in memory, for benchmarks only.

Both structures, as Stability's code builds them (shapes from `/work/shared/fixtures/sa3-official/*/MAKING.md`,
real values in brackets there, and `/work/shared/reference/real-size-models.md`):

* small (small-music / small-sfx): DiT embed 1024, depth 20, 16 heads x 64, standard attention, 64 memory tokens,
  local_add_cond_dim 257; SAME-S width 768 (channels 128 x c_mults [6]), 6 layers, dim_heads 64, ff x3, latent 256,
  chunk_size 32 with midpoint shift, kernel-3 decoder mapping, no sin-gated layers.
* medium: DiT embed 1536, depth 24, 24 heads x 64, differential attention; SAME-L width 1536 (128 x [12]),
  12 layers, 24 heads x 64, band attention `sliding_window [1, 1]`, decoder `sinusoidal_blocks [8]` (the strict
  rule `(depth - i) < 8` puts the sin gate in the last 7 of the 12 decoder layers; the value 8 is from a third-party
  SAME-L port's notes found by code search, not verified in Stability's code; sin vs SiLU costs the same), latent 256.
* T5Gemma b-b encoder for both: 12 layers, hidden 768, 12 heads x 64, GeGLU 2048, vocab 256000 (the real vocab, so
  the real 786 MB embedding is in the RSS; the lookup's cost does not depend on it).

Why a second builder beside `bench/sa3_real.py` (another engineer's, small only, uncommitted when this was
written): the per-phase benchmark needs the medium structure too, and the same medium shapes in diffusers' own
classes for the A/B.

Weights: each module keeps its default initialisation (timing does not depend on weight values) and only the
parameters that start at exactly zero are drawn (weight-norm `v`, new tokens, zero-initialised gates and output
projections): a zero `weight_v` gives a NaN weight, and NaN or all-zero activations would make the timed run
unlike a real one. The decoder's output gain is 0.1 so the noise stays small (the run records `decode_finite`).
The tokenizer is the tiny offline Gemma one; prompts are padded to 256 tokens like the real one, so the encoder
does the real amount of work.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch

from stable_audio_service.models.tiny import SA3_TEXT_FOLDER, build_gemma_tokenizer, tiny_sa3_config, write_tiny_sa3

STRUCTURES = ("small", "medium")

T5GEMMA_BB_ENCODER = {
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
    "layer_types": ["sliding_attention", "full_attention"] * 6,
}

# Real widths per structure: (SAME c_mult, SAME depth, decoder sinusoidal_blocks, DiT embed, depth, heads, differential)
_REAL = {
    "small": {"c_mult": 6, "ae_depth": 6, "sin_blocks": 0, "embed": 1024, "depth": 20, "heads": 16},
    "medium": {"c_mult": 12, "ae_depth": 12, "sin_blocks": 8, "embed": 1536, "depth": 24, "heads": 24},
}


def real_config(structure: str) -> dict[str, Any]:
    """`model_config.json` of a structure at its real widths (the tiny official-schema config, widened)."""
    if structure not in _REAL:
        raise ValueError(f"unknown structure {structure!r}; one of {', '.join(STRUCTURES)}")
    real = _REAL[structure]
    raw = copy.deepcopy(tiny_sa3_config(structure))
    pre = raw["model"]["pretransform"]["config"]
    for part in ("encoder", "decoder"):
        pre[part]["config"].update(
            channels=128, c_mults=[real["c_mult"]], latent_dim=256, transformer_depths=[real["ae_depth"]], dim_heads=64
        )
    pre["decoder"]["config"]["sinusoidal_blocks"] = [real["sin_blocks"]]
    pre["bottleneck"]["config"]["dim"] = 256
    pre["latent_dim"] = 256
    raw["model"]["diffusion"]["config"].update(
        io_channels=256,
        embed_dim=real["embed"],
        depth=real["depth"],
        num_heads=real["heads"],
        local_add_cond_dim=257,
        timestep_features_dim=256,
        num_memory_tokens=64,
        ff_kwargs={"mult": 4},
    )
    raw["model"]["io_channels"] = 256
    return raw


def fill_zero_parameters(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Draw N(0, 1/fan_in) for every matrix parameter that is exactly zero (see the module docstring)."""
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() >= 2 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) / param[0].numel() ** 0.5)
            elif param.dim() == 1 and param.numel() > 1 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * param.numel() ** -0.5)


def t5gemma_encoder(vocab_size: int = 256000, layers: int = 12):
    """The T5Gemma b-b encoder shape with random weights (float32, eval, no grad); fewer `layers` for mid-size runs."""
    from transformers import T5GemmaConfig, T5GemmaEncoderModel

    layer_types = (["sliding_attention", "full_attention"] * layers)[:layers]
    module = dict(T5GEMMA_BB_ENCODER, vocab_size=vocab_size, num_hidden_layers=layers, layer_types=layer_types)
    config = T5GemmaConfig(encoder=module, decoder=module, is_encoder_decoder=False, vocab_size=vocab_size)
    return T5GemmaEncoderModel(config).eval().requires_grad_(False)


def build_ours(
    structure: str,
    seed: int = 0,
    workdir: Path | None = None,
    vocab_size: int = 256000,
    *,
    raw: dict[str, Any] | None = None,
    randomize=None,
    encoder=None,
    text_cache_size: int = 0,
    name: str | None = None,
    options=None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
):
    """A `StableAudio3Model` of the real `structure` shapes (random weights drawn in float32 on the CPU, then
    served at `dtype` on `device`), assembled from its parts the way `StableAudio3Model.from_checkpoint` assembles
    it: the T5Gemma encoder stays float32, as the service keeps it. `raw` replaces the real config (mid-size
    runs), `randomize(module, generator)` the zero-filling, `encoder` the real T5Gemma encoder, `options` (an
    `SA3Options`; None: the defaults) how it is served."""
    from stable_audio_service.models.stable_audio_3.autoencoder import SameAutoencoder
    from stable_audio_service.models.stable_audio_3.conditioning import DurationConditioner, TextConditioner
    from stable_audio_service.models.stable_audio_3.config import parse_config
    from stable_audio_service.models.stable_audio_3.dit import DiffusionTransformer
    from stable_audio_service.models.stable_audio_3.family import StableAudio3Model

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"sa3-{structure}-real-"))
    if not (workdir / SA3_TEXT_FOLDER).is_dir():
        write_tiny_sa3(workdir, structure, seed)  # only for its tokenizer and text folder
    raw = raw or real_config(structure)
    randomize = randomize or fill_zero_parameters
    config = parse_config(raw)
    dit = DiffusionTransformer(config.dit)
    autoencoder = SameAutoencoder.from_config(raw)
    duration = DurationConditioner(config.duration, config.cond_dim)
    for part in (dit, autoencoder, duration):
        randomize(part, generator)
    with torch.no_grad():  # keep the decoded noise inside [-1, 1]
        autoencoder.decoder.layers[-1].mapping.weight_g.fill_(0.1)
    text = TextConditioner(config.text, workdir / SA3_TEXT_FOLDER, config.cond_dim, text_cache_size, "cpu")
    # kept out of the module tree, as TextConditioner does
    text.__dict__["encoder"] = encoder if encoder is not None else t5gemma_encoder(vocab_size)
    with torch.no_grad():
        text.padding_embedding.normal_(0, 0.02, generator=generator)
    for part in (dit, autoencoder, duration, text):
        part.eval().requires_grad_(False).to(device=device, dtype=dtype)
    text.__dict__["encoder"] = text.encoder.to(device)
    return StableAudio3Model(
        name=name or f"sa3-{structure}-real-random",
        config=config,
        dit=dit,
        autoencoder=autoencoder,
        text=text,
        duration=duration,
        device=device,
        dtype=dtype,
        options=options,
    )


def served_as(model, *, dtype: torch.dtype | None = None, device: str | None = None, options=None):
    """The same weights as `model`, served at another dtype, on another device or with other `SA3Options`, so
    that rows of a benchmark differ only in how they are served. Parts are shared when nothing changes them
    (no cast, no move, no int8 or compile, which replace modules in place), else copied; the T5Gemma encoder
    stays float32 as the service keeps it, copied only when it moves or int8 quantises it."""
    from stable_audio_service.models.stable_audio_3.accel import QUANTIZE_PARTS, SA3Options
    from stable_audio_service.models.stable_audio_3.family import StableAudio3Model

    options = options if options is not None else SA3Options()
    dtype = dtype or model.torch_dtype
    device = str(device or model.device)
    moved = device != str(model.device)
    quantized = QUANTIZE_PARTS.get(options.quantize, ())
    if dtype == model.torch_dtype and not moved and not quantized and not options.compile:
        dit, autoencoder, duration, text = model.dit, model.autoencoder, model.duration_cond, model.text
    else:
        encoder, cache = model.text.encoder, model.text.cache
        memo: dict[int, Any] = {id(cache): type(cache)(cache.capacity)}  # its own empty cache (a lock: no copy)
        if not moved and "text" not in quantized:
            memo[id(encoder)] = encoder
        dit, autoencoder, duration = (
            copy.deepcopy(part).to(device=device, dtype=dtype)
            for part in (model.dit, model.autoencoder, model.duration_cond)
        )
        text = copy.deepcopy(model.text, memo).to(device=device, dtype=dtype)
        text.__dict__["encoder"] = text.encoder.to(device)
    return StableAudio3Model(
        name=model.name,
        config=model.config,
        dit=dit,
        autoencoder=autoencoder,
        text=text,
        duration=duration,
        device=device,
        dtype=dtype,
        options=options,
    )


def build_diffusers_medium(seed: int = 0, vocab_size: int = 256000):
    """diffusers 0.42.1's `StableAudio3Pipeline` with the medium shapes (its DiT defaults are the medium DiT;
    `AutoencoderSAME` set to SAME-L: width 128 x 12, 12 layers, dim_heads 64, band half-width 1, sin gate in the
    trailing decoder layers), random weights, float32, CPU. Only SAME-L: diffusers cannot build SAME-S."""
    from diffusers import AutoencoderSAME, FlowMatchEulerDiscreteScheduler, StableAudio3DiTModel, StableAudio3Pipeline
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    real = _REAL["medium"]
    vae = AutoencoderSAME(
        audio_channels=2,
        patch_size=256,
        encoder_channels=128,
        encoder_c_mults=(real["c_mult"],),
        encoder_strides=(16,),
        encoder_transformer_depths=(real["ae_depth"],),
        latent_dim=256,
        use_differential_attention=True,
        dim_heads=64,
        ff_mult=3,
        sliding_window=1,
        decoder_sinusoidal_blocks=(real["sin_blocks"],),
        sampling_rate=44100,
    )
    transformer = StableAudio3DiTModel(
        io_channels=256,
        embed_dim=real["embed"],
        depth=real["depth"],
        num_heads=real["heads"],
        cond_token_dim=768,
        global_cond_dim=768,
        local_add_cond_dim=257,
        timestep_features_dim=256,
        ff_mult=4.0,
        num_memory_tokens=64,
        use_differential_attention=True,
    )
    duration = StableAudio3DurationEmbedder(output_dim=768, fourier_dim=256, max_val=384.0)
    for part in (vae, transformer, duration):
        fill_zero_parameters(part, generator)
        part.eval().requires_grad_(False)
    tokenizer = build_gemma_tokenizer(model_max_length=256)
    tokenizer.padding_side = "right"
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0, stochastic_sampling=True)
    return StableAudio3Pipeline(
        vae=vae,
        text_encoder=t5gemma_encoder(vocab_size),
        tokenizer=tokenizer,
        duration_embedder=duration,
        transformer=transformer,
        scheduler=scheduler,
    )


def millions(module: torch.nn.Module) -> float:
    """Parameters in millions (a check that the shapes are the real ones)."""
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 1)
