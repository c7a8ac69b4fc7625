"""Random-weight `StableAudioPipeline`s of three sizes, built in memory, for benchmarks only.

Timing does not depend on weight values, so random weights give the real cost of a shape:
- "tiny": `stable_audio_service.models.tiny.build_tiny_open1` (2-layer DiT, 8 latent channels);
- "mid":  6-layer DiT, 8 heads x 64, 64 latent channels, Oobleck with 32 channels, 4-layer T5;
- "real": the Stable Audio Open 1.0 shapes from /work/shared/reference/real-size-models.md
  (DiT 24 layers, 24 heads x 64, 12 kv heads; Oobleck 128/128, multiples [1,2,4,8,16], latent 64;
  t5-base-shaped T5 encoder; projection 768).

All sizes keep the real sample rate (44.1 kHz), hop (2048) and window (1024 latents = 47.55 s).
The tokenizer is always the tiny offline one (the real T5 tokenizer is gated/not fetched); prompts are
padded to 128 tokens exactly like the real one, so the text encoder's cost is the real cost.
"""

from __future__ import annotations

import time

import torch

SIZES = ("tiny", "mid", "real")


def _scheduler():
    from diffusers import CosineDPMSolverMultistepScheduler

    return CosineDPMSolverMultistepScheduler(
        sigma_min=0.3, sigma_max=500, sigma_schedule="exponential", prediction_type="v_prediction", solver_order=2
    )


def _build(
    *,
    t5: dict,
    cond_dim: int,
    dit: dict,
    latent: int,
    vae_hidden: int,
    vae_decoder: int,
    multiples: list[int],
):
    from diffusers import AutoencoderOobleck, StableAudioDiTModel, StableAudioPipeline, StableAudioProjectionModel
    from transformers import T5Config, T5EncoderModel

    from stable_audio_service.models.tiny import build_t5_tokenizer

    tokenizer = build_t5_tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(
            d_model=cond_dim, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **t5
        )
    )
    transformer = StableAudioDiTModel(
        sample_size=1024,
        in_channels=latent,
        out_channels=latent,
        global_states_input_dim=2 * cond_dim,
        cross_attention_input_dim=cond_dim,
        **dit,
    )
    vae = AutoencoderOobleck(
        encoder_hidden_size=vae_hidden,
        downsampling_ratios=[2, 4, 4, 8, 8],
        channel_multiples=multiples,
        decoder_channels=vae_decoder,
        decoder_input_channels=latent,
        audio_channels=2,
        sampling_rate=44100,
    )
    projection = StableAudioProjectionModel(
        text_encoder_dim=cond_dim, conditioning_dim=cond_dim, min_value=0, max_value=512
    )
    return StableAudioPipeline(
        vae=vae,
        text_encoder=text_encoder,
        projection_model=projection,
        tokenizer=tokenizer,
        transformer=transformer,
        scheduler=_scheduler(),
    )


def build_pipe(size: str, seed: int = 0):
    """A random-weight StableAudioPipeline of the given size, fp32, CPU, eval mode, progress bar off."""
    torch.manual_seed(seed)
    if size == "tiny":
        from stable_audio_service.models.tiny import build_tiny_open1

        pipe = build_tiny_open1(seed)
    elif size == "mid":
        pipe = _build(
            t5=dict(vocab_size=32128, d_kv=64, d_ff=1024, num_layers=4, num_heads=4),
            cond_dim=256,
            dit=dict(
                num_layers=6,
                attention_head_dim=64,
                num_attention_heads=8,
                num_key_value_attention_heads=4,
                cross_attention_dim=256,
                time_proj_dim=64,
            ),
            latent=64,
            vae_hidden=32,
            vae_decoder=32,
            multiples=[1, 2, 4, 8, 16],
        )
    elif size == "real":
        pipe = _build(
            t5=dict(vocab_size=32128, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
            cond_dim=768,
            dit=dict(
                num_layers=24,
                attention_head_dim=64,
                num_attention_heads=24,
                num_key_value_attention_heads=12,
                cross_attention_dim=768,
                time_proj_dim=256,
            ),
            latent=64,
            vae_hidden=128,
            vae_decoder=128,
            multiples=[1, 2, 4, 8, 16],
        )
    else:
        raise ValueError(f"unknown size {size!r}; choose from {SIZES}")
    pipe = pipe.to("cpu")
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.projection_model):
        module.eval()
        module.requires_grad_(False)
    return pipe


def wrap(pipe, size: str, window: str = "full", text_cache_size: int = 256):
    """The service's model class over this pipeline (shares the pipeline's weights)."""
    from stable_audio_service.models.open1 import StableAudioOpenModel

    return StableAudioOpenModel(
        pipe,
        name=f"bench-{size}-{window}",
        device="cpu",
        dtype=torch.float32,
        window=window,
        text_cache_size=text_cache_size,
    )


def param_counts(pipe) -> dict[str, float]:
    """Millions of parameters per component."""
    return {
        name: round(sum(p.numel() for p in getattr(pipe, name).parameters()) / 1e6, 1)
        for name in ("transformer", "vae", "text_encoder", "projection_model")
    }


if __name__ == "__main__":
    import sys

    for s in sys.argv[1:] or ["tiny", "mid"]:
        t0 = time.perf_counter()
        p = build_pipe(s)
        print(s, f"built in {time.perf_counter() - t0:.1f}s", param_counts(p))
