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


def make_tiny(directory: str | Path, family: str = "open-1.0", seed: int = 0) -> Path:
    """Write a tiny pipeline to `directory` with `save_pretrained` (model_index.json + component folders)."""
    builders = {"open-1.0": build_tiny_open1, "sa3": build_tiny_sa3}
    if family not in builders:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(builders)}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    builders[family](seed).save_pretrained(out)
    return out


# -- Stable Audio 3 ---------------------------------------------------------------------


def build_gemma_tokenizer(model_max_length: int = 256):
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


def build_tiny_sa3(seed: int = 0):
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
