"""Offline tiny random-weight pipelines in the real diffusers layout.

They produce noise. They exist so that the whole loading and serving path runs
without gated weights, a network or a GPU: the service loads them through the
same `from_pretrained` code as the real model.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import StableAudio3Pipeline, StableAudioPipeline
    from transformers import GemmaTokenizer, T5TokenizerFast

# Words that give the tiny tokenizer a few multi-character pieces; everything
# else falls back to single characters, so any prompt tokenizes.
_WORDS = (
    "rain on a tin roof drum loop piano guitar bass synth ambient techno beat bpm "
    "birds forest wind ocean waves thunder footsteps door dog cat city street noise "
    "music song melody chord the and of with in slow fast loud soft warm dark bright"
).split()


def build_t5_tokenizer() -> T5TokenizerFast:
    """A T5-style Unigram tokenizer built with `tokenizers`, never fetched."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import T5TokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    pieces = [f"\u2581{w}" for w in _WORDS] + ["\u2581"] + list(string.printable.strip())
    vocab = [(s, 0.0) for s in specials] + [(p, -1.0 - 0.01 * i) for i, p in enumerate(pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=128,
    )


def build_tiny_open1(seed: int = 0) -> StableAudioPipeline:
    """A random-weight `StableAudioPipeline` with the real sample rate, hop (2048) and window (1024)."""
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
        StableAudioProjectionModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = build_t5_tokenizer()
    cond_dim = 32
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=cond_dim,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="relu",
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    latent_channels = 8
    transformer = StableAudioDiTModel(
        sample_size=1024,
        in_channels=latent_channels,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        num_key_value_attention_heads=2,
        out_channels=latent_channels,
        cross_attention_dim=32,
        time_proj_dim=16,
        global_states_input_dim=2 * cond_dim,
        cross_attention_input_dim=cond_dim,
    )
    vae = AutoencoderOobleck(
        encoder_hidden_size=2 * latent_channels,  # mean and scale: encode() must give decoder_input_channels
        downsampling_ratios=[2, 4, 4, 8, 8],
        channel_multiples=[1, 1, 1, 1, 1],
        decoder_channels=4,
        decoder_input_channels=latent_channels,
        audio_channels=2,
        sampling_rate=44100,
    )
    projection = StableAudioProjectionModel(
        text_encoder_dim=cond_dim, conditioning_dim=cond_dim, min_value=0, max_value=512
    )
    scheduler = CosineDPMSolverMultistepScheduler(
        sigma_min=0.3,
        sigma_max=500,
        sigma_schedule="exponential",
        prediction_type="v_prediction",
        solver_order=2,
    )
    return StableAudioPipeline(
        vae=vae,
        text_encoder=text_encoder,
        projection_model=projection,
        tokenizer=tokenizer,
        transformer=transformer,
        scheduler=scheduler,
    )


def make_tiny(directory: str | Path, family: str = "open-1.0", seed: int = 0, structure: str = "small") -> Path:
    """Write a tiny random-weight model to `directory`: Stable Audio Open 1.0 in the diffusers layout
    (`save_pretrained`), Stable Audio 3 in Stability's official format (`structure` small or medium)."""
    out = Path(directory)
    if family == "sa3":
        return write_tiny_sa3(out, structure=structure, seed=seed)
    if family != "open-1.0":
        raise ValueError(f"unknown family {family!r}; one of open-1.0, sa3")
    out.mkdir(parents=True, exist_ok=True)
    build_tiny_open1(seed).save_pretrained(out)
    return out


# -- Stable Audio 3 ---------------------------------------------------------------------


def build_gemma_tokenizer(model_max_length: int = 256) -> GemmaTokenizer:
    """A Gemma-style byte-fallback BPE tokenizer (`GemmaTokenizer`) built from a word list, never fetched.

    Specials sit at Gemma's ids (pad 0, eos 1, bos 2, unk 3, mask 4); the 256 `<0xNN>` byte pieces
    make every string tokenizable; a few merges give whole-word pieces for common prompt words.
    """
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {}
    for special in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"):
        vocab[special] = len(vocab)
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in ["\u2581", *string.ascii_letters, *string.digits, *string.punctuation]:
        vocab.setdefault(char, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        piece = "\u2581"
        for char in word:
            merged = piece + char
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((piece, char))
            piece = merged
    return GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, add_bos_token=True)


def _randomize_zero_init(module: torch.nn.Module, generator: torch.Generator) -> None:
    """SA3 modules zero-initialise their residual output projections, which would make a random
    tiny model an identity map and hide bugs (e.g. in chunked decoding); give them real weights."""
    for param in module.parameters():
        if param.dim() >= 2 and not param.detach().any():
            fan_in = param[0].numel()
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)


