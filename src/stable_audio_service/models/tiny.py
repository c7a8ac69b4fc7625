"""Offline tiny random-weight pipelines in the real diffusers layout.

They produce noise. They exist so that the whole loading and serving path runs
without gated weights, a network or a GPU: the service loads them through the
same `from_pretrained` code as the real model.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

# Words that give the tiny tokenizer a few multi-character pieces; everything
# else falls back to single characters, so any prompt tokenizes.
_WORDS = (
    "rain on a tin roof drum loop piano guitar bass synth ambient techno beat bpm "
    "birds forest wind ocean waves thunder footsteps door dog cat city street noise "
    "music song melody chord the and of with in slow fast loud soft warm dark bright"
).split()


def build_t5_tokenizer():
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


def build_tiny_open1(seed: int = 0):
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
        encoder_hidden_size=4,
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


def make_tiny(directory: str | Path, family: str = "open-1.0", seed: int = 0) -> Path:
    """Write a tiny pipeline to `directory` with `save_pretrained` (model_index.json + component folders)."""
    if family != "open-1.0":
        raise ValueError(f"unknown family {family!r}; this build knows 'open-1.0'")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    build_tiny_open1(seed).save_pretrained(out)
    return out