def build_tiny_sa3(seed: int = 0) -> StableAudio3Pipeline:
    """A random-weight `StableAudio3Pipeline`: 44.1 kHz stereo, the real 4096x SAME hop (patch 256,
    stride 16, band half-width 1), a two-layer T5Gemma encoder and a two-block DiT."""
    from diffusers import (
        AutoencoderSAME,
        FlowMatchEulerDiscreteScheduler,
        StableAudio3DiTModel,
        StableAudio3Pipeline,
    )
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder
    from transformers import T5GemmaConfig, T5GemmaEncoderModel

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    tokenizer = build_gemma_tokenizer()
    cond_dim = 32
    module = {
        "vocab_size": len(tokenizer),
        "hidden_size": cond_dim,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "query_pre_attn_scalar": 8,
        "sliding_window": 64,
        "max_position_embeddings": 512,
    }
    text_encoder = T5GemmaEncoderModel(
        T5GemmaConfig(encoder=module, decoder=module, is_encoder_decoder=False, vocab_size=len(tokenizer))
    )
    latent_dim = 16
    vae = AutoencoderSAME(
        audio_channels=2,
        patch_size=256,
        encoder_channels=8,
        encoder_c_mults=(2,),
        encoder_strides=(16,),
        encoder_transformer_depths=(2,),
        latent_dim=latent_dim,
        use_differential_attention=True,
        dim_heads=8,
        ff_mult=1,
        sliding_window=1,
        sampling_rate=44100,
    )
    transformer = StableAudio3DiTModel(
        io_channels=latent_dim,
        patch_size=1,
        embed_dim=32,
        depth=2,
        num_heads=4,
        cond_token_dim=cond_dim,
        global_cond_dim=cond_dim,
        local_add_cond_dim=latent_dim + 1,
        timestep_features_dim=16,
        ff_mult=2,
        num_memory_tokens=4,
        use_differential_attention=True,
    )
    for model in (vae, transformer):
        _randomize_zero_init(model, generator)
    duration_embedder = StableAudio3DurationEmbedder(output_dim=cond_dim, fourier_dim=16, max_val=384.0)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0, stochastic_sampling=True)
    return StableAudio3Pipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        duration_embedder=duration_embedder,
        transformer=transformer,
        scheduler=scheduler,
    )


# -- Stable Audio 3, official format ----------------------------------------------------------------------

SA3_TEXT_FOLDER = "t5gemma-b-b-ul2"


def _same_config(structure: str, kind: str) -> dict:
    """A tiny SAME encoder/decoder config with the real hop (patch 256 x stride 16) and the real attention mode
    of each structure: SAME-S chunks with a midpoint shift, SAME-L a +-1 segment band."""
    cfg: dict = {
        "channels": 8,
        "c_mults": [4],
        "strides": [16],
        "latent_dim": 16,
        "transformer_depths": [2],
        "checkpointing": False,
        "differential": True,
        "dyt": True,
        "dim_heads": 16,
        "variable_stride": True,
        "chunk_size": 32,
    }
    if structure == "medium":
        cfg.update(sliding_window=[1, 1], chunk_midpoint_shift=False, conv_mapping=False)
    else:
        cfg.update(chunk_midpoint_shift=True, conv_mapping=kind == "decoder")
    if kind == "encoder":
        cfg.update(in_channels=512, mask_noise=0.0)
    else:
        cfg.update(out_channels=512, sinusoidal_blocks=[1] if structure == "medium" else [0], mask_noise=0.01)
    return cfg


def tiny_sa3_config(structure: str = "small") -> dict:
    """`model_config.json` of a tiny SA3 checkpoint in Stability's schema. The text width stays 768 because
    Stability's `T5GemmaConditioner` hard-codes it; everything else is tiny. `sample_size` is the real one of
    the structure (small 120 s, medium 380 s) so the limits look like the real model's."""
    if structure not in ("small", "medium"):
        raise ValueError(f"unknown structure {structure!r}; one of small, medium")
    latent = 16
    return {
        "model_type": "diffusion_cond_inpaint",
        "sample_size": 5292032 if structure == "small" else 16777216,
        "sample_rate": 44100,
        "audio_channels": 2,
        "model": {
            "pretransform": {
                "type": "autoencoder",
                "chunked": True,
                "config": {
                    "encoder": {"type": "same", "config": _same_config(structure, "encoder")},
                    "decoder": {"type": "same", "config": _same_config(structure, "decoder")},
                    "bottleneck": {
                        "type": "softnorm",
                        "config": {
                            "dim": latent,
                            "noise_augment_dim": 0,
                            "noise_regularize": True,
                            "auto_scale": True,
                            "freeze": True,
                        },
                    },
                    "pretransform": {"type": "patched", "config": {"channels": 2, "patch_size": 256}},
                    "latent_dim": latent,
                    "downsampling_ratio": 4096,
                    "io_channels": 2,
                },
            },
            "conditioning": {
                "configs": [
                    {
                        "id": "prompt",
                        "type": "t5gemma",
                        "config": {
                            "max_length": 256,
                            "padding_mode": "learned",
                            "model_path": ".",
                            "subfolder": SA3_TEXT_FOLDER,
                        },
                    },
                    {
                        "id": "seconds_total",
                        "type": "number",
                        "config": {"min_val": 0, "max_val": 384, "fourier_features_type": "expo"},
                    },
                ],
                "cond_dim": 768,
            },
            "diffusion": {
                "type": "dit",
                "diffusion_objective": "rf_denoiser",
                "cross_attention_cond_ids": ["prompt", "seconds_total"],
                "global_cond_ids": ["seconds_total"],
                "local_add_cond_ids": ["inpaint_mask", "inpaint_masked_input"],
                "mask_padding_attention": True,
                "use_effective_length_for_schedule": True,
                "config": {
                    "io_channels": latent,
                    "patch_size": 1,
                    "embed_dim": 64,
                    "depth": 2,
                    "num_heads": 1,
                    "cond_token_dim": 768,
                    "global_cond_dim": 768,
                    "local_add_cond_dim": latent + 1,
                    "project_cond_tokens": True,
                    "project_global_cond": True,
                    "transformer_type": "continuous_transformer",
                    "global_cond_type": "adaLN",
                    "timestep_features_type": "expo",
                    "timestep_features_dim": 32,
                    "timestep_features_logsnr": False,
                    "num_memory_tokens": 4,
                    "attn_kwargs": {"qk_norm": "rms", "differential": structure == "medium"},
                    "norm_type": "rms_norm",
                    "norm_kwargs": {"force_fp32": True},
                    "ff_kwargs": {"mult": 2},
                },
            },
            "io_channels": latent,
        },
    }


def write_tiny_sa3(directory: Path, structure: str = "small", seed: int = 0) -> Path:
    """Write a random-weight SA3 checkpoint as Stability publishes one: model_config.json, model.safetensors
    (`model.model.*`, `pretransform.model.*`, `conditioner.conditioners.*`) and the T5Gemma folder (config,
    weights, a tokenizer built offline). It loads through the same path as the real checkpoints."""
    import json

    from safetensors.torch import save_file
    from transformers import T5GemmaConfig, T5GemmaEncoderModel

    from .stable_audio_3.autoencoder import SameAutoencoder
    from .stable_audio_3.config import parse_config
    from .stable_audio_3.dit import DiffusionTransformer

    raw = tiny_sa3_config(structure)
    config = parse_config(raw)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    dit = DiffusionTransformer(config.dit)
    state = {f"model.model.{k}": v.clone() for k, v in dit.state_dict().items()}
    for key, value in state.items():
        if key.endswith("to_scale_shift_gate") or key.endswith("memory_tokens"):
            state[key] = randn(*value.shape, scale=value.shape[-1] ** -0.5)
    autoencoder = SameAutoencoder.from_config(raw)
    ae_state = {k: v.clone() for k, v in autoencoder.state_dict().items()}
    # Weight-normed convolutions start with v = 0 (a NaN weight) and new tokens at 0: draw them; the decoder's
    # output mapping gets a small gain so the noise it makes stays well inside [-1, 1].
    last_decoder = max(int(k.split(".")[2]) for k in ae_state if k.startswith("decoder.layers."))
    for key, value in ae_state.items():
        if key.endswith("weight_v") or key.endswith("new_tokens"):
            ae_state[key] = randn(*value.shape, scale=value[0].numel() ** -0.5)
        elif key == f"decoder.layers.{last_decoder}.mapping.weight_g":
            ae_state[key] = torch.full_like(value, 0.1)
    state.update({f"pretransform.model.{k}": v for k, v in ae_state.items()})
    state["conditioner.conditioners.seconds_total.embedder.embedding.1.weight"] = randn(768, 256, scale=256**-0.5)
    state["conditioner.conditioners.seconds_total.embedder.embedding.1.bias"] = randn(768, scale=0.05)
    state["conditioner.conditioners.prompt.padding_embedding"] = randn(768, scale=0.02)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    (directory / "model_config.json").write_text(json.dumps(raw, indent=2))

    text_dir = directory / SA3_TEXT_FOLDER
    tokenizer = build_gemma_tokenizer(model_max_length=256)
    tokenizer.padding_side = "right"  # as the fixtures' tokenizer (Stability's conditioner pads to max_length)
    module = {
        "vocab_size": len(tokenizer),
        "hidden_size": 768,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 4096,
        "max_position_embeddings": 512,
        "layer_types": ["sliding_attention", "full_attention"],
    }
    text_config = T5GemmaConfig(encoder=module, decoder=module, is_encoder_decoder=False, vocab_size=len(tokenizer))
    T5GemmaEncoderModel(text_config).save_pretrained(str(text_dir))
    tokenizer.save_pretrained(str(text_dir))
    return directory
